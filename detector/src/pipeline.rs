//! `detector run`: the Kafka side of the service.
//!
//! A consumer-group member on the events topic with manual offsets. On
//! assignment, each partition resumes from the offset stored in RocksDB with
//! the state it produced. Records are micro-batched (bounded by rows and a
//! linger time), run through the [`Processor`], and its outputs — dead
//! letters, alerts, review items, audit records — are published with
//! idempotent producers. Alerts and review items go first, as soon as the
//! rules have run and before the audit records are made, on a producer of
//! their own that sends at once (no linger), so a finding never waits
//! behind a batch's audit records; dead letters and audit records follow on
//! the bus's batching producer. Only when the broker has acknowledged all of them is
//! the batch's state, with its offsets, written in one atomic batch; then
//! the offsets are also committed to the group for lag monitoring.
//!
//! Cancellation (SIGTERM, Ctrl-C) finishes the batch in hand, flushes and
//! writes state before returning.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use vigil_schemas::bus::{ClientErrors, PolledProducer};
use vigil_schemas::{AuditRecord, bus, decode};

use crate::config::DetectorConfig;
use crate::metrics::DetectorMetrics;
use crate::processor::{Input, Output, Processor, bounded};
use crate::roles::RoleFile;
use crate::rules::RuleSet;
use crate::state::{ChainHead, RocksStore, StateStore, StateWrite};
use crate::{Error, Result};

/// How often rule files and the role mapping are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Quiet time on the events topic after which the state of acknowledged
/// batches and the deferred checkpoint are written (waiting for the broker's
/// acknowledgements, so not after every batch: records arriving meanwhile
/// would wait too).
const IDLE_CHECKPOINT: Duration = Duration::from_millis(50);
/// How often progress is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often librdkafka reports the events partitions' end offsets, from
/// which the consumer lag is worked out on the housekeeping tick.
const STATISTICS_INTERVAL: Duration = RELOAD_INTERVAL;
/// How long a stopping detector still waits for the broker to acknowledge
/// published outputs. Past it the service ends without committing those
/// batches (the next start processes their events again).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often a wait for acknowledgements (a broker outage) is logged.
const ACK_WAIT_REPORT: Duration = Duration::from_secs(10);
/// How long a metadata request may take once the broker has answered one.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting detector waits between attempts to reach the broker.
const BROKER_RETRY: Duration = Duration::from_secs(1);

/// How long a partition resumed at its stored offset may send nothing
/// before it is read from its beginning instead (see [`Resume`]).
const RESUME_PROBE: Duration = Duration::from_secs(2);

/// Where assigned partitions resume, shared by the consumer context (which
/// fills it at each assignment) and the service loop.
///
/// Each assigned partition is fetched from one record before the offset
/// stored with its state: that record, processed before, comes again and
/// is skipped, unless it shows the topic was recreated (see
/// [`Pipeline::accept`]). The tansu broker (0.6) on its memory storage
/// answers a fetch only from the first offset of a stored record batch:
/// asked for an offset inside the last one, it sends nothing, forever;
/// inside an earlier one, it answers from the next, skipping the rest of
/// that batch. So, unless
/// `resume_exact` (right for Apache Kafka), a partition that sends nothing
/// within [`RESUME_PROBE`] of its assignment is read again from an earlier
/// offset (see [`reread_from`]), one whose first record comes after the
/// stored offset is read from its beginning (see [`Pipeline::accept`]), and
/// records below the stored offset are skipped (counted as `skipped`). A
/// partition that is simply idle (on memory storage) is reread too: the
/// cost of the reread, never a stall.
#[derive(Debug, Default)]
struct Resume {
    /// Next offset to process per partition, from the state store.
    skip_below: HashMap<i32, i64>,
    /// Offset after the last record accepted per partition since the
    /// assignment: a record below it came again.
    accepted: HashMap<i32, i64>,
    /// Kafka timestamp (ms) of the newest record processed or accepted per
    /// partition, from the state store and then from each accepted record.
    /// A record that comes again (below the stored offset or `accepted`)
    /// but is newer than this was never processed: its topic was recreated
    /// and its offsets started again from 0 (see [`Pipeline::accept`]).
    newest: HashMap<i32, i64>,
    /// Partitions resumed at a stored offset that have sent nothing yet,
    /// with the time of their assignment.
    probing: HashMap<i32, Instant>,
    /// A stored offset that could not be read at an assignment. Its
    /// partition is left unassigned (read from its beginning, it would
    /// count every retained event into the baselines a second time) and the
    /// service stops on this error.
    unreadable: Option<Error>,
}

/// State shared with librdkafka's threads (the [`Resume`], the
/// [`Extent`]s), also after a thread panicked holding it: its maps stay
/// usable.
fn lock_shared<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A consumer lag for the log: a number, or `unknown` before the broker
/// has reported where the partitions end.
fn lag_text(lag: Option<u64>) -> String {
    lag.map_or_else(|| "unknown".to_owned(), |lag| lag.to_string())
}

/// What a consumed record that [`Pipeline::accept`] did not take says
/// about its partition.
#[derive(Debug)]
enum Reread {
    /// The broker skipped records after the stored offset.
    SkippedBatch { stored: i64 },
    /// The topic was recreated, as `why` says.
    Recreated {
        topic: String,
        partition: i32,
        why: String,
    },
}

/// Where an events partition's log starts and ends, as the broker last
/// told librdkafka (its statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: i64,
    end: i64,
}

/// Consumer context: resumes assigned partitions from the stored offsets,
/// and keeps the events partitions' [`Extent`]s from librdkafka's
/// statistics.
struct DetectorContext {
    store: Arc<dyn StateStore>,
    revoked: Arc<AtomicBool>,
    resume_exact: bool,
    resume: Arc<Mutex<Resume>>,
    events_topic: String,
    extents: Mutex<HashMap<i32, Extent>>,
    errors: ClientErrors,
}

impl DetectorContext {
    /// Events of the assigned partitions not yet processed: each
    /// partition's end less the next offset to process, the later of what
    /// this run `processed` and what the state store holds (an earlier run,
    /// or another instance before a rebalance), or less the partition's
    /// start when none of it was ever processed. `None` until the broker
    /// has given the end of at least one assigned partition.
    fn lag(&self, assigned: &[i32], processed: &HashMap<i32, i64>) -> Option<u64> {
        let extents = lock_shared(&self.extents);
        let mut lag = None;
        for partition in assigned {
            let Some(extent) = extents.get(partition) else {
                continue;
            };
            let stored = match self.store.offset(&self.events_topic, *partition) {
                Ok(stored) => stored,
                // Unknown progress: the partition is left out rather than
                // guessed at.
                Err(_) => continue,
            };
            let next = stored
                .max(processed.get(partition).copied())
                .unwrap_or(extent.start);
            *lag.get_or_insert(0) += extent.end.saturating_sub(next).max(0) as u64;
        }
        lag
    }
}

impl ClientContext for DetectorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.events_topic) else {
            return;
        };
        let mut extents = lock_shared(&self.extents);
        for (&partition, p) in &topic.partitions {
            // Partition -1 is librdkafka's bookkeeping for records not yet
            // given a partition. The end is the last stable offset (the
            // consumer reads committed records only), or the high
            // watermark when the broker gave none; -1 means not known yet.
            let end = if p.ls_offset >= 0 {
                p.ls_offset
            } else {
                p.hi_offset
            };
            if partition >= 0 && end >= 0 {
                extents.insert(
                    partition,
                    Extent {
                        start: p.lo_offset.max(0),
                        end,
                    },
                );
            }
        }
    }
}

