//! Detector hot path without Kafka: decode → baseline update → 20 SQL rules
//! → alerts and audit records → state commit to RocksDB, on one core.
//!
//! Run: `cargo bench -p vigil-detector --bench processor`
//! Prints events/s at batch size 1024 and per-batch latency (p50, p99) at
//! batch sizes 1, 64 and 1024, with baselines and offsets checkpointed once
//! a second (the service's default) and, at 1024, with every batch. The
//! default case at 1024 runs three times.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_detector::processor::{Input, Processor};
use vigil_detector::roles::RoleFile;
use vigil_detector::rules::RuleSet;
use vigil_detector::state::RocksStore;
use vigil_schemas::{Event, Kind, encode};

/// The service's allocator (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MONDAY: i64 = 1_795_392_000_000_000_000;

fn rule(dir: &Path, id: &str, severity: &str, window: Option<&str>, predicate: &str) {
    let window = window
        .map(|w| format!("-- window: {w}\n"))
        .unwrap_or_default();
    let text = format!(
        "-- id: {id}\n-- title: bench {id}\n-- severity: {severity}\n-- hipaa: 164.312(b)\n-- mitre: T1005\n-- version: 1\n{window}SELECT * FROM events WHERE {predicate}\n"
    );
    std::fs::write(dir.join(format!("{id}.sql")), text).expect("write rule");
}

/// Twenty rules of the shapes analysts write: thresholds on baseline
/// columns, novelty, string matches, windowed counts.
fn twenty_rules(dir: &Path) {
    // Read at run time: the shared build cache may hold this binary from a
    // checkout at another path.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo bench");
    let repo_rules = Path::new(&manifest_dir).join("../sql/rules");
    for entry in std::fs::read_dir(&repo_rules).expect("sql/rules") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "sql") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy rule");
        }
    }
    let mut n = std::fs::read_dir(dir).expect("dir").count();
    let shapes: [(&str, Option<&str>, &str); 9] = [
        (
            "high",
            Some("15m"),
            "is_phi AND user_z_volume > 6 AND hour_rarity > 0.9",
        ),
        (
            "medium",
            None,
            "kind = 'exec' AND first_seen_exe AND parent_exe LIKE '%postgres%'",
        ),
        (
            "high",
            None,
            "kind = 'connect' AND first_seen_destination AND role = 'backup'",
        ),
        (
            "medium",
            Some("1h"),
            "is_phi AND first_seen_file_class AND NOT learning",
        ),
        ("low", None, "errno = 13 AND is_phi"),
        ("high", Some("15m"), "user_phi_bytes_read_15m > 50000000"),
        (
            "medium",
            None,
            "kind IN ('setuid', 'capset') AND target_id = 0 AND login_uid IS NOT NULL",
        ),
        (
            "high",
            Some("15m"),
            "is_phi AND role_z_volume > 8 AND host_z_volume > 3",
        ),
        ("low", None, "kind = 'rename' AND new_path LIKE '/tmp/%'"),
    ];
    let mut i = 0;
    while n < 20 {
        let (severity, window, predicate) = shapes[i % shapes.len()];
        rule(
            dir,
            &format!("bench-{i:02}"),
            severity,
            window,
            &format!("{predicate} AND seq >= {i}"),
        );
        i += 1;
        n += 1;
    }
}

