//! Long-lived descriptors: byte roll-ups are reported while the file is
//! still open (at the first write after the roll-up interval), and the
//! rest at close, so the totals add up. TCP connections likewise: a sweep
//! every roll-up interval reports their bytes while they are open.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    Collector, Published, bytes_of, consume_all, consume_until, require_root, tcp_server,
};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Event, Kind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_report_bytes_periodically_and_at_close() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.rollup", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--rollup-interval", "1s"],
    );
    let path = watched.path().join("journal.log");
    let path_s = path.to_str().expect("utf-8").to_owned();
    let writes_of = |events: &[common::Published]| bytes_of(events, Kind::Write, &path_s);

    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(&[b'a'; 100]).expect("first write");
    std::thread::sleep(Duration::from_millis(1500));
    file.write_all(&[b'b'; 200])
        .expect("write after the interval");
    // Reported while the file is still open.
    let while_open = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| !writes_of(events).is_empty(),
    )
    .await;
    assert_eq!(
        writes_of(&while_open),
        vec![300],
        "one roll-up of both writes before close:\n{}",
        collector.stderr()
    );

    file.write_all(&[b'c'; 50]).expect("last write");
    drop(file);
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| writes_of(events).len() >= 2,
    )
    .await;
    collector.stop();
    assert_eq!(
        writes_of(&events),
        vec![300, 50],
        "the rest at close; totals add up"
    );
}

/// Threads writing through one descriptor while its periodic roll-ups
/// fire: each byte is reported exactly once (the kernel takes and zeroes
/// the counts in one exchange; a read-then-zero lost or doubled bytes
/// written in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_roll_ups_of_a_shared_descriptor_add_up() {
    const THREADS: usize = 4;
    const WRITES: usize = 20_000;
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.shared", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--rollup-interval", "1ms"],
    );
    let path = watched.path().join("shared.log");
    let path_s = path.to_str().expect("utf-8").to_owned();
    let file = std::sync::Arc::new(std::fs::File::create(&path).expect("create"));
    let writers: Vec<_> = (0..THREADS)
        .map(|_| {
            let file = std::sync::Arc::clone(&file);
            std::thread::spawn(move || {
                for _ in 0..WRITES {
                    (&*file).write_all(b"x").expect("write");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    drop(file);
    let total = (THREADS * WRITES) as i64;
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(30),
        |events| bytes_of(events, Kind::Write, &path_s).iter().sum::<i64>() >= total,
    )
    .await;
    // Anything doubled would arrive after the total was reached. The topic
    // never goes quiet: the connection sweep (every second here) reports
    // the broker's connections, which carried its last reports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = if events.is_empty() {
        events
    } else {
        consume_until(broker.bootstrap(), &topic, Duration::from_secs(3), |_| {
            false
        })
        .await
    };
    let stderr = collector.stop();
    let reports = bytes_of(&events, Kind::Write, &path_s);
    assert!(reports.len() > 1, "periodic roll-ups fired: {reports:?}");
    assert_eq!(
        reports.iter().sum::<i64>(),
        total,
        "{} roll-ups; collector:\n{stderr}",
        reports.len()
    );
}

/// A collector stopped while a watched file is open reports the bytes moved
/// since the file's last roll-up instead of losing them with its maps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_still_open_at_shutdown_report_their_bytes() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.shutdown", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--rollup-interval", "1h"],
    );
    let path = watched.path().join("held-open.log");
    let path_s = path.to_str().expect("utf-8").to_owned();

    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(&[b'a'; 70]).expect("write");
    // Once the marker's write is on the bus, the collector has seen the
    // held file's write too; nothing reports it while the file is open.
    let before = after_a_marker(&broker, &topic, watched.path(), &collector).await;
    assert_eq!(bytes_of(&before, Kind::Write, &path_s), Vec::<i64>::new());

    let stderr = collector.stop();
    let events = consume_all(broker.bootstrap(), &topic, Duration::from_secs(3)).await;
    drop(file);
    assert_eq!(
        bytes_of(&events, Kind::Write, &path_s),
        vec![70],
        "the open file's bytes are reported at shutdown:\n{stderr}"
    );
}

