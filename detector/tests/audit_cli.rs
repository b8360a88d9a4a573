//! `detector audit verify` on a real topic and on exported files, intact and
//! tampered with.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{MONDAY, file_event, produce_raw};
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
