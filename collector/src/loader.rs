//! Loading the kernel programs: privilege check, tracefs, the eBPF object
//! with its globals, and attaching every program to its tracepoint.
//!
//! Programs are named for their tracepoint (`vigil.bpf.c`):
//! `vigil_enter_X` → `syscalls:sys_enter_X`, `vigil_exit_X` →
//! `syscalls:sys_exit_X`, `vigil_exec`/`vigil_exit` →
//! `sched:sched_process_exec|exit`, `vigil_sock_state` →
//! `sock:inet_sock_set_state`. A syscall this kernel does not have (e.g.
//! `open` on arm64) is skipped with a warning. One program is not on a
//! tracepoint: [`SWEEP`], on a perf clock event of one CPU, reports the
//! bytes of connections still open every roll-up interval.

use std::os::fd::AsFd;
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{PerfEvent, Program, TracePoint};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use crate::config::{Config, Scope};
use crate::error::{Error, Result};
use crate::record::{RawRecord, RawTracked, layout};
use crate::scope;

/// The compiled kernel programs (built by `build.rs`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vigil.bpf.o"));

/// The program that reports the bytes of traced connections still open
/// (`vigil.bpf.c`), run by a perf clock event rather than a tracepoint.
const SWEEP: &str = "vigil_sweep_connections";

/// The shortest interval between two sweeps of the connections, whatever
/// the roll-up interval: each sweep reports every connection that moved
/// bytes, the broker's included, whose reports move more bytes; at a
/// millisecond (as a test sets for files) that loop flooded the broker.
const MIN_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the shutdown sweep's clock runs (firing every millisecond):
/// long enough for it to fire at least once.
const FINAL_SWEEP: std::time::Duration = std::time::Duration::from_millis(30);

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Says which capability is missing when this process cannot load eBPF
/// tracing programs: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
pub fn check_capabilities() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(Error::MissingCapability {
        missing: format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")),
    })
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is visible: aya
/// looks tracepoint ids up there.
pub fn ensure_tracefs() -> Result<()> {
    let mounted = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("syscalls").is_dir());
    if mounted {
        return Ok(());
    }
    info!(target = "/sys/kernel/tracing", "Mounting tracefs");
    nix::mount::mount(
        Some("nodev"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        what: "tracefs",
        target: "/sys/kernel/tracing",
        hint: "mount -t tracefs nodev /sys/kernel/tracing",
        source,
    })
}

/// The loaded and attached programs. Dropping it detaches them.
#[derive(Debug)]
pub struct Probes {
    ebpf: Ebpf,
    attached: usize,
    /// Each program's skipped runs reported so far (see [`Probes::new_skips`]).
    skips_seen: std::collections::BTreeMap<String, u64>,
}

