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
//! in the channel, where it is reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_schemas::{Event, Gap, Kind};

use crate::error::Result;

/// Why events were lost, as the gap event's `reason`.
pub const KERNEL_RINGBUF_FULL: &str = "kernel_ringbuf_full";
pub const PRODUCER_QUEUE_FULL: &str = "producer_queue_full";
/// The first event of every run: the collector was not watching before it
/// (host boot, or the collector stopped, crashed or was upgraded), so the
/// trail has a hole from the host's previous event up to this one.
pub const COLLECTOR_RESTART: &str = "collector_restart";

/// Delivery counters shared with librdkafka's callback thread.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events handed to librdkafka.
    pub handed: AtomicU64,
    /// Events the broker acknowledged.
    pub delivered: AtomicU64,
    /// Events librdkafka gave up on.
    pub failed: AtomicU64,
}

impl DeliveryStats {
    /// Events handed to librdkafka and not yet acknowledged or failed.
    pub fn in_flight(&self) -> u64 {
        let done = self.delivered.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.handed.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// The producer context: counts acknowledgements and logs failures.
#[derive(Debug, Clone, Default)]
pub struct Deliveries {
    stats: Arc<DeliveryStats>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                error!(%error, "Event not delivered");
            }
        }
    }
}

/// The collector's producer: delivery reports are served by a thread of
/// its own (not rdkafka's `ThreadedProducer`, which spins at the end of
/// every polling window).
pub type EventProducer = vigil_schemas::bus::PolledProducer<Deliveries>;

/// An idempotent `acks=all` producer that never expires queued messages
/// (`message.timeout.ms = 0`) and holds up to `queue_messages` of them.
pub fn producer(
    brokers: &str,
    queue_messages: usize,
) -> Result<(EventProducer, Arc<DeliveryStats>)> {
    let context = Deliveries::default();
    let stats = Arc::clone(&context.stats);
    let mut config = vigil_schemas::bus::producer_config(brokers);
    config.set("message.timeout.ms", "0").set(
        "queue.buffering.max.messages",
        queue_messages.clamp(1, 10_000_000).to_string(),
    );
    let producer = EventProducer::create(&config, context)?;
    Ok((producer, stats))
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

    /// Queues gap events for losses not yet reported, while there is room.
    pub fn report_losses(&mut self) {
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
/// empty, then flushes. After `shutdown`, gives the broker `flush_timeout`
/// to take what is left; returns how many events were never handed over.
pub async fn publish(
    mut rx: mpsc::Receiver<Box<Event>>,
    producer: EventProducer,
    stats: Arc<DeliveryStats>,
    topic: String,
    shutdown: CancellationToken,
    flush_timeout: Duration,
) -> Result<u64> {
    let mut deadline: Option<Instant> = None;
    let mut abandoned = 0u64;
    while let Some(event) = rx.recv().await {
        if deadline.is_none() && shutdown.is_cancelled() {
            deadline = Some(Instant::now() + flush_timeout);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            abandoned += 1;
            continue;
        }
        let payload = vigil_schemas::encode(&*event);
        let key = event.principal();
        loop {
            let record = BaseRecord::to(&topic).key(&key).payload(&payload);
            match producer.send(record) {
                Ok(()) => {
                    stats.handed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if deadline.is_none() && shutdown.is_cancelled() {
                        deadline = Some(Instant::now() + flush_timeout);
                    }
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        abandoned += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    error!(%error, seq = event.seq, "Event not handed to the producer");
                    abandoned += 1;
                    break;
                }
            }
        }
    }
    let remaining = deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(flush_timeout);
    let producer = tokio::task::spawn_blocking(move || {
        let flushed = producer.flush(remaining);
        (producer, flushed)
    })
    .await
    .map_err(|e| crate::error::Error::Setting(format!("flush task: {e}")))?;
    let (producer, flushed) = producer;
    let undelivered = producer.in_flight_count().max(0) as u64;
    match flushed {
        Ok(()) => info!("Producer flushed"),
        Err(error) => warn!(%error, undelivered, "Producer not flushed before the timeout"),
    }
    Ok(abandoned + undelivered)
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
}
