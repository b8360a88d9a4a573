//! Turning a kernel record into a [`vigil_schemas::Event`]: what the kernel
//! cannot cheaply give is resolved here.
//!
//! - user and login names from `/etc/passwd` (re-read, at most every 10 s,
//!   when a uid is not found);
//! - the process's and its parent's executable from `/proc/PID/exe`, cached
//!   per pid until that pid execs or exits, or for [`EXE_TTL`] (an exec or
//!   exit outside the scope never reaches user space, and a pid is reused);
//! - relative paths joined to `/proc/PID/cwd`;
//! - the container id from the task's cgroup path, cached per cgroup id;
//! - the kernel's monotonic timestamp as wall-clock nanoseconds, with the
//!   offset (realtime − monotonic) measured at start.
//!
//! The sequence number and event id are assigned later, by the outbox
//! (`publish.rs`), in the order events are queued.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use vigil_schemas::{Event, Kind, SocketFamily};

use crate::record::{AF_INET, AF_INET6, RawRecord, layout};

/// `O_CREAT` and `O_TMPFILE`: opens whose mode argument means something.
const O_CREAT: i32 = 0o100;
const O_TMPFILE: i32 = 0o20000000;

/// Caches are cleared when they grow past this many entries.
const CACHE_LIMIT: usize = 65_536;

/// How long a pid's executable is trusted without an exec or exit record:
/// under include or exclude scopes the kernel reports neither for a
/// process outside them, so a parent outside the scope that execs, or
/// exits and has its pid reused, would otherwise be named by its old
/// executable for as long as the collector runs. One `readlink` per pid
/// per 30 s is all this costs.
pub const EXE_TTL: Duration = Duration::from_secs(30);

/// The kernel kind number as the bus's [`Kind`].
pub fn kind_of(kind: u32) -> Option<Kind> {
    Some(match kind {
        layout::KIND_EXEC => Kind::Exec,
        layout::KIND_EXIT => Kind::Exit,
        layout::KIND_OPEN => Kind::Open,
        layout::KIND_READ => Kind::Read,
        layout::KIND_WRITE => Kind::Write,
        layout::KIND_RENAME => Kind::Rename,
        layout::KIND_UNLINK => Kind::Unlink,
        layout::KIND_TRUNCATE => Kind::Truncate,
        layout::KIND_CHMOD => Kind::Chmod,
        layout::KIND_CHOWN => Kind::Chown,
        layout::KIND_CONNECT => Kind::Connect,
        layout::KIND_ACCEPT => Kind::Accept,
        layout::KIND_SEND => Kind::Send,
        layout::KIND_RECV => Kind::Recv,
        layout::KIND_SETUID => Kind::Setuid,
        layout::KIND_SETGID => Kind::Setgid,
        layout::KIND_CAPSET => Kind::Capset,
        _ => return None,
    })
}

/// Kernel monotonic time to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i64,
}

impl Clock {
    /// Measures realtime − monotonic now.
    pub fn measure() -> Clock {
        let mono_before = Clock::monotonic_ns();
        let real = Clock::now_ns();
        let mono_after = Clock::monotonic_ns();
        Clock {
            offset_ns: real - (mono_before + (mono_after - mono_before) / 2),
        }
    }

    /// Wall-clock nanoseconds since the Unix epoch of a kernel timestamp.
    pub fn wall_ns(&self, ktime_ns: u64) -> i64 {
        ktime_ns as i64 + self.offset_ns
    }

    /// Wall-clock nanoseconds now.
    pub fn now_ns() -> i64 {
        read_ns(ClockId::CLOCK_REALTIME)
    }

    /// The kernel's monotonic clock now, in nanoseconds: the time base of
    /// the records' `ktime_ns` (`bpf_ktime_get_ns`).
    pub fn monotonic_ns() -> i64 {
        read_ns(ClockId::CLOCK_MONOTONIC)
    }
}

/// A clock's nanoseconds now (0 if it cannot be read).
fn read_ns(id: ClockId) -> i64 {
    clock_gettime(id)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

/// The kernel's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Uid → user name from `/etc/passwd`.
#[derive(Debug)]
pub struct Users {
    path: std::path::PathBuf,
    names: HashMap<u32, String>,
    loaded: Instant,
}

impl Users {
    pub fn load(path: impl Into<std::path::PathBuf>) -> Users {
        let path = path.into();
        let names = read_passwd(&path);
        Users {
            path,
            names,
            loaded: Instant::now(),
        }
    }

    /// The name of a uid, re-reading the file (at most every 10 s) when it
    /// is not known.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.names.get(&uid) {
            return Some(name.clone());
        }
        if self.loaded.elapsed() > Duration::from_secs(10) {
            self.names = read_passwd(&self.path);
            self.loaded = Instant::now();
        }
        self.names.get(&uid).cloned()
    }
}

