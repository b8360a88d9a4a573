//! `detector tail` against a real tansu broker: Avro events decode by
//! fingerprint, JSON alerts pass through, garbage is reported with its
//! partition and offset, and tailing goes on past it.

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{file_event, produce_raw as produce};
use serde_json::Value;
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Event, Kind, encode};

/// Bob opens chart `seq`; the second open is refused (EACCES).
fn event(seq: i64) -> Event {
    let mut event = file_event(
        "bob",
        Kind::Open,
        &format!("/phi/chart-{seq}.pdf"),
        1_795_000_000_000_000_000 + seq,
        seq,
    );
    if seq == 1 {
        event.errno = 13;
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_alerts_and_names_undecodable_records() {
    let broker = TestBroker::start();
    let topic = broker.topic("tail.mixed", 1).await;

    produce(&broker, &topic, "bob", &encode(&event(0))).await;
    produce(&broker, &topic, "bob", &encode(&event(1))).await;
    produce(&broker, &topic, "bob", b"\x00\x01 not a vigil record").await;
    produce(
        &broker,
        &topic,
        "bob",
        br#"{"class_uid":2004,"message":"bulk read"}"#,
    )
    .await;

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_detector"))
            .args([
                "tail",
                "--topic",
                &topic,
                "--from-beginning",
                "--count",
                "4",
            ])
            .args(["--brokers", broker.bootstrap()])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("detector tail exits within 60 s once it has read 4 records")
    .expect("detector tail runs");

    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        output.status
    );

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "two events and one alert on stdout:\n{stdout}"
    );

    assert_eq!(lines[0]["contract"], "Event");
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["key"], "bob");
    assert_eq!(lines[0]["value"]["path"], "/phi/chart-0.pdf");
    assert_eq!(lines[0]["value"]["kind"], "open");
    assert_eq!(
        lines[1]["value"]["errno"], 13,
        "the failed open keeps its errno"
    );
    assert_eq!(lines[2]["contract"], "json");
    assert_eq!(lines[2]["offset"], 3);
    assert_eq!(lines[2]["value"]["class_uid"], 2004);

    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("undecodable record"))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{stderr}"));
    assert!(
        error_line.contains("partition 0 offset 2"),
        "error names partition and offset: {error_line}"
    );
    assert!(stderr.contains("4 records, 1 undecodable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_of_a_missing_topic_says_so() {
    let broker = TestBroker::start();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(["tail", "--topic", "no.such.topic", "--count", "1"])
        .args(["--brokers", broker.bootstrap()])
        .output()
        .await
        .expect("detector tail runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a missing topic is an error");
    assert!(
        stderr.contains("topic `no.such.topic` does not exist"),
        "{stderr}"
    );
}
