//! Injected attacks, each labelled as ground truth: who, what, and the
//! simulated interval its events fall in.

use serde::Serialize;
use vigil_schemas::{Event, Kind};

use crate::hospital::{
    DAY_NS, EventMaker, HOUR_NS, Hospital, MINUTE_NS, Principal, Role, phi_path, weekday,
};
use crate::rng::Rng;

/// The attack scenarios the starter rule pack must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A privileged user bulk-copies PHI at 2 AM.
    PrivilegedBulkCopy,
    /// Phished physician-assistant credentials read 200 records in 15
    /// minutes at 11 PM from a host the PA never used.
    PhishedAssistant,
    /// The billing service reads treatment notes for the first time.
    BillingReadsTreatmentNotes,
    /// The backup job runs on a Tuesday afternoon and sends to a
    /// never-seen destination.
    BackupWrongDayNewDestination,
    /// Audit logs deleted and truncated.
    AuditLogTampering,
    /// The database service spawns a shell.
    DatabaseShell,
    /// Privilege escalation followed by PHI reads.
    EscalationThenPhi,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::PrivilegedBulkCopy,
        Scenario::PhishedAssistant,
        Scenario::BillingReadsTreatmentNotes,
        Scenario::BackupWrongDayNewDestination,
        Scenario::AuditLogTampering,
        Scenario::DatabaseShell,
        Scenario::EscalationThenPhi,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::PrivilegedBulkCopy => "privileged-bulk-copy-2am",
            Scenario::PhishedAssistant => "phished-assistant-new-host-11pm",
            Scenario::BillingReadsTreatmentNotes => "billing-service-reads-treatment-notes",
            Scenario::BackupWrongDayNewDestination => "backup-tuesday-new-destination",
            Scenario::AuditLogTampering => "audit-log-deletion",
            Scenario::DatabaseShell => "database-spawns-shell",
            Scenario::EscalationThenPhi => "privilege-escalation-then-phi",
        }
    }
}

/// One injected attack.
#[derive(Debug, Clone, Serialize)]
pub struct Injection {
    pub scenario: Scenario,
    /// The principal key its events carry.
    pub principal: String,
    /// First and last event time (ns).
    pub start_ns: i64,
    pub end_ns: i64,
    pub events: usize,
}

/// The first time at or after `from` that falls on `weekday` (Monday = 0)
/// at `hour`:`minute` UTC.
pub fn next_time(from: i64, weekday_wanted: Option<usize>, hour: i64, minute: i64) -> i64 {
    let mut day = from.div_euclid(DAY_NS) * DAY_NS;
    loop {
        let candidate = day + hour * HOUR_NS + minute * MINUTE_NS;
        if candidate >= from && weekday_wanted.is_none_or(|w| weekday(candidate) == w) {
            return candidate;
        }
        day += DAY_NS;
    }
}

fn pick(hospital: &Hospital, role: Role, round: usize) -> &Principal {
    let members: Vec<&Principal> = hospital.by_role(role).collect();
    members[round % members.len()]
}