impl Probes {
    /// Loads the object with this process excluded and the scope modes set,
    /// fills the scope maps, then loads and attaches every program.
    pub fn load(config: &Config) -> Result<Probes> {
        let self_tgid = std::process::id();
        let uid_mode = scope_mode(&config.uids);
        let cgroup_mode = scope_mode(&config.cgroups);
        let watch_relative: u32 = 1;
        let rollup_interval_ns =
            u64::try_from(config.rollup_interval.as_nanos()).unwrap_or(u64::MAX);
        let mut ebpf = EbpfLoader::new()
            .override_global("self_tgid", &self_tgid, true)
            .override_global("uid_mode", &uid_mode, true)
            .override_global("cgroup_mode", &cgroup_mode, true)
            .override_global("watch_relative", &watch_relative, true)
            .override_global("rollup_interval_ns", &rollup_interval_ns, true)
            .map_max_entries("events", config.ringbuf_bytes)
            .map_max_entries("open_files", config.tracked_files)
            .map_max_entries("files_owners", config.tracked_files)
            .load(OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;

        scope::fill(&mut ebpf, config)?;

        // Every program is verified and loaded before the first is
        // attached, and they are attached in rank order: the seconds of
        // verification do not leave some attached and others not.
        let mut names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
        names.sort_by_key(|name| attach_rank(name));
        let mut to_attach = Vec::new();
        for name in names {
            if name == SWEEP {
                continue;
            }
            let Some((category, tracepoint)) = tracepoint_of(&name) else {
                warn!(program = %name, "Program with no tracepoint by its name; not attached");
                continue;
            };
            if !tracepoint_exists(category, &tracepoint) {
                warn!(program = %name, %category, %tracepoint, "Tracepoint not on this kernel; skipped");
                continue;
            }
            tracepoint_program(&mut ebpf, &name)?
                .load()
                .map_err(|e| program_error(&name, e))?;
            to_attach.push((name, category, tracepoint));
        }
        let mut attached = 0;
        for (name, category, tracepoint) in to_attach {
            tracepoint_program(&mut ebpf, &name)?
                .attach(category, &tracepoint)
                .map_err(|e| program_error(&name, e))?;
            debug!(program = %name, %category, %tracepoint, "Attached");
            attached += 1;
        }
        let mut probes = Probes {
            ebpf,
            attached,
            skips_seen: std::collections::BTreeMap::new(),
        };
        probes
            .sweep_program()?
            .load()
            .map_err(|e| program_error(SWEEP, e))?;
        if !config.rollup_interval.is_zero() {
            let every = config.rollup_interval.max(MIN_SWEEP_INTERVAL);
            probes.start_sweeping(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX))?;
            debug!(program = SWEEP, ?every, "Attached");
            probes.attached += 1;
        }
        Ok(probes)
    }

    fn sweep_program(&mut self) -> Result<&mut PerfEvent> {
        self.ebpf
            .program_mut(SWEEP)
            .ok_or_else(|| Error::Setting(format!("program {SWEEP} is missing from the object")))?
            .try_into()
            .map_err(|e| program_error(SWEEP, e))
    }

