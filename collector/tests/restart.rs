//! Broker outage: the collector keeps collecting while the broker is down
//! and, once it is back, delivers everything exactly once and in sequence.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{Collector, Published, consume_all, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

const PER_BATCH: usize = 10;

fn write_batch(dir: &std::path::Path, batch: &str) -> Vec<PathBuf> {
    (0..PER_BATCH)
        .map(|i| {
            let path = dir.join(format!("{batch}-{i}.txt"));
            std::fs::write(&path, format!("{batch} {i}")).expect("write watched file");
            path
        })
        .collect()
}

fn opens_of(events: &[Published], files: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = files
        .iter()
        .map(|f| (f.to_string_lossy().into_owned(), 0))
        .collect();
    for p in events {
        if p.event.kind == Kind::Open
            && let Some(count) = p.event.path.as_ref().and_then(|path| counts.get_mut(path))
        {
            *count += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_collected_while_the_broker_is_down_arrive_once_and_in_order() {
    require_root();
    let mut broker = TestBroker::start_durable();
    let topic = "collector.restart";
    broker.create_topic(topic, 1).await;
    let bootstrap = broker.bootstrap().to_owned();
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        &bootstrap,
        topic,
        watched.path(),
        &["--flush-timeout", "30s"],
    );

    let before = write_batch(watched.path(), "before");
    let seen = consume_until(&bootstrap, topic, Duration::from_secs(30), |events| {
        opens_of(events, &before).values().all(|&n| n == 1)
    })
    .await;
    assert!(
        opens_of(&seen, &before).values().all(|&n| n == 1),
        "events before the outage: {:?}\ncollector:\n{}",
        opens_of(&seen, &before),
        collector.stderr()
    );

    broker.stop();
    let during = write_batch(watched.path(), "during");
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    let after = write_batch(watched.path(), "after");

    let all_files: Vec<PathBuf> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let events = consume_until(&bootstrap, topic, Duration::from_secs(60), |events| {
        opens_of(events, &all_files).values().all(|&n| n >= 1)
    })
    .await;
    let stderr = collector.stop();
    // Everything published, read once more from the start after the
    // collector has flushed and exited.
    let events = if events.is_empty() {
        events
    } else {
        consume_all(&bootstrap, topic, Duration::from_secs(3)).await
    };

    let counts = opens_of(&events, &all_files);
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "every open exactly once; wrong counts: {wrong:?}\ncollector:\n{stderr}\nbroker:\n{}",
        broker.log()
    );
    let seqs: Vec<i64> = events.iter().map(|p| p.event.seq).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "one partition: every sequence number once, in order"
    );
    let backlog_reported = stderr
        .lines()
        .filter(|l| l.contains("Backlog"))
        .any(|l| !l.contains("in_flight=0"));
    assert!(
        backlog_reported,
        "the outage's backlog is reported:\n{stderr}"
    );
    // librdkafka's own reports of the outage (its idempotent producer
    // says "all brokers are down" at every reconnection attempt, dozens of
    // times a second) are thinned to one line per kind and minute.
    for kind in ["AllBrokersDown", "BrokerTransportFailure"] {
        let lines = stderr
            .lines()
            .filter(|l| l.contains("Global error") && l.contains(kind))
            .count();
        assert!(lines <= 1, "{lines} lines of {kind}:\n{stderr}");
    }
    assert!(
        events
            .iter()
            .all(|p| p.event.kind != Kind::Gap || p.event.seq == 1),
        "no events lost to the outage (the run's first event is its collector_restart gap)"
    );
}