/// `name:password:uid:...` lines; others are ignored.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (uid, name.to_owned()))
        })
        .collect()
}

fn read_passwd(path: &Path) -> HashMap<u32, String> {
    std::fs::read_to_string(path)
        .map(|text| parse_passwd(&text))
        .unwrap_or_default()
}

/// A container id in a cgroup path: the last 64-hex-digit run in it
/// (docker-<id>.scope, cri-containerd-<id>.scope, /docker/<id>, crio-<id>).
pub fn container_id_of(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|run| run.len() == 64)
        .map(str::to_owned)
}

/// Resolves records into events.
#[derive(Debug)]
pub struct Enricher {
    host: String,
    clock: Clock,
    users: Users,
    /// Executable per pid, with when it was read.
    exes: HashMap<u32, (Instant, Option<String>)>,
    exe_ttl: Duration,
    containers: HashMap<u64, Option<String>>,
}

impl Enricher {
    pub fn new(host: String) -> Enricher {
        Enricher {
            host,
            clock: Clock::measure(),
            users: Users::load("/etc/passwd"),
            exes: HashMap::new(),
            exe_ttl: EXE_TTL,
            containers: HashMap::new(),
        }
    }

    /// The host name events carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The event for a record; `None` for a kind this collector does not
    /// know (a newer kernel object). `seq` and `event_id` are left empty.
    pub fn event(&mut self, raw: &RawRecord) -> Option<Event> {
        let kind = kind_of(raw.kind)?;
        if matches!(kind, Kind::Exec | Kind::Exit) {
            self.exes.remove(&raw.pid);
        }
        let login_uid = (raw.auid != layout::AUID_UNSET).then_some(raw.auid);
        let path_kinds = kind.is_file();
        let net_kinds = matches!(kind, Kind::Connect | Kind::Accept | Kind::Send | Kind::Recv);
        let now = Instant::now();
        let exe = match kind {
            Kind::Exec => Some(raw.path()),
            _ => self.exe(raw.pid, now),
        };
        let (family, src_addr, dst_addr) = if net_kinds {
            let family = match raw.family {
                AF_INET => SocketFamily::Inet,
                AF_INET6 => SocketFamily::Inet6,
                _ => SocketFamily::Other,
            };
            match raw.addresses() {
                Some((src, dst)) => (Some(family), Some(src.to_string()), Some(dst.to_string())),
                None => (Some(family), None, None),
            }
        } else {
            (None, None, None)
        };
        let flags = (kind == Kind::Open).then_some(raw.flags);
        let mode = match kind {
            Kind::Open if raw.flags & (O_CREAT | O_TMPFILE) != 0 => Some(raw.mode as i32),
            Kind::Chmod => Some(raw.mode as i32),
            _ => None,
        };
        let target_id = match kind {
            Kind::Chown if raw.target != -1 => Some(raw.target),
            Kind::Setuid | Kind::Setgid | Kind::Capset => Some(raw.target),
            _ => None,
        };
        Some(Event {
            event_id: String::new(),
            host: self.host.clone(),
            seq: 0,
            time_unix_ns: self.clock.wall_ns(raw.ktime_ns),
            kind,
            errno: raw.err,
            pid: raw.pid as i32,
            ppid: raw.ppid as i32,
            tid: raw.tid as i32,
            uid: i64::from(raw.uid),
            euid: i64::from(raw.euid),
            gid: i64::from(raw.gid),
            login_uid: login_uid.map(i64::from),
            user_name: self.users.name(raw.uid),
            login_name: login_uid.and_then(|auid| self.users.name(auid)),
            comm: raw.comm(),
            exe,
            argv: if kind == Kind::Exec {
                raw.argv()
            } else {
                Vec::new()
            },
            parent_exe: self.exe(raw.ppid, now),
            cgroup_id: raw.cgroup_id as i64,
            container_id: self.container(raw.pid, raw.cgroup_id),
            path: if path_kinds || kind == Kind::Exec {
                Some(absolute(raw.pid, raw.dirfd, raw.path()))
            } else {
                None
            },
            new_path: (kind == Kind::Rename).then(|| absolute(raw.pid, raw.dirfd2, raw.path2())),
            flags,
            mode,
            family,
            src_addr,
            src_port: net_kinds.then_some(i32::from(raw.sport)),
            dst_addr,
            dst_port: net_kinds.then_some(i32::from(raw.dport)),
            bytes: matches!(kind, Kind::Read | Kind::Write | Kind::Send | Kind::Recv)
                .then_some(raw.bytes as i64),
            target_id,
            gap: None,
        })
    }