    /// Runs [`SWEEP`] every `period_ns` of the first online CPU's clock
    /// (which runs whether or not that CPU is busy).
    fn start_sweeping(&mut self, period_ns: u64) -> Result<PerfEventLinkId> {
        let cpu = aya::util::online_cpus()
            .ok()
            .and_then(|cpus| cpus.first().copied())
            .unwrap_or(0);
        self.sweep_program()?
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period_ns),
                false,
            )
            .map_err(|e| program_error(SWEEP, e))
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Runs the kernel skipped since the last call, per program: a program
    /// does not run while another BPF program runs on the same CPU
    /// (`recursion_misses`). The syscall programs run with preemption off,
    /// but an interrupt during one can fire a tracepoint of another —
    /// `vigil_sock_state` when a socket closes in softirq — and that run
    /// is skipped, and what it would have reported is lost. Read from the
    /// kernel's program info; a program it cannot be read for is left out,
    /// with a warning.
    pub fn new_skips(&mut self) -> Vec<(String, u64)> {
        let mut fresh = Vec::new();
        for (name, program) in self.ebpf.programs() {
            // a skipped sweep loses nothing: the next one reports its bytes
            if name == SWEEP {
                continue;
            }
            let Ok(fd) = program.fd() else {
                continue;
            };
            let misses = match program_info(fd.as_fd()) {
                Ok(info) => info.recursion_misses,
                Err(error) => {
                    warn!(program = %name, %error, "Cannot read the program's skipped runs");
                    continue;
                }
            };
            let seen = self.skips_seen.entry(name.to_owned()).or_default();
            if misses > *seen {
                fresh.push((name.to_owned(), misses - *seen));
                *seen = misses;
            }
        }
        fresh
    }

    /// Skipped runs reported so far, of all programs.
    pub fn skipped_total(&self) -> u64 {
        self.skips_seen.values().sum()
    }

    /// The ring buffer the programs write records into.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("events")
            .ok_or(Error::MissingMap("events"))?;
        RingBuf::try_from(map).map_err(|e| map_error("events", e))
    }

    /// Detaches every program, then returns a read and a write roll-up for
    /// each watched file still open: its bytes since its last roll-up, which
    /// would otherwise go with the maps. Each connection still open reports
    /// its bytes since its last roll-up too, through the ring buffer: its
    /// totals are the socket's own counters, which only the kernel can read,
    /// so [`SWEEP`] runs once more first. Records the programs wrote before
    /// are in the ring buffer; drain it before publishing these.
    pub fn detach(&mut self) -> Vec<RawRecord> {
        match self.start_sweeping(1_000_000) {
            Ok(_) => std::thread::sleep(FINAL_SWEEP),
            Err(error) => {
                warn!(%error, "Cannot sweep the connections still open: their bytes since the last roll-up are not reported");
            }
        }
        let started = std::time::Instant::now();
        for rank in (0..=LAST_RANK).rev() {
            let programs: Vec<(&str, &mut Program)> = self
                .ebpf
                .programs_mut()
                .filter(|(name, _)| attach_rank(name) == rank)
                .collect();
            unload_all(programs);
        }
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Programs detached"
        );
        self.attached = 0;
        let now = crate::enrich::Clock::monotonic_ns().max(0) as u64;
        let Some(map) = self.ebpf.map("open_files") else {
            warn!("No open_files map: the bytes of files still open are not reported");
            return Vec::new();
        };
        let open_files: HashMap<&MapData, u64, RawTracked> = match HashMap::try_from(map) {
            Ok(files) => files,
            Err(error) => {
                warn!(%error, "Cannot read open_files: the bytes of files still open are not reported");
                return Vec::new();
            }
        };
        let mut rollups = Vec::new();
        for entry in open_files.iter() {
            let Ok((_, file)) = entry else {
                continue;
            };
            for (kind, bytes) in [
                (layout::KIND_READ, file.read_bytes),
                (layout::KIND_WRITE, file.write_bytes),
            ] {
                if bytes > 0 {
                    let mut rec = file.rec;
                    rec.kind = kind;
                    rec.bytes = bytes;
                    rec.ktime_ns = now;
                    rollups.push(rec);
                }
            }
        }
        rollups
    }

    /// The per-CPU counters of failed ring-buffer reservations (per kind)
    /// and of watched descriptors left untracked.
    pub fn take_drops(&mut self) -> Result<DropCounters> {
        let map = self
            .ebpf
            .take_map("drops")
            .ok_or(Error::MissingMap("drops"))?;
        let counters = PerCpuArray::try_from(map).map_err(|e| map_error("drops", e))?;
        Ok(DropCounters {
            counters,
            seen: vec![0; layout::DROPS_MAX as usize],
            mark: 0,
            marked: false,
            next_read: std::time::Instant::now(),
        })
    }
}

/// A loss the kernel counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelLoss {
    /// Records of this kernel kind that found the ring buffer full.
    RingBufFull(u32),
    /// Watched descriptors left untracked (open_files or files_owners
    /// full): their read and write roll-ups are lost.
    Untracked,
}

/// How often, at most, a change of the records' loss mark has the drop
/// counters read: one read is a lookup per counter, so under sustained
/// loss reading them before every marked record would cost more than the
/// records.
pub const LOSS_READ_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// Kernel drop counters and what has been reported of them so far.
pub struct DropCounters {
    counters: PerCpuArray<MapData, u64>,
    seen: Vec<u64>,
    /// The last record's loss mark.
    mark: u16,
    /// Whether the mark changed since the counters were last read.
    marked: bool,
    /// When they may be read again for a mark.
    next_read: std::time::Instant,
}

