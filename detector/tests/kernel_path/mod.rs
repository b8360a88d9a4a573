//! Syscall → alert latency through the real pipeline: a tansu broker on
//! loopback, the `collector` binary (eBPF programs attached to the running
//! kernel) watching a temp directory, and the `detector` binary with one
//! per-event rule that matches opens of `probe-*` files there.
//!
//! Each probe access is an `open`+`read`+`close` of its own file. Its
//! latency is the time from the event's kernel timestamp (converted to wall
//! clock by the collector; the same instant the alert's evidence carries in
//! `finding_info.related_events[].time`, there in milliseconds) to the moment
//! this process receives the alert from the alert topic. Two legs are
//! reported too: kernel → event received from the events topic, and event
//! received → alert received.
//!
//! Used by `tests/kernel_e2e.rs` (a few accesses, asserts every one was
//! alerted) and `benches/kernel_latency.rs` (many, prints percentiles).
//! Loading eBPF programs needs root; [`require_root`] fails with that
//! explanation.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Alert, Event, Kind, bus, decode};

/// The per-event rule under test.
pub const PROBE_RULE: &str = "\
-- id: kernel-probe-open
-- title: A probe file was opened
-- severity: low
-- hipaa: 164.312(b)
-- mitre: T1005
-- version: 1
SELECT * FROM events
WHERE is_phi AND kind = 'open' AND errno = 0 AND path LIKE '%/probe-%'
";
pub const PROBE_RULE_ID: &str = "kernel-probe-open";

/// Fails, saying why, when this process cannot load eBPF programs.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid_is_root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    assert!(
        euid_is_root,
        "the kernel end-to-end latency test runs the collector, which loads eBPF programs into \
         the running kernel: it needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); run it as \
         root, as CI does"
    );
}

/// The collector binary of the same build as the detector under test.
pub fn collector_binary() -> PathBuf {
    let detector = Path::new(env!("CARGO_BIN_EXE_detector"));
    let collector = detector.with_file_name("collector");
    let release = detector
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|profile| profile == "release");
    assert!(
        collector.is_file(),
        "{} is missing: this test runs the real collector next to the detector binary; build it \
         first with `cargo build {}-p vigil-collector` (same CARGO_TARGET_DIR), or run the \
         workspace's tests, which build it",
        collector.display(),
        if release { "--release " } else { "" }
    );
    collector
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A child process whose stderr is kept; killed when dropped.
#[derive(Debug)]
struct Service {
    name: &'static str,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `program` and waits until a stderr line contains `ready`.
    fn start(name: &'static str, program: &Path, args: &[String], ready: &str) -> Service {
        let mut child = Command::new(program)
            .args(args)
            .env("VIGIL_LOG", "info")
            .env("RUST_LOG", "info")
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_WATCH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("stderr lock").push(line);
            }
        });
        let service = Service {
            name,
            child,
            stderr,
        };
        service.wait_for(ready, Duration::from_secs(60));
        service
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    fn wait_for(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .stderr
                .lock()
                .expect("stderr lock")
                .iter()
                .any(|l| l.contains(text))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {} did not log `{text}` within {timeout:?}:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM the {}", self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                std::thread::sleep(Duration::from_millis(100));
                assert!(
                    status.success(),
                    "the {} exited with {status} on SIGTERM:\n{}",
                    self.name,
                    self.stderr()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {} did not exit within 30 s of SIGTERM:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the readers saw, with the wall-clock ns at which each record arrived.
#[derive(Debug, Default)]
struct Seen {
    /// event id -> (event, received at)
    events: HashMap<String, (Event, i64)>,
    /// (topic, alert, received at)
    alerts: Vec<(String, Alert, i64)>,
}

/// Reads `topics` (every partition from the beginning) on a thread of its
/// own, so arrival times do not wait for anything else in the test.
fn reader(
    bootstrap: &str,
    topics: Vec<(String, i32)>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut config = bus::consumer_config(bootstrap, &format!("latency-reader-{}", now_ns()));
    config.set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().expect("create reader");
    let mut assignment = TopicPartitionList::new();
    for (topic, partitions) in &topics {
        for partition in 0..*partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign reader");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(first) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            // Everything the same fetch response brought is in librdkafka's
            // queue already: it all arrived now, an event and its alert
            // included (the order within one response says nothing).
            let received = now_ns();
            let mut next = Some(first);
            while let Some(result) = next {
                let message = match result {
                    Ok(message) => message,
                    Err(e) => {
                        // Transient (the client retries); the assertions on
                        // what arrived decide the outcome.
                        eprintln!("latency reader: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                };
                let payload = message.payload().unwrap_or_default();
                let mut seen = seen.lock().expect("seen lock");
                if let Ok(event) = decode::<Event>(payload) {
                    seen.events
                        .insert(event.event_id.clone(), (event, received));
                } else {
                    let alert: Alert = serde_json::from_slice(payload).unwrap_or_else(|e| {
                        panic!("{} carries a record that is no alert: {e}", message.topic())
                    });
                    seen.alerts
                        .push((message.topic().to_owned(), alert, received));
                }
                drop(seen);
                next = consumer.poll(Duration::ZERO);
            }
        }
    })
}

/// One probe access's figures, in milliseconds.
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    /// Kernel timestamp → alert received.
    pub total_ms: f64,
    /// Kernel timestamp → event received from the events topic.
    pub collector_ms: f64,
    /// Event received → alert received.
    pub detector_ms: f64,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub probes: Vec<Probe>,
    /// Probe paths accessed that no alert names.
    pub missing: Vec<String>,
    /// Probe paths alerted more than once.
    pub duplicated: Vec<String>,
    /// Alerts on the review topic (there should be none: learning is off).
    pub review: usize,
    /// Alerts whose evidence time disagrees with the event's kernel time.
    pub evidence_mismatches: Vec<String>,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Probe accesses measured.
    pub accesses: usize,
    /// Pause between two accesses, so each is measured on its own rather
    /// than queued behind the previous one.
    pub spacing: Duration,
}

fn probe_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("probe-{name}"))
}