impl ConsumerContext for DetectorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let mut resume = lock_shared(&self.resume);
                resume.skip_below.clear();
                resume.accepted.clear();
                resume.newest.clear();
                resume.probing.clear();
                let mut readable = TopicPartitionList::new();
                for (topic, partition) in &assigned {
                    let stored = match self.store.offset(topic, *partition) {
                        Ok(stored) => stored,
                        Err(e) => {
                            tracing::error!(%topic, partition, error = %e, "Cannot read the stored offset; the partition is not consumed and the detector stops");
                            resume.unreadable.get_or_insert(Error::State {
                                context: format!(
                                    "the stored offset of {topic}/{partition} cannot be read, so the partition cannot resume \
                                     (read from its beginning, its events would count twice in the baselines); \
                                     repair the state directory or move it away to rebuild the state"
                                ),
                                source: Box::new(e),
                            });
                            continue;
                        }
                    };
                    let start = match stored {
                        // One record early: the last one processed, read
                        // again (and skipped) to see whether the topic
                        // was recreated since (see `Pipeline::accept`).
                        Some(offset) => {
                            resume.skip_below.insert(*partition, offset);
                            if !self.resume_exact {
                                resume.probing.insert(*partition, Instant::now());
                            }
                            Offset::Offset((offset - 1).max(0))
                        }
                        // No state for it (a new volume, or a partition
                        // this instance never owned): the baselines are
                        // rebuilt from the retained events, not resumed at
                        // the offset the group committed for other state.
                        None => Offset::Beginning,
                    };
                    match self.store.newest(topic, *partition) {
                        Ok(Some(time_ms)) => {
                            resume.newest.insert(*partition, time_ms);
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%topic, partition, %error, "Cannot read the newest processed timestamp; a recreation of this partition's topic before now cannot be recognised");
                        }
                    }
                    tracing::info!(%topic, partition, ?stored, ?start, "Partition assigned");
                    if let Err(e) = readable.add_partition_offset(topic, *partition, start) {
                        tracing::error!(%topic, partition, error = %e, "Cannot set the start offset");
                    }
                }
                drop(resume);
                if let Err(e) = consumer.assign(&readable) {
                    tracing::error!(error = %e, "Assigning partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?revoked, "Partitions revoked");
                self.revoked.store(true, Ordering::SeqCst);
                // Nothing to probe (or seek) until the next assignment.
                lock_shared(&self.resume).probing.clear();
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "Unassigning partitions");
                }
            }
            other => tracing::error!(error = ?other, "Rebalance failed"),
        }
    }
}

/// Where a partition resumed at `stored` that sent nothing is read again,
/// given its high watermark if the broker gave it.
///
/// On tansu's memory storage the high watermark is the first offset of the
/// last record batch + 1; on its SQLite storage and on Apache Kafka it is
/// the last offset + 1. Either way `high - 1` is an offset the broker can
/// start at, so a stored offset at or past it (an idle partition, or one
/// stuck inside the last batch) is reread from there: one record, or the
/// last batch. A stored offset further back may be inside any batch, whose
/// start is unknown, so that partition is read from its beginning.
fn reread_from(stored: Option<i64>, high: Option<i64>) -> Offset {
    match (stored, high) {
        (Some(stored), Some(high)) if high > 0 && stored >= high - 1 => Offset::Offset(high - 1),
        _ => Offset::Beginning,
    }
}

/// Counters since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub batches: u64,
    /// Records below the stored offset, reread after an assignment (or
    /// below an offset already accepted).
    pub skipped: u64,
    /// Events partitions found recreated (offsets starting again from 0)
    /// and read again from their beginning (see [`Pipeline::accept`]).
    pub recreated: u64,
    /// Partitions read again from an earlier offset because nothing came
    /// from their stored offset (see [`Resume`]).
    pub reread: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub alerts: u64,
    pub review: u64,
    pub audit: u64,
    pub rule_errors: u64,
    /// Transient consumer errors (see [`consume_error_is_fatal`]).
    pub consume_errors: u64,
    /// Records consumed but not processed when their partitions were
    /// revoked: whoever owns the partitions next consumes them again from
    /// the stored offsets.
    pub handed_back: u64,
    /// Time spent processing batches (decode, baselines, rules, audit).
    pub process_time: Duration,
    /// Time spent handing outputs to the producer, including waits while
    /// its queue was full.
    pub publish_time: Duration,
    /// Time spent waiting for the broker to acknowledge earlier batches'
    /// outputs (more than the in-flight limit were pending) and writing
    /// their state.
    pub settle_time: Duration,
}

/// How long a tail read starting at an audit partition's last record waits
/// for it before reading the partition from its beginning instead. The
/// broker answers within its fetch wait (milliseconds) when it can start
/// there.
const TAIL_PROBE: Duration = Duration::from_secs(2);

/// Reads the last record of an audit partition, if any, starting at the
/// high watermark's offset minus one. That is the last record on Apache
/// Kafka and on tansu's SQLite storage, and the first record of the last
/// record batch on tansu's memory storage (whose high watermark is that
/// offset + 1); either way the read goes on past the watermark until the
/// partition is quiet. Unless `exact`, a broker that sends nothing from
/// there within [`TAIL_PROBE`] (one that cannot start inside a record
/// batch) is read from the partition's beginning instead, which takes
/// about 5 s per 100,000 records on tansu's SQLite storage.
fn audit_tail(
    brokers: &str,
    topic: &str,
    partition: i32,
    exact: bool,
) -> Result<Option<ChainHead>> {
    let consumer: BaseConsumer = bus::consumer_config(brokers, "vigil-detector-audit-tail")
        .create()
        .map_err(|e| Error::kafka("create audit tail reader", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("watermarks of {topic}/{partition}"), e))?;
    if high <= low {
        return Ok(None);
    }
    let tail = read_tail(&consumer, topic, partition, high, high - 1, !exact)?;
    Ok(tail.last.map(|record| {
        let mut hash = [0u8; 32];
        if record.hash.len() == 32 {
            hash.copy_from_slice(&record.hash);
        }
        ChainHead {
            seq: record.seq,
            hash,
            source_offset: record.source_offset,
        }
    }))
}

/// What [`read_tail`] found.
#[derive(Debug)]
struct Tail {
    last: Option<AuditRecord>,
    /// The read started again from the partition's beginning.
    from_beginning: bool,
}

/// Reads `topic/partition` from offset `start` until the partition is quiet
/// past `high` (its high watermark) and returns the last record. With
/// `fall_back`, a read that gets nothing within [`TAIL_PROBE`] starts again
/// from the partition's beginning.
fn read_tail(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    high: i64,
    start: i64,
    mut fall_back: bool,
) -> Result<Tail> {
    let assign = |offset: Offset| {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, offset)
            .map_err(|e| Error::kafka("build audit tail assignment", e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| Error::kafka("assign audit tail", e))
    };
    assign(Offset::Offset(start))?;
    // Read to the end: past the high watermark until the partition is
    // quiet, because tansu's memory storage (0.6) reports the high
    // watermark as the last record batch's first offset + 1, not the last
    // record's offset + 1.
    let idle_limit = Duration::from_secs(10);
    let quiet = Duration::from_millis(300);
    let mut last_progress = Instant::now();
    let mut tail = Tail {
        last: None,
        from_beginning: false,
    };
    let mut last_offset = -1;
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(10);
    loop {
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            tracing::info!(
                %topic,
                partition,
                at = last_offset,
                of = high,
                elapsed_s = started.elapsed().as_secs(),
                from_beginning = tail.from_beginning,
                "Reading the audit chain's tail"
            );
        }
        if fall_back && tail.last.is_none() && started.elapsed() >= TAIL_PROBE {
            tracing::warn!(
                %topic,
                partition,
                start,
                "The broker sent nothing from the audit partition's last offset; reading it from its beginning"
            );
            fall_back = false;
            tail.from_beginning = true;
            assign(Offset::Beginning)?;
            last_progress = Instant::now();
        }
        let reached_end = last_offset >= high - 1;
        let wait = if reached_end {
            quiet
        } else {
            Duration::from_millis(100)
        };
        let Some(message) = consumer.poll(wait) else {
            if reached_end {
                break;
            }
            if last_progress.elapsed() > idle_limit {
                return Err(Error::Internal {
                    what: format!(
                        "reading the tail of {topic}/{partition} stalled below offset {}",
                        high - 1
                    ),
                });
            }
            continue;
        };
        last_progress = Instant::now();
        let message =
            message.map_err(|e| Error::kafka(format!("read tail of {topic}/{partition}"), e))?;
        let payload = message.payload().unwrap_or_default();
        let record: AuditRecord = decode(payload).map_err(|e| Error::Internal {
            what: format!(
                "{topic}/{partition} offset {} is not an audit record: {e}",
                message.offset()
            ),
        })?;
        last_offset = message.offset();
        tail.last = Some(record);
    }
    Ok(tail)
}

