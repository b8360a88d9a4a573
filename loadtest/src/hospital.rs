//! The synthetic hospital: hosts, people and service accounts with roles
//! and weekly rhythms, and the benign system-call events they cause in an
//! hour of simulated time.
//!
//! Everything is drawn from a [`Rng`] keyed by (seed, principal, hour), so
//! a seed gives the same hospital and the same history on every run,
//! whatever order the hours are generated in.

use vigil_schemas::{Event, Kind, SocketFamily};

use crate::rng::Rng;

pub const MINUTE_NS: i64 = 60_000_000_000;
pub const HOUR_NS: i64 = 60 * MINUTE_NS;
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// Weekday of a time, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(time_ns: i64) -> usize {
    (time_ns.div_euclid(DAY_NS) + 3).rem_euclid(7) as usize
}

/// Hour of day (UTC) of a time.
pub fn hour_of_day(time_ns: i64) -> u8 {
    (time_ns.div_euclid(HOUR_NS).rem_euclid(24)) as u8
}

/// What a principal does for a living.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Physician,
    Nurse,
    PhysicianAssistant,
    Billing,
    Registration,
    Admin,
    Backup,
    Hl7Interface,
    BillingService,
    Database,
    /// Application-server workers that carry the live phase's load.
    AppService,
    /// The load test's latency probe.
    Canary,
}

impl Role {
    /// The role name in the detector's role mapping.
    pub fn name(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Nurse => "nurse",
            Role::PhysicianAssistant => "physician-assistant",
            Role::Billing => "billing",
            Role::Registration => "registration",
            Role::Admin => "admin",
            Role::Backup => "backup-service",
            Role::Hl7Interface => "hl7-interface",
            Role::BillingService => "billing-service",
            Role::Database => "database-service",
            Role::AppService => "app-service",
            Role::Canary => "canary",
        }
    }
}

/// When a principal is at work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rhythm {
    /// Weekdays from `start` to `end` (UTC hours), weekends with the given
    /// chance per day (on call).
    Weekdays {
        start: u8,
        end: u8,
        weekend_chance: f64,
    },
    /// A fixed shift of `hours` from `start`, five days a week (`off` are
    /// the two weekdays off, Monday = 0); night shifts cross midnight.
    Shift {
        start: u8,
        hours: u8,
        off: [usize; 2],
    },
    /// One hour a week.
    Weekly { weekday: usize, hour: u8 },
    /// One hour every day.
    Daily { hour: u8 },
    /// Around the clock.
    Always,
}

/// A user or a service account.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Index in [`Hospital::principals`].
    pub index: usize,
    /// Login name (people) or service name.
    pub name: String,
    pub role: Role,
    pub uid: i64,
    /// People have a login session (login uid); daemons do not.
    pub person: bool,
    /// The host the principal usually works on.
    pub host: String,
    pub exe: &'static str,
    pub rhythm: Rhythm,
    /// Mean PHI file accesses per active hour.
    pub per_hour: f64,
    /// PHI classes (directories under /srv/phi) the principal reads.
    pub classes: &'static [&'static str],
    /// Network destinations it uses (address, port).
    pub destinations: Vec<(String, i32)>,
}

impl Principal {
    /// The key the collector would give its events (see
    /// `vigil_schemas::Event::principal`).
    pub fn key(&self) -> String {
        if self.person {
            self.name.clone()
        } else {
            format!("{}@{}", self.uid, self.host)
        }
    }

    /// Whether the principal works in the hour starting at `hour_start`.
    /// Day-level choices (on-call weekends) come from `day_rng`.
    pub fn active(&self, hour_start: i64, seed: u64) -> bool {
        let day = hour_start.div_euclid(DAY_NS);
        let wd = weekday(hour_start);
        let hour = hour_of_day(hour_start);
        match self.rhythm {
            Rhythm::Weekdays {
                start,
                end,
                weekend_chance,
            } => {
                let in_hours = hour >= start && hour < end;
                if wd < 5 {
                    in_hours
                } else {
                    in_hours
                        && Rng::keyed(seed, &[self.index as u64, day as u64, 0x0ca11])
                            .chance(weekend_chance)
                }
            }
            Rhythm::Shift { start, hours, off } => {
                let since_start = (i64::from(hour) - i64::from(start)).rem_euclid(24);
                if since_start >= i64::from(hours) {
                    return false;
                }
                // The shift belongs to the day it started on.
                let shift_day = weekday(hour_start - since_start * HOUR_NS);
                !off.contains(&shift_day)
            }
            Rhythm::Weekly {
                weekday: w,
                hour: h,
            } => wd == w && hour == h,
            Rhythm::Daily { hour: h } => hour == h,
            Rhythm::Always => true,
        }
    }
}