    /// The executable `pid` runs, as of `now`.
    fn exe(&mut self, pid: u32, now: Instant) -> Option<String> {
        if pid == 0 {
            return None;
        }
        if let Some((read, exe)) = self.exes.get(&pid)
            && now.duration_since(*read) < self.exe_ttl
        {
            return exe.clone();
        }
        if self.exes.len() > CACHE_LIMIT {
            self.exes.clear();
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        self.exes.insert(pid, (now, exe.clone()));
        exe
    }

    fn container(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return None; // gone: do not cache a guess
        };
        let id = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .and_then(container_id_of);
        if self.containers.len() > CACHE_LIMIT {
            self.containers.clear();
        }
        self.containers.insert(cgroup_id, id.clone());
        id
    }
}

/// `AT_FDCWD`: a path relative to the working directory.
const AT_FDCWD: i32 = -100;

/// A path as the caller gave it, joined when relative to the directory it
/// was relative to: the process's working directory, or the directory
/// descriptor `dirfd` (`openat(dirfd, "x")`), when the process is still
/// there to ask (and still has that descriptor open).
fn absolute(pid: u32, dirfd: i32, path: String) -> String {
    if path.starts_with('/') || path.is_empty() {
        return path;
    }
    let dir = if dirfd == AT_FDCWD {
        format!("/proc/{pid}/cwd")
    } else {
        format!("/proc/{pid}/fd/{dirfd}")
    };
    match std::fs::read_link(dir) {
        Ok(cwd) => cwd.join(&path).to_string_lossy().into_owned(),
        Err(_) => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executable_unseen_to_change_is_read_again_after_its_ttl() {
        use std::io::Write;
        // A shell that execs `sleep` when told: the collector gets no exec
        // record for it, as for a process outside the scope.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read go; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let mut enricher = Enricher::new("h".into());
        enricher.exe_ttl = Duration::from_millis(200);
        let shell = enricher
            .exe(pid, Instant::now())
            .expect("the shell's executable");
        assert!(!shell.ends_with("sleep"), "{shell}");

        writeln!(child.stdin.as_mut().expect("stdin"), "go").expect("tell sh to exec");
        let real = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !real(pid).is_some_and(|p| p.ends_with("sleep")) {
            assert!(Instant::now() < deadline, "sh did not exec sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        let cached = enricher.exe(pid, Instant::now());
        std::thread::sleep(Duration::from_millis(250));
        let fresh = enricher.exe(pid, Instant::now());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            cached.as_deref(),
            Some(shell.as_str()),
            "within the TTL, the cached executable"
        );
        assert!(
            fresh.as_deref().is_some_and(|exe| exe.ends_with("sleep")),
            "after the TTL, the executable the pid runs now: {fresh:?}"
        );
    }

    #[test]
    fn passwd_lines_map_uids_to_names() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn container_ids_come_from_docker_and_containerd_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            container_id_of(&format!("/system.slice/docker-{id}.scope")).as_deref(),
            Some(id)
        );
        assert_eq!(
            container_id_of(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            ))
            .as_deref(),
            Some(id)
        );
        assert_eq!(
            container_id_of("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
    }

    #[test]
    fn every_kernel_kind_has_a_bus_kind() {
        for kind in 1..layout::KIND_MAX {
            assert!(kind_of(kind).is_some(), "kernel kind {kind}");
        }
        assert!(kind_of(0).is_none());
        assert!(kind_of(layout::KIND_MAX).is_none());
    }

    #[test]
    fn kernel_time_converts_to_wall_clock_within_a_millisecond() {
        let clock = Clock::measure();
        let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
        let mono_ns = (mono.tv_sec() * 1_000_000_000 + mono.tv_nsec()) as u64;
        let wall = clock.wall_ns(mono_ns);
        let diff = (Clock::now_ns() - wall).abs();
        assert!(diff < 1_000_000, "off by {diff} ns");
    }
}