fn partition_count<C: ConsumerContext, T: Consumer<C>>(
    consumer: &T,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
    let count = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum();
    if count == 0 {
        return Err(Error::UnknownTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        });
    }
    Ok(count)
}

/// Runs `attempt` until it succeeds or fails for a reason other than an
/// unreachable broker, once each [`BROKER_RETRY`], warning `what` when the
/// wait starts and then each minute. Ends with `give_up`'s error if that
/// comes first.
async fn until_broker_answers<T, Attempt>(
    brokers: &str,
    what: &str,
    give_up: impl Future<Output = Error>,
    mut attempt: impl FnMut() -> Attempt,
) -> Result<T>
where
    Attempt: Future<Output = Result<T>>,
{
    tokio::pin!(give_up);
    let started = Instant::now();
    let mut next_report = started;
    loop {
        match attempt().await {
            Err(Error::Kafka { source, .. }) if broker_unreachable(&source) => {
                let now = Instant::now();
                if now >= next_report {
                    next_report = now + Duration::from_secs(60);
                    tracing::warn!(
                        %brokers,
                        error = %source,
                        waited_s = now.duration_since(started).as_secs(),
                        "{what}; retrying every second"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(BROKER_RETRY) => {}
                    error = &mut give_up => return Err(error),
                }
            }
            answered => return answered,
        }
    }
}

/// Whether a request failed for want of a broker (down, restarting,
/// unreachable) rather than because of what it asked: a metadata request
/// that got no answer, or a consumer error librdkafka retries.
fn broker_unreachable(error: &KafkaError) -> bool {
    match error {
        KafkaError::MetadataFetch(code) => bus::is_transport(*code),
        KafkaError::MessageConsumption(_) => !consume_error_is_fatal(error),
        _ => false,
    }
}

/// The running service.
pub struct Pipeline {
    config: DetectorConfig,
    consumer: StreamConsumer<DetectorContext>,
    /// Dead letters and audit records (the bus's linger).
    producer: PolledProducer<Acks>,
    /// Alerts and review items, sent without linger.
    alert_producer: PolledProducer<Acks>,
    processor: Processor,
    revocations: Revocations,
    resume: Arc<Mutex<Resume>>,
    counters: Counters,
    /// The counters as OpenTelemetry metrics, brought up to date on the
    /// housekeeping tick and at the end.
    metrics: DetectorMetrics,
    /// Batches whose outputs are with the broker and whose state waits for
    /// their acknowledgements, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Next offset per events partition as last written to the state store.
    written: HashMap<i32, i64>,
    /// Next offset per events partition after the last batch processed
    /// (its outputs published or not yet), for the consumer lag.
    processed: HashMap<i32, i64>,
    /// Cancelled [`SHUTDOWN_GRACE`] after shutdown: stop waiting for the
    /// broker.
    give_up: CancellationToken,
    /// Fault injection for the crash tests: abort after publishing this
    /// batch's outputs, before writing its state (`VIGIL_TEST_ABORT_AFTER_PUBLISH`).
    abort_after_publish: Option<u64>,
}

/// Revocations the consumer context reports, as the service loop sees them.
struct Revocations {
    /// Set by the consumer context when partitions are revoked.
    revoked: Arc<AtomicBool>,
    /// A revocation was seen (and the records consumed before it handed
    /// back); the next batch first settles and forgets the old assignment.
    rebalanced: bool,
}

impl Revocations {
    /// After a revocation, drops the records consumed before it (`pending`)
    /// unprocessed: their partitions may now be another instance's, which
    /// reads them from the stored offsets, as does this one if it gets them
    /// back. Processing them here would race the new owner on the audit
    /// chain.
    fn hand_back(&mut self, counters: &mut Counters, pending: &mut Vec<Input>) {
        if !self.revoked.swap(false, Ordering::SeqCst) {
            return;
        }
        self.rebalanced = true;
        if !pending.is_empty() {
            counters.handed_back += pending.len() as u64;
            tracing::info!(
                records = pending.len(),
                "Partitions revoked: consumed records handed back unprocessed"
            );
            pending.clear();
        }
    }
}

/// A published record's acknowledgement: answered by the producer's
/// delivery-report thread.
type Ack = tokio::sync::oneshot::Receiver<std::result::Result<(), KafkaError>>;
type AckSender = Box<tokio::sync::oneshot::Sender<std::result::Result<(), KafkaError>>>;

/// Producer context: sends each record's delivery report to its [`Ack`].
#[derive(Default)]
struct Acks {
    errors: ClientErrors,
}

impl ClientContext for Acks {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report(&error, reason);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = AckSender;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: AckSender) {
        // The receiver is gone only when the detector stopped waiting.
        let _ = ack.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A record for `topic` whose delivery report answers the returned [`Ack`].
fn acked_record(topic: &str) -> (BaseRecord<'_, [u8], [u8], AckSender>, Ack) {
    let (ack, acked) = tokio::sync::oneshot::channel();
    (BaseRecord::with_opaque_to(topic, Box::new(ack)), acked)
}

/// Most batches published but not yet committed. The next batch is
/// processed while the broker acknowledges the previous ones' outputs;
/// beyond this many, the detector waits (backpressure).
const MAX_IN_FLIGHT: usize = 4;

/// A published batch: its acknowledgements and the state to write after them.
struct InFlight {
    batch: u64,
    acks: tokio::task::JoinHandle<std::result::Result<(), rdkafka::error::KafkaError>>,
    state: StateWrite,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Opens the state, loads rules and roles, checks the topics and joins
    /// the consumer group.
    pub async fn start(config: DetectorConfig) -> Result<Pipeline> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| Error::Config {
            what: config.state_dir.display().to_string(),
            reason: format!("cannot create the state directory: {e}"),
        })?;
        let store: Arc<dyn StateStore> = Arc::new(RocksStore::open(&config.state_dir)?);
        let (rules, errors) = RuleSet::load_dir(&config.rules_dir).await;
        for error in &errors {
            tracing::error!(%error, "Rule refused");
        }
        tracing::info!(rules = rules.len(), refused = errors.len(), dir = %config.rules_dir.display(), "Rules loaded");
        let roles = RoleFile::open(config.roles.as_deref())?;

        let revoked = Arc::new(AtomicBool::new(false));
        let resume = Arc::new(Mutex::new(Resume::default()));
        let context = DetectorContext {
            store: store.clone(),
            revoked: revoked.clone(),
            resume_exact: config.resume_exact,
            resume: resume.clone(),
            events_topic: config.events_topic.clone(),
            extents: Mutex::new(HashMap::new()),
            errors: ClientErrors::default(),
        };
        let mut consumer_config = bus::consumer_config(&config.brokers, &config.group);
        consumer_config.set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        );
        if let Some(instance) = &config.instance_id {
            consumer_config.set("group.instance.id", instance);
        }
        let consumer: StreamConsumer<DetectorContext> = consumer_config
            .create_with_context(context)
            .map_err(|e| Error::kafka("create consumer", e))?;
        // A detector started during a broker outage waits it out, in short
        // attempts so that a signal (main's select) ends the wait soon.
        let events = until_broker_answers(
            &config.brokers,
            "The broker does not answer (check --brokers if this goes on)",
            std::future::pending(),
            || async {
                partition_count(
                    &consumer,
                    &config.brokers,
                    &config.events_topic,
                    Duration::from_secs(2),
                )
            },
        )
        .await?;
        let audit = partition_count(
            &consumer,
            &config.brokers,
            &config.audit_topic,
            METADATA_TIMEOUT,
        )?;
        if audit < events {
            return Err(Error::Config {
                what: format!("topic {}", config.audit_topic),
                reason: format!(
                    "has {audit} partitions but {} has {events}; audit partition p holds the chain of events partition p, so give the audit topic at least {events}",
                    config.events_topic
                ),
            });
        }
        for topic in [
            &config.alerts_topic,
            &config.review_topic,
            &config.dlq_topic,
        ] {
            partition_count(&consumer, &config.brokers, topic, METADATA_TIMEOUT)?;
        }
        // Outputs never expire (`message.timeout.ms = 0`): through a broker
        // outage the idempotent producers retry until the broker takes them,
        // and the batches wait uncommitted meanwhile.
        let mut output_config = bus::producer_config(&config.brokers);
        output_config.set("message.timeout.ms", "0");
        let producer = PolledProducer::create(&output_config, Acks::default())
            .map_err(|e| Error::kafka("create producer", e))?;
        let alert_producer =
            PolledProducer::create(output_config.set("linger.ms", "0"), Acks::default())
                .map_err(|e| Error::kafka("create alert producer", e))?;
        consumer
            .subscribe(&[&config.events_topic])
            .map_err(|e| Error::kafka(format!("subscribe to {}", config.events_topic), e))?;
        let processor = Processor::new(
            store,
            rules,
            roles,
            config.learning_days,
            &config.events_topic,
        )
        .with_checkpoint_interval(config.checkpoint_interval)
        .with_clock_check(config.max_clock_skew);
        Ok(Pipeline {
            config,
            consumer,
            producer,
            alert_producer,
            processor,
            revocations: Revocations {
                revoked,
                rebalanced: false,
            },
            resume,
            counters: Counters::default(),
            metrics: DetectorMetrics::new(),
            in_flight: VecDeque::new(),
            written: HashMap::new(),
            processed: HashMap::new(),
            give_up: CancellationToken::new(),
            abort_after_publish: std::env::var("VIGIL_TEST_ABORT_AFTER_PUBLISH")
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }

    /// Runs until `shutdown` is cancelled (then drains) or a fatal error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Counters> {
        let give_up = self.give_up.clone();
        let stopping = shutdown.clone();
        let grace = tokio::spawn(async move {
            stopping.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            give_up.cancel();
        });
        let outcome = self.consume(shutdown).await;
        grace.abort();
        outcome
    }

    async fn consume(mut self, shutdown: CancellationToken) -> Result<Counters> {
        let mut pending: Vec<Input> = Vec::with_capacity(self.config.batch_rows);
        let mut deadline = tokio::time::Instant::now() + self.config.linger;
        let mut next_progress = Instant::now() + PROGRESS_INTERVAL;
        // Rule files and the role mapping are checked on a timer of their
        // own, loaded or not, so a changed rule is in force before the next
        // record arrives. The tick comes before records in the biased
        // select; it is ready once a second, so records never starve.
        let mut housekeeping = tokio::time::interval(RELOAD_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if !pending.is_empty() {
                        self.flush(std::mem::take(&mut pending)).await?;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                    self.flush(std::mem::take(&mut pending)).await?;
                }
                _ = housekeeping.tick() => {
                    self.metrics.record(&self.counters);
                    let lag = self.consumer_lag();
                    if let Some(lag) = lag {
                        self.metrics.record_lag(lag);
                    }
                    self.stop_on_unreadable_offset()?;
                    self.reload().await;
                    self.reread_stalled_partitions().await;
                    if Instant::now() >= next_progress {
                        next_progress = Instant::now() + PROGRESS_INTERVAL;
                        self.log_progress(lag);
                    }
                }
                message = self.consumer.recv() => {
                    if pending.is_empty() {
                        deadline = tokio::time::Instant::now() + self.config.linger;
                    }
                    // This record, then whatever else has already arrived (a
                    // fetch response brings many at once), without waiting.
                    let mut next = Some(message);
                    let mut restart = None;
                    while let Some(message) = next {
                        // A revocation happens inside `recv`: what was
                        // consumed before it goes back, what comes after
                        // belongs to the new assignment.
                        self.revocations.hand_back(&mut self.counters, &mut pending);
                        self.stop_on_unreadable_offset()?;
                        match message {
                            Ok(message) => {
                                match Self::accept(
                                    &self.resume,
                                    &mut self.counters,
                                    &message,
                                    &mut pending,
                                ) {
                                    None => {}
                                    Some(Reread::SkippedBatch { stored }) => {
                                        Self::reread_skipped_batch(
                                            &self.consumer,
                                            &mut self.counters,
                                            &message,
                                            stored,
                                        )?;
                                    }
                                    Some(recreated @ Reread::Recreated { .. }) => {
                                        // Handled below, once this record
                                        // (a borrow of the consumer) is let go.
                                        restart = Some(recreated);
                                        break;
                                    }
                                }
                            }
                            Err(e) => self.consume_error(e)?,
                        }
                        next = if pending.len() < self.config.batch_rows {
                            self.consumer.recv().now_or_never()
                        } else {
                            None
                        };
                    }
                    if let Some(Reread::Recreated { topic, partition, why }) = restart {
                        self.restart_partition(&topic, partition, &why, &mut pending)
                            .await?;
                    }
                    if pending.len() >= self.config.batch_rows
                        || (self.config.linger.is_zero() && !pending.is_empty())
                    {
                        self.flush(std::mem::take(&mut pending)).await?;
                    }
                }
                // Idle: write the state of batches still waiting for their
                // acknowledgements and the deferred checkpoint, so state and
                // group offsets catch up.
                _ = tokio::time::sleep(IDLE_CHECKPOINT),
                    if pending.is_empty()
                        && (!self.in_flight.is_empty() || self.processor.has_deferred()) => {
                    self.checkpoint_now().await?;
                }
            }
        }
        self.checkpoint_now().await?;
        for producer in [&self.alert_producer, &self.producer] {
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| Error::kafka("flush producer", e))?;
        }
        self.metrics.record(&self.counters);
        let lag = self.consumer_lag();
        if let Some(lag) = lag {
            self.metrics.record_lag(lag);
        }
        tracing::info!(?self.counters, consumer_lag = %lag_text(lag), "Stopped");
        Ok(self.counters)
    }

    /// Events of the assigned partitions not yet processed (see
    /// [`DetectorContext::lag`]).
    fn consumer_lag(&self) -> Option<u64> {
        let assignment = self.consumer.assignment().ok()?;
        let assigned: Vec<i32> = assignment
            .elements_for_topic(&self.config.events_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        self.consumer.context().lag(&assigned, &self.processed)
    }

    /// Logs the counters and `lag`, the consumer lag worked out on this
    /// housekeeping tick.
    fn log_progress(&self, lag: Option<u64>) {
        let c = self.counters;
        tracing::info!(
            consumer_lag = %lag_text(lag),
            batches = c.batches,
            events = c.events,
            alerts = c.alerts,
            review = c.review,
            audit = c.audit,
            dead_letters = c.dead_letters,
            rule_errors = c.rule_errors,
            consume_errors = c.consume_errors,
            handed_back = c.handed_back,
            skipped = c.skipped,
            recreated = c.recreated,
            reread = c.reread,
            process_ms = c.process_time.as_millis() as u64,
            publish_ms = c.publish_time.as_millis() as u64,
            settle_ms = c.settle_time.as_millis() as u64,
            "Progress"
        );
    }

    async fn reload(&mut self) {
        for outcome in self.processor.rules_mut().reload().await {
            match outcome {
                Ok(id) => tracing::info!(rule = %id, "Rule loaded"),
                Err(error) => {
                    tracing::error!(%error, "Rule refused; its previous version, if any, keeps running")
                }
            }
        }
        match self
            .processor
            .enricher_mut()
            .roles_mut()
            .reload_if_changed()
        {
            Ok(true) => tracing::info!("Role mapping reloaded"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "Role mapping refused; the previous one stays in force")
            }
        }
    }

    /// A consumer error: fatal ones end the service; the others (a broker
    /// connection lost, a leader moving) are librdkafka reporting what it
    /// retries by itself, so they are counted and logged and consuming goes
    /// on from the same offsets.
    fn consume_error(&mut self, error: KafkaError) -> Result<()> {
        if consume_error_is_fatal(&error) {
            return Err(Error::kafka("consume", error));
        }
        self.counters.consume_errors += 1;
        tracing::warn!(%error, total = self.counters.consume_errors, "Consumer error; librdkafka retries");
        Ok(())
    }

    /// Adds a consumed record to the pending batch, unless it is below the
    /// offset the state already holds for its partition or below one
    /// already accepted: such a record is skipped, unless it is newer than
    /// every record processed from its partition.
    ///
    /// Returns, without adding the record, what the partition needs
    /// instead:
    /// - [`Reread::SkippedBatch`] when it is the first record of a partition
    ///   resumed at the stored offset and comes after it: tansu's memory
    ///   storage, asked for an offset inside a record batch other than the
    ///   last, answers from the next batch, skipping the rest of that one
    ///   (see [`Pipeline::reread_skipped_batch`]);
    /// - [`Reread::Recreated`] when it comes below the stored or accepted
    ///   offset but is newer than anything processed: it cannot be a record
    ///   processed before, so the topic was deleted and created again (on
    ///   tansu's memory storage, by a broker restart) and its offsets
    ///   started again from 0 (see [`Pipeline::restart_partition`]). Left
    ///   alone, the new topic's records below the old offset would be
    ///   skipped and those past it left out of the audit trail. A producer
    ///   whose clock is behind can stamp a new record older than the newest
    ///   processed; the first one stamped newer is recognised.
    fn accept(
        resume: &Mutex<Resume>,
        counters: &mut Counters,
        message: &BorrowedMessage<'_>,
        pending: &mut Vec<Input>,
    ) -> Option<Reread> {
        let partition = message.partition();
        let offset = message.offset();
        let time_ms = message.timestamp().to_millis();
        let mut resume = lock_shared(resume);
        let first = resume.probing.remove(&partition).is_some();
        let stored = resume.skip_below.get(&partition).copied();
        if let Some(stored) = stored
            && first
            && offset > stored
        {
            return Some(Reread::SkippedBatch { stored });
        }
        let next = stored.max(resume.accepted.get(&partition).copied());
        if let Some(next) = next
            && offset < next
        {
            if let (Some(time_ms), Some(&newest)) = (time_ms, resume.newest.get(&partition))
                && time_ms > newest
            {
                return Some(Reread::Recreated {
                    topic: message.topic().to_owned(),
                    partition,
                    why: format!(
                        "offset {offset} came again after offset {} was processed, stamped {} while the newest record processed was stamped {}",
                        next - 1,
                        crate::alert_text::utc_millis(time_ms),
                        crate::alert_text::utc_millis(newest),
                    ),
                });
            }
            counters.skipped += 1;
            return None;
        }
        resume.accepted.insert(partition, offset + 1);
        if let Some(time_ms) = time_ms {
            let newest = resume.newest.entry(partition).or_insert(time_ms);
            *newest = (*newest).max(time_ms);
        }
        drop(resume);
        pending.push(Input {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        });
        None
    }

    /// Reads from its beginning a partition whose first record after being
    /// resumed at `stored` came from further on (see [`Pipeline::accept`]),
    /// so the records in between are processed rather than lost. Records
    /// below `stored` are skipped as usual; the record in hand comes again.
    fn reread_skipped_batch(
        consumer: &StreamConsumer<DetectorContext>,
        counters: &mut Counters,
        message: &BorrowedMessage<'_>,
        stored: i64,
    ) -> Result<()> {
        let topic = message.topic();
        let partition = message.partition();
        consumer
            .seek(topic, partition, Offset::Beginning, Duration::ZERO)
            .map_err(|e| {
                Error::kafka(
                    format!(
                        "read {topic}/{partition} from its beginning: resumed at {stored}, the broker sent {} first",
                        message.offset()
                    ),
                    e,
                )
            })?;
        counters.reread += 1;
        tracing::info!(
            %topic,
            partition,
            resumed_at = stored,
            first = message.offset(),
            "The broker skipped records after the stored offset (tansu's memory storage, inside a record batch); reading the partition from its beginning and skipping what was processed"
        );
        Ok(())
    }

    /// The error of a stored offset the last assignment could not read:
    /// the detector stops on it rather than read that partition from its
    /// beginning (see [`Resume::unreadable`]).
    fn stop_on_unreadable_offset(&self) -> Result<()> {
        let unreadable = lock_shared(&self.resume).unreadable.take();
        unreadable.map_or(Ok(()), Err)
    }

    /// Reads again, from an earlier offset, the partitions resumed at a
    /// stored offset that sent nothing within [`RESUME_PROBE`] (see
    /// [`Resume`]; with `resume_exact` no partition is probed).
    async fn reread_stalled_partitions(&mut self) {
        let stalled: Vec<(i32, Option<i64>)> = {
            let mut resume = lock_shared(&self.resume);
            let stalled: Vec<i32> = resume
                .probing
                .iter()
                .filter(|(_, since)| since.elapsed() >= RESUME_PROBE)
                .map(|(&partition, _)| partition)
                .collect();
            stalled
                .into_iter()
                .map(|partition| {
                    resume.probing.remove(&partition);
                    (partition, resume.skip_below.get(&partition).copied())
                })
                .collect()
        };
        if stalled.is_empty() {
            return;
        }
        let partitions: Vec<i32> = stalled.iter().map(|(partition, _)| *partition).collect();
        let highs = self.high_watermarks(partitions).await;
        let topic = &self.config.events_topic;
        for ((partition, resumed_at), high) in stalled.into_iter().zip(highs) {
            let from = reread_from(resumed_at, high);
            match self.consumer.seek(topic, partition, from, Duration::ZERO) {
                Ok(()) => {
                    self.counters.reread += 1;
                    tracing::info!(
                        %topic,
                        partition,
                        ?resumed_at,
                        ?high,
                        ?from,
                        "Nothing came from the stored offset (idle, or inside a record batch tansu cannot start in); reading the partition again from an earlier offset and skipping what was processed"
                    );
                }
                Err(error) => {
                    tracing::warn!(
                        %topic,
                        partition,
                        %error,
                        "Cannot read the partition again yet; trying again"
                    );
                    lock_shared(&self.resume)
                        .probing
                        .insert(partition, Instant::now());
                }
            }
        }
    }

    /// The high watermarks of events partitions, asked of the broker by a
    /// reader of its own off the async threads; `None` for a partition
    /// whose watermark did not come within [`RESUME_PROBE`].
    async fn high_watermarks(&self, partitions: Vec<i32>) -> Vec<Option<i64>> {
        let brokers = self.config.brokers.clone();
        let topic = self.config.events_topic.clone();
        let count = partitions.len();
        let asked = tokio::task::spawn_blocking(move || {
            let reader: BaseConsumer =
                match bus::consumer_config(&brokers, "vigil-detector-watermarks").create() {
                    Ok(reader) => reader,
                    Err(error) => {
                        tracing::warn!(%error, "Cannot create a watermark reader");
                        return vec![None; partitions.len()];
                    }
                };
            partitions
                .into_iter()
                .map(|partition| {
                    match reader.fetch_watermarks(&topic, partition, RESUME_PROBE) {
                        Ok((_, high)) => Some(high),
                        Err(error) => {
                            tracing::warn!(%topic, partition, %error, "Cannot read the high watermark; the partition is read from its beginning");
                            None
                        }
                    }
                })
                .collect()
        })
        .await;
        asked.unwrap_or_else(|error| {
            tracing::error!(%error, "The watermark reader panicked");
            vec![None; count]
        })
    }

    async fn flush(&mut self, mut inputs: Vec<Input>) -> Result<()> {
        // A revocation during a `recv` the select dropped is seen here.
        self.revocations.hand_back(&mut self.counters, &mut inputs);
        if std::mem::take(&mut self.revocations.rebalanced) {
            // Write what earlier batches produced before forgetting them.
            self.checkpoint_now().await?;
            self.processor.reset_after_rebalance();
            // The new assignment may have read the stored offsets before
            // that write: records up to what was just written are already
            // in the state and must not be processed again, neither those
            // still to come nor those consumed since the assignment.
            let mut resume = lock_shared(&self.resume);
            for (&partition, &next) in &self.written {
                resume
                    .skip_below
                    .entry(partition)
                    .and_modify(|at| *at = (*at).max(next))
                    .or_insert(next);
            }
            let consumed = inputs.len();
            inputs.retain(|input| {
                resume
                    .skip_below
                    .get(&input.partition)
                    .is_none_or(|&next| input.offset >= next)
            });
            drop(resume);
            self.counters.skipped += (consumed - inputs.len()) as u64;
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let mut partitions = HashSet::new();
        for input in &inputs {
            partitions.insert(input.partition);
            let next = self.processed.entry(input.partition).or_insert(0);
            *next = (*next).max(input.offset + 1);
        }
        self.open_chains(partitions.iter().copied()).await?;

        // Findings go out as soon as the rules have run; the audit records
        // are made and published after them.
        let now_ns = now_unix_ns();
        let started = Instant::now();
        let detected = self.processor.detect(inputs, now_ns).await?;
        self.counters.process_time += started.elapsed();
        let started = Instant::now();
        let mut acks = self.publish_findings(&detected.output).await?;
        self.counters.publish_time += started.elapsed();
        let started = Instant::now();
        let mut output = self.processor.finish(detected);
        output.state.newest = self.newest_of(&partitions);
        self.counters.process_time += started.elapsed();
        let started = Instant::now();
        for (rule, error) in &output.rule_errors {
            tracing::error!(%rule, %error, "Rule failed on a batch");
        }
        acks.extend(self.publish_records(&output).await?);
        self.counters.publish_time += started.elapsed();
        self.counters.batches += 1;
        self.counters.events += output.events as u64;
        self.counters.dead_letters += output.dead_letters.len() as u64;
        self.counters.alerts += output.alerts.len() as u64;
        self.counters.review += output.review.len() as u64;
        self.counters.audit += output.audit.len() as u64;
        self.counters.rule_errors += output.rule_errors.len() as u64;
        self.in_flight.push_back(InFlight {
            batch: self.counters.batches,
            acks: tokio::spawn(async move {
                for result in futures::future::join_all(acks).await {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(KafkaError::Canceled),
                    }
                }
                Ok(())
            }),
            state: output.state,
        });
        let started = Instant::now();
        let settled = self.settle(MAX_IN_FLIGHT).await;
        self.counters.settle_time += started.elapsed();
        settled
    }

    /// Opens the audit chains of `partitions` not opened since the last
    /// rebalance, from the state and the audit topic's tail.
    async fn open_chains(&mut self, partitions: impl IntoIterator<Item = i32>) -> Result<()> {
        for partition in self.processor.unopened(partitions) {
            let head = self.read_audit_tail(partition).await?;
            tracing::info!(partition, ?head, "Audit chain tail read from the topic");
            self.processor.open_chain(partition, head)?;
        }
        Ok(())
    }

    /// The newest record timestamps of `partitions`, to store with a batch
    /// (see [`Resume::newest`]).
    fn newest_of(&self, partitions: &HashSet<i32>) -> Vec<(String, i32, i64)> {
        let resume = lock_shared(&self.resume);
        partitions
            .iter()
            .filter_map(|p| {
                let time_ms = resume.newest.get(p)?;
                Some((self.config.events_topic.clone(), *p, *time_ms))
            })
            .collect()
    }

    /// Reads events partition `partition` again from its beginning after
    /// [`Pipeline::accept`] found its topic recreated, as `why` says.
    /// What was accepted before is processed and everything processed is
    /// written first: it belongs to the old topic. Then the partition's
    /// audit chain records a gap (records the old topic received after the
    /// last one read are lost to the trail), every record of the new
    /// partition is processed and audited, and its offsets replace the old
    /// ones in the state.
    async fn restart_partition(
        &mut self,
        topic: &str,
        partition: i32,
        why: &str,
        pending: &mut Vec<Input>,
    ) -> Result<()> {
        if !pending.is_empty() {
            self.flush(std::mem::take(pending)).await?;
        }
        self.checkpoint_now().await?;
        self.open_chains([partition]).await?;
        self.processor.restart_source(
            partition,
            &format!("{topic}/{partition}: {why}"),
            now_unix_ns(),
        );
        self.written.remove(&partition);
        self.processed.remove(&partition);
        let mut resume = lock_shared(&self.resume);
        resume.skip_below.remove(&partition);
        resume.accepted.remove(&partition);
        resume.newest.remove(&partition);
        resume.probing.remove(&partition);
        drop(resume);
        self.consumer
            .seek(topic, partition, Offset::Beginning, Duration::ZERO)
            .map_err(|e| {
                Error::kafka(
                    format!("read {topic}/{partition} from its beginning after it was recreated"),
                    e,
                )
            })?;
        self.counters.recreated += 1;
        tracing::error!(
            %topic,
            partition,
            %why,
            "The events topic was recreated (its offsets started again from 0); reading the partition from its beginning. Its audit chain records a gap: events the old topic received after the last one read are lost to the trail"
        );
        Ok(())
    }

    /// The last audit record of `partition`, read again each second while
    /// the broker cannot be reached, until the shutdown grace runs out.
    async fn read_audit_tail(&self, partition: i32) -> Result<Option<ChainHead>> {
        let _waiting = self.metrics.broker_wait.begin();
        until_broker_answers(
            &self.config.brokers,
            &format!("Cannot read the tail of audit partition {partition}"),
            async {
                self.give_up.cancelled().await;
                // The batch in hand is not committed either.
                self.unacknowledged(1)
            },
            || {
                let brokers = self.config.brokers.clone();
                let topic = self.config.audit_topic.clone();
                let exact = self.config.resume_exact;
                async move {
                    tokio::task::spawn_blocking(move || {
                        audit_tail(&brokers, &topic, partition, exact)
                    })
                    .await
                    .map_err(|e| Error::Internal {
                        what: format!("audit tail reader panicked: {e}"),
                    })?
                }
            },
        )
        .await
    }

    /// Commits, in order, every published batch whose outputs the broker
    /// acknowledged, and waits for the oldest until at most `keep` remain.
    async fn settle(&mut self, keep: usize) -> Result<()> {
        while let Some(front) = self.in_flight.front() {
            if self.in_flight.len() <= keep && !front.acks.is_finished() {
                break;
            }
            let Some(mut done) = self.in_flight.pop_front() else {
                break;
            };
            self.acknowledged(&mut done).await?;
            self.commit_batch(done.batch, done.state)?;
        }
        Ok(())
    }

    /// Waits for a published batch's acknowledgements, however long the
    /// broker takes (logging the wait), until the shutdown grace runs out.
    async fn acknowledged(&self, done: &mut InFlight) -> Result<()> {
        let started = Instant::now();
        let _waiting = self.metrics.broker_wait.begin();
        loop {
            tokio::select! {
                joined = &mut done.acks => {
                    return joined
                        .map_err(|e| Error::Internal {
                            what: format!("acknowledgement task failed: {e}"),
                        })?
                        .map_err(|e| Error::kafka("publish output", e));
                }
                _ = self.give_up.cancelled() => return Err(self.unacknowledged(1)),
                _ = tokio::time::sleep(ACK_WAIT_REPORT) => tracing::warn!(
                    batch = done.batch,
                    waited_s = started.elapsed().as_secs(),
                    brokers = %self.config.brokers,
                    "The broker has not acknowledged a batch's outputs yet; consuming waits for it"
                ),
            }
        }
    }

    /// The error of a shutdown that gave up on the broker; `more` batches
    /// besides those still in flight went unacknowledged.
    fn unacknowledged(&self, more: usize) -> Error {
        Error::Unacknowledged {
            batches: self.in_flight.len() + more,
            brokers: self.config.brokers.clone(),
        }
    }

    /// Waits for every published batch's acknowledgement, writes their
    /// state, then the checkpoint of baselines and offsets deferred so far.
    async fn checkpoint_now(&mut self) -> Result<()> {
        self.settle(0).await?;
        if self.processor.has_deferred() {
            let state = self.processor.checkpoint();
            self.write_state(state)?;
        }
        Ok(())
    }

    /// Writes an acknowledged batch's state and offsets.
    fn commit_batch(&mut self, batch: u64, state: StateWrite) -> Result<()> {
        if self.abort_after_publish == Some(batch) {
            tracing::error!(
                batch,
                "Fault injection: aborting after publishing, before writing state"
            );
            std::process::abort();
        }
        self.write_state(state)
    }

    /// Writes state and offsets to the store, then the offsets to the group.
    fn write_state(&mut self, state: StateWrite) -> Result<()> {
        let offsets = state.offsets.clone();
        self.processor.commit(state)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            if topic == self.config.events_topic {
                self.written.insert(partition, offset);
            }
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        if let Err(e) = self
            .consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            tracing::warn!(error = %e, "Committing offsets to the group (state already holds them)");
        }
        Ok(())
    }

    /// Hands a batch's alerts and review items to the alert producer and
    /// returns their pending acknowledgements. A full producer queue makes
    /// it wait (backpressure), never drops anything.
    async fn publish_findings(&self, output: &Output) -> Result<Vec<Ack>> {
        let config = &self.config;
        let mut sends = Vec::new();

        for (topic, alerts) in [
            (&config.alerts_topic, &output.alerts),
            (&config.review_topic, &output.review),
        ] {
            for alert in alerts {
                let json = serde_json::to_vec(alert).map_err(|e| Error::Internal {
                    what: format!("serializing alert: {e}"),
                })?;
                let (record, acked) = acked_record(topic);
                let record = record
                    .key(alert.unmapped.vigil.principal.as_bytes())
                    .payload(json.as_slice());
                self.enqueue(&self.alert_producer, record).await?;
                sends.push(acked);
            }
        }
        Ok(sends)
    }

    /// Hands a batch's dead letters and audit records to the producer and
    /// returns their pending acknowledgements, waiting while its queue is
    /// full.
    async fn publish_records(&self, output: &Output) -> Result<Vec<Ack>> {
        let config = &self.config;
        let mut sends = Vec::new();

        for letter in &output.dead_letters {
            let (key, payload, omitted) = dead_letter_body(&letter.input);
            let error = bounded(&letter.error, MAX_ERROR_HEADER);
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "vigil.source.topic",
                    value: Some(config.events_topic.as_str()),
                })
                .insert(Header {
                    key: "vigil.source.partition",
                    value: Some(&letter.input.partition.to_string()),
                })
                .insert(Header {
                    key: "vigil.source.offset",
                    value: Some(&letter.input.offset.to_string()),
                })
                .insert(Header {
                    key: "vigil.error",
                    value: Some(error),
                });
            if let Some(omitted) = &omitted {
                headers = headers.insert(Header {
                    key: "vigil.omitted",
                    value: Some(omitted.as_str()),
                });
            }
            let (record, acked) = acked_record(&config.dlq_topic);
            let mut record = record.headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            self.enqueue(&self.producer, record).await?;
            sends.push(acked);
        }

        for audit in &output.audit {
            let bytes = vigil_schemas::encode(audit);
            let (record, acked) = acked_record(&config.audit_topic);
            let record = record
                .partition(audit.partition)
                .key(audit.principal.as_bytes())
                .payload(bytes.as_slice());
            self.enqueue(&self.producer, record).await?;
            sends.push(acked);
        }
        Ok(sends)
    }

    /// Queues one record; while the producer's queue is full, waits.
    async fn enqueue(
        &self,
        producer: &PolledProducer<Acks>,
        mut record: BaseRecord<'_, [u8], [u8], AckSender>,
    ) -> Result<()> {
        let mut waiting = None;
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    waiting.get_or_insert_with(|| self.metrics.broker_wait.begin());
                    if self.give_up.is_cancelled() {
                        return Err(self.unacknowledged(1));
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(Error::kafka("publish output", e)),
            }
        }
    }
}

