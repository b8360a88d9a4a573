//! OpenTelemetry metrics: `detector run --otlp-endpoint` exports its
//! counters over OTLP/HTTP while it runs and once more as it stops, and
//! the figures match what it really published. An export that fails costs
//! the detector nothing but a warning.
//!
//! The receiver is `vigil_schemas::otlp_receiver` (an OpenTelemetry
//! Collector cannot be installed here); the exporter, the protocol and the
//! detector are the real ones.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{MONDAY, file_event, produce_events, produce_raw, read_topic};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use vigil_schemas::otlp_receiver::OtlpReceiver;
use vigil_schemas::testkit::{TestBroker, signal};
use vigil_schemas::{Event, Kind};

const SERVICE: &str = "vigil-detector";

/// A finding for every open of alice's files, so findings are certain.
const ALICE_RULE: &str = "\
-- id: alice-opened-phi
-- title: Alice opened a PHI file
-- severity: low
-- hipaa: 164.312(b)
-- mitre: T1005
-- version: 1
SELECT * FROM events
WHERE is_phi AND kind = 'open' AND errno = 0 AND path LIKE '/srv/phi/alice/%'
";

/// What every test here starts from: a private broker with the
/// detector's topics, a state directory, [`ALICE_RULE`], and an OTLP
/// receiver.
struct Rig {
    broker: TestBroker,
    topics: common::Topics,
    state: tempfile::TempDir,
    rules: tempfile::TempDir,
    receiver: OtlpReceiver,
}

impl Rig {
    async fn start(events_partitions: i32) -> Rig {
        let broker = TestBroker::start();
        let topics = common::topics(&broker, events_partitions).await;
        let rules = tempfile::tempdir().expect("rules dir");
        std::fs::write(rules.path().join("alice-opened-phi.sql"), ALICE_RULE).expect("write rule");
        Rig {
            broker,
            topics,
            state: tempfile::tempdir().expect("state dir"),
            rules,
            receiver: OtlpReceiver::start(),
        }
    }

    /// `detector run` exporting to the receiver every 300 ms.
    fn spawn_detector(&self, extra: &[&str]) -> Child {
        self.spawn_detector_to(&self.receiver.base_url(), extra)
    }

    fn spawn_detector_to(&self, otlp_endpoint: &str, extra: &[&str]) -> Child {
        common::detector_command(
            &self.broker,
            &self.topics,
            self.state.path(),
            self.rules.path(),
        )
        .args(extra)
        .args(["--instance-id", "detector-metrics-0"])
        .args(["--otlp-endpoint", otlp_endpoint])
        .args(["--otlp-interval-ms", "300"])
        .env("VIGIL_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start detector")
    }
}

