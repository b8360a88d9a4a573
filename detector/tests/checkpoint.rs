//! Checkpoints: with an interval, baselines and offsets are written only
//! when one is due or asked for, together, and nothing processed in between
//! is lost from them; with none, every batch writes both. Against a real
//! RocksDB in a temp dir. Also: a batch processed in two halves (`detect`,
//! `finish`) gives what `process` gives.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{MONDAY, file_event};
use vigil_detector::baseline::Baseline;
use vigil_detector::processor::{Input, Processor};
use vigil_detector::roles::RoleFile;
use vigil_detector::rules::RuleSet;
use vigil_detector::state::{Dimension, RocksStore, StateStore, StateWrite};
use vigil_schemas::{Kind, encode};

const TOPIC: &str = "checkpoint.events";

/// Alice's opens at the given (partition, offset) positions.
fn inputs(positions: &[(i32, i64)]) -> Vec<Input> {
    positions
        .iter()
        .map(|&(partition, offset)| {
            let event = file_event(
                "alice",
                Kind::Open,
                &format!("/srv/phi/p{partition}-{offset}.json"),
                MONDAY + offset * 1_000_000_000,
                offset,
            );
            Input {
                partition,
                offset,
                key: Some(event.principal().into_bytes()),
                payload: Some(encode(&event)),
            }
        })
        .collect()
}

fn processor(store: Arc<RocksStore>, interval: Duration) -> Processor {
    Processor::new(
        store,
        RuleSet::new(),
        RoleFile::open(None).expect("no role file"),
        7,
        TOPIC,
    )
    .with_checkpoint_interval(interval)
}

#[tokio::test]
async fn deferred_baselines_and_offsets_are_written_together_at_the_checkpoint() {
    let dir = tempfile::tempdir().expect("state dir");
    let store = Arc::new(RocksStore::open(dir.path()).expect("rocksdb"));
    let mut processor = processor(store.clone(), Duration::from_secs(3600));

    for batch in [
        inputs(&[(0, 0), (0, 1), (0, 2), (1, 0)]),
        inputs(&[(0, 3), (0, 4)]),
    ] {
        let output = processor.process(batch, MONDAY).await.expect("processes");
        assert!(
            output.state.offsets.is_empty() && output.state.baselines.is_empty(),
            "no checkpoint due within the hour: {:?}",
            output.state.offsets
        );
        assert_eq!(output.audit.len(), output.events, "audit is not deferred");
        assert!(
            !output.state.chain_heads.is_empty(),
            "chain heads go with every batch"
        );
        processor.commit(output.state).expect("commit");
    }
    assert!(processor.has_deferred());
    assert_eq!(store.offset(TOPIC, 0).expect("read"), None);
    assert_eq!(
        store.baseline(Dimension::User, "alice").expect("read"),
        None
    );

    let checkpoint = processor.checkpoint();
    let mut offsets = checkpoint.offsets.clone();
    offsets.sort();
    assert_eq!(
        offsets,
        vec![(TOPIC.to_owned(), 0, 5), (TOPIC.to_owned(), 1, 1)],
        "the next offsets after both batches"
    );
    assert!(
        checkpoint
            .baselines
            .iter()
            .any(|(dimension, key, _)| *dimension == Dimension::User && key == "alice"),
        "alice's baseline, changed by both batches, is in the checkpoint"
    );
    processor.commit(checkpoint).expect("commit checkpoint");
    assert!(!processor.has_deferred());
    assert_eq!(store.offset(TOPIC, 0).expect("read"), Some(5));
    assert_eq!(store.offset(TOPIC, 1).expect("read"), Some(1));

    // A new processor on the same state sees all six opens in alice's
    // baseline: nothing processed before the checkpoint was lost from it.
    let mut restarted = processor_on(store.clone());
    let output = restarted
        .process(inputs(&[(0, 5)]), MONDAY)
        .await
        .expect("processes");
    assert_eq!(output.state.offsets, vec![(TOPIC.to_owned(), 0, 6)]);
    let fresh = tempfile::tempdir().expect("state dir");
    let rebuilt = processor_on(Arc::new(RocksStore::open(fresh.path()).expect("rocksdb")))
        .process(
            inputs(&[(0, 0), (0, 1), (0, 2), (1, 0), (0, 3), (0, 4), (0, 5)]),
            MONDAY,
        )
        .await
        .expect("processes");
    let baseline = |state: &StateWrite| {
        state
            .baselines
            .iter()
            .find(|(dimension, key, _)| *dimension == Dimension::User && key == "alice")
            .and_then(|(_, _, bytes)| Baseline::decode(bytes))
            .expect("alice's baseline decodes")
    };
    assert_eq!(
        baseline(&output.state),
        baseline(&rebuilt.state),
        "checkpointed and resumed equals processed in one go"
    );
}

