//! A collector restart is visible on the bus: every run begins with a
//! `collector_restart` gap numbered 1, so the detector and the audit trail
//! know the host was not watched between the runs.

mod common;

use std::time::Duration;

use common::{Collector, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_starts_with_a_collector_restart_gap() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.start", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let before = watched.path().join("before.txt");
    let while_down = watched.path().join("while-down.txt");
    let after = watched.path().join("after.txt");

    let first = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    std::fs::write(&before, b"1").expect("write");
    let first_log = first.stop();
    std::fs::write(&while_down, b"2").expect("write while no collector runs");
    let second = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    std::fs::write(&after, b"3").expect("write");

    let after_s = after.to_str().expect("utf-8").to_owned();
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(30),
        |events| {
            events
                .iter()
                .any(|p| p.event.kind == Kind::Open && p.event.path.as_deref() == Some(&after_s))
        },
    )
    .await;
    let second_log = second.stop();
    let summary: Vec<_> = events
        .iter()
        .map(|p| (p.event.seq, &p.event.kind, &p.event.event_id, &p.event.path))
        .collect();

    let starts: Vec<_> = events
        .iter()
        .map(|p| &p.event)
        .filter(|e| {
            e.gap
                .as_ref()
                .is_some_and(|g| g.reason == "collector_restart")
        })
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "one collector_restart gap per run: {summary:?}\n{first_log}\n{second_log}"
    );
    assert!(
        starts.iter().all(|e| e.seq == 1 && e.kind == Kind::Gap),
        "each is its run's event 1: {summary:?}"
    );
    let run_of = |id: &str| id.rsplit_once(':').map(|(run, _)| run.to_owned());
    assert_ne!(
        run_of(&starts[0].event_id),
        run_of(&starts[1].event_id),
        "the runs have different run ids"
    );
    assert!(
        starts[0].time_unix_ns < starts[1].time_unix_ns,
        "the second run's gap is later: {summary:?}"
    );
    // Order on the one partition: run 1's gap, its open, run 2's gap, its
    // open; nothing about the file written while no collector ran.
    let position = |what: &dyn Fn(&vigil_schemas::Event) -> bool| {
        events
            .iter()
            .position(|p| what(&p.event))
            .unwrap_or_else(|| panic!("missing event: {summary:?}"))
    };
    let path_is = |e: &vigil_schemas::Event, p: &std::path::Path| {
        e.kind == Kind::Open && e.path.as_deref() == p.to_str()
    };
    let second_gap = events
        .iter()
        .rposition(|p| p.event.kind == Kind::Gap)
        .expect("gaps");
    assert!(position(&|e| path_is(e, &before)) < second_gap);
    assert!(position(&|e| path_is(e, &after)) > second_gap);
    assert!(
        events.iter().all(|p| !path_is(&p.event, &while_down)),
        "nothing was watched between the runs: {summary:?}"
    );
}

#[test]
fn a_topic_the_broker_does_not_have_stops_the_collector_at_start() {
    require_root();
    let broker = TestBroker::start();
    let watched = tempfile::tempdir().expect("watched temp dir");
    // Before, the collector ran, and librdkafka refused every event 30 s
    // later, one log line each.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--brokers", broker.bootstrap(), "--topic", "no.such.topic"])
        .arg("--watch")
        .arg(watched.path())
        .output()
        .expect("run the collector");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must refuse to start: {stderr}");
    assert!(
        stderr.contains("topic `no.such.topic` does not exist") && stderr.contains("--topic"),
        "names the topic and what to do: {stderr}"
    );
}