/// Polls `done` every 50 ms until it holds or `timeout` has passed; the
/// caller asserts on what it then finds.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the detector with SIGTERM and returns what it logged.
async fn stop(mut detector: Child) -> String {
    let pid = detector.id().expect("detector pid") as i32;
    let mut stderr = detector.stderr.take().expect("piped stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    signal(pid as u32, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), detector.wait())
        .await
        .expect("the detector stops within 60 s of SIGTERM")
        .expect("wait for the detector");
    let log = log.await.expect("log reader");
    assert!(
        status.success(),
        "detector exited with {status}; log:\n{log}"
    );
    log
}

/// 120 opens of PHI by two users, then one record that is not an event.
fn workload() -> Vec<Event> {
    (0..120)
        .map(|i| {
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            file_event(
                user,
                Kind::Open,
                &format!("/srv/phi/{user}/{i}.json"),
                MONDAY + 2 * 3_600_000_000_000 + i * 1_000_000_000,
                i,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exported_as_they_grow_and_once_more_at_shutdown() {
    let rig = Rig::start(2).await;
    let Rig {
        broker,
        topics,
        receiver,
        ..
    } = &rig;

    let events = workload();
    produce_events(broker, &topics.events, &events).await;
    produce_raw(broker, &topics.events, "mallory", b"not an Avro event").await;
    let detector = rig.spawn_detector(&[]);

    // While it runs: the periodic export brings the counts up to all the
    // records, without a shutdown.
    let processed = receiver.wait_for_sum(
        SERVICE,
        "vigil.detector.events",
        events.len() as f64,
        Duration::from_secs(90),
    );
    assert_eq!(
        processed,
        Some(events.len() as f64),
        "vigil.detector.events while running; exported metrics: {:?}",
        receiver.metric_names(SERVICE)
    );
    let dead = receiver.wait_for_sum(
        SERVICE,
        "vigil.detector.dead_letters",
        1.0,
        Duration::from_secs(10),
    );
    assert_eq!(dead, Some(1.0), "the record that is not an event");

    let exports_before_stop = receiver.exports();
    let log = stop(detector).await;
    assert!(
        receiver.exports() > exports_before_stop,
        "no export at shutdown; log:\n{log}"
    );
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());

    // The exported figures are what reached the topics.
    let audit = read_topic(
        broker,
        &topics.audit,
        events.len(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    let findings = read_topic(
        broker,
        &topics.review,
        1,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await
    .len()
        + read_topic(
            broker,
            &topics.alerts,
            0,
            Duration::from_secs(1),
            Duration::from_secs(2),
        )
        .await
        .len();
    let dlq = read_topic(
        broker,
        &topics.dlq,
        1,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await;
    let sum = |name| receiver.latest_sum(SERVICE, name).unwrap_or(-1.0);
    assert_eq!(sum("vigil.detector.audit_records"), audit.len() as f64);
    assert!(findings > 0, "alice's opens made no finding");
    assert_eq!(
        sum("vigil.detector.alerts") + sum("vigil.detector.review_items"),
        findings as f64
    );
    assert_eq!(sum("vigil.detector.dead_letters"), dlq.len() as f64);
    assert!(sum("vigil.detector.batches") >= 1.0);
    // Counters that never grew are exported at 0, not left out.
    assert_eq!(sum("vigil.detector.rule_errors"), 0.0);
    assert_eq!(sum("vigil.detector.recreated_partitions"), 0.0);
    assert!(sum("vigil.detector.process.time") > 0.0);
    assert_eq!(
        receiver.resource(SERVICE, "service.instance.id").as_deref(),
        Some("detector-metrics-0")
    );
    assert!(
        log.contains("Exporting metrics"),
        "the log does not say where metrics go:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_costs_a_warning_and_nothing_else() {
    let rig = Rig::start(1).await;
    let Rig { broker, topics, .. } = &rig;
    // A port nothing listens on: bound, then let go.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };

    let events = workload();
    produce_events(broker, &topics.events, &events).await;
    let detector = rig.spawn_detector_to(&format!("http://127.0.0.1:{closed}"), &[]);
    let audit = read_topic(
        broker,
        &topics.audit,
        events.len(),
        Duration::from_secs(2),
        Duration::from_secs(90),
    )
    .await;
    let log = stop(detector).await;
    assert_eq!(audit.len(), events.len(), "log:\n{log}");
    assert_eq!(
        log.matches("Metrics export failed").count(),
        1,
        "one warning for the whole outage, not one per interval; log:\n{log}"
    );
    assert!(log.contains(&format!("127.0.0.1:{closed}")), "{log}");
}

/// While consumed records wait for their batch (a 4 s linger), the lag
/// gauge counts them, from the end offsets the broker reports; once they
/// are processed it falls to 0. (That no figure, rather than a false 0,
/// is given before the broker has reported any end is the unit test's, in
/// `pipeline.rs`: here the first statistics may come before the first
/// export or after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_lag_counts_records_not_yet_processed() {
    const LAG: &str = "vigil.detector.consumer_lag";
    let rig = Rig::start(2).await;
    let Rig {
        broker,
        topics,
        receiver,
        ..
    } = &rig;

    let events = workload();
    produce_events(broker, &topics.events, &events).await;
    let detector = rig.spawn_detector(&["--linger-ms", "4000", "--batch-rows", "100000"]);
    let waiting = events.len() as f64;
    wait_until(Duration::from_secs(90), || {
        receiver.history(SERVICE, LAG).contains(&waiting)
    })
    .await;
    let processed = receiver.wait_for_sum(
        SERVICE,
        "vigil.detector.events",
        waiting,
        Duration::from_secs(30),
    );
    // The gauge catches up within a housekeeping tick and an export.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = receiver.history(SERVICE, LAG);
    let log = stop(detector).await;
    assert_eq!(processed, Some(waiting), "log:\n{log}");
    assert!(
        history.contains(&waiting),
        "the lag never showed the {waiting} records waiting for their batch: {history:?}; log:\n{log}"
    );
    assert!(
        history.iter().all(|&lag| lag <= waiting),
        "more lag than records: {history:?}"
    );
    assert_eq!(
        history.last(),
        Some(&0.0),
        "the lag after every record was processed: {history:?}"
    );
    assert!(
        log.contains("consumer_lag=0"),
        "the shutdown does not log the lag; log:\n{log}"
    );
    // stderr is a pipe here, as under systemd: plain text, no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "terminal escape codes in a log that is not a terminal:\n{log}"
    );
}

/// While the detector waits for the broker to acknowledge a batch's
/// outputs, its own loop records nothing; the wait gauge is worked out at
/// each export, so it grows through the wait, and it is back at 0 once the
/// broker answers. The broker is frozen (SIGSTOP) after the detector has
/// fetched a batch (the exported lag counts it: the broker reports the
/// partition's new end in the answer that carries the records) and before
/// the batch's 5 s linger ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_the_broker_shows_in_the_wait_gauge_while_it_lasts() {
    const WAIT: &str = "vigil.detector.broker_wait";
    let rig = Rig::start(1).await;
    let Rig {
        broker,
        topics,
        receiver,
        ..
    } = &rig;
    let Some(broker_pid) = broker.pid() else {
        eprintln!(
            "skipped: VIGIL_TEST_BROKER names a shared broker, which this test would have to freeze"
        );
        return;
    };
    let detector = rig.spawn_detector(&["--linger-ms", "5000"]);

    // The first event opens the partition's audit chain, which reads the
    // audit topic; the other four are the batch the frozen broker holds up.
    let events = workload();
    produce_events(broker, &topics.events, &events[..1]).await;
    let first = read_topic(
        broker,
        &topics.audit,
        1,
        Duration::from_secs(1),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(first.len(), 1, "the first event's audit record");
    produce_events(broker, &topics.events, &events[1..5]).await;
    let lag = || receiver.history(SERVICE, "vigil.detector.consumer_lag");
    wait_until(Duration::from_secs(30), || lag().last() == Some(&4.0)).await;
    let fetched = lag();
    signal(broker_pid, "STOP");
    let waited = |history: &[f64]| history.iter().copied().fold(0.0, f64::max);
    wait_until(Duration::from_secs(30), || {
        waited(&receiver.history(SERVICE, WAIT)) >= 2.0
    })
    .await;
    let during = receiver.history(SERVICE, WAIT);
    signal(broker_pid, "CONT");

    let processed = receiver.wait_for_sum(
        SERVICE,
        "vigil.detector.events",
        5.0,
        Duration::from_secs(30),
    );
    wait_until(Duration::from_secs(30), || {
        receiver.history(SERVICE, WAIT).last() == Some(&0.0)
    })
    .await;
    let after = receiver.history(SERVICE, WAIT);
    let log = stop(detector).await;
    assert_eq!(
        fetched.last(),
        Some(&4.0),
        "the detector never held the four records before the broker was frozen: lag {fetched:?}; log:\n{log}"
    );
    assert!(
        waited(&during) >= 2.0,
        "the gauge never showed the wait on the frozen broker: {during:?}; log:\n{log}"
    );
    // It rose export by export (300 ms apart): no tick of the detector's
    // set it, since none ran.
    let rising = during
        .windows(2)
        .filter(|w| w[1] > w[0] && w[0] > 0.0)
        .count();
    assert!(
        rising >= 2,
        "the wait was not worked out afresh at each export: {during:?}"
    );
    assert_eq!(processed, Some(5.0), "log:\n{log}");
    assert_eq!(
        after.last(),
        Some(&0.0),
        "the gauge once the broker answered: {after:?}"
    );
    assert!(
        log.contains("Exporting metrics"),
        "the log does not say where metrics go:\n{log}"
    );
}
