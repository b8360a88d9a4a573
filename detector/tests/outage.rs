//! A broker outage while `detector run` is up: the detector rides it out
//! (its consumer reports lost connections, which librdkafka retries) and
//! processes what arrives after the broker is back, exactly once.

mod common;

use std::time::Duration;

use common::{MONDAY, file_event, produce_events, read_topic};
use rdkafka::Message;
use vigil_detector::audit_chain::Verifier;
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{AuditRecord, Kind, decode};

const SETTLE: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(60);

fn reads(from: i64, count: i64) -> Vec<vigil_schemas::Event> {
    (from..from + count)
        .map(|i| {
            file_event(
                "alice",
                Kind::Open,
                &format!("/srv/phi/{i}.json"),
                MONDAY + 9 * 3_600_000_000_000 + i * 1_000_000_000,
                i,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_rides_out_a_broker_restart() {
    let mut broker = TestBroker::start_durable();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let config = common::config(&broker, &topics, state.path(), rules.path());
    let (shutdown, running) = common::spawn_detector(config, "detector starts").await;

    produce_events(&broker, &topics.events, &reads(0, 5)).await;
    let audit = read_topic(&broker, &topics.audit, 5, SETTLE, TIMEOUT).await;
    assert_eq!(
        audit.len(),
        5,
        "one audit record per PHI read before the outage"
    );

    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !running.is_finished(),
        "the detector ended while the broker was down: {:?}",
        running.await
    );
    broker.restart();
    produce_events(&broker, &topics.events, &reads(5, 5)).await;

    let audit = read_topic(&broker, &topics.audit, 10, SETTLE, TIMEOUT).await;
    assert_audited_once(&audit, 10, &broker);

    assert!(
        !running.is_finished(),
        "the detector ended after the broker came back: {:?}",
        running.await
    );
    shutdown.cancel();
    let counters = running.await.expect("task").expect("clean shutdown");
    assert_eq!(counters.events, 10);
    assert_eq!(counters.dead_letters, 0);
}

/// Audits `audit` as `count` records of source offsets `0..count`, each
/// once, in order, on a chain that verifies.
fn assert_audited_once(audit: &[rdkafka::message::OwnedMessage], count: i64, broker: &TestBroker) {
    let mut records: Vec<(i64, AuditRecord)> = audit
        .iter()
        .map(|m| {
            let record: AuditRecord =
                decode(m.payload().expect("payload")).expect("audit record decodes");
            (m.offset(), record)
        })
        .collect();
    records.sort_by_key(|(offset, _)| *offset);
    let sources: Vec<i64> = records.iter().map(|(_, r)| r.source_offset).collect();
    assert_eq!(
        sources,
        (0..count).collect::<Vec<i64>>(),
        "every event audited once, in order; broker log:\n{}",
        broker.log()
    );
    let mut verifier = Verifier::default();
    for (offset, record) in records {
        verifier.check(record, &format!("offset {offset}"));
    }
    assert_eq!(verifier.first_broken(), None, "the chain verifies");
}

/// Longer than the 30 s message timeout the output producers used to have.
const LONG_OUTAGE: Duration = Duration::from_secs(36);

/// Outputs published while the broker is down wait for it, however long;
/// a stop during an outage ends the service within its grace without
/// committing what the broker never took; and a start during an outage
/// waits for the broker. Each event is audited once through all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_wait_out_a_long_outage_and_a_stop_during_one_loses_nothing() {
    let mut broker = TestBroker::start_durable();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let mut config = common::config(&broker, &topics, state.path(), rules.path());
    // The detector holds consumed records for 3 s before processing them,
    // so the broker can be stopped between consuming and publishing.
    config.linger = Duration::from_secs(3);
    let (shutdown, running) = common::spawn_detector(config.clone(), "detector starts").await;

    // The first event opens the partition's audit chain (which reads the
    // audit topic, and so would wait for the broker itself); the next four
    // are consumed, and the broker stopped before they go out.
    produce_events(&broker, &topics.events, &reads(0, 1)).await;
    let audit = read_topic(&broker, &topics.audit, 1, SETTLE, TIMEOUT).await;
    assert_audited_once(&audit, 1, &broker);
    produce_events(&broker, &topics.events, &reads(1, 4)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.stop();
    tokio::time::sleep(LONG_OUTAGE).await;
    assert!(
        !running.is_finished(),
        "the detector ended while its outputs waited for the broker: {:?}",
        running.await
    );
    broker.restart();
    let audit = read_topic(&broker, &topics.audit, 5, SETTLE, TIMEOUT).await;
    assert_audited_once(&audit, 5, &broker);

    // Once the detector is consuming again (it rejoins its group after the
    // outage), a batch is consumed and the broker stopped before it goes out.
    produce_events(&broker, &topics.events, &reads(5, 1)).await;
    let audit = read_topic(&broker, &topics.audit, 6, SETTLE, TIMEOUT).await;
    assert_audited_once(&audit, 6, &broker);
    produce_events(&broker, &topics.events, &reads(6, 4)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.stop();
    // Stopped after the batch was published to a broker that is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the detector stops within its shutdown grace")
        .expect("task");
    match stopped {
        Err(vigil_detector::Error::Unacknowledged { batches, .. }) => {
            assert!(batches >= 1, "{batches} batches")
        }
        other => panic!("expected a stop with unacknowledged outputs, got {other:?}"),
    }

    let starting = tokio::spawn(vigil_detector::pipeline::Pipeline::start(config));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !starting.is_finished(),
        "a start during the outage waits for the broker: {:?}",
        starting.await
    );
    broker.restart();
    let pipeline = tokio::time::timeout(TIMEOUT, starting)
        .await
        .expect("the detector starts once the broker is back")
        .expect("task")
        .expect("detector starts");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));
    let audit = read_topic(&broker, &topics.audit, 10, SETTLE, TIMEOUT).await;
    assert_audited_once(&audit, 10, &broker);
    shutdown.cancel();
    let counters = running.await.expect("task").expect("clean shutdown");
    // The 4 uncommitted events, and event 5 too if its state was still
    // deferred (checkpoint interval) when the first detector gave up.
    assert!(
        (4..=5).contains(&counters.events),
        "the restarted detector processed the uncommitted batch: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_tail_rides_out_a_broker_restart() {
    let mut broker = TestBroker::start_durable();
    let topic = broker.topic("outage.tail", 1).await;
    let tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_detector"))
        .args([
            "tail",
            "--topic",
            &topic,
            "--from-beginning",
            "--count",
            "2",
        ])
        .args(["--brokers", broker.bootstrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("detector tail starts");

    produce_events(&broker, &topic, &reads(0, 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    produce_events(&broker, &topic, &reads(1, 1)).await;

    let output = tokio::time::timeout(TIMEOUT, tail.wait_with_output())
        .await
        .expect("detector tail exits once it has read 2 records")
        .expect("detector tail runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        output.status
    );
    assert_eq!(stdout.lines().count(), 2, "both events:\n{stdout}");
    assert!(
        stderr.contains("Consumer error; librdkafka retries"),
        "the outage is reported:\n{stderr}"
    );
}