impl std::fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropCounters")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl DropCounters {
    /// Whether the counters should be read, and the losses reported, before
    /// the record carrying `mark` (see `RawRecord::loss_mark`): the kernel
    /// lost records since the previous one, or since a read that came too
    /// soon after the last (LOSS_READ_GAP) to happen.
    pub fn lost_before(&mut self, mark: u16) -> bool {
        if mark != self.mark {
            self.mark = mark;
            self.marked = true;
        }
        self.marked && std::time::Instant::now() >= self.next_read
    }

    /// New losses since the last call, with their counts.
    pub fn new_drops(&mut self) -> Result<Vec<(KernelLoss, u64)>> {
        self.marked = false;
        self.next_read = std::time::Instant::now() + LOSS_READ_GAP;
        let mut fresh = Vec::new();
        for slot in 0..layout::DROPS_MAX {
            let per_cpu = self
                .counters
                .get(&slot, 0)
                .map_err(|e| map_error("drops", e))?;
            let total: u64 = per_cpu.iter().sum();
            let seen = &mut self.seen[slot as usize];
            if total > *seen {
                let loss = if slot == layout::LOSS_UNTRACKED {
                    KernelLoss::Untracked
                } else {
                    KernelLoss::RingBufFull(slot)
                };
                fresh.push((loss, total - *seen));
                *seen = total;
            }
        }
        Ok(fresh)
    }

    /// Records dropped for a full ring buffer since the programs were
    /// loaded.
    pub fn total(&self) -> u64 {
        self.seen[..layout::KIND_MAX as usize].iter().sum()
    }

    /// Watched descriptors left untracked since the programs were loaded.
    pub fn untracked(&self) -> u64 {
        self.seen[layout::LOSS_UNTRACKED as usize]
    }
}

fn scope_mode<T>(scope: &Scope<T>) -> u32 {
    match scope {
        Scope::All => layout::SCOPE_ALL,
        Scope::Only(_) => layout::SCOPE_INCLUDE,
        Scope::AllBut(_) => layout::SCOPE_EXCLUDE,
    }
}

/// Unloads programs on up to DETACH_THREADS threads at once: each unload
/// waits for the kernel to let go of its tracepoint, and those waits
/// partly overlap. Detaching all 79 took 6.4 s one by one and 3.0 s on 16
/// threads (no less on 64: the kernel serialises the rest), on an idle
/// host (session 22).
fn unload_all(mut programs: Vec<(&str, &mut Program)>) {
    let per_thread = programs.len().div_ceil(DETACH_THREADS).max(1);
    std::thread::scope(|scope| {
        while !programs.is_empty() {
            let chunk: Vec<_> = programs.drain(..per_thread.min(programs.len())).collect();
            scope.spawn(move || {
                for (name, program) in chunk {
                    let unloaded = match program {
                        Program::TracePoint(program) => program.unload(),
                        Program::PerfEvent(program) => program.unload(),
                        _ => Ok(()),
                    };
                    if let Err(error) = unloaded {
                        warn!(program = %name, %error, "Cannot detach");
                    }
                }
            });
        }
    });
}

/// Threads that unload programs at shutdown (see [`unload_all`]).
const DETACH_THREADS: usize = 16;

/// Where a program comes in the order of attaching at start; programs are
/// detached at shutdown in the reverse order, rank by rank (which takes
/// seconds, see [`unload_all`]). First (0) the programs that remove
/// entries: of `open_files` at close, close_range, exec and exit, of
/// `connections` at a socket's close. Then (1) the other syscall exits,
/// which take what their entries staged; then (2) the rest, the entries
/// among them; last (3) the programs that make `open_files` entries (a
/// fork's copies, an open, a dup, fcntl). While some programs are attached
/// and others not, this order makes no entry whose removal goes unseen and
/// stages no record whose exit goes unseen. In another order an entry can
/// outlive its descriptor: a fork's copy whose exec was no longer seen took
/// the bytes of a later file on the same number, and was reported at
/// shutdown under the first file's path (found in CI, session 22); and a
/// record staged by a call whose exit was not yet attached could be
/// emitted with the outcome of the thread's next call of that syscall.
fn attach_rank(program: &str) -> u8 {
    let makes_entries = program == "vigil_fork"
        || [
            "vigil_exit_open",
            "vigil_exit_creat",
            "vigil_exit_dup",
            "vigil_exit_fcntl",
        ]
        .iter()
        .any(|prefix| program.starts_with(prefix));
    let removes_entries = matches!(
        program,
        "vigil_enter_close"
            | "vigil_exit_close_range"
            | "vigil_exec"
            | "vigil_exit"
            | "vigil_sock_state"
    );
    if removes_entries {
        0
    } else if makes_entries {
        LAST_RANK
    } else if program.starts_with("vigil_exit_") {
        1
    } else {
        2
    }
}

