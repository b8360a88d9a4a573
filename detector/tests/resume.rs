//! A detector resumes each partition at the offset stored with its state.
//! On tansu's SQLite storage the broker serves that offset even inside a
//! record batch, so nothing is read twice. On its memory storage it sends
//! nothing from inside a batch; after 2 s the detector reads the partition
//! from its beginning and skips what its state already holds. Before
//! session 13 every partition was read from its beginning on tansu.

mod common;

use std::time::Duration;

use common::{MONDAY, file_event, produce_with, read_topic};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use vigil_detector::pipeline::Counters;
use vigil_detector::state::{RocksStore, StateStore, StateWrite};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{AuditRecord, Event, Kind, bus, decode};

const EVENTS: i64 = 500;
/// The stored next offset: as if a previous run had processed the rest.
const STORED: i64 = 256;

/// Publishes [`EVENTS`] PHI opens as one record batch, starts a detector
/// whose state says offsets below [`STORED`] were processed, waits for the
/// audit records of the others and returns the detector's counters and
/// the events partition's high watermark.
async fn resume(broker: &TestBroker) -> (Counters, i64) {
    let topics = common::topics(broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            file_event(
                "alice",
                Kind::Open,
                &format!("/srv/phi/{i}.json"),
                MONDAY + 9 * 3_600_000_000_000 + i * 1_000_000,
                i,
            )
        })
        .collect();
    // A long linger gathers every record into one batch.
    let producer: FutureProducer = bus::producer_config(broker.bootstrap())
        .set("linger.ms", "200")
        .create()
        .expect("producer");
    produce_with(&producer, &topics.events, &events).await;
    let reader: BaseConsumer = bus::consumer_config(broker.bootstrap(), "watermarks")
        .create()
        .expect("consumer");
    let (_, high) = reader
        .fetch_watermarks(&topics.events, 0, Duration::from_secs(10))
        .expect("watermarks");

    RocksStore::open(state.path())
        .expect("rocksdb")
        .commit(StateWrite {
            offsets: vec![(topics.events.clone(), 0, STORED)],
            ..StateWrite::default()
        })
        .expect("store the offset");
    let config = common::config(broker, &topics, state.path(), rules.path());
    let (stop, running) = common::spawn_detector(config, "detector starts").await;
    let audit = read_topic(
        broker,
        &topics.audit,
        (EVENTS - STORED) as usize,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    stop.cancel();
    let counters = running
        .await
        .expect("task")
        .expect("detector stops cleanly");
    let sources: Vec<i64> = audit
        .iter()
        .map(|m| {
            let record: AuditRecord = decode(m.payload().expect("payload")).expect("audit record");
            record.source_offset
        })
        .collect();
    assert_eq!(
        sources,
        (STORED..EVENTS).collect::<Vec<_>>(),
        "the events from the stored offset on are audited once: {counters:?}"
    );
    assert_eq!(counters.events, (EVENTS - STORED) as u64, "{counters:?}");
    (counters, high)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_storage_a_partition_resumes_at_its_stored_offset() {
    let broker = TestBroker::start_durable();
    let (counters, _) = resume(&broker).await;
    assert_eq!(counters.skipped, 0, "nothing read twice: {counters:?}");
    assert_eq!(counters.reread, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_storage_a_partition_stuck_inside_a_batch_is_read_from_its_beginning() {
    let broker = TestBroker::start();
    let (counters, high) = resume(&broker).await;
    assert!(
        high <= STORED,
        "offset {STORED} is inside the last record batch (high watermark {high})"
    );
    assert_eq!(counters.reread, 1, "{counters:?}");
    assert_eq!(counters.skipped, STORED as u64, "{counters:?}");
}
