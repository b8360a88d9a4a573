//! A detector resumes each partition one record before the offset stored
//! with its state: the last record it processed is read again and skipped,
//! to see whether the topic was recreated since. On tansu's SQLite storage
//! the broker serves that offset even inside a record batch, so only that
//! record is read twice. On its memory storage it sends nothing from inside
//! its last batch; after 2 s the detector reads the partition again from
//! `high - 1` (that batch's first offset there) and skips what its state
//! already holds. Inside an earlier batch, memory storage answers from the
//! next batch, silently skipping the rest of that one: the detector sees
//! its first record come after the stored offset and reads the partition
//! from its beginning instead. Before session 13 every partition was read
//! from its beginning on tansu; before session 14 every stalled or idle one
//! was, and one resumed inside an earlier batch lost that batch's remaining
//! records.
//!
//! A recreated events topic (deleted and created again: its offsets start
//! again from 0) is recognised by a record below the stored offset that is
//! newer than every record processed, and read from its beginning.

mod common;

use std::ops::Range;
use std::time::Duration;

use common::{MONDAY, file_event, produce_with, read_topic};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use vigil_detector::audit_chain::Verifier;
use vigil_detector::pipeline::Counters;
use vigil_detector::state::{RocksStore, StateStore, StateWrite};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{AuditRecord, Event, Kind, bus, decode};

/// How long the idle test waits before publishing: past the detector's
/// group join (60 ms here), its 2 s probe and its 1 s housekeeping tick
/// (before session 21 a reread came 3.1 s after the assignment).
const IDLE: Duration = Duration::from_secs(7);

/// PHI opens by alice, one per offset, a millisecond apart.
fn events(offsets: Range<i64>) -> Vec<Event> {
    offsets
        .map(|i| {
            file_event(
                "alice",
                Kind::Open,
                &format!("/srv/phi/{i}.json"),
                MONDAY + 9 * 3_600_000_000_000 + i * 1_000_000,
                i,
            )
        })
        .collect()
}