/// The rank of the programs attached last and detached first.
const LAST_RANK: u8 = 3;

fn tracepoint_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Setting(format!("program {name} vanished")))?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// The tracepoint a program attaches to, from its name.
pub fn tracepoint_of(program: &str) -> Option<(&'static str, String)> {
    match program {
        "vigil_exec" => Some(("sched", "sched_process_exec".to_owned())),
        "vigil_fork" => Some(("sched", "sched_process_fork".to_owned())),
        "vigil_exit" => Some(("sched", "sched_process_exit".to_owned())),
        "vigil_sock_state" => Some(("sock", "inet_sock_set_state".to_owned())),
        _ => {
            if let Some(syscall) = program.strip_prefix("vigil_enter_") {
                Some(("syscalls", format!("sys_enter_{syscall}")))
            } else {
                program
                    .strip_prefix("vigil_exit_")
                    .map(|syscall| ("syscalls", format!("sys_exit_{syscall}")))
            }
        }
    }
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|root| Path::new(root).join(category).join(name).is_dir())
}

/// The start of the kernel's `struct bpf_prog_info` (include/uapi/linux/bpf.h)
/// up to `recursion_misses`: its fields before `run_time_ns` are 24 u64s
/// wide; the kernel fills what the caller's length covers.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgramInfo {
    before: [u64; 24],
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

/// The `info` member of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: nix::libc::c_long = 15;

