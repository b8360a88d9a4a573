//! A rule that fails at run time on some events (division by zero) still
//! runs on the others, and the events it failed on go to the dead letters
//! with the rule's error instead of being skipped unseen. Against a real
//! RocksDB in a temp dir and real DataFusion plans.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::{MONDAY, file_event};
use vigil_detector::processor::{Input, Processor};
use vigil_detector::roles::RoleFile;
use vigil_detector::rules::RuleSet;
use vigil_detector::state::RocksStore;
use vigil_schemas::{Kind, encode};

/// Fires on every event with a pid below 13 and fails (division by zero)
/// on pid 13.
const PID_RATIO: &str = "-- id: pid-ratio\n-- title: Pid ratio\n-- severity: low\n-- hipaa: 164.312(b)\n-- mitre: T1005\n-- version: 1\nSELECT * FROM events\nWHERE 100 / (pid - 13) < 0\n";

/// Alice's opens, one per pid.
fn inputs(pids: impl IntoIterator<Item = i32>) -> Vec<Input> {
    pids.into_iter()
        .enumerate()
        .map(|(offset, pid)| {
            let offset = offset as i64;
            let mut event = file_event(
                "alice",
                Kind::Open,
                &format!("/srv/phi/{offset}.json"),
                MONDAY + offset * 1_000_000_000,
                offset,
            );
            event.pid = pid;
            Input {
                partition: 0,
                offset,
                key: Some(event.principal().into_bytes()),
                payload: Some(encode(&event)),
            }
        })
        .collect()
}

async fn processor(state: &Path, rule: &str) -> Processor {
    let store = Arc::new(RocksStore::open(state).expect("rocksdb"));
    let mut rules = RuleSet::new();
    let compiled = rules
        .compile(Path::new("pid-ratio.sql"), rule)
        .await
        .expect("the rule plans");
    rules.insert(compiled);
    Processor::new(
        store,
        rules,
        RoleFile::open(None).expect("no role file"),
        7,
        "rule-errors.events",
    )
}

#[tokio::test]
async fn a_rule_failing_on_one_event_still_judges_the_others() {
    let state = tempfile::tempdir().expect("state dir");
    let mut processor = processor(state.path(), PID_RATIO).await;

    let output = processor
        .process(inputs(1..=20), MONDAY)
        .await
        .expect("the batch is processed");

    let fired: BTreeSet<String> = output
        .alerts
        .iter()
        .chain(&output.review)
        .flat_map(|a| a.finding_info.related_events.iter().map(|e| e.uid.clone()))
        .collect();
    let expected: BTreeSet<String> = (0..12).map(|i| format!("ehr-01-alice-{i}")).collect();
    assert_eq!(fired, expected, "pids 1..=12 fire");

    assert_eq!(output.dead_letters.len(), 1, "{:?}", output.dead_letters);
    let letter = &output.dead_letters[0];
    assert_eq!(letter.input.offset, 12, "the pid 13 event");
    assert!(
        letter
            .error
            .starts_with("rule `pid-ratio` failed on this event (")
            && letter.error.contains("Divide by zero"),
        "{}",
        letter.error
    );
    let event: vigil_schemas::Event =
        vigil_schemas::decode(letter.input.payload.as_deref().expect("payload"))
            .expect("the dead letter holds the event");
    assert_eq!(event.pid, 13);
    assert_eq!(letter.input.key.as_deref(), Some(b"alice".as_slice()));

    assert_eq!(output.rule_errors.len(), 1);
    assert!(
        output.rule_errors[0].1.contains("on 1 of 20 events"),
        "{:?}",
        output.rule_errors
    );
    assert_eq!(output.audit.len(), 20, "every event is still audited");
}

#[tokio::test]
async fn a_rule_failing_on_every_event_dead_letters_each_once() {
    let state = tempfile::tempdir().expect("state dir");
    let always = PID_RATIO.replace("(pid - 13)", "(pid - pid)");
    let mut processor = processor(state.path(), &always).await;

    // More events than the isolation budget can split to single events.
    let output = processor
        .process(inputs(1..=300), MONDAY)
        .await
        .expect("the batch is processed");

    let offsets: Vec<i64> = output.dead_letters.iter().map(|d| d.input.offset).collect();
    assert_eq!(
        offsets,
        (0..300).collect::<Vec<i64>>(),
        "every event once, in order"
    );
    assert!(output.alerts.is_empty() && output.review.is_empty());
    assert!(
        output.rule_errors[0].1.contains("on 300 of 300 events"),
        "{:?}",
        output.rule_errors
    );
}
