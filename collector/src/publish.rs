//! From enriched events to the bus: sequence numbers, the bounded queue,
//! gap events, and the idempotent Kafka producer.
//!
//! [`Outbox`] numbers events in the order they are queued (the per-host
//! sequence) and puts them on a bounded channel without ever blocking the
//! ring-buffer reader. When the channel is full (the broker is slow or down
//! for longer than the queue covers) events are dropped, counted, and
//! reported by a `gap` event as soon as there is room again. Kernel drops
//! become `gap` events the same way.
//!
//! [`publish`] takes events off the channel, encodes them (Avro, single
//! object encoding) and hands them to librdkafka keyed by principal, with
//! the idempotent `acks=all` settings from `vigil_schemas::bus` and no
//! message timeout, so a broker outage delays delivery instead of losing
//! it. When librdkafka's own queue is full it waits: the backlog then grows
//! in the channel, where it is reported. Events refused for good (a topic
//! that does not exist, a record the broker will not take) are collected in
//! [`DeliveryStats`] and reported by a `delivery_failed` gap event. A
//! refused gap event's losses are carried into the next such gap, so they
//! are reported once the topic takes events again.
//!
//! A *fatal* producer error (the idempotent producer's sequence broke, for
//! instance because the broker lost records it had acknowledged) leaves a
//! librdkafka producer that refuses everything. [`publish`] then replaces it
//! with a new one (see [`BusProducer`]) and sends again, in sequence order,
//! the events the old one had queued but never sent; only events that were
//! on the wire when the error came and were not acknowledged are lost, and
//! they are reported like any other refusal.
//!
//! So is a producer whose identity the broker refuses without librdkafka
//! calling it fatal (`ProducerFenced`, an unknown producer id, a sequence
//! out of order: an events topic deleted and created again does this).
//! The refused events are reported; on Apache Kafka the new producer's id
//! lets the next ones through (tansu 0.6 refuses the new one too; see
//! docs/collector.md).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_schemas::bus::ClientErrors;
use vigil_schemas::{Event, Gap, Kind};

use crate::error::Result;

/// Why events were lost, as the gap event's `reason`.
pub const KERNEL_RINGBUF_FULL: &str = "kernel_ringbuf_full";
/// Watched descriptors the kernel could not track (its table of them was
/// full): each one's read and write roll-ups are lost. `lost` counts the
/// descriptors; how many roll-up events that is is not known.
pub const KERNEL_TRACKING_FULL: &str = "kernel_tracking_full";
/// Program runs the kernel skipped because another BPF program was running
/// on the same CPU (see `Probes::new_skips`). `lost` counts the runs; each
/// could have been an event, or bytes of a roll-up, so it is an upper
/// bound, and the collector's log names the programs.
pub const KERNEL_PROGRAM_SKIPPED: &str = "kernel_program_skipped";
pub const PRODUCER_QUEUE_FULL: &str = "producer_queue_full";
/// The first event of every run: the collector was not watching before it
/// (host boot, or the collector stopped, crashed or was upgraded), so the
/// trail has a hole from the host's previous event up to this one.
pub const COLLECTOR_RESTART: &str = "collector_restart";
/// Events librdkafka or the broker refused for good.
pub const DELIVERY_FAILED: &str = "delivery_failed";

/// Delivery counters shared with librdkafka's callback thread.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events handed to librdkafka.
    pub handed: AtomicU64,
    /// Events the broker acknowledged.
    pub delivered: AtomicU64,
    /// Events librdkafka gave up on.
    pub failed: AtomicU64,
    /// Events refused for good, handed over or not, since start.
    pub refused_total: AtomicU64,
    /// Events a producer dropped from its queue unsent (after a fatal
    /// error, or when it is dropped at exit), to be sent again.
    pub purged: AtomicU64,
    /// Producers replaced after a fatal error, since start.
    pub renewed: AtomicU64,
    /// Set as the last producer is dropped at exit: what it purges then,
    /// queued or on the wire, is counted undelivered (once), not refused.
    closing: AtomicBool,
    /// Events on the wire, unacknowledged, when the last producer was
    /// dropped at exit.
    in_flight_at_exit: AtomicU64,
    /// Refused events not yet reported (see [`DeliveryStats::take_refused`]).
    refused: Mutex<Refused>,
    /// Purged events not yet sent again.
    unsent: Mutex<Vec<Outgoing>>,
    /// Raised by librdkafka's error callback (any error: which are fatal
    /// only the client can say), and by [`DeliveryStats::identity_refused`].
    errors: tokio::sync::Notify,
    /// Set when the broker refused a delivery for the producer's identity
    /// (see [`refuses_the_producer`]): a new producer, with a new producer
    /// id, is needed, although librdkafka reports no fatal error.
    identity_refused: AtomicBool,
}

