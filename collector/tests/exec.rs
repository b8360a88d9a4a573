//! A watched descriptor closed by exec (close-on-exec) reports its bytes
//! and leaves the kernel's map then, so a program the process execs does
//! not have its reads of another file on the same descriptor number
//! counted as reads of the watched file.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Collector, bytes_of, consume_until, require_root};
use vigil_schemas::Kind;
use vigil_schemas::testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_closed_by_exec_are_not_inherited_by_the_new_program() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.exec", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    let chart = watched.path().join("chart.txt");
    std::fs::write(&chart, vec![b'c'; 64]).expect("write the chart");
    let elsewhere = tempfile::tempdir().expect("non-watched temp dir");
    let (first, second) = (elsewhere.path().join("a"), elsewhere.path().join("b"));
    std::fs::write(&first, vec![b'a'; 4000]).expect("write a non-watched file");
    std::fs::write(&second, vec![b'b'; 4000]).expect("write a non-watched file");

    // perl opens /dev/null (descriptor 3) and the chart (4), both
    // close-on-exec, reads the chart whole and execs a shell, which starts
    // `paste` on two other files. The dynamic loader's own opens reuse
    // descriptor 3 and close it; paste's second file gets descriptor 4,
    // the chart's old number, and paste reads 4,000 bytes from it.
    let script = r#"
        open(my $null, "<", "/dev/null") or die "open: $!";
        open(my $f, "<", $ARGV[0]) or die "open: $!";
        fileno($f) == 4 or die "the chart is on descriptor " . fileno($f) . ", not 4";
        read($f, my $buffer, 64) == 64 or die "read: $!";
        exec("/bin/sh", "-c", 'paste "$0" "$1" > /dev/null', $ARGV[1], $ARGV[2]) or die "exec: $!";
    "#;
    let mut perl = Command::new("perl")
        .args(["-e", script])
        .arg(&chart)
        .arg(&first)
        .arg(&second)
        .spawn()
        .expect("perl runs");
    let pid = i32::try_from(perl.id()).expect("a pid fits an i32");
    let status = perl.wait().expect("perl ends");
    assert!(status.success(), "the perl script failed: {status}");

    let chart_s = chart.to_str().expect("utf-8").to_owned();
    // The process's exit comes after every roll-up of its descriptors,
    // right or wrong (paste, forked or exec'd by the shell, ends first).
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| {
            events
                .iter()
                .any(|p| p.event.kind == Kind::Exit && p.event.pid == pid)
        },
    )
    .await;
    collector.stop();
    assert!(
        events
            .iter()
            .any(|p| p.event.kind == Kind::Exit && p.event.pid == pid),
        "no exit of perl's process {pid} within 20 s"
    );
    assert_eq!(
        bytes_of(&events, Kind::Read, &chart_s),
        vec![64],
        "one roll-up of perl's 64 bytes, none of paste's"
    );
}