/// Most bytes of key and value a dead letter carries: librdkafka's
/// default `message.max.bytes` (1,000,000) less room for the headers. A
/// record bigger than that could be consumed (the broker's limit may be
/// higher) but not republished, and a refused publish would end the
/// service and replay the same record forever.
const MAX_DEAD_LETTER_BODY: usize = 990_000;
/// Most bytes of the `vigil.error` header.
const MAX_ERROR_HEADER: usize = 4096;

/// The key and value a dead letter republishes, and what it leaves out:
/// a key or value that would make the record too big to publish is
/// replaced by a `vigil.omitted` header giving its size (the original stays
/// on the source topic at the offset the headers name).
fn dead_letter_body(input: &Input) -> (Option<&[u8]>, Option<&[u8]>, Option<String>) {
    let key = input.key.as_deref();
    let payload = input.payload.as_deref();
    let key_len = key.map_or(0, <[u8]>::len);
    let payload_len = payload.map_or(0, <[u8]>::len);
    if key_len + payload_len <= MAX_DEAD_LETTER_BODY {
        return (key, payload, None);
    }
    let mut omitted = Vec::new();
    let key = if key_len <= MAX_DEAD_LETTER_BODY / 100 {
        key
    } else {
        omitted.push(format!("key ({key_len} bytes)"));
        None
    };
    // Without the key, a small value fits.
    let kept_key = key.map_or(0, <[u8]>::len);
    let payload = if kept_key + payload_len <= MAX_DEAD_LETTER_BODY {
        payload
    } else {
        omitted.insert(0, format!("value ({payload_len} bytes)"));
        None
    };
    let omitted = format!(
        "{} too big to republish; read the original at the source topic, partition and offset",
        omitted.join(" and ")
    );
    (key, payload, Some(omitted))
}