/// The hospital.
#[derive(Debug, Clone)]
pub struct Hospital {
    pub seed: u64,
    pub principals: Vec<Principal>,
    /// Patients whose records exist.
    pub patients: u64,
    /// Files the backup job reads every Sunday.
    pub backup_files: u64,
}

const CLINICAL: &[&str] = &["charts", "labs", "treatment-notes", "imaging"];
const NURSING: &[&str] = &["charts", "labs", "medications"];
const PA: &[&str] = &["charts", "labs", "treatment-notes"];
const BILLING: &[&str] = &["billing"];
const REGISTRATION: &[&str] = &["demographics"];
const ALL_CLASSES: &[&str] = &[
    "charts",
    "labs",
    "treatment-notes",
    "imaging",
    "medications",
    "billing",
    "demographics",
];
const HL7: &[&str] = &["hl7-inbound"];
const DB: &[&str] = &["db"];
const APP: &[&str] = &["app-cache"];
const NONE: &[&str] = &[];

/// The EHR application servers' address, every session connects there.
pub const EHR_ADDR: &str = "10.0.1.10";

impl Hospital {
    /// A hospital with about `people` staff (at least one of each role),
    /// the four service accounts, `app_services` application workers for
    /// the live phase and the canary.
    pub fn new(seed: u64, people: usize, app_services: usize) -> Hospital {
        let people = people.max(12);
        let mut rng = Rng::keyed(seed, &[0x5eed]);
        let share = |fraction: f64| ((people as f64 * fraction).round() as usize).max(1);
        let plan: [(Role, usize); 6] = [
            (Role::Physician, share(0.25)),
            (Role::Nurse, share(0.35)),
            (Role::PhysicianAssistant, share(0.08)),
            (Role::Billing, share(0.1)),
            (Role::Registration, share(0.1)),
            (Role::Admin, share(0.05).max(2)),
        ];
        let mut principals = Vec::new();
        let mut uid = 1000;
        let workstations = (people / 2).max(4) as u64;
        for (role, count) in plan {
            for n in 0..count {
                let index = principals.len();
                let host = format!("ws-{:03}", rng.below(workstations));
                let (rhythm, per_hour, classes, exe) = match role {
                    Role::Physician => {
                        let start = 7 + rng.below(3) as u8;
                        (
                            Rhythm::Weekdays {
                                start,
                                end: start + 9,
                                weekend_chance: 0.1,
                            },
                            8.0 + rng.unit() * 8.0,
                            CLINICAL,
                            "/usr/bin/ehr-client",
                        )
                    }
                    Role::Nurse => {
                        let start = [7, 15, 23][n % 3];
                        let first_off = rng.below(7) as usize;
                        (
                            Rhythm::Shift {
                                start,
                                hours: 8,
                                off: [first_off, (first_off + 1) % 7],
                            },
                            6.0 + rng.unit() * 8.0,
                            NURSING,
                            "/usr/bin/ehr-client",
                        )
                    }
                    Role::PhysicianAssistant => (
                        Rhythm::Weekdays {
                            start: 13,
                            end: 22,
                            weekend_chance: 0.05,
                        },
                        8.0 + rng.unit() * 6.0,
                        PA,
                        "/usr/bin/ehr-client",
                    ),
                    Role::Billing => (
                        Rhythm::Weekdays {
                            start: 9,
                            end: 17,
                            weekend_chance: 0.0,
                        },
                        5.0 + rng.unit() * 5.0,
                        BILLING,
                        "/usr/bin/billing-desk",
                    ),
                    Role::Registration => {
                        let start = 7 + rng.below(5) as u8;
                        (
                            Rhythm::Weekdays {
                                start,
                                end: start + 8,
                                weekend_chance: 0.2,
                            },
                            4.0 + rng.unit() * 6.0,
                            REGISTRATION,
                            "/usr/bin/ehr-client",
                        )
                    }
                    _ => (
                        Rhythm::Weekdays {
                            start: 9,
                            end: 17,
                            weekend_chance: 0.05,
                        },
                        0.0,
                        NONE,
                        "/usr/bin/bash",
                    ),
                };
                principals.push(Principal {
                    index,
                    name: format!("{}{:03}", role_prefix(role), n),
                    role,
                    uid,
                    person: true,
                    host,
                    exe,
                    rhythm,
                    per_hour,
                    classes,
                    destinations: vec![(EHR_ADDR.into(), 443)],
                });
                uid += 1;
            }
        }
        let services = [
            Service {
                role: Role::Backup,
                host: "backup-01",
                uid: 990,
                exe: "/usr/bin/restic",
                rhythm: Rhythm::Weekly {
                    weekday: 6,
                    hour: 3,
                },
                per_hour: 0.0,
                classes: ALL_CLASSES,
                destination: ("10.0.9.5", 873),
            },
            Service {
                role: Role::Hl7Interface,
                host: "hl7-01",
                uid: 992,
                exe: "/opt/mirth/bin/mirth-connect",
                rhythm: Rhythm::Always,
                per_hour: 25.0,
                classes: HL7,
                destination: ("10.0.3.10", 2575),
            },
            Service {
                role: Role::BillingService,
                host: "billing-01",
                uid: 991,
                exe: "/opt/billing/bin/claims-worker",
                rhythm: Rhythm::Weekdays {
                    start: 9,
                    end: 17,
                    weekend_chance: 0.0,
                },
                per_hour: 40.0,
                classes: BILLING,
                destination: ("198.51.100.7", 443),
            },
            Service {
                role: Role::BillingService,
                host: "billing-02",
                uid: 991,
                exe: "/opt/billing/bin/claims-worker",
                rhythm: Rhythm::Weekdays {
                    start: 9,
                    end: 17,
                    weekend_chance: 0.0,
                },
                per_hour: 40.0,
                classes: BILLING,
                destination: ("198.51.100.7", 443),
            },
            Service {
                role: Role::BillingService,
                host: "billing-03",
                uid: 991,
                exe: "/opt/billing/bin/claims-worker",
                rhythm: Rhythm::Weekdays {
                    start: 9,
                    end: 17,
                    weekend_chance: 0.0,
                },
                per_hour: 40.0,
                classes: BILLING,
                destination: ("198.51.100.7", 443),
            },
            Service {
                role: Role::Database,
                host: "db-01",
                uid: 999,
                exe: "/usr/lib/postgresql/16/bin/postgres",
                rhythm: Rhythm::Always,
                per_hour: 30.0,
                classes: DB,
                destination: ("10.0.1.10", 5432),
            },
        ];
        for service in services {
            principals.push(Principal {
                index: principals.len(),
                name: service.role.name().into(),
                role: service.role,
                uid: service.uid,
                person: false,
                host: service.host.into(),
                exe: service.exe,
                rhythm: service.rhythm,
                per_hour: service.per_hour,
                classes: service.classes,
                destinations: vec![(service.destination.0.into(), service.destination.1)],
            });
        }
        for n in 0..app_services {
            principals.push(Principal {
                index: principals.len(),
                name: format!("app-worker-{n}"),
                role: Role::AppService,
                uid: 2000 + n as i64,
                person: false,
                host: format!("app-{:02}", n % 8),
                exe: "/opt/ehr/bin/ehr-worker",
                rhythm: Rhythm::Daily {
                    hour: (n % 24) as u8,
                },
                per_hour: 0.0,
                classes: APP,
                destinations: vec![
                    (format!("10.0.2.{}", n % 200 + 1), 5432),
                    ("10.0.4.1".into(), 6379),
                ],
            });
        }
        principals.push(Principal {
            index: principals.len(),
            name: "canary".into(),
            role: Role::Canary,
            uid: 65000,
            person: false,
            host: "loadgen".into(),
            exe: CANARY_EXE,
            rhythm: Rhythm::Daily { hour: 12 },
            per_hour: 0.0,
            classes: NONE,
            destinations: vec![],
        });
        Hospital {
            seed,
            principals,
            patients: 20_000,
            backup_files: 1_500,
        }
    }