/// A processor that checkpoints every batch (the interval's zero default).
fn processor_on(store: Arc<RocksStore>) -> Processor {
    processor(store, Duration::ZERO)
}

/// `detect` gives a batch's findings before any audit record is made (so
/// the pipeline can publish them first); `finish` then adds the audit
/// records and the chain heads, and the two halves give what `process`
/// gives.
#[tokio::test]
async fn findings_come_from_detect_and_audit_records_from_finish() {
    let rules = common::rules_dir(&["audit-log-tampering"]);
    let events = [
        file_event("alice", Kind::Open, "/srv/phi/p1.json", MONDAY, 1),
        file_event(
            "alice",
            Kind::Unlink,
            "/var/log/audit/audit.log",
            MONDAY + 1_000_000,
            2,
        ),
    ];
    let inputs = || -> Vec<Input> {
        events
            .iter()
            .enumerate()
            .map(|(offset, event)| Input {
                partition: 0,
                offset: offset as i64,
                key: Some(event.principal().into_bytes()),
                payload: Some(encode(event)),
            })
            .collect()
    };
    let with_rules = |dir: tempfile::TempDir| {
        let rules = rules.path().to_owned();
        async move {
            let (rules, errors) = RuleSet::load_dir(&rules).await;
            assert!(errors.is_empty(), "{errors:?}");
            let store = Arc::new(RocksStore::open(dir.path()).expect("rocksdb"));
            let processor =
                Processor::new(store, rules, RoleFile::open(None).expect("roles"), 7, TOPIC);
            (processor, dir)
        }
    };

    let (mut split, _split_dir) = with_rules(tempfile::tempdir().expect("state dir")).await;
    let detected = split.detect(inputs(), MONDAY).await.expect("detects");
    let findings: Vec<String> = detected
        .output
        .alerts
        .iter()
        .chain(&detected.output.review)
        .map(|a| a.unmapped.vigil.rule_id.clone())
        .collect();
    assert_eq!(
        findings,
        ["audit-log-tampering"],
        "the unlink is found by detect"
    );
    assert!(
        detected.output.audit.is_empty(),
        "no audit record before finish"
    );
    assert!(detected.output.state.chain_heads.is_empty());
    let split = split.finish(detected);
    assert!(!split.audit.is_empty(), "finish makes the audit records");
    assert!(!split.state.chain_heads.is_empty());

    let (mut whole, _whole_dir) = with_rules(tempfile::tempdir().expect("state dir")).await;
    let whole = whole.process(inputs(), MONDAY).await.expect("processes");
    let ids = |o: &vigil_detector::processor::Output| -> Vec<String> {
        o.alerts
            .iter()
            .chain(&o.review)
            .map(|a| a.id().to_owned())
            .collect()
    };
    assert_eq!(ids(&split), ids(&whole));
    let bytes = |o: &vigil_detector::processor::Output| -> Vec<Vec<u8>> {
        o.audit.iter().map(encode).collect()
    };
    assert_eq!(
        bytes(&split),
        bytes(&whole),
        "the same audit records, byte for byte"
    );
}

/// A recreated events partition's gap record is made with the next batch
/// and published with it: a checkpoint in between (at a rebalance, say)
/// must not write the chain head of a record that was never published,
/// or the chain on the audit topic would miss it after a crash.
#[tokio::test]
async fn a_restart_gap_enters_the_chain_with_the_next_batch_not_at_a_checkpoint() {
    let dir = tempfile::tempdir().expect("state dir");
    let store = Arc::new(RocksStore::open(dir.path()).expect("rocksdb"));
    let mut processor = processor(store.clone(), Duration::from_secs(3600));
    let output = processor
        .process(inputs(&[(0, 7), (0, 8)]), MONDAY)
        .await
        .expect("processes");
    processor.commit(output.state).expect("commit");

    processor.restart_source(0, "test", MONDAY);
    let checkpoint = processor.checkpoint();
    assert!(
        checkpoint.chain_heads.is_empty(),
        "no head before its record is published: {:?}",
        checkpoint.chain_heads
    );
    processor.commit(checkpoint).expect("commit checkpoint");

    let output = processor
        .process(inputs(&[(0, 0)]), MONDAY)
        .await
        .expect("processes");
    let chain: Vec<(i64, i64, String)> = output
        .audit
        .iter()
        .map(|r| (r.seq, r.source_offset, r.action.clone()))
        .collect();
    assert_eq!(
        chain,
        vec![(2, -1, "gap".to_owned()), (3, 0, "open".to_owned())],
        "the gap, then offset 0 of the new partition, on the same chain"
    );
    assert_eq!(
        output
            .state
            .chain_heads
            .iter()
            .map(|(p, h)| (*p, h.seq))
            .collect::<Vec<_>>(),
        vec![(0, 3)]
    );
}