/// Copies made inside the kernel (`copy_file_range`, as `cp` does;
/// `sendfile`, as Python's `shutil` does) count as bytes read from the
/// source and written to the destination, like a read and a write would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_kernel_copies_count_as_reads_and_writes() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.copies", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let elsewhere = tempfile::tempdir().expect("non-watched temp dir");
    let collector = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    let source = watched.path().join("chart.txt");
    std::fs::write(&source, vec![b'x'; 5000]).expect("write the source");
    let copy = watched.path().join("chart-copy.txt");

    // copy_file_range from one watched file to another.
    {
        let from = std::fs::File::open(&source).expect("open source");
        let to = std::fs::File::create(&copy).expect("create copy");
        let copied = nix::fcntl::copy_file_range(&from, None, &to, None, 5000).expect("copy");
        assert_eq!(copied, 5000);
    }
    // sendfile from the watched file to one nobody watches.
    {
        let from = std::fs::File::open(&source).expect("open source");
        let to = std::fs::File::create(elsewhere.path().join("out")).expect("create out");
        let sent = nix::sys::sendfile::sendfile(&to, &from, None, 3000).expect("sendfile");
        assert_eq!(sent, 3000);
    }

    let source_s = source.to_str().expect("utf-8").to_owned();
    let copy_s = copy.to_str().expect("utf-8").to_owned();
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| bytes_of(events, Kind::Read, &source_s).len() >= 2,
    )
    .await;
    collector.stop();
    assert_eq!(
        bytes_of(&events, Kind::Read, &source_s),
        vec![5000, 3000],
        "the source's reads: copy_file_range then sendfile"
    );
    assert_eq!(
        bytes_of(&events, Kind::Write, &copy_s),
        vec![5000],
        "the watched destination's write"
    );
}

/// More watched descriptors open at once than `--tracked-files`: every
/// open is still reported, and the roll-ups the kernel could not track are
/// not silently lost: `kernel_tracking_full` gaps count the descriptors,
/// and roll-ups received plus descriptors reported lost is every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_past_the_tracking_table_are_reported_as_gaps() {
    const FILES: usize = 64;
    const TRACKED: usize = 16;
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.untracked", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let paths: Vec<String> = (0..FILES)
        .map(|i| {
            let path = watched.path().join(format!("chart-{i}.txt"));
            std::fs::write(&path, [b'x'; 100]).expect("create");
            path.to_str().expect("utf-8").to_owned()
        })
        .collect();
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--tracked-files", &TRACKED.to_string()],
    );

    let mut files: Vec<std::fs::File> = paths
        .iter()
        .map(|p| std::fs::File::open(p).expect("open"))
        .collect();
    for file in &mut files {
        let mut text = Vec::new();
        file.read_to_end(&mut text).expect("read");
        assert_eq!(text.len(), 100);
    }
    drop(files);

    let reads = |events: &[common::Published]| -> Vec<i64> {
        paths
            .iter()
            .flat_map(|p| bytes_of(events, Kind::Read, p))
            .collect()
    };
    let untracked = |events: &[common::Published]| -> i64 {
        events
            .iter()
            .filter_map(|p| p.event.gap.as_ref())
            .filter(|g| g.reason == "kernel_tracking_full")
            .map(|g| g.lost)
            .sum()
    };
    consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(30),
        |events| reads(events).len() as i64 + untracked(events) >= FILES as i64,
    )
    .await;
    let stderr = collector.stop();
    let events = consume_all(broker.bootstrap(), &topic, Duration::from_secs(2)).await;

    let opens = events
        .iter()
        .filter(|p| {
            p.event.kind == Kind::Open
                && p.event
                    .path
                    .as_ref()
                    .is_some_and(|path| paths.contains(path))
        })
        .count();
    assert_eq!(opens, FILES, "every open is reported, tracked or not");
    let (reads, lost) = (reads(&events), untracked(&events));
    assert!(
        reads.iter().all(|&bytes| bytes == 100),
        "tracked descriptors report their bytes: {reads:?}"
    );
    assert!(
        !reads.is_empty() && reads.len() <= TRACKED,
        "at most {TRACKED} descriptors tracked, got {} roll-ups:\n{stderr}",
        reads.len()
    );
    assert_eq!(
        reads.len() as i64 + lost,
        FILES as i64,
        "roll-ups received + descriptors reported untracked = files read:\n{stderr}"
    );
    let counted: i64 = stderr
        .lines()
        .find(|l| l.contains("Stopped"))
        .and_then(|l| l.split("untracked_files=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no untracked_files in the final log line:\n{stderr}"));
    assert_eq!(lost, counted, "the gaps report what the kernel counted");
}

