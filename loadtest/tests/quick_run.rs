//! A small, quick load-test run against a real tansu broker and the real
//! detector binary: every scenario is injected once and must be caught,
//! every canary must come back as an alert, and the report files must be
//! written. (The full-size run with its latency targets is the load-test
//! job in the README, not a test.)

use std::path::PathBuf;
use std::time::Duration;

use vigil_loadtest::drive::{Options, run};
use vigil_schemas::testkit::TestBroker;

/// The detector binary `cargo test --workspace` built next to this test's
/// directory (`target/debug/detector`).
fn detector_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let debug_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    let detector = debug_dir.join("detector");
    assert!(
        detector.exists(),
        "{} is missing: build it with `cargo build -p vigil-detector` (cargo test --workspace does)",
        detector.display()
    );
    detector
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_hospital_run_catches_every_scenario_and_times_canaries() {
    let broker = TestBroker::start();
    let out = tempfile::tempdir().expect("report dir");
    let options = Options {
        brokers: broker.bootstrap().to_owned(),
        detector: detector_binary(),
        // Read at run time: the shared build cache may hold this binary
        // from a checkout at another path.
        rules: PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
            .join("../sql/rules"),
        out: out.path().to_owned(),
        seed: 7,
        people: 24,
        app_services: 8,
        history_days: 10,
        learning_days: 1,
        attack_days: 6,
        attack_rounds: 1,
        bulk_records: 300,
        evaluate_from_day: 3,
        live_seconds: 4.0,
        rate: 400.0,
        partitions: 6,
        canary_rate: 20.0,
        tick: Duration::from_millis(10),
        catch_up_timeout: Duration::from_secs(240),
        keep_state: false,
    };
    let report = match run(&options).await {
        Ok(report) => report,
        Err(e) => panic!("load test failed: {e:#}\nbroker log:\n{}", broker.log()),
    };
    println!("{}", report.summary());

    assert_eq!(report.injections.len(), 7, "one injection per scenario");
    for scenario in &report.scenarios {
        assert_eq!(scenario.injected, 1, "{scenario:?}");
        assert_eq!(
            scenario.detected + scenario.review_only,
            1,
            "scenario not caught: {scenario:?}\n{}",
            report.summary()
        );
    }
    assert!(report.history_events > 10_000, "{}", report.history_events);
    assert!(report.live.produced > 0);
    assert!(report.live.canaries_sent > 0);
    assert_eq!(
        report.live.canaries_alerted, report.live.canaries_sent,
        "every canary comes back as an alert"
    );
    assert_eq!(report.latency.samples, report.live.canaries_sent);
    assert!(report.latency.p50_ms > 0.0 && report.latency.p50_ms <= report.latency.max_ms);
    assert_eq!(
        report.latency_to_ack.samples, report.live.canaries_sent,
        "every canary's acknowledgement is timed"
    );
    assert!(
        report.latency_to_ack.p50_ms > 0.0 && report.latency_to_ack.p50_ms < report.latency.p50_ms,
        "the broker acknowledges a canary before its alert is read: {}",
        report.summary()
    );
    assert_eq!(report.live.unexpected_alerts, 0, "{}", report.summary());
    assert_eq!(report.dead_letters, 0);

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    assert_eq!(json["seed"], 7);
    assert!(json["latency"]["p99_ms"].as_f64().is_some());
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).expect("latency.svg");
    assert!(svg.starts_with("<svg"));
    let text = std::fs::read_to_string(out.path().join("report.txt")).expect("report.txt");
    assert!(text.contains("recall"));
    // The detector's state is deleted with the run; its log stays.
    let runs: Vec<_> = std::fs::read_dir(out.path())
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].join("detector.log").exists());
    assert!(!runs[0].join("state").exists());
}