/// Builds the events of `scenario`'s `round`-th injection, at the first
/// suitable time at or after `from`. `bulk_records` sizes the bulk copy.
pub fn inject(
    hospital: &Hospital,
    scenario: Scenario,
    round: usize,
    from: i64,
    bulk_records: u64,
) -> (Injection, Vec<Event>) {
    let mut rng = Rng::keyed(hospital.seed, &[0xa77ac4, scenario as u64, round as u64]);
    let mut events = Vec::new();
    let principal;
    match scenario {
        Scenario::PrivilegedBulkCopy => {
            let admin = pick(hospital, Role::Admin, round);
            let mut maker = EventMaker::new(admin);
            maker.host = "fileshare-01".into();
            let start = next_time(from, None, 2, 5);
            // Tens of records a second, as a copy script does.
            let spacing = (10 * MINUTE_NS) / bulk_records.max(1) as i64;
            for r in 0..bulk_records {
                let class = ["charts", "labs", "treatment-notes"][(r % 3) as usize];
                maker.read_file(
                    phi_path(class, rng.below(hospital.patients)),
                    start + r as i64 * spacing,
                    32_768,
                    &mut events,
                );
            }
            principal = admin.key();
        }
        Scenario::PhishedAssistant => {
            let pa = pick(hospital, Role::PhysicianAssistant, round);
            let mut maker = EventMaker::new(pa);
            maker.host = format!("ws-ext-{:02}", 40 + round);
            let start = next_time(from, None, 23, 0);
            for r in 0..200 {
                maker.read_file(
                    phi_path("charts", rng.below(hospital.patients)),
                    start + r * (14 * MINUTE_NS / 200),
                    20_000,
                    &mut events,
                );
            }
            principal = pa.key();
        }
        Scenario::BillingReadsTreatmentNotes => {
            let service = pick(hospital, Role::BillingService, round);
            let maker = EventMaker::new(service);
            let start = next_time(from, Some(1 + round % 3), 14, 20);
            for r in 0..40 {
                maker.read_file(
                    phi_path("treatment-notes", rng.below(hospital.patients)),
                    start + r * 15_000_000_000,
                    6_000,
                    &mut events,
                );
            }
            principal = service.key();
        }
        Scenario::BackupWrongDayNewDestination => {
            let backup = pick(hospital, Role::Backup, round);
            let maker = EventMaker::new(backup);
            let start = next_time(from, Some(1), 14, 10);
            let destination = format!("203.0.113.{}", 50 + round);
            events.push(maker.connect(&destination, 443, start));
            for r in 0..300 {
                maker.read_file(
                    phi_path(
                        ["charts", "labs", "billing"][r % 3],
                        rng.below(hospital.patients),
                    ),
                    start + MINUTE_NS + r as i64 * 2_000_000_000,
                    16_384,
                    &mut events,
                );
            }
            let mut send = maker.event(Kind::Send, start + 12 * MINUTE_NS);
            send.dst_addr = Some(destination);
            send.dst_port = Some(443);
            send.bytes = Some(300 * 16_384);
            events.push(send);
            principal = backup.key();
        }
        Scenario::AuditLogTampering => {
            let admin = pick(hospital, Role::Admin, round + 1);
            let mut maker = EventMaker::new(admin);
            maker.host = "db-01".into();
            let start = next_time(from, None, 1, 30);
            let mut truncate = maker.event(Kind::Truncate, start);
            truncate.path = Some("/var/log/audit/audit.log".into());
            truncate.exe = Some("/usr/bin/truncate".into());
            events.push(truncate);
            let mut unlink = maker.event(Kind::Unlink, start + 3_000_000_000);
            unlink.path = Some("/var/log/audit/audit.log.1".into());
            unlink.exe = Some("/usr/bin/rm".into());
            events.push(unlink);
            principal = admin.key();
        }
        Scenario::DatabaseShell => {
            let db = pick(hospital, Role::Database, round);
            let maker = EventMaker::new(db);
            let start = next_time(from, None, 4 + round as i64 * 5 % 20, 17);
            events.push(maker.exec("/usr/bin/bash", db.exe, start));
            events.push(maker.exec("/usr/bin/curl", "/usr/bin/bash", start + 2_000_000_000));
            principal = db.key();
        }
        Scenario::EscalationThenPhi => {
            let nurse = pick(hospital, Role::Nurse, round);
            let maker = EventMaker::new(nurse);
            let start = next_time(from, None, 21, 40);
            let mut exploit = maker.exec("/tmp/.cache/x", "/usr/bin/bash", start);
            exploit.comm = "x".into();
            events.push(exploit.clone());
            let mut setuid = maker.event(Kind::Setuid, start + 1_000_000);
            setuid.exe = exploit.exe.clone();
            setuid.comm = "x".into();
            setuid.target_id = Some(0);
            events.push(setuid);
            for r in 0..30 {
                maker.read_file(
                    phi_path("charts", rng.below(hospital.patients)),
                    start + MINUTE_NS + r * 10_000_000_000,
                    20_000,
                    &mut events,
                );
            }
            principal = nurse.key();
        }
    }
    let start_ns = events.iter().map(|e| e.time_unix_ns).min().unwrap_or(from);
    let end_ns = events.iter().map(|e| e.time_unix_ns).max().unwrap_or(from);
    (
        Injection {
            scenario,
            principal,
            start_ns,
            end_ns,
            events: events.len(),
        },
        events,
    )
}