/// Writes a marker file in the watched `dir` and returns what is on the
/// topic once its write is: everything the collector saw before it.
async fn after_a_marker(
    broker: &TestBroker,
    topic: &str,
    dir: &std::path::Path,
    collector: &Collector,
) -> Vec<Published> {
    let marker = dir.join("marker.txt");
    let marker_s = marker.to_str().expect("utf-8").to_owned();
    std::fs::write(&marker, b"m").expect("write the marker");
    let before = consume_until(
        broker.bootstrap(),
        topic,
        Duration::from_secs(20),
        |events| !bytes_of(events, Kind::Write, &marker_s).is_empty(),
    )
    .await;
    assert!(
        !bytes_of(&before, Kind::Write, &marker_s).is_empty(),
        "the marker arrives:\n{}",
        collector.stderr()
    );
    before
}

/// The byte roll-ups of the connection to `port`: the client's sends and
/// the server's receives, in order.
fn connection_bytes(events: &[Published], port: u16) -> (Vec<i64>, Vec<i64>) {
    let port = Some(i32::from(port));
    let of = |kind: Kind, end: fn(&Event) -> Option<i32>| -> Vec<i64> {
        events
            .iter()
            .filter(|p| p.event.kind == kind && end(&p.event) == port)
            .filter_map(|p| p.event.bytes)
            .collect()
    };
    (
        of(Kind::Send, |e| e.dst_port),
        of(Kind::Recv, |e| e.src_port),
    )
}

/// Before session 21 a connection reported its bytes only when it closed:
/// a transfer lasting hours was seen hours late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_report_bytes_periodically_and_at_close() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.connections", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--rollup-interval", "1s"],
    );
    let (port, server) = tcp_server();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(&[b'a'; 1000]).expect("first send");
    let while_open = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| connection_bytes(events, port) == (vec![1000], vec![1000]),
    )
    .await;
    assert_eq!(
        connection_bytes(&while_open, port),
        (vec![1000], vec![1000]),
        "a sweep reports the bytes while the connection is open:\n{}",
        collector.stderr()
    );

    client.write_all(&[b'b'; 500]).expect("second send");
    drop(client);
    assert_eq!(server.join().expect("server thread"), 1500);
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| {
            let (sent, received) = connection_bytes(events, port);
            sent.iter().sum::<i64>() >= 1500 && received.iter().sum::<i64>() >= 1500
        },
    )
    .await;
    let stderr = collector.stop();
    assert_eq!(
        connection_bytes(&events, port),
        (vec![1000, 500], vec![1000, 500]),
        "the rest at close (or the next sweep); totals add up:\n{stderr}"
    );
}

/// A collector stopped while a connection is open reports its bytes so
/// far; before session 21 they were never reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_open_at_shutdown_report_their_bytes() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.open-connection", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &["--rollup-interval", "1h"],
    );
    let (port, server) = tcp_server();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(&[b'a'; 700]).expect("send");
    let before = after_a_marker(&broker, &topic, watched.path(), &collector).await;
    assert_eq!(
        connection_bytes(&before, port),
        (vec![], vec![]),
        "nothing reported while open with an hour's interval"
    );

    let stderr = collector.stop();
    let events = consume_all(broker.bootstrap(), &topic, Duration::from_secs(3)).await;
    drop(client);
    assert_eq!(server.join().expect("server thread"), 700);
    assert_eq!(
        connection_bytes(&events, port),
        (vec![700], vec![700]),
        "the open connection's bytes are reported at shutdown:\n{stderr}"
    );
}

/// A connection the client aborts with a reset (`SO_LINGER` 0, from
/// perl) after sending 300 bytes: the server's receive roll-up is 300, not
/// 299. Only a FIN counts as a byte in `bytes_received`, and the kernel
/// marks the receive side shut (which the program reads as "a FIN came")
/// only after the close it reports, so a reset takes nothing off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_reports_every_byte_received() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.reset", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let collector = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    let (port, server) = tcp_server();
    let script = format!(
        "use Socket; socket(my $s, PF_INET, SOCK_STREAM, 0) or die $!; \
         connect($s, pack_sockaddr_in({port}, inet_aton('127.0.0.1'))) or die $!; \
         syswrite($s, 'r' x 300) == 300 or die $!; sleep 1; \
         setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) or die $!; close($s);"
    );
    let status = std::process::Command::new("perl")
        .args(["-e", &script])
        .status()
        .expect("run perl");
    assert!(status.success(), "perl client");
    assert_eq!(server.join().expect("server thread"), 300);
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(20),
        |events| !connection_bytes(events, port).1.is_empty(),
    )
    .await;
    let stderr = collector.stop();
    assert_eq!(
        connection_bytes(&events, port),
        (vec![300], vec![300]),
        "sent by perl and received by the server, in full:\n{stderr}"
    );
}
