//! The collector's systemd unit (`deploy/systemd/vigil-collector.service`)
//! works as written: systemd takes it, and the collector run as an
//! unprivileged account with exactly the capabilities it grants reports the
//! same events, with the same details, as a collector run as root.
//!
//! systemd is not PID 1 on these machines, so the unit is checked with
//! `systemd-analyze verify` and its account and capabilities are applied
//! with `setpriv`, as systemd would apply `User=`, `AmbientCapabilities=`
//! and `CapabilityBoundingSet=`; its other settings are not exercised here.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Collector, Published, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::{TestBroker, assert_systemd_verifies};

const UNIT: &str = include_str!("../../deploy/systemd/vigil-collector.service");
const INSTALLED_BINARY: &str = "/opt/vigil/bin/collector";
/// The account the test runs the collector as (`nobody`).
const UNPRIVILEGED: u32 = 65534;

/// The value of `key=` in the unit (the last one set).
fn unit_setting(key: &str) -> String {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
        .trim()
        .to_owned()
}

/// The capabilities the unit grants, as `setpriv` names them (`bpf`,
/// `perfmon`, ...).
fn unit_capabilities() -> Vec<String> {
    let mut ambient: Vec<String> = unit_setting("AmbientCapabilities")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut bounding: Vec<String> = unit_setting("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ambient.sort();
    bounding.sort();
    assert_eq!(
        ambient, bounding,
        "the unit's ambient capabilities and its bounding set differ"
    );
    ambient
        .iter()
        .map(|cap| {
            cap.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{cap}: not a capability name"))
                .to_lowercase()
        })
        .collect()
}

#[test]
fn systemd_takes_the_unit() {
    assert_systemd_verifies(
        "vigil-collector.service",
        UNIT,
        INSTALLED_BINARY,
        env!("CARGO_BIN_EXE_collector"),
    );
}

/// In the watched directory, by relative paths (joined to the working
/// directory the collector reads from /proc) and absolute ones: create and
/// write, read, a failed open, rename, chmod, unlink; then stay alive so
/// both collectors can read this process's /proc entries.
const WORKLOAD: &str = r#"
chdir $ARGV[0] or die "chdir: $!";
open(my $f, ">", "chart.txt") or die "create: $!"; print $f "x" x 1000; close $f;
open($f, "<", "chart.txt") or die "open: $!"; read($f, my $b, 4096); close $f;
open($f, "<", "$ARGV[0]/chart.txt") or die "open: $!"; read($f, $b, 100); close $f;
open($f, "<", "missing.txt") and die "missing.txt exists";
rename("chart.txt", "chart-2.txt") or die "rename: $!";
chmod(0600, "$ARGV[0]/chart-2.txt") or die "chmod: $!";
unlink("chart-2.txt") or die "unlink: $!";
sleep 2;
"#;

/// What an event says, but for what differs between two collectors seeing
/// the same thing (event id, sequence number, time).
fn described(event: &vigil_schemas::Event) -> String {
    format!(
        "{:?} path={:?} new_path={:?} errno={} flags={:?} mode={:?} bytes={:?} pid={} ppid={} \
         uid={} euid={} user={:?} login={:?} comm={} exe={:?} parent_exe={:?} argv={:?} \
         cgroup={} container={:?}",
        event.kind,
        event.path,
        event.new_path,
        event.errno,
        event.flags,
        event.mode,
        event.bytes,
        event.pid,
        event.ppid,
        event.uid,
        event.euid,
        event.user_name,
        event.login_name,
        event.comm,
        event.exe,
        event.parent_exe,
        event.argv,
        event.cgroup_id,
        event.container_id,
    )
}

/// The workload's events, described, sorted.
fn workload_events(events: &[Published], pid: i32) -> Vec<String> {
    let mut described: Vec<String> = events
        .iter()
        .map(|p| &p.event)
        .filter(|e| e.pid == pid && e.kind != Kind::Gap)
        .map(described)
        .collect();
    described.sort();
    described
}

fn unlinked(events: &[Published], path: &Path) -> bool {
    let path = path.to_str().expect("utf-8 temp path");
    events
        .iter()
        .any(|p| p.event.kind == Kind::Unlink && p.event.path.as_deref() == Some(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_units_capabilities_the_collector_reports_what_root_does() {
    require_root();
    let capabilities = unit_capabilities();
    let broker = TestBroker::start();
    broker.create_topic("deploy.root", 1).await;
    broker.create_topic("deploy.unprivileged", 1).await;
    // Only root can enter it, as with a real PHI directory.
    let watched = tempfile::tempdir().expect("watched temp dir");

    let granted = format!(
        "-all,{}",
        capabilities
            .iter()
            .map(|cap| format!("+{cap}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let wrapper: Vec<String> = vec![
        "setpriv".into(),
        format!("--reuid={UNPRIVILEGED}"),
        format!("--regid={UNPRIVILEGED}"),
        "--clear-groups".into(),
        format!("--inh-caps={granted}"),
        format!("--ambient-caps={granted}"),
        format!("--bounding-set={granted}"),
    ];
    let unprivileged = Collector::start_under(
        &wrapper,
        broker.bootstrap(),
        "deploy.unprivileged",
        watched.path(),
        &[],
    );
    // It really runs unprivileged, with the unit's capabilities and no more.
    let status = std::fs::read_to_string(format!("/proc/{}/status", unprivileged.pid()))
        .expect("the collector's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let uids: Vec<String> = field("Uid:")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, vec![UNPRIVILEGED.to_string(); 4], "{status}");
    let effective = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff is hex");
    assert_eq!(
        effective.count_ones() as usize,
        capabilities.len(),
        "effective capabilities {effective:#x}, the unit grants {capabilities:?}"
    );
    let root = Collector::start(broker.bootstrap(), "deploy.root", watched.path(), &[]);

    let workload = Command::new("perl")
        .args(["-e", WORKLOAD])
        .arg(watched.path())
        .spawn()
        .expect("run perl");
    let pid = workload.id() as i32;
    let output = workload.wait_with_output().expect("wait for perl");
    assert!(output.status.success(), "the workload failed");

    let gone = watched.path().join("chart-2.txt");
    let mut seen = Vec::new();
    for topic in ["deploy.root", "deploy.unprivileged"] {
        seen.push(
            consume_until(
                broker.bootstrap(),
                topic,
                Duration::from_secs(60),
                |events| {
                    unlinked(events, &gone)
                        && events
                            .iter()
                            .any(|p| p.event.kind == Kind::Exit && p.event.pid == pid)
                },
            )
            .await,
        );
    }
    let unprivileged_log = unprivileged.stop();
    let root_log = root.stop();
    let as_root = workload_events(&seen[0], pid);
    let as_unprivileged = workload_events(&seen[1], pid);
    assert_eq!(
        as_unprivileged, as_root,
        "the unprivileged collector's events differ from root's\nits log:\n{unprivileged_log}\nroot's:\n{root_log}"
    );

    // And they are complete: the relative path made absolute, the failed
    // open, the executables resolved from /proc, the user named.
    let chart = watched.path().join("chart.txt");
    let missing = watched.path().join("missing.txt");
    let events: Vec<&vigil_schemas::Event> = seen[1]
        .iter()
        .map(|p| &p.event)
        .filter(|e| e.pid == pid)
        .collect();
    let read = events
        .iter()
        .find(|e| e.kind == Kind::Read && e.path.as_deref() == chart.to_str())
        .unwrap_or_else(|| {
            panic!(
                "no read roll-up of {}: {as_unprivileged:#?}",
                chart.display()
            )
        });
    assert!(
        read.exe.as_deref().is_some_and(|exe| exe.contains("perl")),
        "{read:?}"
    );
    let test_binary = std::env::current_exe().expect("this test's executable");
    assert_eq!(
        read.parent_exe.as_deref(),
        test_binary.to_str(),
        "the parent (this test) resolved"
    );
    assert_eq!(read.user_name.as_deref(), Some("root"));
    assert!(
        events
            .iter()
            .any(|e| e.kind == Kind::Open && e.path.as_deref() == missing.to_str() && e.errno == 2),
        "the failed open of {}: {as_unprivileged:#?}",
        missing.display()
    );
    for kind in [Kind::Rename, Kind::Chmod, Kind::Unlink] {
        assert!(
            events.iter().any(|e| e.kind == kind),
            "no {kind:?}: {as_unprivileged:#?}"
        );
    }
    for refusal in ["Permission denied", "EPERM", "EACCES"] {
        assert!(
            !unprivileged_log.contains(refusal),
            "the unprivileged collector was refused something:\n{unprivileged_log}"
        );
    }
}