/// Days of history that hold every scenario whatever the hour the run
/// starts: a week, the hour before the live phase, and the hour a
/// weekday-tied scenario may need (see [`plan`]).
pub const HISTORY_DAYS_FOR_EVERY_SCENARIO: i64 = 8;

/// One planned injection with its events.
pub type Planned = (Injection, Vec<Event>);

/// Plans `rounds` injections of every scenario between `from` and `until`:
/// each round starts on its own day, so scenarios do not overlap.
///
/// A scenario tied to a weekday and hour (the Tuesday-afternoon backup)
/// that does not fit after its day moves a week earlier, or to the start of
/// the span; when the span holds no such time at all (a span shorter than a
/// week, ending just after it), it goes to the last such time of the week
/// before `until`, which may lie before `from` but not before `earliest`
/// (the first simulated time). The scenarios that cannot be placed even so
/// (a history shorter than [`HISTORY_DAYS_FOR_EVERY_SCENARIO`]) are returned with their round, for the
/// caller to report.
pub fn plan(
    hospital: &Hospital,
    rounds: usize,
    from: i64,
    until: i64,
    earliest: i64,
    bulk_records: u64,
) -> (Vec<Planned>, Vec<(Scenario, usize)>) {
    let mut planned = Vec::new();
    let mut unplaced = Vec::new();
    let span_days = ((until - from) / DAY_NS).max(1);
    // Every injection lasts less than an hour, so a start searched from
    // here ends before `until`.
    let last_week = until - 7 * DAY_NS - HOUR_NS;
    for round in 0..rounds {
        for (s, scenario) in Scenario::ALL.into_iter().enumerate() {
            let day = ((round * Scenario::ALL.len() + s) as i64 * span_days)
                / (rounds * Scenario::ALL.len()) as i64;
            let start = from + day * DAY_NS;
            let earlier = (1..).map(|weeks| start - weeks * 7 * DAY_NS);
            let candidates = std::iter::once(start)
                .chain(earlier.take_while(|t| *t >= from))
                .chain(std::iter::once(from))
                .chain(Some(last_week).filter(|t| *t >= earliest));
            let placed = candidates
                .map(|candidate| inject(hospital, scenario, round, candidate, bulk_records))
                .find(|(injection, _)| injection.end_ns < until);
            match placed {
                Some(injection) => planned.push(injection),
                None => unplaced.push((scenario, round)),
            }
        }
    }
    (planned, unplaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONDAY: i64 = 1_795_392_000 * 1_000_000_000;

    #[test]
    fn next_time_finds_the_asked_weekday_and_hour() {
        let t = next_time(MONDAY + 15 * HOUR_NS, Some(1), 14, 10);
        assert_eq!(t, MONDAY + DAY_NS + 14 * HOUR_NS + 10 * MINUTE_NS);
        let t = next_time(MONDAY + 3 * HOUR_NS, None, 2, 5);
        assert_eq!(t, MONDAY + DAY_NS + 2 * HOUR_NS + 5 * MINUTE_NS);
    }

    #[test]
    fn scenarios_happen_when_and_as_who_they_say() {
        let hospital = Hospital::new(11, 40, 0);
        for scenario in Scenario::ALL {
            let (injection, events) = inject(&hospital, scenario, 0, MONDAY, 300);
            assert!(!events.is_empty(), "{scenario:?}");
            assert_eq!(injection.events, events.len());
            for event in &events {
                assert_eq!(event.principal(), injection.principal, "{scenario:?}");
                assert!(event.time_unix_ns >= injection.start_ns);
                assert!(event.time_unix_ns <= injection.end_ns);
            }
            let hour = crate::hospital::hour_of_day(injection.start_ns);
            match scenario {
                Scenario::PrivilegedBulkCopy => assert_eq!(hour, 2),
                Scenario::PhishedAssistant => {
                    assert_eq!(hour, 23);
                    let opens = events.iter().filter(|e| e.kind == Kind::Open).count();
                    assert_eq!(opens, 200);
                    assert!(events[0].host.starts_with("ws-ext"));
                    assert!(
                        events
                            .iter()
                            .all(|e| e.time_unix_ns - injection.start_ns < 15 * MINUTE_NS)
                    );
                }
                Scenario::BackupWrongDayNewDestination => {
                    assert_eq!(weekday(injection.start_ns), 1, "Tuesday");
                    assert_eq!(hour, 14);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_plan_spreads_rounds_over_the_span() {
        let hospital = Hospital::new(2, 40, 0);
        let (planned, unplaced) = plan(&hospital, 2, MONDAY, MONDAY + 14 * DAY_NS, MONDAY, 300);
        assert_eq!(planned.len(), 14);
        assert!(unplaced.is_empty());
        // A span of six days from a Monday noon still fits the Tuesday job.
        let (short, _) = plan(
            &hospital,
            1,
            MONDAY + 12 * HOUR_NS,
            MONDAY + 6 * DAY_NS,
            MONDAY,
            300,
        );
        assert_eq!(short.len(), 7);
        for (injection, _) in &planned {
            assert!(injection.start_ns >= MONDAY && injection.end_ns < MONDAY + 14 * DAY_NS);
        }
    }

    /// With that much history every scenario is placed, however short the
    /// attack span and at whatever hour of the week the run starts.
    #[test]
    fn the_minimum_history_holds_every_scenario_at_every_hour() {
        let hospital = Hospital::new(2, 40, 0);
        for hour in 0..7 * 24 {
            let history_end = MONDAY + 7 * DAY_NS + hour * HOUR_NS;
            let earliest = history_end - HISTORY_DAYS_FOR_EVERY_SCENARIO * DAY_NS;
            for attack_days in [1, 6] {
                let from = history_end - attack_days * DAY_NS;
                let (_, unplaced) = plan(&hospital, 1, from, history_end - HOUR_NS, earliest, 300);
                assert!(
                    unplaced.is_empty(),
                    "hour {hour}, {attack_days} days: {unplaced:?}"
                );
            }
        }
    }

    /// The quick run's shape started on a Monday afternoon: six days of
    /// attacks from Tuesday 15:00 hold no Tuesday 14:10, so the backup and
    /// round 0's billing scenario (also a Tuesday afternoon) go to the
    /// Tuesday before, inside the history.
    #[test]
    fn a_span_without_the_weekday_uses_the_history_before_it() {
        let hospital = Hospital::new(2, 40, 0);
        let history_end = MONDAY + 7 * DAY_NS + 15 * HOUR_NS;
        let from = history_end - 6 * DAY_NS;
        let until = history_end - HOUR_NS;
        let earliest = history_end - 10 * DAY_NS;
        let (planned, unplaced) = plan(&hospital, 1, from, until, earliest, 300);
        assert_eq!(planned.len(), 7, "every scenario placed: {unplaced:?}");
        for (injection, _) in &planned {
            assert!(injection.end_ns < until, "{injection:?}");
            assert!(injection.start_ns >= earliest, "{injection:?}");
            assert!(
                injection.end_ns - injection.start_ns < HOUR_NS,
                "{injection:?}"
            );
        }
        let backup = planned
            .iter()
            .find(|(i, _)| i.scenario == Scenario::BackupWrongDayNewDestination)
            .expect("backup planned");
        assert_eq!(weekday(backup.0.start_ns), 1, "Tuesday");
        assert!(backup.0.start_ns < from, "before the attack span");
        // Without the history before the span the two Tuesday-afternoon
        // scenarios cannot be placed, and the caller is told which.
        let (planned, unplaced) = plan(&hospital, 1, from, until, from, 300);
        assert_eq!(planned.len(), 5);
        assert_eq!(
            unplaced,
            [
                (Scenario::BillingReadsTreatmentNotes, 0),
                (Scenario::BackupWrongDayNewDestination, 0)
            ]
        );
    }
}
