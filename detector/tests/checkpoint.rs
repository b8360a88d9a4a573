//! Checkpoints: with an interval, baselines and offsets are written only
//! when one is due or asked for, together, and nothing processed in between
//! is lost from them; with none, every batch writes both. Against a real
//! RocksDB in a temp dir.

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
                payload: Some(encode(&event).expect("encodes")),
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
