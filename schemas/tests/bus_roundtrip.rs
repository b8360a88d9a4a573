//! The bus end to end: events encoded with this crate, produced with an
//! idempotent `acks=all` producer to a real tansu broker on loopback, consumed
//! back in a consumer group, decoded, and compared equal. Also: a
//! [`PolledProducer`]'s own thread serves every delivery report, and
//! dropping it stops that thread promptly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use vigil_schemas::bus::{self, POLL_WINDOW, PolledProducer};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Event, decode, encode};

const EVENTS: i64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_the_bus_in_order_per_principal() {
    let broker = TestBroker::start();
    let topic = broker.topic("roundtrip.events", 3).await;

    let producer = broker.producer();
    let mut sent = Vec::new();
    for seq in 0..EVENTS {
        let mut event = common::sample_event(seq);
        // Three principals, so records spread over partitions.
        event.login_name = Some(["alice", "bob", "carol"][(seq % 3) as usize].into());
        let key = event.principal();
        let payload = encode(&event);
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| {
                panic!("produce seq {seq}: {e}; broker log:\n{}", broker.log())
            });
        sent.push(event);
    }

    let consumer = broker.consumer("roundtrip-group");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} events arrived within 60 s; broker log:\n{}",
                    received.len(),
                    sent.len(),
                    broker.log()
                )
            })
            .expect("consume");
        let event: Event =
            decode(message.payload().expect("record has a payload")).expect("record decodes");
        let key = std::str::from_utf8(message.key().expect("record has a key")).expect("utf-8 key");
        assert_eq!(key, event.principal(), "records are keyed by principal");
        received.push(event);
    }

    // Nothing lost, nothing duplicated, every field intact.
    let mut by_seq: BTreeMap<i64, &Event> = BTreeMap::new();
    for event in &received {
        assert!(
            by_seq.insert(event.seq, event).is_none(),
            "duplicate seq {}",
            event.seq
        );
    }
    for event in &sent {
        assert_eq!(by_seq.get(&event.seq), Some(&event), "seq {}", event.seq);
    }
    // Per principal (= per partition), order is kept.
    for principal in ["alice", "bob", "carol"] {
        let seqs: Vec<i64> = received
            .iter()
            .filter(|e| e.principal() == principal)
            .map(|e| e.seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{principal}: {seqs:?}"
        );
    }
}

/// Counts delivery reports.
#[derive(Default)]
struct Counted {
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl rdkafka::ClientContext for Counted {}

impl rdkafka::producer::ProducerContext for Counted {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_producers_thread_serves_every_delivery_report() {
    use rdkafka::producer::{BaseRecord, Producer};
    use std::sync::atomic::Ordering;

    let broker = TestBroker::start();
    let topic = broker.topic("polled.events", 1).await;
    let producer = PolledProducer::create(
        &bus::producer_config(broker.bootstrap()),
        Counted::default(),
    )
    .expect("producer");
    for seq in 0..50 {
        let payload = format!("record {seq}");
        producer
            .send(BaseRecord::to(&topic).key("k").payload(&payload))
            .unwrap_or_else(|(e, _)| panic!("queue record {seq}: {e}"));
    }
    // Nobody here calls poll: only the producer's own thread can deliver
    // the reports.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while producer.context().delivered.load(Ordering::Relaxed) < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 50 delivery reports after 30 s; broker log:\n{}",
            producer.context().delivered.load(Ordering::Relaxed),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(producer.context().failed.load(Ordering::Relaxed), 0);
    assert_eq!(producer.in_flight_count(), 0);

    let dropping = std::time::Instant::now();
    drop(producer);
    assert!(
        dropping.elapsed() < POLL_WINDOW * 100,
        "dropping took {:?}; the polling thread should stop within one window ({POLL_WINDOW:?})",
        dropping.elapsed()
    );
}
