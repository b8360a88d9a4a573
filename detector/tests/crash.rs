//! Crash safety: `detector run` is killed (SIGKILL, no graceful shutdown)
//! mid-stream and restarted on the same RocksDB state. The audit trail must
//! have no gap and no duplicate sequence number and must verify, and the
//! alert set must equal that of an uninterrupted run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{DAY, MONDAY, alert_json, file_event, produce_events, read_topic};
use rdkafka::Message;
use tokio::process::Child;
use vigil_detector::audit_chain::Verifier;
use vigil_detector::processor::{Input, Processor};
use vigil_detector::roles::RoleFile;
use vigil_detector::rules::RuleSet;
use vigil_detector::state::MemStore;
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{AuditRecord, Event, Kind, decode, encode};

fn spawn_detector(
    broker: &TestBroker,
    topics: &common::Topics,
    state: &std::path::Path,
    rules: &std::path::Path,
    abort_after_batch: Option<u64>,
) -> Child {
    let mut command = common::detector_command(broker, topics, state, rules);
    if let Some(batch) = abort_after_batch {
        command.env("VIGIL_TEST_ABORT_AFTER_PUBLISH", batch.to_string());
    }
    command
        .args(["--learning-days", "1", "--batch-rows", "64"])
        .args(["--instance-id", "detector-0"])
        .env(
            "VIGIL_LOG",
            std::env::var("VIGIL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start detector")
}

/// Three principals over three days; bursts that fire the bulk-read rule.
fn workload() -> Vec<Event> {
    let mut events = Vec::new();
    let mut seq = 0;
    for (day, burst) in [(0, 20), (1, 20), (2, 260)] {
        for user in ["alice", "bob", "carol"] {
            let start = MONDAY + day * DAY + 2 * 3_600_000_000_000;
            for i in 0..burst {
                events.push(file_event(
                    user,
                    Kind::Open,
                    &format!("/srv/phi/{user}/{day}-{i}.json"),
                    start + i * 1_000_000_000,
                    seq,
                ));
                seq += 1;
            }
        }
    }
    events
}

/// The alert ids an uninterrupted run produces (the same processor, in
/// process, one event per record, no crash).
async fn reference_alert_ids(events: &[Event], rules: &std::path::Path) -> BTreeSet<String> {
    let (rule_set, errors) = RuleSet::load_dir(rules).await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut processor = Processor::new(
        Arc::new(MemStore::default()),
        rule_set,
        RoleFile::open(None).expect("roles"),
        1,
        "ref",
    );
    let mut ids = BTreeSet::new();
    for (offset, chunk) in events.chunks(64).enumerate() {
        let inputs = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| Input {
                partition: 0,
                offset: (offset * 64 + i) as i64,
                key: Some(e.principal().into_bytes()),
                payload: Some(encode(e)),
            })
            .collect();
        let output = processor.process(inputs, 0).await.expect("processes");
        ids.extend(
            output
                .alerts
                .iter()
                .chain(&output.review)
                .map(|a| a.id().to_owned()),
        );
        processor.commit(output.state).expect("commit");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_detector_resumes_without_audit_gaps_or_duplicates() {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 2).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let events = workload();

    // First run: dies (abort, no graceful shutdown) right after the outputs
    // of its 5th batch were acknowledged and before that batch's state and
    // offsets were written: the worst moment.
    let mut detector = spawn_detector(&broker, &topics, state.path(), rules.path(), Some(5));
    produce_events(&broker, &topics.events, &events).await;
    let status = tokio::time::timeout(Duration::from_secs(60), detector.wait())
        .await
        .expect("the detector aborts by itself within 60 s")
        .expect("wait");
    assert!(!status.success(), "the first run died: {status:?}");
    let partial = read_topic(
        &broker,
        &topics.audit,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        !partial.is_empty() && partial.len() < events.len(),
        "it died mid-stream ({} of {} audit records out)",
        partial.len(),
        events.len()
    );

    // Second run: a SIGKILL mid-stream.
    let mut detector = spawn_detector(&broker, &topics, state.path(), rules.path(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    detector.start_kill().expect("SIGKILL");
    let _ = detector.wait().await;

    // Third run: to the end.
    let mut detector = spawn_detector(&broker, &topics, state.path(), rules.path(), None);
    let audit = read_topic(
        &broker,
        &topics.audit,
        events.len(),
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await;
    detector.start_kill().expect("stop");
    let _ = detector.wait().await;

    let mut by_partition: BTreeMap<i32, Vec<(i64, AuditRecord)>> = BTreeMap::new();
    for message in &audit {
        let record: AuditRecord = decode(message.payload().expect("payload")).expect("decodes");
        by_partition
            .entry(message.partition())
            .or_default()
            .push((message.offset(), record));
    }
    let mut verifier = Verifier::default();
    let mut total = 0;
    for (partition, mut records) in by_partition {
        records.sort_by_key(|(offset, _)| *offset);
        let seqs: Vec<i64> = records.iter().map(|(_, r)| r.seq).collect();
        let expected: Vec<i64> = (0..seqs.len() as i64).collect();
        let first_wrong = seqs.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            first_wrong.is_none() && seqs.len() == expected.len(),
            "partition {partition}: no gap, no duplicate sequence number; {} records, first wrong at index {first_wrong:?}: {:?}",
            seqs.len(),
            first_wrong.map(|i| &seqs[i.saturating_sub(2)..(i + 3).min(seqs.len())])
        );
        total += records.len();
        for (offset, record) in records {
            verifier.check(record, &format!("offset {offset}"));
        }
    }
    assert_eq!(
        verifier.first_broken(),
        None,
        "the chains verify after the crash"
    );
    assert_eq!(total, events.len(), "every PHI access audited exactly once");

    let alerts = read_topic(
        &broker,
        &topics.alerts,
        1,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let review = read_topic(
        &broker,
        &topics.review,
        0,
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await;
    let published: BTreeSet<String> = alerts
        .iter()
        .chain(&review)
        .map(alert_json)
        .map(|a| {
            a["finding_info"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let expected = reference_alert_ids(&events, rules.path()).await;
    assert!(!expected.is_empty(), "the workload fires the rule");
    assert_eq!(
        published, expected,
        "the same alerts as an uninterrupted run (duplicates share ids)"
    );
}
