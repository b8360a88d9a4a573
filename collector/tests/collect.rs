//! The collector against the running kernel and a real broker: file,
//! process, network and privilege activity in a watched temporary directory
//! arrives on the topic with its fields; the same file activity outside it
//! does not.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Collector, Published, consume_until, require_root};
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{Event, Kind, SocketFamily};

const WRITTEN: usize = 10_000;
const SENT: usize = 70_000;
const UNCLOSED: usize = 3_000;
const REDIRECTED: usize = 5_000;
const O_ACCMODE: i32 = 0o3;
const O_WRONLY: i32 = 0o1;
const O_CREAT: i32 = 0o100;
const NOBODY: u32 = 65534;

fn path_is(event: &Event, path: &Path) -> bool {
    event.path.as_deref() == Some(path.to_str().expect("utf-8 temp path"))
}

fn find(events: &[Published], what: impl Fn(&Event) -> bool) -> Option<&Event> {
    events.iter().map(|p| &p.event).find(|e| what(e))
}

fn own_login_uid() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/loginuid").ok()?;
    let auid: u32 = text.trim().parse().ok()?;
    (auid != u32::MAX).then_some(i64::from(auid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_activity_is_published_with_its_fields_and_unwatched_files_are_not() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.collect", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let outside = tempfile::tempdir().expect("unwatched temp dir");
    let collector = Collector::start(broker.bootstrap(), &topic, watched.path(), &[]);
    let me = std::process::id() as i32;

    // Files in scope, from this process.
    let chart = watched.path().join("chart.txt");
    let renamed = watched.path().join("chart-renamed.txt");
    let missing = watched.path().join("missing.txt");
    let secret = watched.path().join("secret.txt");
    std::fs::write(&chart, vec![b'x'; WRITTEN]).expect("write chart");
    let mut contents = Vec::new();
    std::fs::File::open(&chart)
        .expect("open chart")
        .read_to_end(&mut contents)
        .expect("read chart");
    assert_eq!(contents.len(), WRITTEN);
    std::fs::rename(&chart, &renamed).expect("rename");
    std::fs::set_permissions(&renamed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::remove_file(&renamed).expect("unlink");
    let not_found = std::fs::File::open(&missing).expect_err("missing file");
    assert_eq!(not_found.raw_os_error(), Some(2));
    std::fs::write(&secret, b"ssn").expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(watched.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod watched dir");

    // An unprivileged child that is refused the secret (EACCES), and an exec.
    let refused = Command::new("cat")
        .arg(&secret)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run cat as nobody");
    assert!(!refused.status.success(), "nobody must not read the secret");
    let mut exec = Command::new("true")
        .arg("vigil-exec-marker")
        .spawn()
        .expect("run true");
    let exec_pid = exec.id() as i32;
    exec.wait().expect("wait for true");

    // A process that reads a watched file and exits without close(2): the
    // kernel closes the descriptor, the exit sweep reports the bytes.
    let unclosed = watched.path().join("unclosed.txt");
    std::fs::write(&unclosed, vec![b'u'; UNCLOSED]).expect("write unclosed");
    let perl = Command::new("perl")
        .args([
            "-MPOSIX",
            "-e",
            "open(my $f, '<', $ARGV[0]) or die; sysread($f, my $b, 1 << 20); POSIX::_exit(0)",
        ])
        .arg(&unclosed)
        .spawn()
        .expect("run perl");
    let perl_pid = perl.id() as i32;
    assert!(perl.wait_with_output().expect("perl").status.success());

    // A shell redirection: the reader gets a dup2'd copy of the shell's
    // descriptor.
    let redirected = watched.path().join("redirected.txt");
    std::fs::write(&redirected, vec![b'r'; REDIRECTED]).expect("write redirected");
    let shell = Command::new("sh")
        .args(["-c", "cat < \"$1\" > /dev/null", "sh"])
        .arg(&redirected)
        .status()
        .expect("run sh");
    assert!(shell.success());

    // The same file activity outside the watched directory.
    let elsewhere = outside.path().join("chart.txt");
    std::fs::write(&elsewhere, vec![b'y'; WRITTEN]).expect("write outside");
    std::fs::read(&elsewhere).expect("read outside");
    std::fs::remove_file(&elsewhere).expect("unlink outside");

    // A TCP connection to a local listener carrying SENT bytes.
    let (listen_port, server) = common::tcp_server();
    let mut client = TcpStream::connect(("127.0.0.1", listen_port)).expect("connect");
    let client_port = client.local_addr().expect("client address").port();
    client.write_all(&vec![b'z'; SENT]).expect("send");
    drop(client);
    assert_eq!(server.join().expect("server thread"), SENT);

    let chart_s = chart.clone();
    let events = consume_until(
        broker.bootstrap(),
        &topic,
        Duration::from_secs(40),
        |events| {
            let has = |f: &dyn Fn(&Event) -> bool| find(events, f).is_some();
            has(&|e| e.kind == Kind::Read && path_is(e, &chart_s))
                && has(&|e| e.kind == Kind::Unlink && path_is(e, &renamed))
                && has(&|e| e.kind == Kind::Open && e.errno == 13)
                && has(&|e| e.kind == Kind::Exit && e.pid == exec_pid)
                && has(&|e| e.kind == Kind::Read && e.pid == perl_pid)
                && has(&|e| e.kind == Kind::Read && path_is(e, &redirected))
                && has(&|e| e.kind == Kind::Send && e.dst_port == Some(i32::from(listen_port)))
                && has(&|e| e.kind == Kind::Recv && e.src_port == Some(i32::from(listen_port)))
        },
    )
    .await;
    let stderr = collector.stop();
    let dump = || {
        events
            .iter()
            .filter(|p| p.event.pid == me || p.event.kind != Kind::Exec)
            .map(|p| {
                format!(
                    "{} {:?} pid={} errno={} path={:?} bytes={:?} ports={:?}/{:?}",
                    p.event.seq,
                    p.event.kind,
                    p.event.pid,
                    p.event.errno,
                    p.event.path,
                    p.event.bytes,
                    p.event.src_port,
                    p.event.dst_port
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let expect = |what: &str, f: &dyn Fn(&Event) -> bool| -> Event {
        find(&events, f)
            .unwrap_or_else(|| {
                panic!(
                    "no {what} event among {} consumed:\n{}\ncollector stderr:\n{stderr}",
                    events.len(),
                    dump()
                )
            })
            .clone()
    };

    // Open for writing (create), its write roll-up, open for reading, its
    // read roll-up: flags, mode, bytes, identity.
    let created = expect("open-for-write", &|e| {
        e.kind == Kind::Open && path_is(e, &chart) && e.flags.unwrap_or(0) & O_ACCMODE == O_WRONLY
    });
    let flags = created.flags.expect("open carries flags");
    assert_ne!(flags & O_CREAT, 0, "std::fs::write creates: {flags:o}");
    assert_eq!(created.mode, Some(0o666), "create mode");
    assert_eq!(created.errno, 0);
    assert_eq!(created.pid, me);
    assert_eq!(created.uid, 0);
    assert_eq!(created.euid, 0);
    assert_eq!(created.login_uid, own_login_uid());
    assert_eq!(created.user_name.as_deref(), Some("root"));
    assert_eq!(
        created.exe.as_deref(),
        std::env::current_exe()
            .ok()
            .as_deref()
            .and_then(Path::to_str),
        "exe of the test process"
    );
    assert!(
        created.time_unix_ns > 1_700_000_000_000_000_000,
        "wall clock"
    );
    let wrote = expect("write roll-up", &|e| {
        e.kind == Kind::Write && path_is(e, &chart)
    });
    assert_eq!(wrote.bytes, Some(WRITTEN as i64));
    assert_eq!(wrote.pid, me);
    let opened = expect("open-for-read", &|e| {
        e.kind == Kind::Open && path_is(e, &chart) && e.flags.unwrap_or(-1) & O_ACCMODE == 0
    });
    assert_eq!(opened.mode, None, "no mode without O_CREAT");
    let read = expect("read roll-up", &|e| {
        e.kind == Kind::Read && path_is(e, &chart)
    });
    assert_eq!(read.bytes, Some(WRITTEN as i64));

    let swept = expect("read roll-up at exit", &|e| {
        e.kind == Kind::Read && path_is(e, &unclosed) && e.pid == perl_pid
    });
    assert_eq!(swept.bytes, Some(UNCLOSED as i64));
    assert_eq!(swept.comm, "perl");

    let via_dup = expect("read roll-up through a redirection", &|e| {
        e.kind == Kind::Read && path_is(e, &redirected)
    });
    assert_eq!(via_dup.bytes, Some(REDIRECTED as i64));
    // Attributed to cat, which read it, not to the shell that opened it.
    assert_eq!(via_dup.comm, "cat");

    let rename = expect("rename", &|e| e.kind == Kind::Rename && path_is(e, &chart));
    assert_eq!(rename.new_path.as_deref(), renamed.to_str());
    assert_eq!(rename.errno, 0);
    let chmod = expect("chmod", &|e| e.kind == Kind::Chmod && path_is(e, &renamed));
    assert_eq!(chmod.mode, Some(0o600));
    // The watched directory itself is in scope too.
    let chmod_dir = expect("chmod of the watched directory", &|e| {
        e.kind == Kind::Chmod && path_is(e, watched.path())
    });
    assert_eq!(chmod_dir.mode, Some(0o755));
    let unlink = expect("unlink", &|e| {
        e.kind == Kind::Unlink && path_is(e, &renamed)
    });
    assert_eq!(unlink.errno, 0);
    assert_eq!(unlink.pid, me);

    let enoent = expect("open of a missing file", &|e| {
        e.kind == Kind::Open && path_is(e, &missing)
    });
    assert_eq!(enoent.errno, 2, "ENOENT");
    let eacces = expect("refused open", &|e| {
        e.kind == Kind::Open && path_is(e, &secret) && e.uid == i64::from(NOBODY)
    });
    assert_eq!(eacces.errno, 13, "EACCES");
    assert_eq!(eacces.euid, i64::from(NOBODY));
    assert_eq!(eacces.comm, "cat");
    assert_eq!(eacces.ppid, me);

    let setuid = expect("setuid to nobody", &|e| {
        e.kind == Kind::Setuid && e.target_id == Some(i64::from(NOBODY))
    });
    assert_eq!(setuid.errno, 0);
    assert_eq!(setuid.pid, eacces.pid, "the child that then ran cat");

    let exec_event = expect("exec", &|e| e.kind == Kind::Exec && e.pid == exec_pid);
    assert_eq!(
        exec_event.argv,
        vec!["true".to_owned(), "vigil-exec-marker".to_owned()]
    );
    assert!(
        exec_event
            .exe
            .as_deref()
            .is_some_and(|x| x.ends_with("/true")),
        "{:?}",
        exec_event.exe
    );
    assert_eq!(exec_event.ppid, me);
    assert_eq!(exec_event.comm, "true");
    expect("exit", &|e| e.kind == Kind::Exit && e.pid == exec_pid);

    let connect = expect("connect", &|e| {
        e.kind == Kind::Connect && e.dst_port == Some(i32::from(listen_port))
    });
    assert_eq!(connect.errno, 0);
    assert_eq!(connect.family, Some(SocketFamily::Inet));
    assert_eq!(connect.dst_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(connect.src_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(connect.src_port, Some(i32::from(client_port)));
    assert_eq!(connect.pid, me);
    let accept = expect("accept", &|e| {
        e.kind == Kind::Accept && e.src_port == Some(i32::from(listen_port))
    });
    assert_eq!(accept.dst_port, Some(i32::from(client_port)));
    assert_eq!(accept.dst_addr.as_deref(), Some("127.0.0.1"));
    let sent = expect("send roll-up", &|e| {
        e.kind == Kind::Send && e.dst_port == Some(i32::from(listen_port))
    });
    assert_eq!(sent.bytes, Some(SENT as i64));
    assert_eq!(sent.pid, me);
    let received = expect("receive roll-up", &|e| {
        e.kind == Kind::Recv && e.src_port == Some(i32::from(listen_port))
    });
    assert_eq!(received.bytes, Some(SENT as i64));

    // Nothing about the unwatched directory.
    let outside_prefix = outside.path().to_str().expect("utf-8");
    let leaked: Vec<&Event> = events
        .iter()
        .map(|p| &p.event)
        .filter(|e| {
            e.kind != Kind::Exec
                && (e
                    .path
                    .as_deref()
                    .is_some_and(|p| p.starts_with(outside_prefix))
                    || e.new_path
                        .as_deref()
                        .is_some_and(|p| p.starts_with(outside_prefix)))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "events outside the watched scope: {leaked:?}"
    );

    // The bus: keyed by principal, one gapless sequence from 1; the only
    // gap is the run's first event, saying the collector (re)started.
    let first = &events.first().expect("events").event;
    assert_eq!(
        first.kind,
        Kind::Gap,
        "the run starts with a gap: {first:?}"
    );
    assert_eq!(
        first.gap.as_ref().map(|g| g.reason.as_str()),
        Some("collector_restart")
    );
    for published in &events {
        assert_eq!(published.key, published.event.principal());
        assert!(
            published.event.kind != Kind::Gap || published.event.seq == 1,
            "{:?}",
            published.event.gap
        );
    }
    let seqs: Vec<i64> = events.iter().map(|p| p.event.seq).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "one partition: sequence numbers in order, none missing"
    );
    assert!(stderr.contains("Stopped"), "clean shutdown:\n{stderr}");
}

#[test]
fn without_capabilities_the_collector_names_what_is_missing() {
    require_root();
    // A copy of the binary that uid 65534 can execute (the build directory
    // is usually under root's home).
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let binary = dir.path().join("collector");
    std::fs::copy(env!("CARGO_BIN_EXE_collector"), &binary).expect("copy binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = Command::new(&binary)
        .args(["--brokers", "127.0.0.1:1", "--watch", "/tmp"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the collector as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must fail without privileges");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "names the missing capabilities: {stderr}"
    );
}
