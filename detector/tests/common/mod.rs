//! Fixtures for the detector's integration tests: topics on a real tansu
//! broker, events, rule directories, and reading outputs back.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use vigil_detector::config::DetectorConfig;
use vigil_detector::pipeline::{Counters, Pipeline};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Event, encode};

pub const DAY: i64 = 86_400_000_000_000;
/// Monday 2026-11-09 00:00 UTC: tests add days to it, and the pipeline
/// dead-letters events more than 5 minutes ahead of the clock.
pub const MONDAY: i64 = 1_794_182_400_000_000_000;

/// The topics of one detector under test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub alerts: String,
    pub review: String,
    pub audit: String,
    pub dlq: String,
}

pub async fn topics(broker: &TestBroker, partitions: i32) -> Topics {
    Topics {
        events: broker.topic("det.events", partitions).await,
        alerts: broker.topic("det.alerts", 1).await,
        review: broker.topic("det.review", 1).await,
        audit: broker.topic("det.audit", partitions).await,
        dlq: broker.topic("det.dlq", 1).await,
    }
}

/// A rule pack directory with copies of the named rules from `sql/rules`.
pub fn rules_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp rules dir");
    for name in names {
        let source = repo().join("sql/rules").join(format!("{name}.sql"));
        std::fs::copy(&source, dir.path().join(format!("{name}.sql")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    }
    dir
}

pub fn repo() -> PathBuf {
    // Read at run time, not compile time: the shared build cache may hold
    // this binary from a checkout at another path.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest_dir).join("..")
}

pub fn config(broker: &TestBroker, topics: &Topics, state: &Path, rules: &Path) -> DetectorConfig {
    let mut config = DetectorConfig::defaults(broker.bootstrap());
    config.group = format!("{}-group", topics.events);
    config.events_topic = topics.events.clone();
    config.alerts_topic = topics.alerts.clone();
    config.review_topic = topics.review.clone();
    config.audit_topic = topics.audit.clone();
    config.dlq_topic = topics.dlq.clone();
    config.state_dir = state.to_path_buf();
    config.rules_dir = rules.to_path_buf();
    config.learning_days = 1;
    config
}

/// Starts `detector run` in this process (panicking, with `what`, if it
/// does not start) and returns its shutdown token and its task.
pub async fn spawn_detector(
    config: DetectorConfig,
    what: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<vigil_detector::Result<Counters>>,
) {
    let pipeline = Pipeline::start(config).await.expect(what);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));
    (shutdown, running)
}

pub use vigil_schemas::testkit::file_event;

/// `detector run` as a child process on the test's broker, topics, state
/// and rules; the caller adds its own flags, environment and stdio, and
/// spawns it.
pub fn detector_command(
    broker: &TestBroker,
    topics: &Topics,
    state: &Path,
    rules: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_detector"));
    command
        .arg("run")
        .args(["--brokers", broker.bootstrap()])
        .args(["--group", &format!("{}-group", topics.events)])
        .args(["--events-topic", &topics.events])
        .args(["--alerts-topic", &topics.alerts])
        .args(["--review-topic", &topics.review])
        .args(["--audit-topic", &topics.audit])
        .args(["--dlq-topic", &topics.dlq])
        .arg("--state-dir")
        .arg(state)
        .arg("--rules-dir")
        .arg(rules)
        .kill_on_drop(true);
    command
}

pub async fn produce_events(broker: &TestBroker, topic: &str, events: &[Event]) {
    produce_with(&broker.producer(), topic, events).await;
}

/// [`produce_events`] through a producer the caller keeps (a test producing
/// many rounds need not connect for each).
pub async fn produce_with(producer: &FutureProducer, topic: &str, events: &[Event]) {
    let encoded: Vec<(String, Vec<u8>)> =
        events.iter().map(|e| (e.principal(), encode(e))).collect();
    let mut sends = Vec::new();
    for (key, payload) in &encoded {
        sends.push(producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        ));
    }
    for result in futures::future::join_all(sends).await {
        result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

pub async fn produce_raw(broker: &TestBroker, topic: &str, key: &str, payload: &[u8]) {
    broker
        .producer()
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// Reads a topic from the beginning until `expected` records arrived and
/// then `settle` passed without more, or `timeout` passed.
pub async fn read_topic(
    broker: &TestBroker,
    topic: &str,
    expected: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = broker.consumer(&format!("reader-{topic}-{}", rand_suffix()));
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wait = if messages.len() >= expected {
            settle
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) => messages.push(message.detach()),
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => break,
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    messages
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn alert_json(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().expect("alert has a payload")).expect("alert is JSON")
}

/// The id of the rule that raised an alert document.
pub fn rule_of(alert: &serde_json::Value) -> String {
    alert["finding_info"]["analytic"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