/// Runs the whole pipeline and measures every probe access.
pub fn measure(plan: &Plan) -> Report {
    require_root();
    let collector_bin = collector_binary();
    let detector_bin = PathBuf::from(env!("CARGO_BIN_EXE_detector"));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");

    let broker = TestBroker::start();
    let (events, alerts, review, audit, dlq) = runtime.block_on(async {
        (
            broker.topic("kp.events", 1).await,
            broker.topic("kp.alerts", 1).await,
            broker.topic("kp.review", 1).await,
            broker.topic("kp.audit", 1).await,
            broker.topic("kp.dlq", 1).await,
        )
    });

    let state = tempfile::tempdir().expect("temp state dir");
    let rules = tempfile::tempdir().expect("temp rules dir");
    std::fs::write(rules.path().join("kernel-probe-open.sql"), PROBE_RULE).expect("write rule");
    let watched = tempfile::tempdir().expect("temp watched dir");
    let names: Vec<String> = (0..plan.accesses).map(|i| format!("{i:05}")).collect();
    // Files are written before the collector starts: their creation is not
    // part of the measurement.
    for name in names.iter().map(String::as_str).chain(["warmup"]) {
        std::fs::write(probe_path(watched.path(), name), b"fake patient record\n")
            .expect("write probe file");
    }

    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let state_dir = state.path().display().to_string();
    let rules_dir = rules.path().display().to_string();
    let detector = Service::start(
        "detector",
        &detector_bin,
        &args(&[
            "run",
            "--brokers",
            broker.bootstrap(),
            "--group",
            &format!("{events}-group"),
            "--events-topic",
            &events,
            "--alerts-topic",
            &alerts,
            "--review-topic",
            &review,
            "--audit-topic",
            &audit,
            "--dlq-topic",
            &dlq,
            "--state-dir",
            &state_dir,
            "--rules-dir",
            &rules_dir,
            "--learning-days",
            "0",
        ]),
        "Partition assigned",
    );
    assert!(
        !detector.stderr().contains("Rule refused"),
        "the detector refused the probe rule:\n{}",
        detector.stderr()
    );
    let collector = Service::start(
        "collector",
        &collector_bin,
        &args(&[
            "--brokers",
            broker.bootstrap(),
            "--topic",
            &events,
            "--watch",
            &watched.path().display().to_string(),
        ]),
        "Collecting",
    );

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(
        broker.bootstrap(),
        vec![
            (events.clone(), 1),
            (alerts.clone(), 1),
            (review.clone(), 1),
        ],
        Arc::clone(&seen),
        Arc::clone(&stop),
    );

    let alerted_paths = |seen: &Seen| -> HashMap<String, usize> {
        let mut paths = HashMap::new();
        for (_, alert, _) in &seen.alerts {
            for related in &alert.finding_info.related_events {
                if let Some(path) = seen
                    .events
                    .get(&related.uid)
                    .and_then(|(e, _)| e.path.clone())
                {
                    *paths.entry(path).or_insert(0) += 1;
                }
            }
        }
        paths
    };

    // Warm up until the whole path answers: the first alert proves the
    // collector, the broker and the detector's consumer are all live.
    let warmup = probe_path(watched.path(), "warmup").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::fs::read(&warmup).expect("read warm-up probe");
        std::thread::sleep(Duration::from_millis(300));
        let (live, events_seen, alerts_seen) = {
            let seen = seen.lock().expect("seen lock");
            (
                alerted_paths(&seen).contains_key(&warmup),
                seen.events.len(),
                seen.alerts.len(),
            )
        };
        if live {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no alert for the warm-up probe {warmup} within 60 s; seen {events_seen} events, \
             {alerts_seen} alerts\ncollector:\n{}\ndetector:\n{}",
            collector.stderr(),
            detector.stderr()
        );
    }

    let wanted: Vec<String> = names
        .iter()
        .map(|name| probe_path(watched.path(), name).display().to_string())
        .collect();
    for path in &wanted {
        std::fs::read(path).expect("read probe");
        std::thread::sleep(plan.spacing);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let seen = seen.lock().expect("seen lock");
            let alerted = alerted_paths(&seen);
            wanted.iter().all(|p| alerted.contains_key(p))
        };
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Late duplicates would show within this pause.
    std::thread::sleep(Duration::from_millis(500));
    collector.stop();
    detector.stop();
    stop.store(true, Ordering::Relaxed);
    reading.join().expect("reader thread");

    let seen = seen.lock().expect("seen lock");
    let alerted = alerted_paths(&seen);
    let mut report = Report {
        probes: Vec::new(),
        missing: wanted
            .iter()
            .filter(|p| !alerted.contains_key(*p))
            .cloned()
            .collect(),
        duplicated: wanted
            .iter()
            .filter(|p| alerted.get(*p).is_some_and(|n| *n > 1))
            .cloned()
            .collect(),
        review: seen.alerts.iter().filter(|(t, _, _)| *t == review).count(),
        evidence_mismatches: Vec::new(),
    };
    let ms = |ns: i64| ns as f64 / 1e6;
    for (topic, alert, received) in &seen.alerts {
        if *topic != alerts || alert.unmapped.vigil.rule_id != PROBE_RULE_ID {
            continue;
        }
        for related in &alert.finding_info.related_events {
            let Some((event, event_received)) = seen.events.get(&related.uid) else {
                continue;
            };
            let Some(path) = event.path.as_deref() else {
                continue;
            };
            if !wanted.iter().any(|w| w == path) || event.kind != Kind::Open {
                continue;
            }
            if related.time != event.time_unix_ns.div_euclid(1_000_000) {
                report.evidence_mismatches.push(format!(
                    "{path}: evidence time {} ms, event kernel time {} ns",
                    related.time, event.time_unix_ns
                ));
            }
            report.probes.push(Probe {
                path: path.to_owned(),
                total_ms: ms(received - event.time_unix_ns),
                collector_ms: ms(event_received - event.time_unix_ns),
                detector_ms: ms(received - event_received),
            });
        }
    }
    report
}

/// The value at quantile `q` (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A table of p50/p95/p99/max per leg.
pub fn summary(probes: &[Probe]) -> String {
    let mut lines = vec![format!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "leg (ms)", "min", "p50", "p95", "p99", "max"
    )];
    type Leg = fn(&Probe) -> f64;
    let legs: [(&str, Leg); 3] = [
        ("syscall -> alert received", |p| p.total_ms),
        ("syscall -> event received", |p| p.collector_ms),
        ("event received -> alert received", |p| p.detector_ms),
    ];
    for (name, leg) in legs {
        let mut values: Vec<f64> = probes.iter().map(leg).collect();
        values.sort_by(f64::total_cmp);
        lines.push(format!(
            "{name:<32} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            values.first().copied().unwrap_or(f64::NAN),
            quantile(&values, 0.50),
            quantile(&values, 0.95),
            quantile(&values, 0.99),
            values.last().copied().unwrap_or(f64::NAN),
        ));
    }
    lines.join("\n")
}