impl DeliveryStats {
    /// Events handed to librdkafka and not yet acknowledged or failed.
    pub fn in_flight(&self) -> u64 {
        let done = self.delivered.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.purged.load(Ordering::Relaxed);
        self.handed.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Keeps an event a producer purged from its queue, to send it again.
    fn purged(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.purged.fetch_add(1, Ordering::Relaxed);
        let outgoing = Outgoing {
            seq: decoded(payload).map_or(0, |event| event.seq),
            key: key.unwrap_or_default().to_vec(),
            payload: payload.unwrap_or_default().to_vec(),
        };
        lock(&self.unsent).push(outgoing);
    }

    /// The purged events not yet sent again, in sequence order.
    fn take_unsent(&self) -> Vec<Outgoing> {
        let mut unsent = std::mem::take(&mut *lock(&self.unsent));
        unsent.sort_by_key(|o| o.seq);
        unsent
    }

    /// Records an event refused for good, from its encoded payload, and
    /// the losses it reported if it was a gap event.
    fn refused(&self, payload: Option<&[u8]>, error: &KafkaError) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        let mut refused = lock(&self.refused);
        match decoded(payload) {
            Some(event) => {
                refused.add(event.seq, event.kind, error);
                if let Some(gap) = &event.gap {
                    refused.carry(gap);
                }
            }
            None => refused.add(0, Kind::Unknown, error),
        }
    }

    /// The refused events since the last call, to report.
    pub fn take_refused(&self) -> Refused {
        std::mem::take(&mut *lock(&self.refused))
    }
}

/// Whether a delivery error refuses the producer itself rather than the
/// record: the broker no longer knows its producer id, or the partition's
/// sequence does not continue the producer's. An events topic deleted and
/// created again under a running collector does this: tansu then answered
/// every record with `ProducerFenced`, for ever, and every event from then
/// on was refused (found by hand in session 21).
fn refuses_the_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// The event in a delivery report, where only the payload is at hand
/// (`None` if it does not decode).
fn decoded(payload: Option<&[u8]>) -> Option<Event> {
    payload.and_then(|payload| vigil_schemas::decode::<Event>(payload).ok())
}

/// Locks `mutex`; a panic elsewhere while it was held leaves counters that
/// are still worth reporting.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An event encoded for the bus, with its sequence number (purged events
/// are sent again in order).
#[derive(Debug)]
struct Outgoing {
    seq: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

impl Outgoing {
    fn new(event: &Event) -> Outgoing {
        Outgoing {
            seq: event.seq,
            key: event.principal().into_bytes(),
            payload: vigil_schemas::encode(event),
        }
    }
}

/// The lower of two sequence numbers, 0 standing for unknown.
fn lowest_known(a: i64, b: i64) -> i64 {
    match (a > 0, b > 0) {
        (true, true) => a.min(b),
        (true, false) => a,
        _ => b.max(0),
    }
}

/// The kind under which [`Refused`] counts the losses of a refused gap
/// event that reported several kinds.
pub const SEVERAL_KINDS: &str = "several";

/// Events refused for good and not yet reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Events lost, by kind: the refused events other than gap events, and
    /// the losses that refused gap events were reporting (under their
    /// `lost_kind`, or [`SEVERAL_KINDS`]).
    pub kinds: BTreeMap<&'static str, i64>,
    /// The lowest and highest sequence numbers among them (0 when unknown);
    /// a refused gap's losses count from the one after its `first_seq`.
    pub first_seq: i64,
    pub last_seq: i64,
    /// Gap events refused. Their losses are carried into the next
    /// `delivery_failed` gap, so a loss is reported once the topic takes
    /// events again; while it refuses everything that makes one gap per
    /// report, not one per refused gap.
    pub gaps: u64,
    /// Of `lost()`, the losses carried over from refused gap events (they
    /// may have been logged before, under an earlier report).
    pub carried: i64,
    /// The last refusal's error.
    pub error: String,
}

impl Refused {
    /// Events lost, gap events aside.
    pub fn lost(&self) -> i64 {
        self.kinds.values().sum()
    }

    fn add(&mut self, seq: i64, kind: Kind, error: &KafkaError) {
        self.error = error.to_string();
        if kind == Kind::Gap {
            self.gaps += 1;
            return;
        }
        *self.kinds.entry(kind.as_str()).or_default() += 1;
        self.first_seq = lowest_known(self.first_seq, seq);
        self.last_seq = self.last_seq.max(seq);
    }

    /// Adds the losses a refused gap event reported: they happened after
    /// its `first_seq` and before its own number.
    fn carry(&mut self, gap: &Gap) {
        if gap.lost <= 0 {
            return;
        }
        let kind = gap
            .lost_kind
            .as_deref()
            .and_then(Kind::named)
            .map_or(SEVERAL_KINDS, Kind::as_str);
        *self.kinds.entry(kind).or_default() += gap.lost;
        self.carried += gap.lost;
        self.first_seq = lowest_known(self.first_seq, gap.first_seq + 1);
        self.last_seq = self.last_seq.max(gap.last_seq);
    }

    /// The kind of every loss, when there is only one.
    fn lost_kind(&self) -> Option<String> {
        match self.kinds.keys().collect::<Vec<_>>()[..] {
            [kind] if *kind != SEVERAL_KINDS => Some((*kind).to_owned()),
            _ => None,
        }
    }