    /// The detector's role mapping for this hospital (TOML).
    pub fn roles_toml(&self) -> String {
        let mut text = String::from("# Generated by the Vigil load test.\n[users]\n");
        for p in &self.principals {
            text.push_str(&format!("\"{}\" = \"{}\"\n", p.key(), p.role.name()));
        }
        text
    }

    pub fn by_role(&self, role: Role) -> impl Iterator<Item = &Principal> {
        self.principals.iter().filter(move |p| p.role == role)
    }

    pub fn canary(&self) -> &Principal {
        self.principals
            .iter()
            .find(|p| p.role == Role::Canary)
            .expect("every hospital has a canary")
    }
}

/// A service account's description.
struct Service {
    role: Role,
    host: &'static str,
    uid: i64,
    exe: &'static str,
    rhythm: Rhythm,
    per_hour: f64,
    classes: &'static [&'static str],
    destination: (&'static str, i32),
}

/// The canary's executable; the load test's latency-probe rule matches it.
pub const CANARY_EXE: &str = "/usr/local/bin/vigil-canary";

fn role_prefix(role: Role) -> &'static str {
    match role {
        Role::Physician => "dr",
        Role::Nurse => "rn",
        Role::PhysicianAssistant => "pa",
        Role::Billing => "bill",
        Role::Registration => "reg",
        _ => "adm",
    }
}