/// A loaded program's info from the kernel. aya 0.14's `ProgramInfo` does
/// not expose `recursion_misses`, so this makes the bpf(2) call itself.
#[allow(unsafe_code)]
fn program_info(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<ProgramInfo> {
    use std::os::fd::AsRawFd;
    let mut info = ProgramInfo::default();
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgramInfo>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: attr points to an InfoByFd that lives across the call, with
    // its size; the kernel writes at most info_len bytes to `info`, a live
    // ProgramInfo of exactly that size, and nothing else.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

fn program_error(name: &str, error: aya::programs::ProgramError) -> Error {
    Error::Program {
        program: name.to_owned(),
        source: Box::new(error),
    }
}

fn map_error(map: &'static str, error: aya::maps::MapError) -> Error {
    Error::Map {
        map,
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_map_to_their_tracepoints() {
        assert_eq!(
            tracepoint_of("vigil_enter_openat"),
            Some(("syscalls", "sys_enter_openat".to_owned()))
        );
        assert_eq!(
            tracepoint_of("vigil_exit_openat"),
            Some(("syscalls", "sys_exit_openat".to_owned()))
        );
        assert_eq!(
            tracepoint_of("vigil_exit"),
            Some(("sched", "sched_process_exit".to_owned()))
        );
        assert_eq!(tracepoint_of("helper"), None);
    }

    #[test]
    fn the_object_never_attaches_to_raw_syscalls() {
        let object = aya_obj_names();
        assert!(!object.is_empty(), "the object has programs");
        for name in object {
            let (category, _) = tracepoint_of(&name)
                .unwrap_or_else(|| panic!("program {name} has no tracepoint by its name"));
            assert_ne!(category, "raw_syscalls", "{name}");
        }
    }

    #[test]
    fn entry_removers_are_attached_first_and_entry_makers_last() {
        let names = aya_obj_names();
        let of_rank = |rank: u8| -> Vec<&str> {
            names
                .iter()
                .map(String::as_str)
                .filter(|name| attach_rank(name) == rank)
                .collect()
        };
        assert_eq!(
            of_rank(0),
            vec![
                "vigil_enter_close",
                "vigil_exec",
                "vigil_exit",
                "vigil_exit_close_range",
                "vigil_sock_state"
            ]
        );
        for maker in [
            "vigil_fork",
            "vigil_exit_openat",
            "vigil_exit_openat2",
            "vigil_exit_creat",
            "vigil_exit_dup2",
            "vigil_exit_fcntl",
        ] {
            assert!(
                of_rank(LAST_RANK).contains(&maker),
                "{maker}: {:?}",
                of_rank(LAST_RANK)
            );
        }
        // a staged syscall's exit comes before its entry
        for (exit, entry) in [
            ("vigil_exit_renameat2", "vigil_enter_renameat2"),
            ("vigil_exit_unlinkat", "vigil_enter_unlinkat"),
            ("vigil_exit_connect", "vigil_enter_connect"),
        ] {
            assert!(of_rank(1).contains(&exit), "{exit}: {:?}", of_rank(1));
            assert!(of_rank(2).contains(&entry), "{entry}: {:?}", of_rank(2));
        }
        assert!(of_rank(1).contains(&"vigil_exit_read"));
        assert!(names.iter().all(|name| attach_rank(name) <= LAST_RANK));
    }

    /// The program info that skipped runs are read from has the kernel's
    /// layout: with run-time statistics on, `vigil_exit_openat`'s run
    /// count and run time, read through it, rise with the opens made (a
    /// field read at the wrong offset stays put or is 0). Skipped runs
    /// themselves cannot be made to happen on demand (see
    /// [`Probes::new_skips`]); they are the next field.
    #[test]
    fn program_info_is_read_with_the_kernels_layout() {
        assert!(
            check_capabilities().is_ok(),
            "this test loads an eBPF program into the running kernel and needs root \
             (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); run it as root, as CI does"
        );
        ensure_tracefs().expect("tracefs");
        let mut ebpf = EbpfLoader::new().load(OBJECT).expect("load the object");
        let program: &mut TracePoint = ebpf
            .program_mut("vigil_exit_openat")
            .expect("vigil_exit_openat")
            .try_into()
            .expect("a tracepoint program");
        program.load().expect("load vigil_exit_openat");
        program
            .attach("syscalls", "sys_exit_openat")
            .expect("attach vigil_exit_openat");
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable run stats");
        let fd = program.fd().expect("program fd").as_fd();
        let before = program_info(fd).expect("program info");
        for _ in 0..100 {
            std::fs::File::open("/proc/self/status").expect("open");
        }
        let after = program_info(fd).expect("program info");
        assert!(
            after.run_cnt >= before.run_cnt + 100,
            "runs {} then {}",
            before.run_cnt,
            after.run_cnt
        );
        assert!(
            after.run_time_ns > before.run_time_ns,
            "run time {} then {} ns",
            before.run_time_ns,
            after.run_time_ns
        );
        assert!(after.recursion_misses < after.run_cnt, "{after:?}");
    }

    /// Program names in the compiled object, read from its symbol names in
    /// the ELF string table (no kernel needed).
    fn aya_obj_names() -> Vec<String> {
        let text = String::from_utf8_lossy(OBJECT);
        let mut names: Vec<String> = text
            .split('\0')
            .filter(|s| {
                (s.starts_with("vigil_enter_")
                    || s.starts_with("vigil_exit")
                    || *s == "vigil_exec"
                    || *s == "vigil_fork"
                    || *s == "vigil_sock_state")
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