    fn merge(&mut self, other: Refused) {
        for (kind, count) in other.kinds {
            *self.kinds.entry(kind).or_default() += count;
        }
        self.first_seq = lowest_known(self.first_seq, other.first_seq);
        self.last_seq = self.last_seq.max(other.last_seq);
        self.gaps += other.gaps;
        self.carried += other.carried;
        if !other.error.is_empty() {
            self.error = other.error;
        }
    }
}

/// The producer context: counts acknowledgements, collects failures, and
/// wakes the publisher on errors.
#[derive(Debug, Clone, Default)]
pub struct Deliveries {
    stats: Arc<DeliveryStats>,
    errors: Arc<ClientErrors>,
}

impl ClientContext for Deliveries {
    /// Logs it (the flood of an outage thinned, see [`ClientErrors`]), and
    /// has the publisher check whether the error is fatal: the code passed
    /// here is the underlying one (an out-of-order sequence, say), not
    /// librdkafka's "fatal" marker.
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report(&error, reason);
        self.stats.errors.notify_one();
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            // Never sent: a fatal error or the producer's end purged it.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue), message)) => {
                self.stats.purged(message.key(), message.payload());
            }
            // Sent but unacknowledged when the last producer was dropped
            // at exit: undelivered, whatever the broker made of it. (After
            // a fatal error such events are refused and reported.)
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeInflight), _))
                if self.stats.closing.load(Ordering::Relaxed) =>
            {
                self.stats.in_flight_at_exit.fetch_add(1, Ordering::Relaxed);
            }
            // Logged, with a gap event, at the next report: one line per
            // refused event would flood the log when a topic refuses all.
            Err((error, message)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.refused(message.payload(), error);
                if refuses_the_producer(error) {
                    self.stats.identity_refused.store(true, Ordering::Relaxed);
                    self.stats.errors.notify_one();
                }
            }
        }
    }
}

/// The collector's producer: delivery reports are served by a thread of
/// its own (not rdkafka's `ThreadedProducer`, which spins at the end of
/// every polling window).
pub type EventProducer = vigil_schemas::bus::PolledProducer<Deliveries>;

/// How long a producer that hit a fatal error is given to learn the fate
/// of the records it had on the wire before it is replaced.
pub const RENEW_SETTLE: Duration = Duration::from_secs(5);

/// The collector's producer, with what it takes to build it again after a
/// fatal error. Dereferences to the librdkafka producer.
#[derive(Debug)]
pub struct BusProducer {
    producer: EventProducer,
    config: rdkafka::ClientConfig,
    context: Deliveries,
}

impl BusProducer {
    /// Replaces a producer that hit a fatal error with a new one from the
    /// same settings and counters, after giving the old one `settle` to
    /// learn the fate of its in-flight records. Blocks. Records still
    /// unacknowledged then are refused (and reported); queued ones are
    /// purged, to be sent again (see [`DeliveryStats::purged`]).
    fn renew(self, settle: Duration) -> Result<BusProducer> {
        let BusProducer {
            producer,
            config,
            context,
        } = self;
        // Stops at `settle`; what is left is purged by the drop.
        let _ = producer.flush(settle);
        drop(producer);
        let producer = EventProducer::create(&config, context.clone())?;
        context.stats.renewed.fetch_add(1, Ordering::Relaxed);
        Ok(BusProducer {
            producer,
            config,
            context,
        })
    }
}

impl std::ops::Deref for BusProducer {
    type Target = EventProducer;

    fn deref(&self) -> &EventProducer {
        &self.producer
    }
}

/// An idempotent `acks=all` producer that never expires queued messages
/// (`message.timeout.ms = 0`) and holds up to `queue_messages` of them.
pub fn producer(brokers: &str, queue_messages: usize) -> Result<(BusProducer, Arc<DeliveryStats>)> {
    producer_with(vigil_schemas::bus::producer_config(brokers), queue_messages)
}

/// [`producer`] from a configuration of the caller's (tests add settings).
pub fn producer_with(
    mut config: rdkafka::ClientConfig,
    queue_messages: usize,
) -> Result<(BusProducer, Arc<DeliveryStats>)> {
    let context = Deliveries::default();
    let stats = Arc::clone(&context.stats);
    config.set("message.timeout.ms", "0").set(
        "queue.buffering.max.messages",
        queue_messages.clamp(1, 10_000_000).to_string(),
    );
    let producer = EventProducer::create(&config, context.clone())?;
    Ok((
        BusProducer {
            producer,
            config,
            context,
        },
        stats,
    ))
}

/// How long a starting collector waits for the broker to describe its
/// topic before it collects anyway (see [`check_topic`]).
pub const TOPIC_CHECK: Duration = Duration::from_secs(3);

/// Refuses to start publishing to a topic the broker says it does not have:
/// librdkafka would hold every event for 30 s and then refuse it. A broker
/// that does not answer within `timeout` is not an error: the collector
/// collects into its queue until the broker comes (and refusals, if the
/// topic is still missing then, are reported as `delivery_failed` gaps).
pub fn check_topic(
    producer: &BusProducer,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<()> {
    let metadata = match producer.client().fetch_metadata(Some(topic), timeout) {
        Ok(metadata) => metadata,
        Err(error) => {
            warn!(%brokers, %topic, %error, "The broker does not answer; collecting into the queue until it does");
            return Ok(());
        }
    };
    let known = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if known {
        Ok(())
    } else {
        Err(crate::error::Error::UnknownTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        })
    }
}