/// Builds events for one principal with the common fields filled in.
#[derive(Debug, Clone)]
pub struct EventMaker<'a> {
    pub principal: &'a Principal,
    pub host: String,
    pub pid: i32,
}

impl<'a> EventMaker<'a> {
    pub fn new(principal: &'a Principal) -> EventMaker<'a> {
        EventMaker {
            principal,
            host: principal.host.clone(),
            pid: 3000 + principal.index as i32,
        }
    }

    /// A bare event of `kind` at `time` (ids and sequence numbers are given
    /// when the hour is put in order).
    pub fn event(&self, kind: Kind, time: i64) -> Event {
        let p = self.principal;
        Event {
            host: self.host.clone(),
            time_unix_ns: time,
            kind,
            pid: self.pid,
            ppid: if p.person { 2000 } else { 1 },
            tid: self.pid,
            uid: p.uid,
            euid: p.uid,
            gid: p.uid,
            login_uid: p.person.then_some(p.uid),
            user_name: Some(p.name.clone()),
            login_name: p.person.then(|| p.name.clone()),
            comm: comm_of(p.exe),
            exe: Some(p.exe.into()),
            parent_exe: Some(
                if p.person {
                    "/usr/bin/bash"
                } else {
                    "/usr/lib/systemd/systemd"
                }
                .into(),
            ),
            cgroup_id: 1,
            ..Event::default()
        }
    }

    /// An open of a PHI file followed by the read roll-up at its close.
    pub fn read_file(&self, path: String, time: i64, bytes: i64, out: &mut Vec<Event>) {
        let mut open = self.event(Kind::Open, time);
        open.path = Some(path.clone());
        open.flags = Some(0);
        out.push(open);
        let mut read = self.event(Kind::Read, time + 20_000_000);
        read.path = Some(path);
        read.bytes = Some(bytes);
        out.push(read);
    }

    pub fn exec(&self, exe: &str, parent: &str, time: i64) -> Event {
        let mut exec = self.event(Kind::Exec, time);
        exec.path = Some(exe.into());
        exec.exe = Some(exe.into());
        exec.comm = comm_of(exe);
        exec.parent_exe = Some(parent.into());
        exec.argv = vec![exe.rsplit('/').next().unwrap_or(exe).into()];
        exec
    }

    pub fn connect(&self, addr: &str, port: i32, time: i64) -> Event {
        let mut connect = self.event(Kind::Connect, time);
        connect.family = Some(SocketFamily::Inet);
        connect.src_addr = Some("10.0.0.2".into());
        connect.src_port = Some(40000 + (time.rem_euclid(20000)) as i32);
        connect.dst_addr = Some(addr.into());
        connect.dst_port = Some(port);
        connect
    }
}

/// The task name the kernel would show: the executable's base name, cut to
/// 15 bytes.
pub fn comm_of(exe: &str) -> String {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    base.chars().take(15).collect()
}

/// A PHI file path of a class.
pub fn phi_path(class: &str, record: u64) -> String {
    match class {
        "imaging" => format!("/srv/phi/imaging/study-{record:06}.dcm"),
        "treatment-notes" => format!("/srv/phi/treatment-notes/note-{record:06}.txt"),
        "db" => format!("/srv/phi/db/base/16384/{}", 16_000 + record % 400),
        "app-cache" => format!("/srv/phi/app-cache/{record:06}.bin"),
        _ => format!("/srv/phi/{class}/{record:06}.json"),
    }
}

impl Hospital {
    /// The benign events of one principal in the hour starting at
    /// `hour_start` (unsorted; empty when the principal is off).
    pub fn hour_of(&self, principal: &Principal, hour_start: i64) -> Vec<Event> {
        let mut out = Vec::new();
        let mut rng = Rng::keyed(
            self.seed,
            &[
                principal.index as u64,
                hour_start.div_euclid(HOUR_NS) as u64,
            ],
        );
        let auditd_rotation = principal.role == Role::Database
            && weekday(hour_start) == 0
            && hour_of_day(hour_start) == 0;
        if auditd_rotation {
            // auditd rotates its own log weekly; the tampering rule must
            // not mind.
            let root = Principal {
                index: principal.index,
                name: "root".into(),
                role: Role::Database,
                uid: 0,
                person: false,
                host: principal.host.clone(),
                exe: "/usr/sbin/auditd",
                rhythm: Rhythm::Always,
                per_hour: 0.0,
                classes: NONE,
                destinations: vec![],
            };
            let maker = EventMaker::new(&root);
            let mut rename = maker.event(Kind::Rename, hour_start + MINUTE_NS);
            rename.path = Some("/var/log/audit/audit.log".into());
            rename.new_path = Some("/var/log/audit/audit.log.1".into());
            out.push(rename);
        }
        if !principal.active(hour_start, self.seed) {
            return out;
        }
        let maker = EventMaker::new(principal);
        let at = |rng: &mut Rng| hour_start + rng.below(HOUR_NS as u64 - 1_000_000_000) as i64;
        let first_hour = !principal.active(hour_start - HOUR_NS, self.seed);
        match principal.role {
            Role::Physician
            | Role::Nurse
            | Role::PhysicianAssistant
            | Role::Billing
            | Role::Registration => {
                if first_hour {
                    out.push(maker.exec(principal.exe, "/usr/bin/bash", hour_start + 60_000_000));
                    out.push(maker.connect(EHR_ADDR, 443, hour_start + 200_000_000));
                }
                // Busy and quiet days.
                let day_factor = 0.7
                    + 0.6
                        * Rng::keyed(
                            self.seed,
                            &[principal.index as u64, hour_start.div_euclid(DAY_NS) as u64],
                        )
                        .unit();
                let accesses = rng.poisson(principal.per_hour * day_factor);
                for _ in 0..accesses {
                    let class =
                        principal.classes[rng.below(principal.classes.len() as u64) as usize];
                    let record = rng.below(self.patients);
                    let bytes = 2048 + rng.below(60_000) as i64;
                    maker.read_file(phi_path(class, record), at(&mut rng), bytes, &mut out);
                }
            }
            Role::Admin => {
                const TOOLS: [&str; 4] = [
                    "/usr/bin/ssh",
                    "/usr/bin/systemctl",
                    "/usr/bin/journalctl",
                    "/usr/bin/vim",
                ];
                for _ in 0..rng.poisson(3.0) {
                    let tool = TOOLS[rng.below(4) as usize];
                    out.push(maker.exec(tool, "/usr/bin/bash", at(&mut rng)));
                }
                if rng.chance(0.25) {
                    let time = at(&mut rng);
                    out.push(maker.exec("/usr/bin/sudo", "/usr/bin/bash", time));
                    let mut setuid = maker.event(Kind::Setuid, time + 5_000_000);
                    setuid.exe = Some("/usr/bin/sudo".into());
                    setuid.comm = "sudo".into();
                    setuid.target_id = Some(0);
                    out.push(setuid);
                }
                if rng.chance(0.5) {
                    let server = 10 + rng.below(6);
                    out.push(maker.connect(&format!("10.0.1.{server}"), 22, at(&mut rng)));
                }
            }
            Role::Backup => {
                let (addr, port) = &principal.destinations[0];
                let mut connect = maker.connect(addr, *port, hour_start + MINUTE_NS);
                connect.bytes = None;
                out.push(connect);
                let spacing = (50 * MINUTE_NS) / self.backup_files as i64;
                for f in 0..self.backup_files {
                    let class = ALL_CLASSES[(f % ALL_CLASSES.len() as u64) as usize];
                    let time = hour_start + 2 * MINUTE_NS + f as i64 * spacing;
                    maker.read_file(phi_path(class, f), time, 16_384, &mut out);
                }
                let mut send = maker.event(Kind::Send, hour_start + 55 * MINUTE_NS);
                send.dst_addr = Some(addr.clone());
                send.dst_port = Some(*port);
                send.bytes = Some(self.backup_files as i64 * 16_384);
                out.push(send);
            }
            Role::Hl7Interface => {
                for _ in 0..rng.poisson(principal.per_hour) {
                    let time = at(&mut rng);
                    let path = format!(
                        "/srv/phi/hl7-inbound/msg-{}.hl7",
                        rng.next_u64() % 1_000_000_000
                    );
                    let mut open = maker.event(Kind::Open, time);
                    open.path = Some(path.clone());
                    open.flags = Some(0o101);
                    out.push(open);
                    let mut write = maker.event(Kind::Write, time + 2_000_000);
                    write.path = Some(path);
                    write.bytes = Some(1024 + rng.below(8192) as i64);
                    out.push(write);
                }
                let (addr, port) = &principal.destinations[0];
                out.push(maker.connect(addr, *port, at(&mut rng)));
            }
            Role::BillingService => {
                for _ in 0..rng.poisson(principal.per_hour) {
                    let record = rng.below(self.patients);
                    maker.read_file(phi_path("billing", record), at(&mut rng), 4096, &mut out);
                }
                let (addr, port) = &principal.destinations[0];
                out.push(maker.connect(addr, *port, at(&mut rng)));
            }
            Role::Database => {
                for _ in 0..rng.poisson(principal.per_hour) {
                    let mut read = maker.event(Kind::Read, at(&mut rng));
                    read.path = Some(phi_path("db", rng.below(400)));
                    read.bytes = Some(8192 * (1 + rng.below(64) as i64));
                    out.push(read);
                }
            }
            Role::AppService => {
                // Once a day in history: everything the worker does in the
                // live phase, so none of it is new then.
                self.app_work(principal, hour_start, &mut rng, &mut out, 6);
            }
            Role::Canary => {
                out.push(canary_event(principal, hour_start + 30 * MINUTE_NS));
            }
        }
        out
    }