/// Reads the audit topic until `expected` records came and then 1 s
/// passed without more (or 60 s in all), stops the detector and returns
/// its counters and what was read.
async fn audit_then_stop(
    broker: &TestBroker,
    topics: &common::Topics,
    expected: usize,
    (stop, running): (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<vigil_detector::Result<Counters>>,
    ),
) -> (Counters, Vec<rdkafka::message::OwnedMessage>) {
    let audit = read_topic(
        broker,
        &topics.audit,
        expected,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    stop.cancel();
    let counters = running
        .await
        .expect("task")
        .expect("detector stops cleanly");
    (counters, audit)
}

/// Publishes offsets `0..ends[0]` as one record batch, then
/// `ends[0]..ends[1]` as another, and so on, starts a detector whose
/// state says offsets below `stored` were processed, publishes `later` once
/// `idle` has passed, waits for the audit records of everything from
/// `stored` on and returns the detector's counters and the events
/// partition's high watermark before the detector started.
async fn resume(
    broker: &TestBroker,
    ends: &[i64],
    stored: i64,
    idle: Duration,
    later: Range<i64>,
) -> (Counters, i64) {
    let topics = common::topics(broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    // A long linger gathers each batch's records into one record batch.
    let producer: FutureProducer = bus::producer_config(broker.bootstrap())
        .set("linger.ms", "200")
        .create()
        .expect("producer");
    let mut start = 0;
    for &end in ends {
        produce_with(&producer, &topics.events, &events(start..end)).await;
        start = end;
    }
    let reader: BaseConsumer = bus::consumer_config(broker.bootstrap(), "watermarks")
        .create()
        .expect("consumer");
    let (_, high) = reader
        .fetch_watermarks(&topics.events, 0, Duration::from_secs(10))
        .expect("watermarks");

    RocksStore::open(state.path())
        .expect("rocksdb")
        .commit(StateWrite {
            offsets: vec![(topics.events.clone(), 0, stored)],
            ..StateWrite::default()
        })
        .expect("store the offset");
    let config = common::config(broker, &topics, state.path(), rules.path());
    let detector = common::spawn_detector(config, "detector starts").await;
    tokio::time::sleep(idle).await;
    produce_with(&producer, &topics.events, &events(later.clone())).await;
    let end = later.end.max(start);
    let (counters, audit) =
        audit_then_stop(broker, &topics, (end - stored) as usize, detector).await;
    let sources: Vec<i64> = audit
        .iter()
        .map(|m| {
            let record: AuditRecord = decode(m.payload().expect("payload")).expect("audit record");
            record.source_offset
        })
        .collect();
    assert_eq!(
        sources,
        (stored..end).collect::<Vec<_>>(),
        "the events from the stored offset on are audited once: {counters:?}"
    );
    assert_eq!(counters.events, (end - stored) as u64, "{counters:?}");
    (counters, high)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_storage_a_partition_resumes_at_its_stored_offset() {
    let broker = TestBroker::start_durable();
    let (counters, _) = resume(&broker, &[500], 256, Duration::ZERO, 500..500).await;
    assert_eq!(
        counters.skipped, 1,
        "only the last processed record is read twice: {counters:?}"
    );
    assert_eq!(counters.reread, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_storage_a_partition_stuck_inside_its_last_batch_rereads_that_batch() {
    let broker = TestBroker::start();
    let (counters, high) = resume(&broker, &[250, 500], 400, Duration::ZERO, 500..500).await;
    assert_eq!(
        high, 251,
        "the high watermark is the last batch's first offset + 1, so 400 is inside it"
    );
    assert_eq!(counters.reread, 1, "{counters:?}");
    assert_eq!(
        counters.skipped, 150,
        "only the last batch is read again, not the partition from its beginning: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_storage_a_partition_stuck_inside_an_earlier_batch_is_read_from_its_beginning() {
    let broker = TestBroker::start();
    let (counters, _) = resume(&broker, &[250, 500], 100, Duration::ZERO, 500..500).await;
    assert_eq!(counters.reread, 1, "{counters:?}");
    assert_eq!(counters.skipped, 100, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_resumes_at_its_last_record_without_a_reread() {
    let broker = TestBroker::start_durable();
    // The detector idles past its 2 s probe before the next events come.
    let (counters, high) = resume(&broker, &[500], 500, IDLE, 500..510).await;
    assert_eq!(high, 500, "{counters:?}");
    assert_eq!(
        counters.reread, 0,
        "the last record answers the probe: {counters:?}"
    );
    assert_eq!(
        counters.skipped, 1,
        "only the last processed record is read again: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resume_exact_a_partition_without_state_is_read_from_its_beginning() {
    let broker = TestBroker::start_durable();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let producer = broker.producer();
    produce_with(&producer, &topics.events, &events(0..300)).await;
    let mut config = common::config(&broker, &topics, state.path(), rules.path());
    config.resume_exact = true;

    // The group already committed offset 200 (another instance, whose
    // state this one does not have).
    let group: BaseConsumer = bus::consumer_config(broker.bootstrap(), &config.group)
        .create()
        .expect("consumer");
    let mut committed = rdkafka::TopicPartitionList::new();
    committed
        .add_partition_offset(&topics.events, 0, rdkafka::Offset::Offset(200))
        .expect("offset");
    group
        .commit(&committed, rdkafka::consumer::CommitMode::Sync)
        .expect("commit offset 200 for the group");
    let stored = group
        .committed_offsets(committed, Duration::from_secs(10))
        .expect("read the committed offset back");
    assert_eq!(
        stored.elements()[0].offset(),
        rdkafka::Offset::Offset(200),
        "the group's offset is set"
    );
    drop(group);

    let detector = common::spawn_detector(config, "detector starts").await;
    let (counters, audit) = audit_then_stop(&broker, &topics, 300, detector).await;
    assert_eq!(
        (audit.len(), counters.events),
        (300, 300),
        "every retained event rebuilds the baselines, not only those after the group's offset: {counters:?}"
    );
}

/// A stored offset that cannot be read (here 3 bytes where 8 belong, as a
/// damaged state directory might hold) stops the detector with an error
/// naming the partition. Before session 18 it counted as "no state": the
/// partition was read from its beginning and every retained event counted
/// into the baselines a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_offset_stops_the_detector_instead_of_rereading_the_partition() {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    common::produce_events(&broker, &topics.events, &events(0..5)).await;
    drop(RocksStore::open(state.path()).expect("create the state"));
    {
        let options = rocksdb::Options::default();
        let families = rocksdb::DB::list_cf(&options, state.path()).expect("column families");
        let db = rocksdb::DB::open_cf(&options, state.path(), &families).expect("open the state");
        let mut key = topics.events.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&0i32.to_be_bytes());
        let offsets = db.cf_handle("offsets").expect("offsets family");
        db.put_cf(offsets, key, [1u8, 2, 3])
            .expect("damage the offset");
    }

    let config = common::config(&broker, &topics, state.path(), rules.path());
    let (_stop, running) = common::spawn_detector(config, "detector starts").await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the detector stops on its own")
        .expect("task");
    let error = outcome
        .expect_err("an unreadable offset is an error")
        .to_string();
    assert!(
        error.contains(&format!(
            "stored offset of {}/0 cannot be read",
            topics.events
        )),
        "{error}"
    );
    assert!(
        error.contains("3 bytes where an 8-byte offset belongs"),
        "{error}"
    );
    let audit = read_topic(
        &broker,
        &topics.audit,
        0,
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .await;
    assert!(audit.is_empty(), "no event of the partition was processed");
}

/// Runs a detector over `events(0..300)`, deletes the events topic and
/// creates it again with `events(1000..1000 + again)`, runs a detector on
/// the same state again and returns its counters and the whole audit
/// topic, in order. The audit topic is kept, as a SOC would keep it.
///
/// The detector is stopped meanwhile: deleting a topic under a running
/// one crashed the process here (SIGSEGV in librdkafka 2.12's
/// `rd_kafka_metadata_cache_find` on a client's `rdk:main` thread, tansu
/// 0.6). Started again after such a crash, it is in this case.
///
/// On memory storage: tansu 0.6 on SQLite deletes every topic when asked
/// to delete one.
async fn recreated(again: i64) -> (Counters, Vec<AuditRecord>) {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    // Each round has a producer of its own, dropped before the topic is
    // deleted: an idempotent producer's sequence numbers belong to the old
    // topic, and the broker refuses them for the new one.
    common::produce_events(&broker, &topics.events, &events(0..300)).await;
    let config = common::config(&broker, &topics, state.path(), rules.path());
    let detector = common::spawn_detector(config.clone(), "detector starts").await;
    let (_, first) = audit_then_stop(&broker, &topics, 300, detector).await;
    assert_eq!(first.len(), 300, "the old topic's events are audited");

    broker.delete_topic(&topics.events).await;
    broker.create_topic(&topics.events, 1).await;
    common::produce_events(&broker, &topics.events, &events(1000..1000 + again)).await;
    let detector = common::spawn_detector(config, "detector starts again").await;
    let (counters, audit) = audit_then_stop(&broker, &topics, 301 + again as usize, detector).await;
    let mut records: Vec<(i64, AuditRecord)> = audit
        .iter()
        .map(|m| {
            let record = decode(m.payload().expect("payload")).expect("audit record");
            (m.offset(), record)
        })
        .collect();
    records.sort_by_key(|(offset, _)| *offset);
    let mut verifier = Verifier::default();
    for (offset, record) in &records {
        verifier.check(record.clone(), &format!("offset {offset}"));
    }
    assert_eq!(
        verifier.first_broken(),
        None,
        "one chain across the recreation"
    );
    (counters, records.into_iter().map(|(_, r)| r).collect())
}

/// What the audit trail must say after [`recreated`]: the old topic's 300
/// events, a gap naming the recreation, then every event of the new topic
/// from its offset 0. Before session 21 the new topic's records below the
/// stored offset 300 were skipped and those past it left unaudited (the
/// chain's head had audited source offsets up to 299).
fn assert_recreation_audited(counters: &Counters, records: &[AuditRecord], again: i64) {
    let sources: Vec<i64> = records.iter().map(|r| r.source_offset).collect();
    let expected: Vec<i64> = (0..300).chain([-1]).chain(0..again).collect();
    assert_eq!(sources, expected, "{counters:?}");
    let gap = &records[300];
    assert_eq!(gap.action, "gap");
    let reason = &gap.gap.as_ref().expect("a gap record").reason;
    assert!(
        reason.starts_with("events_topic_recreated: ")
            && reason.contains("offset 299 was processed"),
        "the gap says what happened: {reason}"
    );
    assert_eq!(counters.recreated, 1, "{counters:?}");
    assert_eq!(
        counters.events, again as u64,
        "every event of the new topic is processed: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_topic_recreated_shorter_is_read_from_its_beginning() {
    let (counters, records) = recreated(100).await;
    assert_recreation_audited(&counters, &records, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_topic_recreated_longer_is_read_from_its_beginning() {
    let (counters, records) = recreated(400).await;
    assert_recreation_audited(&counters, &records, 400);
}
