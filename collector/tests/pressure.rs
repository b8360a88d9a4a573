//! Ring-buffer pressure: with a one-page ring buffer and a burst of watched
//! opens, the kernel drops records; every drop is reported in a `gap` event
//! and nothing is silently lost: opens received plus opens reported lost
//! equal opens made, and the gap totals equal the kernel's drop counters.

mod common;

use std::time::Duration;

use common::{Collector, Published, consume_all, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

const BURST: usize = 20_000;

fn accounted(events: &[Published], path: &str) -> (usize, i64) {
    let received = events
        .iter()
        .filter(|p| p.event.kind == Kind::Open && p.event.path.as_deref() == Some(path))
        .count();
    let lost = events
        .iter()
        .filter_map(|p| p.event.gap.as_ref())
        .filter(|g| g.lost_kind.as_deref() == Some("open"))
        .map(|g| g.lost)
        .sum();
    (received, lost)
}

/// Creates `burst.txt` in `dir` and opens it BURST times; returns its path
/// and the opens made (+1: the open that created it).
fn open_burst(dir: &std::path::Path) -> (String, i64) {
    let file = dir.join("burst.txt");
    std::fs::write(&file, b"x").expect("create");
    for _ in 0..BURST {
        drop(std::fs::File::open(&file).expect("open"));
    }
    (file.to_str().expect("utf-8").to_owned(), BURST as i64 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_drops_under_pressure_are_reported_as_gaps_that_add_up() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.pressure", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--ringbuf-bytes", "4096"],
    );

    let (path, made) = open_burst(watched.path());

    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(90),
        |events| {
            let (received, lost) = accounted(events, &path);
            received as i64 + lost >= made
        },
    )
    .await;
    let stderr = collector.stop();
    let (received, lost) = accounted(&events, &path);
    assert_eq!(
        received as i64 + lost,
        made,
        "opens received ({received}) + opens reported lost ({lost}) = opens made"
    );
    // Everything published, including gaps reported after the burst.
    let events = consume_all(broker.bootstrap(), &topic, Duration::from_secs(3)).await;
    let (received, lost) = accounted(&events, &path);
    assert!(
        lost > 0,
        "a 4 KiB ring buffer must overflow under {BURST} opens (received {received})"
    );
    assert_eq!(
        received as i64 + lost,
        made,
        "opens received ({received}) + opens reported lost ({lost}) = opens made"
    );

    let gaps: Vec<_> = events
        .iter()
        .filter_map(|p| p.event.gap.as_ref().map(|g| (p.event.seq, g)))
        .filter(|(_, g)| g.reason != "collector_restart")
        .collect();
    for (seq, gap) in &gaps {
        assert_eq!(gap.reason, "kernel_ringbuf_full");
        assert_eq!(gap.last_seq, *seq, "a gap ends at its own sequence number");
        assert!(gap.first_seq < gap.last_seq);
    }
    let reported: i64 = gaps.iter().map(|(_, g)| g.lost).sum();
    let counted: i64 = stderr
        .lines()
        .find(|l| l.contains("Stopped"))
        .and_then(|l| l.split("kernel_drops=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no kernel_drops in the final log line:\n{stderr}"));
    assert_eq!(
        reported, counted,
        "gap events report exactly what the kernel's per-CPU drop counters counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_drops_are_reported_where_they_happened_not_at_the_next_counter_read() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.pressure-placement", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    // The drop counters' periodic read never comes during the test: only
    // the loss marks on the records can place the gaps.
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--ringbuf-bytes", "4096", "--stats-interval", "1h"],
    );

    let (path, made) = open_burst(watched.path());
    std::thread::sleep(Duration::from_millis(300));
    let after = watched.path().join("after.txt");
    std::fs::write(&after, b"y").expect("create the marker");
    let after = after.to_str().expect("utf-8").to_owned();

    let is_after = |p: &Published| p.event.path.as_deref() == Some(after.as_str());
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(90),
        |events| events.iter().any(is_after),
    )
    .await;
    collector.stop();
    let marker = events.iter().position(is_after).expect("the marker");
    let (received, lost) = accounted(&events[..marker], &path);
    assert!(
        lost > 0,
        "a 4 KiB ring buffer must overflow under {BURST} opens (received {received})"
    );
    assert_eq!(
        received as i64 + lost,
        made,
        "every open of the burst is received or reported lost before the next event \
         (received {received}, lost {lost})"
    );
}