    /// An application worker's ordinary activity: execs of its helper,
    /// connections to its database and cache, read roll-ups of its cache
    /// files (PHI, reads only). `count` events, spread over the hour.
    pub fn app_work(
        &self,
        principal: &Principal,
        hour_start: i64,
        rng: &mut Rng,
        out: &mut Vec<Event>,
        count: usize,
    ) {
        let maker = EventMaker::new(principal);
        for i in 0..count {
            let time = hour_start + rng.below(HOUR_NS as u64 - 1_000_000_000) as i64;
            out.push(self.app_event(&maker, i, time, rng));
        }
    }

    /// The `i`-th kind of event of an application worker's cycle at `time`.
    pub fn app_event(&self, maker: &EventMaker<'_>, i: usize, time: i64, rng: &mut Rng) -> Event {
        let p = maker.principal;
        match i % 6 {
            0 => maker.exec("/opt/ehr/bin/render-pdf", p.exe, time),
            1 => {
                let (addr, port) = &p.destinations[0];
                maker.connect(addr, *port, time)
            }
            2 => {
                let (addr, port) = &p.destinations[1];
                maker.connect(addr, *port, time)
            }
            3 => {
                let mut exit = maker.event(Kind::Exit, time);
                exit.exe = Some("/opt/ehr/bin/render-pdf".into());
                exit
            }
            _ => {
                let mut read = maker.event(Kind::Read, time);
                read.path = Some(phi_path("app-cache", rng.below(5000)));
                read.bytes = Some(4096 + rng.below(32_768) as i64);
                read
            }
        }
    }
}

/// One canary event: a run of the probe executable, which only the load
/// test's probe rule matches.
pub fn canary_event(canary: &Principal, time: i64) -> Event {
    let maker = EventMaker::new(canary);
    maker.exec(CANARY_EXE, "/usr/lib/systemd/systemd", time)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_795_392_000 * 1_000_000_000;

    #[test]
    fn calendar_helpers() {
        assert_eq!(weekday(MONDAY), 0);
        assert_eq!(weekday(MONDAY + 6 * DAY_NS + 3 * HOUR_NS), 6);
        assert_eq!(hour_of_day(MONDAY + 3 * HOUR_NS + 59 * MINUTE_NS), 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_hospital_and_hours() {
        let a = Hospital::new(7, 40, 4);
        let b = Hospital::new(7, 40, 4);
        assert_eq!(format!("{:?}", a.principals), format!("{:?}", b.principals));
        let p = &a.principals[0];
        let hour = MONDAY + 10 * HOUR_NS;
        assert_eq!(a.hour_of(p, hour), b.hour_of(&b.principals[0], hour));
        let other = Hospital::new(8, 40, 4);
        assert_ne!(
            format!("{:?}", a.principals),
            format!("{:?}", other.principals)
        );
    }

    #[test]
    fn every_role_is_staffed_and_keys_are_unique() {
        let h = Hospital::new(1, 40, 3);
        for role in [
            Role::Physician,
            Role::Nurse,
            Role::PhysicianAssistant,
            Role::Billing,
            Role::Registration,
            Role::Admin,
            Role::Backup,
            Role::Hl7Interface,
            Role::BillingService,
            Role::Database,
            Role::AppService,
            Role::Canary,
        ] {
            assert!(h.by_role(role).count() >= 1, "{role:?}");
        }
        let keys: std::collections::HashSet<String> =
            h.principals.iter().map(Principal::key).collect();
        assert_eq!(keys.len(), h.principals.len());
        for p in &h.principals {
            let events = (0..168).flat_map(|hour| h.hour_of(p, MONDAY + hour * HOUR_NS));
            // auditd's own log rotation runs as root on the database host.
            for event in events.filter(|e| e.exe.as_deref() != Some("/usr/sbin/auditd")) {
                assert_eq!(event.principal(), p.key(), "{p:?}");
            }
        }
    }

    #[test]
    fn rhythms_follow_the_week() {
        let h = Hospital::new(3, 60, 0);
        let backup = h.by_role(Role::Backup).next().expect("backup");
        let active: Vec<i64> = (0..168)
            .filter(|hour| backup.active(MONDAY + hour * HOUR_NS, h.seed))
            .collect();
        assert_eq!(active, vec![6 * 24 + 3], "Sunday 03:00 only");
        let billing = h.by_role(Role::Billing).next().expect("billing clerk");
        assert!(billing.active(MONDAY + 10 * HOUR_NS, h.seed));
        assert!(!billing.active(MONDAY + 2 * HOUR_NS, h.seed));
        assert!(
            !billing.active(MONDAY + 5 * DAY_NS + 10 * HOUR_NS, h.seed),
            "Saturday"
        );
        // A night nurse works across midnight, five shifts a week.
        for nurse in h.by_role(Role::Nurse) {
            let hours = (0..168)
                .filter(|hour| nurse.active(MONDAY + hour * HOUR_NS, h.seed))
                .count();
            assert!((32..=48).contains(&hours), "{hours} hours for {nurse:?}");
        }
    }

    #[test]
    fn a_physicians_weekday_reads_charts_in_office_hours() {
        let h = Hospital::new(5, 40, 0);
        let doctor = h.by_role(Role::Physician).next().expect("physician");
        let day: Vec<Event> = (0..24)
            .flat_map(|hour| h.hour_of(doctor, MONDAY + DAY_NS + hour * HOUR_NS))
            .collect();
        let opens = day.iter().filter(|e| e.kind == Kind::Open).count();
        assert!((20..=300).contains(&opens), "{opens} opens");
        for event in &day {
            let hour = hour_of_day(event.time_unix_ns);
            assert!((7..19).contains(&hour), "{event:?}");
            if let Some(path) = &event.path
                && event.kind != Kind::Exec
            {
                assert!(path.starts_with("/srv/phi/"), "{path}");
            }
        }
    }
}