/// Whether a consumer error ends the service: librdkafka's fatal errors
/// (the consumer cannot go on) and authorization failures, which no retry
/// mends. A topic or partition librdkafka cannot find is not fatal: it is
/// also what a broker reports while a new topic is being created.
pub(crate) fn consume_error_is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::Fatal
        ),
        _ => false,
    }
}

/// Wall-clock now in nanoseconds since the epoch.
pub fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_counts_from_the_later_of_processed_and_stored_offsets() {
        let dir = tempfile::tempdir().expect("state dir");
        let store = RocksStore::open(dir.path()).expect("open the store");
        store
            .commit(StateWrite {
                offsets: vec![("events".into(), 0, 40), ("events".into(), 1, 10)],
                ..StateWrite::default()
            })
            .expect("store offsets");
        let context = DetectorContext {
            store: Arc::new(store),
            revoked: Arc::new(AtomicBool::new(false)),
            resume_exact: false,
            resume: Arc::new(Mutex::new(Resume::default())),
            events_topic: "events".into(),
            extents: Mutex::new(HashMap::new()),
            errors: ClientErrors::default(),
        };
        // Nothing known of any end yet: no figure rather than a false 0.
        assert_eq!(context.lag(&[0, 1], &HashMap::new()), None);

        context
            .extents
            .lock()
            .expect("no thread panicked holding the extents")
            .extend([
                (0, Extent { start: 0, end: 100 }),
                (1, Extent { start: 0, end: 30 }),
                (2, Extent { start: 5, end: 25 }),
                (3, Extent { start: 0, end: 7 }),
            ]);
        // Partition 0: stored 40, processed 70 in this run → 30 left.
        // Partition 1: stored 10, processed 4 before (another instance
        // went further) → 20 left. Partition 2: never processed → from its
        // start, 20 left. Partition 3 is not assigned; partition 4 has no
        // known end.
        let processed = HashMap::from([(0, 70), (1, 4)]);
        assert_eq!(context.lag(&[0, 1, 2, 4], &processed), Some(30 + 20 + 20));
        // Caught up, or past an end the broker reported earlier.
        let processed = HashMap::from([(0, 100), (1, 31), (2, 25)]);
        assert_eq!(context.lag(&[0, 1, 2], &processed), Some(0));
    }

    #[test]
    fn only_errors_no_retry_mends_end_the_service() {
        for transient in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            let error = KafkaError::MessageConsumption(transient);
            assert!(!consume_error_is_fatal(&error), "{error}");
        }
        for fatal in [
            KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal),
            KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed),
        ] {
            assert!(consume_error_is_fatal(&fatal), "{fatal}");
        }
    }

    #[test]
    fn a_stalled_partition_is_reread_from_the_last_offset_the_broker_can_start_at() {
        // Idle, or inside the last batch (memory storage: high = its first
        // offset + 1): from high - 1.
        assert_eq!(reread_from(Some(500), Some(500)), Offset::Offset(499));
        assert_eq!(reread_from(Some(400), Some(251)), Offset::Offset(250));
        assert_eq!(reread_from(Some(250), Some(251)), Offset::Offset(250));
        // Inside an earlier batch, whose start is unknown.
        assert_eq!(reread_from(Some(249), Some(251)), Offset::Beginning);
        // No watermark, or an empty partition.
        assert_eq!(reread_from(Some(400), None), Offset::Beginning);
        assert_eq!(reread_from(Some(0), Some(0)), Offset::Beginning);
        assert_eq!(reread_from(None, Some(10)), Offset::Beginning);
    }

    fn input(key: usize, payload: usize) -> Input {
        Input {
            partition: 0,
            offset: 7,
            key: Some(vec![b'k'; key]),
            payload: Some(vec![b'v'; payload]),
        }
    }

    #[test]
    fn a_dead_letter_too_big_to_republish_names_what_it_left_out() {
        let small = input(10, 1000);
        assert_eq!(
            dead_letter_body(&small),
            (Some(&[b'k'; 10][..]), Some(&[b'v'; 1000][..]), None)
        );

        let big_value = input(10, 999_995);
        let (key, payload, omitted) = dead_letter_body(&big_value);
        assert_eq!(key.map(<[u8]>::len), Some(10), "a short key is kept");
        assert_eq!(payload, None);
        let omitted = omitted.expect("says what is left out");
        assert!(
            omitted.starts_with("value (999995 bytes) too big"),
            "{omitted}"
        );

        // Without its big key, the value fits and is kept.
        let big_key = input(995_000, 100);
        let (key, payload, omitted) = dead_letter_body(&big_key);
        assert_eq!((key, payload.map(<[u8]>::len)), (None, Some(100)));
        assert!(
            omitted
                .as_deref()
                .is_some_and(|o| o.starts_with("key (995000 bytes) too big")),
            "only the key is named: {omitted:?}"
        );
        let big_value_long_key = input(600_000, 600_000);
        let (key, payload, omitted) = dead_letter_body(&big_value_long_key);
        assert_eq!((key, payload.map(<[u8]>::len)), (None, Some(600_000)));
        assert!(omitted.is_some_and(|o| o.starts_with("key (600000 bytes) too big")));

        let big_both = input(995_000, 995_000);
        let (key, payload, omitted) = dead_letter_body(&big_both);
        assert_eq!((key, payload), (None, None));
        assert!(
            omitted.is_some_and(|o| o.starts_with("value (995000 bytes) and key (995000 bytes)")),
            "both named"
        );
    }

    #[test]
    fn bounded_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("ab\u{e9}cd", 3), "ab", "the accent is two bytes");
        assert_eq!(bounded("ab\u{e9}cd", 4), "ab\u{e9}");
    }

    /// Publishes `count` audit records of one chain to partition 0 of
    /// `topic`, `per_send` at a time (each lot becomes a record batch or
    /// a few).
    async fn publish_chain(
        broker: &vigil_schemas::testkit::TestBroker,
        topic: &str,
        count: i64,
        per_send: i64,
    ) {
        let producer = broker.producer();
        let mut chains = crate::audit_chain::AuditChains::default();
        let event = vigil_schemas::testkit::file_event(
            "alice",
            vigil_schemas::Kind::Open,
            "/srv/phi/a",
            0,
            0,
        );
        for lot in 0..count / per_send {
            let payloads: Vec<Vec<u8>> = (0..per_send)
                .map(|i| {
                    let record = chains
                        .append(0, &event, "alice", "events", lot * per_send + i, 0)
                        .expect("a new offset is appended");
                    vigil_schemas::encode(&record)
                })
                .collect();
            let sends = payloads.iter().map(|payload| {
                producer.send(
                    rdkafka::producer::FutureRecord::<(), _>::to(topic)
                        .partition(0)
                        .payload(payload),
                    Duration::from_secs(30),
                )
            });
            for result in futures::future::join_all(sends).await {
                result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tail_is_read_from_the_last_offset_or_else_from_the_beginning() {
        let broker = vigil_schemas::testkit::TestBroker::start();
        let topic = broker.topic("audit.tail", 1).await;
        publish_chain(&broker, &topic, 300, 100).await;
        let consumer: BaseConsumer = bus::consumer_config(broker.bootstrap(), "tail-test")
            .create()
            .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks");

        let tail = read_tail(&consumer, &topic, 0, high, high - 1, true).expect("tail read");
        assert_eq!(
            tail.last.map(|r| r.seq),
            Some(299),
            "{topic}: high watermark {high}"
        );
        assert!(!tail.from_beginning, "read from offset {}", high - 1);

        // tansu's memory storage reports the high watermark as the last
        // batch's first offset + 1, and cannot start a fetch inside a batch:
        // from `high` (inside the last batch) nothing comes, and the read
        // starts again from the beginning.
        assert!(
            high <= 299,
            "the last record batch holds more than one record: high watermark {high}"
        );
        let tail = read_tail(&consumer, &topic, 0, high, high, true).expect("tail read");
        assert_eq!(tail.last.map(|r| r.seq), Some(299));
        assert!(
            tail.from_beginning,
            "read from offset {high} needed the beginning"
        );
    }
}
