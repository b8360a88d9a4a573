//! `detector audit verify` on a real topic and on exported files, intact and
//! tampered with.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{MONDAY, file_event, produce_raw};
use rdkafka::producer::FutureRecord;
use vigil_detector::audit_chain::AuditChains;
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Kind, encode};

fn detector(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .output()
        .expect("run detector")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_intact_chains_and_names_the_first_tampered_record() {
    let broker = TestBroker::start();
    let topic = broker.topic("verify.audit", 1).await;
    let mut chains = AuditChains::default();
    for i in 0..20 {
        let event = file_event(
            "alice",
            Kind::Open,
            &format!("/srv/phi/p{i}.json"),
            MONDAY + i,
            i,
        );
        let record = chains
            .append(0, &event, "alice", "vigil.events.v1", i, MONDAY)
            .expect("record");
        produce_raw(&broker, &topic, "alice", &encode(&record)).await;
    }

    let from_topic = detector(&[
        "audit",
        "verify",
        "--brokers",
        broker.bootstrap(),
        "--topic",
        &topic,
    ]);
    assert!(from_topic.status.success(), "{}", text(&from_topic));
    assert!(
        text(&from_topic).contains("20 records, seq 0..=19: intact"),
        "{}",
        text(&from_topic)
    );

    let export = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_detector"))
            .args(["tail", "--brokers", broker.bootstrap(), "--topic", &topic])
            .args(["--from-beginning", "--count", "20"])
            .output(),
    )
    .await
    .expect("export finishes")
    .expect("tail runs");
    let exported = String::from_utf8(export.stdout).expect("utf-8");
    assert_eq!(exported.lines().count(), 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let verify_file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write export");
        detector(&[
            "audit",
            "verify",
            "--file",
            path.to_str().expect("utf-8 path"),
        ])
    };

    let intact = verify_file("intact.jsonl", &exported);
    assert!(intact.status.success(), "{}", text(&intact));

    // Change one byte of the 8th record's path.
    let lines: Vec<&str> = exported.lines().collect();
    let mut altered = lines.clone();
    let changed = altered[7].replacen("/srv/phi/p7.json", "/srv/phi/p8.json", 1);
    assert_ne!(changed, altered[7]);
    altered[7] = &changed;
    let out = verify_file("altered.jsonl", &(altered.join("\n") + "\n"));
    assert!(
        !out.status.success(),
        "an altered record must fail verification"
    );
    assert!(
        text(&out).contains("BROKEN: partition 0 line 8 seq 7"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("altered"), "{}", text(&out));

    // Delete the 13th record.
    let mut deleted = lines.clone();
    deleted.remove(12);
    let out = verify_file("deleted.jsonl", &(deleted.join("\n") + "\n"));
    assert!(
        !out.status.success(),
        "a deleted record must fail verification"
    );
    assert!(
        text(&out).contains("seq 13: records 12..=12 are missing"),
        "{}",
        text(&out)
    );
}

/// Two partitions of many records, produced concurrently so the broker
/// stores them in multi-record batches: verify must read both to their
/// ends, call a read that stalls incomplete (never intact), and call a
/// record that is not an audit record a broken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_every_partition_to_its_end_and_never_calls_a_partial_read_intact() {
    const PER_PARTITION: i64 = 600;
    let broker = TestBroker::start();
    let topic = broker.topic("verify.audit.long", 2).await;
    let producer = broker.producer();
    let mut chains = AuditChains::default();
    let mut sends = Vec::new();
    for partition in 0..2 {
        for i in 0..PER_PARTITION {
            let event = file_event(
                "bob",
                Kind::Open,
                &format!("/srv/phi/{partition}-{i}.json"),
                MONDAY + i,
                i,
            );
            let record = chains
                .append(partition, &event, "bob", "vigil.events.v1", i, MONDAY)
                .expect("record");
            let payload = encode(&record);
            let producer = &producer;
            let topic = &topic;
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .partition(partition)
                            .key("bob")
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
        }
    }
    for sent in futures::future::join_all(sends).await {
        sent.expect("produce an audit record");
    }
    let verify = |idle: &str| {
        detector(&[
            "audit",
            "verify",
            "--brokers",
            broker.bootstrap(),
            "--topic",
            &topic,
            "--idle-timeout",
            idle,
        ])
    };

    let whole = verify("5");
    assert!(whole.status.success(), "{}", text(&whole));
    for partition in 0..2 {
        let line = format!("partition {partition}: 600 records, seq 0..=599: intact");
        assert!(text(&whole).contains(&line), "{}", text(&whole));
    }
    assert!(
        text(&whole).contains("all 2 chains intact"),
        "{}",
        text(&whole)
    );

    // Nothing can arrive within a millisecond of connecting: the read
    // stops before the end and must say so with exit code 2.
    let stalled = verify("0.001");
    assert_eq!(stalled.status.code(), Some(2), "{}", text(&stalled));
    assert!(text(&stalled).contains("INCOMPLETE"), "{}", text(&stalled));
    assert!(
        !text(&stalled).contains("chains intact"),
        "{}",
        text(&stalled)
    );

    producer
        .send(
            FutureRecord::to(&topic)
                .partition(1)
                .key("mallory")
                .payload(&b"not an audit record"[..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce garbage");
    let garbage = verify("5");
    assert_eq!(garbage.status.code(), Some(1), "{}", text(&garbage));
    assert!(
        text(&garbage).contains(&format!(
            "BROKEN: partition 1 (topic partition 1 offset {PER_PARTITION}): not an audit record"
        )),
        "{}",
        text(&garbage)
    );
}

#[test]
fn rule_pack_tests_pass() {
    let sql = common::repo().join("sql");
    let out = detector(&["rules", "test", sql.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains("phi-bulk-read") && report.contains("audit-log-tampering"),
        "{report}"
    );
    assert!(!report.contains("FAIL"), "{report}");
}