/// Events lost to a full queue, not yet reported.
#[derive(Debug)]
struct Loss {
    count: i64,
    kinds: BTreeMap<&'static str, i64>,
    after_seq: i64,
}

/// Numbers events and queues them for the publisher.
#[derive(Debug)]
pub struct Outbox {
    // Boxed: an Event is several hundred bytes, moved twice through the
    // channel otherwise.
    tx: mpsc::Sender<Box<Event>>,
    host: String,
    run_id: String,
    next_seq: i64,
    queue_loss: Option<Loss>,
    kernel_loss: BTreeMap<&'static str, i64>,
    untracked: i64,
    skipped: i64,
    refused: Option<Refused>,
    lost_total: u64,
}

impl Outbox {
    /// An outbox with room for `capacity` events, and the receiving end for
    /// [`publish`]. Sequence numbers start at 1 for each run; `event_id`
    /// is `host:run:seq`, with the run id the start time in nanoseconds.
    pub fn new(host: String, capacity: usize) -> (Outbox, mpsc::Receiver<Box<Event>>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let outbox = Outbox {
            tx,
            host,
            run_id: crate::enrich::Clock::now_ns().to_string(),
            next_seq: 1,
            queue_loss: None,
            kernel_loss: BTreeMap::new(),
            untracked: 0,
            skipped: 0,
            refused: None,
            lost_total: 0,
        };
        (outbox, rx)
    }

    /// Queues the run's first event, a `collector_restart` gap: the
    /// sequence starts again at 1 and nothing was watched before now. How
    /// much was missed is unknown, so `lost` is 0; the detector and the
    /// audit trail see the hole between the host's last event of the
    /// previous run and this event's time.
    pub fn started(&mut self) {
        let gap = self.gap(0, None, 0, COLLECTOR_RESTART);
        if !self.try_queue(gap) {
            warn!("Queue full at start; the collector_restart gap was not queued");
        }
    }

    /// Events waiting for the publisher.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Events dropped because the queue was full, since start.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// Queues an event, after any pending gap report; drops and counts it
    /// when the queue is full.
    pub fn push(&mut self, event: Event) {
        self.report_losses();
        let kind = event.kind;
        if !self.try_queue(event) {
            self.lose(kind);
        }
    }

    /// Records events the kernel could not write into the ring buffer.
    pub fn kernel_drops(&mut self, kind: Kind, count: u64) {
        warn!(
            lost = count,
            kind = kind.as_str(),
            reason = KERNEL_RINGBUF_FULL,
            "Events lost"
        );
        *self.kernel_loss.entry(kind.as_str()).or_default() += count as i64;
        self.report_losses();
    }

    /// Records watched descriptors whose roll-ups the kernel could not
    /// track.
    pub fn untracked_files(&mut self, count: u64) {
        warn!(
            descriptors = count,
            reason = KERNEL_TRACKING_FULL,
            "Watched files opened while the kernel's table of them was full: their read and write byte counts are lost (raise --tracked-files)"
        );
        self.untracked += count as i64;
        self.report_losses();
    }

    /// Records runs of a kernel program that the kernel skipped.
    pub fn skipped_runs(&mut self, program: &str, count: u64) {
        warn!(
            program,
            runs = count,
            reason = KERNEL_PROGRAM_SKIPPED,
            "Program runs skipped by the kernel (another BPF program was running on the CPU): what they would have reported is lost"
        );
        self.skipped += count as i64;
        self.report_losses();
    }

    /// Records events refused for good (see [`DeliveryStats::take_refused`]),
    /// to be reported by one `delivery_failed` gap: `lost` events between
    /// the one before the lowest refused sequence number and the gap.
    pub fn refused(&mut self, refused: Refused) {
        if refused.lost() == 0 {
            return;
        }
        match self.refused.as_mut() {
            Some(pending) => pending.merge(refused),
            None => self.refused = Some(refused),
        }
        self.report_losses();
    }

