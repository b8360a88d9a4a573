//! Events that librdkafka or the broker refuse for good are not lost
//! silently: the publisher collects them with their sequence numbers, and
//! the outbox reports them with one `delivery_failed` gap event. Real
//! librdkafka and a real tansu broker; no eBPF, so no root needed.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::consume_until;
use tokio_util::sync::CancellationToken;
use vigil_collector::publish::{self, DELIVERY_FAILED, DeliveryStats, Outbox};
use vigil_schemas::testkit::{TestBroker, file_event};
use vigil_schemas::{Kind, bus};

/// Publishes through an outbox with the given producer settings until the
/// outbox is dropped; returns the outbox and the delivery counters.
fn publisher(
    broker: &TestBroker,
    topic: &str,
    settings: &[(&str, &str)],
) -> (
    Outbox,
    Arc<DeliveryStats>,
    tokio::task::JoinHandle<vigil_collector::error::Result<u64>>,
) {
    let mut config = bus::producer_config(broker.bootstrap());
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let (producer, stats) = publish::producer_with(config, 1_000).expect("producer");
    let (outbox, rx) = Outbox::new("ehr-01".into(), 64);
    let publishing = tokio::spawn(publish::publish(
        rx,
        producer,
        Arc::clone(&stats),
        topic.to_owned(),
        CancellationToken::new(),
        Duration::from_secs(10),
    ));
    (outbox, stats, publishing)
}

fn open(path: &str) -> vigil_schemas::Event {
    file_event("alice", Kind::Open, path, 1_794_182_400_000_000_000, 0)
}

/// Waits until `stats` counts `refused` events, or panics after 30 s.
async fn wait_refused(stats: &DeliveryStats, refused: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.refused_total.load(Ordering::Relaxed) < refused {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{refused} refusals expected, {} seen",
            stats.refused_total.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_is_refused_and_reported_by_a_gap() {
    let broker = TestBroker::start();
    let topic = broker.topic("collector.delivery", 1).await;
    let (mut outbox, stats, publishing) =
        publisher(&broker, &topic, &[("message.max.bytes", "2000")]);
    let huge = format!("/srv/phi/{}", "x".repeat(3_000));
    outbox.push(open("/srv/phi/before.json"));
    outbox.push(open(&huge));
    outbox.push(open("/srv/phi/after.json"));
    wait_refused(&stats, 1).await;
    let refused = stats.take_refused();
    assert_eq!(
        (refused.lost(), refused.first_seq, refused.last_seq),
        (1, 2, 2),
        "{refused:?}"
    );
    assert!(refused.error.contains("too large"), "{refused:?}");
    outbox.refused(refused);
    drop(outbox);
    let abandoned = publishing.await.expect("task").expect("publisher");
    assert_eq!(abandoned, 0);

    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(30),
        |seen| seen.len() >= 3,
    )
    .await;
    let seen: Vec<(i64, Kind)> = events.iter().map(|p| (p.event.seq, p.event.kind)).collect();
    assert_eq!(
        seen,
        vec![(1, Kind::Open), (3, Kind::Open), (4, Kind::Gap)],
        "the refused event is missing and a gap says so"
    );
    let gap = events[2].event.gap.clone().expect("gap detail");
    assert_eq!(gap.reason, DELIVERY_FAILED);
    assert_eq!(
        (
            gap.lost,
            gap.lost_kind.as_deref(),
            gap.first_seq,
            gap.last_seq
        ),
        (1, Some("open"), 1, 4),
        "one open lost between seq 1 and the gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_a_topic_the_broker_does_not_have_are_refused_with_their_sequence_numbers() {
    let broker = TestBroker::start();
    // librdkafka refuses a record once the broker has said for this long
    // that its topic does not exist (30 s by default).
    let (mut outbox, stats, publishing) = publisher(
        &broker,
        "collector.no-such-topic",
        &[("topic.metadata.propagation.max.ms", "200")],
    );
    for i in 0..3 {
        outbox.push(open(&format!("/srv/phi/{i}.json")));
    }
    wait_refused(&stats, 3).await;
    let refused = stats.take_refused();
    assert_eq!(
        (refused.lost(), refused.first_seq, refused.last_seq),
        (3, 1, 3),
        "{refused:?}"
    );
    assert_eq!(refused.kinds.get("open"), Some(&3), "{refused:?}");
    assert!(
        refused.error.to_lowercase().contains("unknown topic"),
        "{refused:?}"
    );
    assert_eq!(stats.failed.load(Ordering::Relaxed), 3);
    drop(outbox);
    publishing.await.expect("task").expect("publisher");
}