/// A hospital-like mix: 300 principals on 12 hosts, mostly PHI opens and
/// reads, some execs and connects; 1 ms apart.
fn events(count: usize) -> Vec<Input> {
    (0..count)
        .map(|i| {
            let user = i % 300;
            let kind = match i % 10 {
                0..=4 => Kind::Open,
                5..=7 => Kind::Read,
                8 => Kind::Exec,
                _ => Kind::Connect,
            };
            let is_file = matches!(kind, Kind::Open | Kind::Read);
            let event = Event {
                event_id: format!("h{}-{i}", user % 12),
                host: format!("ehr-{:02}", user % 12),
                seq: i as i64,
                time_unix_ns: MONDAY + 9 * 3_600_000_000_000 + i as i64 * 1_000_000,
                kind,
                pid: 1000 + user as i32,
                ppid: 1,
                tid: 1000 + user as i32,
                uid: 1000 + user as i64,
                euid: 1000 + user as i64,
                gid: 1000,
                login_uid: Some(1000 + user as i64),
                user_name: Some(format!("user{user}")),
                login_name: Some(format!("user{user}")),
                comm: "ehr-client".into(),
                exe: Some("/usr/bin/ehr-client".into()),
                parent_exe: Some("/usr/bin/bash".into()),
                cgroup_id: 1,
                path: is_file.then(|| format!("/srv/phi/ward{}/p{}.json", user % 7, i % 5000)),
                flags: is_file.then_some(0),
                dst_addr: (kind == Kind::Connect).then(|| "10.1.2.3".into()),
                dst_port: (kind == Kind::Connect).then_some(5432),
                bytes: (kind == Kind::Read).then_some(8192),
                ..Event::default()
            };
            Input {
                partition: (user % 6) as i32,
                offset: i as i64,
                key: Some(event.principal().into_bytes()),
                payload: Some(encode(&event)),
            }
        })
        .collect()
}

async fn processor(state: &Path, rules: &Path, checkpoint: Duration) -> Processor {
    let (rule_set, errors) = RuleSet::load_dir(rules).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rule_set.len(), 20, "twenty rules");
    let store = Arc::new(RocksStore::open(state).expect("rocksdb"));
    let mut processor = Processor::new(
        store,
        rule_set,
        RoleFile::open(None).expect("roles"),
        7,
        "bench",
    )
    .with_checkpoint_interval(checkpoint);
    for partition in 0..6 {
        processor.open_chain(partition, None).expect("open chain");
    }
    processor
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let rules = tempfile::tempdir().expect("rules dir");
        twenty_rules(rules.path());
        let inputs = events(200_000);

        println!("detector hot path, one core: decode + baselines + 20 rules + audit + RocksDB commit");
        // The service's default checkpoint interval (1 s), and for
        // comparison baselines and offsets written with every batch.
        // The headline case runs three times: on this shared VM one run
        // can differ from the next by half; quote the median.
        let runs = [
            (1024usize, Duration::from_secs(1)),
            (1024, Duration::from_secs(1)),
            (1024, Duration::from_secs(1)),
            (1024, Duration::ZERO),
            (64, Duration::from_secs(1)),
            (1, Duration::from_secs(1)),
        ];
        for (batch, checkpoint) in runs {
            let state = tempfile::tempdir().expect("state dir");
            let mut processor = processor(state.path(), rules.path(), checkpoint).await;
            let total = match batch {
                1 => 3_000,
                64 => 50_000,
                _ => inputs.len(),
            };
            // Warm up on a first slice, then measure.
            let warm = total / 10;
            let mut latencies = Vec::new();
            let mut alerts = 0;
            let mut measured_events = 0;
            let started = Instant::now();
            let mut measured_from = started;
            for (n, chunk) in inputs[..total].chunks(batch).enumerate() {
                if n * batch == warm {
                    measured_from = Instant::now();
                    latencies.clear();
                    measured_events = 0;
                }
                let t = Instant::now();
                let output = processor.process(chunk.to_vec(), 0).await.expect("process");
                alerts += output.alerts.len() + output.review.len();
                processor.commit(output.state).expect("commit");
                latencies.push(t.elapsed());
                measured_events += chunk.len();
            }
            let elapsed = measured_from.elapsed();
            latencies.sort();
            println!(
                "batch {batch:>5}, checkpoint {:>6}: {:>9.0} events/s   per batch p50 {:>8.3} ms  p99 {:>8.3} ms   ({measured_events} events measured, {alerts} alerts)",
                format!("{}ms", checkpoint.as_millis()),
                measured_events as f64 / elapsed.as_secs_f64(),
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            );
        }
    });
}