    /// Queues gap events for losses not yet reported, while there is room.
    pub fn report_losses(&mut self) {
        if let Some(refused) = self.refused.take() {
            let after = (refused.first_seq - 1).max(0);
            let gap = self.gap(refused.lost(), refused.lost_kind(), after, DELIVERY_FAILED);
            if !self.try_queue(gap) {
                self.refused = Some(refused);
                return;
            }
        }
        if let Some(loss) = self.queue_loss.take() {
            let lost_kind = (loss.kinds.len() == 1)
                .then(|| loss.kinds.keys().next().map(|k| (*k).to_owned()))
                .flatten();
            let gap = self.gap(loss.count, lost_kind, loss.after_seq, PRODUCER_QUEUE_FULL);
            if !self.try_queue(gap) {
                self.queue_loss = Some(loss);
                return;
            }
        }
        while let Some((kind, count)) = self.kernel_loss.pop_first() {
            let after = self.next_seq - 1;
            let gap = self.gap(count, Some(kind.to_owned()), after, KERNEL_RINGBUF_FULL);
            if !self.try_queue(gap) {
                self.kernel_loss.insert(kind, count);
                return;
            }
        }
        if self.untracked > 0 {
            let after = self.next_seq - 1;
            let gap = self.gap(self.untracked, None, after, KERNEL_TRACKING_FULL);
            if !self.try_queue(gap) {
                return;
            }
            self.untracked = 0;
        }
        if self.skipped > 0 {
            let after = self.next_seq - 1;
            let gap = self.gap(self.skipped, None, after, KERNEL_PROGRAM_SKIPPED);
            if self.try_queue(gap) {
                self.skipped = 0;
            }
        }
    }

    fn lose(&mut self, kind: Kind) {
        self.lost_total += 1;
        let after_seq = self.next_seq - 1;
        let loss = self.queue_loss.get_or_insert_with(|| {
            warn!(
                after_seq,
                reason = PRODUCER_QUEUE_FULL,
                "Queue full; dropping events until there is room"
            );
            Loss {
                count: 0,
                kinds: BTreeMap::new(),
                after_seq,
            }
        });
        loss.count += 1;
        *loss.kinds.entry(kind.as_str()).or_default() += 1;
    }

    /// Numbers and queues an event; false (and the number unused) when the
    /// queue is full.
    fn try_queue(&mut self, mut event: Event) -> bool {
        let seq = self.next_seq;
        event.seq = seq;
        event.event_id = format!("{}:{}:{seq}", self.host, self.run_id);
        if let Some(gap) = event.gap.as_mut() {
            gap.last_seq = seq;
        }
        match self.tx.try_send(Box::new(event)) {
            Ok(()) => {
                self.next_seq += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// A gap event: `lost` events between `after_seq` and this event's own
    /// sequence number (filled in when it is queued).
    fn gap(&self, lost: i64, lost_kind: Option<String>, after_seq: i64, reason: &str) -> Event {
        Event {
            host: self.host.clone(),
            time_unix_ns: crate::enrich::Clock::now_ns(),
            kind: Kind::Gap,
            pid: std::process::id() as i32,
            tid: std::process::id() as i32,
            comm: "collector".to_owned(),
            gap: Some(Gap {
                lost,
                lost_kind,
                first_seq: after_seq,
                last_seq: 0,
                reason: reason.to_owned(),
            }),
            ..Event::default()
        }
    }
}

/// Publishes queued events until the outbox is dropped and the queue is
/// empty, then flushes. From `shutdown`, or from the outbox's close if that
/// comes first, gives the broker `flush_timeout` to take what is left;
/// returns how many events were never delivered. A producer that hits a
/// fatal error is replaced (see the module notes), also during the final
/// flush: the events it purged are sent again until that deadline.
pub async fn publish(
    mut rx: mpsc::Receiver<Box<Event>>,
    mut producer: BusProducer,
    stats: Arc<DeliveryStats>,
    topic: String,
    shutdown: CancellationToken,
    flush_timeout: Duration,
) -> Result<u64> {
    let mut sender = Sender {
        topic,
        shutdown,
        flush_timeout,
        deadline: None,
        abandoned: 0,
    };
    // Events to send before the next queued one: those a replaced producer
    // purged, then the one that met the fatal error.
    let mut again: VecDeque<Outgoing> = VecDeque::new();
    let (producer, flushed) = loop {
        if stats.identity_refused.load(Ordering::Relaxed) && !sender.past_deadline() {
            (producer, again) = renew(producer, &stats, again).await?;
            continue;
        }
        let outgoing = match again.pop_front() {
            Some(outgoing) => outgoing,
            // A busy publisher meets a fatal error when it sends; only an
            // idle one needs waking to replace the producer.
            None => match rx.try_recv() {
                Ok(event) => Outgoing::new(&event),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    sender.start_deadline();
                    let (flushed_producer, flushed) = flush(producer, sender.remaining()).await?;
                    // A fatal error before or during the flush purged
                    // queued events: they are sent again by a new producer,
                    // or counted abandoned once the deadline has passed.
                    if flushed_producer.client().fatal_error().is_some()
                        || stats.identity_refused.load(Ordering::Relaxed)
                    {
                        if !sender.past_deadline() {
                            (producer, again) = renew(flushed_producer, &stats, again).await?;
                            continue;
                        }
                        sender.abandoned += stats.take_unsent().len() as u64;
                    }
                    break (flushed_producer, flushed);
                }
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    event = rx.recv() => match event {
                        Some(event) => Outgoing::new(&event),
                        // closed: try_recv says so on the next turn
                        None => continue,
                    },
                    () = stats.errors.notified() => {
                        if producer.client().fatal_error().is_some() {
                            (producer, again) = renew(producer, &stats, again).await?;
                        }
                        continue;
                    }
                },
            },
        };
        if sender.past_deadline() {
            sender.abandoned += 1;
            continue;
        }
        if sender.send(&producer, &stats, &outgoing).await == Sent::Fatal {
            again.push_front(outgoing);
            (producer, again) = renew(producer, &stats, again).await?;
        }
    };
    let in_flight = producer.in_flight_count().max(0) as u64;
    match flushed {
        Ok(()) => info!("Producer flushed"),
        Err(error) => warn!(%error, in_flight, "Producer not flushed before the timeout"),
    }
    Ok(sender.abandoned + close(producer, &stats, in_flight).await)
}

/// Drops the last producer, which purges what it still holds, and returns
/// how many events it never delivered: those it purged from its queue and
/// from the wire, or, should a purge report not come, what was in flight
/// less what was delivered or refused meanwhile. Each is counted once.
async fn close(producer: BusProducer, stats: &DeliveryStats, in_flight: u64) -> u64 {
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let refused = stats.refused_total.load(Ordering::Relaxed);
    stats.closing.store(true, Ordering::Relaxed);
    if let Err(error) = tokio::task::spawn_blocking(move || drop(producer)).await {
        error!(%error, "Dropping the producer failed");
    }
    let settled = (stats.delivered.load(Ordering::Relaxed) - delivered)
        + (stats.refused_total.load(Ordering::Relaxed) - refused);
    let purged = stats.take_unsent().len() as u64 + stats.in_flight_at_exit.load(Ordering::Relaxed);
    purged.max(in_flight.saturating_sub(settled))
}

/// Waits up to `timeout` for librdkafka to deliver everything it holds.
async fn flush(
    producer: BusProducer,
    timeout: Duration,
) -> Result<(BusProducer, rdkafka::error::KafkaResult<()>)> {
    tokio::task::spawn_blocking(move || {
        let flushed = producer.flush(timeout);
        (producer, flushed)
    })
    .await
    .map_err(|e| crate::error::Error::Setting(format!("flush task: {e}")))
}

/// Replaces `producer` after a fatal error, or after the broker refused
/// its identity; returns the new one and what to send before the next
/// queued event: the events the old one purged, in sequence order, then
/// `waiting`.
async fn renew(
    producer: BusProducer,
    stats: &DeliveryStats,
    waiting: VecDeque<Outgoing>,
) -> Result<(BusProducer, VecDeque<Outgoing>)> {
    let (code, reason) = producer
        .client()
        .fatal_error()
        .map(|(code, reason)| (code.to_string(), reason))
        .unwrap_or_else(|| {
            (
                "producer refused".to_owned(),
                "the broker refused a delivery for the producer's id or sequence (was the topic deleted and created again?)".to_owned(),
            )
        });
    error!(
        error = %code,
        %reason,
        in_flight = producer.in_flight_count(),
        "Replacing the producer; unsent events will be sent again"
    );
    let producer = tokio::task::spawn_blocking(move || producer.renew(RENEW_SETTLE))
        .await
        .map_err(|e| crate::error::Error::Setting(format!("producer renewal task: {e}")))??;
    // Refusals until now were the old producer's, which is gone.
    stats.identity_refused.store(false, Ordering::Relaxed);
    let mut again: VecDeque<Outgoing> = stats.take_unsent().into();
    info!(
        resending = again.len(),
        renewed = stats.renewed.load(Ordering::Relaxed),
        "New producer ready"
    );
    again.extend(waiting);
    Ok((producer, again))
}

/// What became of one event handed to [`Sender::send`].
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// librdkafka took it (or refused it for good, which is recorded).
    Done,
    /// The shutdown deadline passed while librdkafka's queue was full.
    Abandoned,
    /// The producer hit a fatal error; nothing was sent.
    Fatal,
}

/// Hands events to librdkafka, waiting while its queue is full, until the
/// shutdown deadline.
#[derive(Debug)]
struct Sender {
    topic: String,
    shutdown: CancellationToken,
    flush_timeout: Duration,
    deadline: Option<Instant>,
    abandoned: u64,
}

impl Sender {
    /// How long a flush may take: until the deadline once shutdown began,
    /// otherwise `flush_timeout`.
    fn remaining(&mut self) -> Duration {
        self.past_deadline();
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(self.flush_timeout)
    }

    /// Whether the deadline, set `flush_timeout` after shutdown began, has
    /// passed.
    fn past_deadline(&mut self) -> bool {
        if self.shutdown.is_cancelled() {
            self.start_deadline();
        }
        self.deadline.is_some_and(|d| Instant::now() > d)
    }

    /// Sets the deadline `flush_timeout` from now, unless it is set: at
    /// shutdown, or when the outbox closes without one (a caller without a
    /// shutdown token), so that a producer failing fatally at every
    /// renewal is not renewed for ever.
    fn start_deadline(&mut self) {
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.flush_timeout);
    }

    async fn send(
        &mut self,
        producer: &BusProducer,
        stats: &DeliveryStats,
        outgoing: &Outgoing,
    ) -> Sent {
        loop {
            let record = BaseRecord::to(&self.topic)
                .key(&outgoing.key)
                .payload(&outgoing.payload);
            match producer.send(record) {
                Ok(()) => {
                    stats.handed.fetch_add(1, Ordering::Relaxed);
                    return Sent::Done;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.past_deadline() {
                        self.abandoned += 1;
                        return Sent::Abandoned;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _)) => {
                    return Sent::Fatal;
                }
                // Refused for good (a record librdkafka will not take):
                // reported with the refused deliveries.
                Err((error, _)) => {
                    stats.refused(Some(&outgoing.payload), &error);
                    return Sent::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> Event {
        let outbox = Outbox::new("h".into(), 2).0;
        let mut e = outbox.gap(0, None, 0, "x");
        e.kind = kind;
        e.gap = None;
        e
    }

    #[test]
    fn events_are_numbered_in_queue_order_from_one() {
        let (mut outbox, mut rx) = Outbox::new("ehr-01".into(), 8);
        outbox.push(event(Kind::Open));
        outbox.push(event(Kind::Read));
        let first = rx.try_recv().expect("queued");
        let second = rx.try_recv().expect("queued");
        assert_eq!((first.seq, second.seq), (1, 2));
        assert!(first.event_id.starts_with("ehr-01:"), "{}", first.event_id);
        assert!(first.event_id.ends_with(":1"), "{}", first.event_id);
    }

    #[test]
    fn a_full_queue_drops_events_and_reports_them_in_one_gap() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 2);
        for _ in 0..5 {
            outbox.push(event(Kind::Open));
        }
        assert_eq!(outbox.lost_total(), 3);
        assert_eq!(outbox.backlog(), 2);
        let kept: Vec<i64> = (0..2).map(|_| rx.try_recv().expect("kept").seq).collect();
        assert_eq!(kept, vec![1, 2]);

        outbox.push(event(Kind::Read));
        let gap = rx.try_recv().expect("gap queued first");
        assert_eq!(gap.kind, Kind::Gap);
        assert_eq!(gap.seq, 3);
        let detail = gap.gap.expect("gap detail");
        assert_eq!(detail.lost, 3);
        assert_eq!(detail.lost_kind.as_deref(), Some("open"));
        assert_eq!((detail.first_seq, detail.last_seq), (2, 3));
        assert_eq!(detail.reason, PRODUCER_QUEUE_FULL);
        let next = rx.try_recv().expect("the event after the gap");
        assert_eq!((next.kind, next.seq), (Kind::Read, 4));
    }

    #[test]
    fn a_run_starts_with_a_restart_gap_numbered_one() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 8);
        outbox.started();
        outbox.push(event(Kind::Open));
        let first = rx.try_recv().expect("restart gap queued");
        assert_eq!((first.kind, first.seq), (Kind::Gap, 1));
        let detail = first.gap.expect("gap detail");
        assert_eq!(detail.reason, COLLECTOR_RESTART);
        assert_eq!((detail.first_seq, detail.last_seq), (0, 1));
        assert_eq!(detail.lost, 0, "how much was missed is unknown");
        let next = rx.try_recv().expect("the first collected event");
        assert_eq!((next.kind, next.seq), (Kind::Open, 2));
    }

    #[test]
    fn the_outbox_closing_starts_the_deadline_without_a_shutdown() {
        let mut sender = Sender {
            topic: "t".into(),
            shutdown: CancellationToken::new(),
            flush_timeout: Duration::ZERO,
            deadline: None,
            abandoned: 0,
        };
        std::thread::sleep(Duration::from_millis(2));
        assert!(!sender.past_deadline(), "no deadline before either");
        sender.start_deadline();
        std::thread::sleep(Duration::from_millis(2));
        assert!(sender.past_deadline(), "flush_timeout after the close");
    }

    #[test]
    fn refused_events_become_one_delivery_failed_gap() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 8);
        for _ in 0..6 {
            outbox.push(event(Kind::Open));
        }
        let refused_error =
            KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        let mut first = Refused::default();
        first.add(4, Kind::Open, &refused_error);
        first.add(2, Kind::Open, &refused_error);
        first.add(5, Kind::Gap, &refused_error);
        let mut second = Refused::default();
        second.add(6, Kind::Read, &refused_error);
        outbox.refused(first);
        outbox.refused(Refused::default());
        outbox.refused(second);
        let queued: Vec<Event> = std::iter::from_fn(|| rx.try_recv().ok().map(|e| *e)).collect();
        let seqs: Vec<i64> = queued.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "one gap per report");
        let gaps: Vec<Gap> = queued.into_iter().filter_map(|e| e.gap).collect();
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        assert_eq!(
            (
                gaps[0].lost,
                gaps[0].lost_kind.as_deref(),
                gaps[0].first_seq,
                gaps[0].last_seq
            ),
            (2, Some("open"), 1, 7),
            "seqs 2 and 4, after seq 1; the refused gap is not counted: {gaps:?}"
        );
        assert_eq!(gaps[0].reason, DELIVERY_FAILED);
        assert_eq!(
            (gaps[1].lost, gaps[1].first_seq, gaps[1].last_seq),
            (1, 5, 8),
            "{gaps:?}"
        );
    }

    #[test]
    fn refusals_merge_while_the_queue_is_full() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 2);
        outbox.push(event(Kind::Open));
        outbox.push(event(Kind::Open));
        let refused_error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let mut first = Refused::default();
        first.add(2, Kind::Open, &refused_error);
        let mut second = Refused::default();
        second.add(1, Kind::Exec, &refused_error);
        outbox.refused(first);
        outbox.refused(second);
        let _ = (rx.try_recv(), rx.try_recv());
        outbox.report_losses();
        let gap = rx.try_recv().expect("gap").gap.expect("detail");
        assert_eq!((gap.lost, gap.lost_kind, gap.first_seq), (2, None, 0));
        assert!(gap.reason == DELIVERY_FAILED && rx.try_recv().is_err());
    }

    #[test]
    fn the_losses_of_a_refused_gap_are_reported_by_the_next() {
        let (outbox, _rx) = Outbox::new("h".into(), 8);
        let gap_event = |lost: i64, lost_kind: Option<&str>, after: i64, seq: i64| {
            let mut e = outbox.gap(lost, lost_kind.map(str::to_owned), after, "x");
            e.seq = seq;
            e.gap.as_mut().expect("detail").last_seq = seq;
            vigil_schemas::encode(&e)
        };
        let mut open = event(Kind::Open);
        open.seq = 12;
        let open = vigil_schemas::encode(&open);
        let refused_error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let stats = DeliveryStats::default();
        stats.refused(Some(&gap_event(7, Some("read"), 3, 9)), &refused_error);
        stats.refused(Some(&open), &refused_error);
        stats.refused(Some(&gap_event(0, None, 0, 1)), &refused_error);
        let refused = stats.take_refused();
        assert_eq!(
            (
                refused.lost(),
                refused.gaps,
                refused.first_seq,
                refused.last_seq
            ),
            (8, 2, 4, 12),
            "seven reads after seq 3 and the open; a restart gap carries nothing: {refused:?}"
        );
        assert_eq!(refused.lost_kind(), None, "{refused:?}");
        assert_eq!(refused.carried, 7, "{refused:?}");

        stats.refused(Some(&gap_event(5, None, 20, 26)), &refused_error);
        let several = stats.take_refused();
        assert_eq!(several.kinds.get(SEVERAL_KINDS), Some(&5), "{several:?}");
        assert_eq!(several.lost_kind(), None, "several kinds stay unnamed");

        stats.refused(Some(&gap_event(4, Some("exec"), 30, 31)), &refused_error);
        let one = stats.take_refused();
        assert_eq!(
            (one.lost_kind().as_deref(), one.first_seq),
            (Some("exec"), 31)
        );
    }

    #[test]
    fn kernel_drops_become_one_gap_per_kind() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 8);
        outbox.push(event(Kind::Open));
        outbox.kernel_drops(Kind::Open, 7);
        outbox.kernel_drops(Kind::Exec, 2);
        let _open = rx.try_recv().expect("open");
        let gaps: Vec<Gap> = (0..2)
            .map(|_| rx.try_recv().expect("gap").gap.expect("detail"))
            .collect();
        let by_kind: BTreeMap<String, i64> = gaps
            .iter()
            .map(|g| (g.lost_kind.clone().expect("kind"), g.lost))
            .collect();
        assert_eq!(by_kind.get("open"), Some(&7));
        assert_eq!(by_kind.get("exec"), Some(&2));
        assert!(gaps.iter().all(|g| g.reason == KERNEL_RINGBUF_FULL));
    }

    #[test]
    fn untracked_descriptors_are_reported_once_there_is_room() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 2);
        outbox.push(event(Kind::Open));
        outbox.push(event(Kind::Open));
        outbox.untracked_files(3);
        outbox.untracked_files(2);
        let _ = (rx.try_recv(), rx.try_recv());
        assert!(rx.try_recv().is_err(), "no room: nothing reported yet");
        outbox.report_losses();
        let gap = rx.try_recv().expect("gap").gap.expect("detail");
        assert_eq!(
            (gap.lost, gap.lost_kind, gap.reason.as_str()),
            (5, None, KERNEL_TRACKING_FULL)
        );
        outbox.report_losses();
        assert!(rx.try_recv().is_err(), "reported once");
    }

    #[test]
    fn skipped_program_runs_are_reported_once_there_is_room() {
        let (mut outbox, mut rx) = Outbox::new("h".into(), 2);
        outbox.push(event(Kind::Open));
        outbox.push(event(Kind::Open));
        outbox.skipped_runs("vigil_sock_state", 4);
        outbox.skipped_runs("vigil_exit_openat", 1);
        let _ = (rx.try_recv(), rx.try_recv());
        assert!(rx.try_recv().is_err(), "no room: nothing reported yet");
        outbox.report_losses();
        let gap = rx.try_recv().expect("gap").gap.expect("detail");
        assert_eq!(
            (gap.lost, gap.lost_kind, gap.reason.as_str(), gap.first_seq),
            (5, None, KERNEL_PROGRAM_SKIPPED, 2)
        );
        outbox.report_losses();
        assert!(rx.try_recv().is_err(), "reported once");
    }
}
