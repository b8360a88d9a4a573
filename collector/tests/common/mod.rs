//! Fixtures for the collector's integration tests: the collector binary as
//! a child process, and a consumer that decodes what it published.
//!
//! These tests load real eBPF programs into the running kernel, so they need
//! root (or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN); [`require_root`] fails
//! the test with that explanation instead of letting it pass unrun.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use vigil_schemas::Event;

/// Fails the test, saying why, when this process cannot load eBPF programs.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid_is_root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    assert!(
        euid_is_root,
        "the collector's integration tests load eBPF programs into the running kernel and \
         need root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); run them as root, as CI does"
    );
}

/// A running `collector` binary.
#[derive(Debug)]
pub struct Collector {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts the collector publishing to `topic`, watching `watched`, with
    /// extra flags; returns once it says it is collecting.
    pub fn start(bootstrap: &str, topic: &str, watched: &Path, extra: &[&str]) -> Collector {
        Collector::start_under(&[], bootstrap, topic, watched, extra)
    }

    /// [`Collector::start`] through `wrapper`, a command that runs the
    /// rest of its arguments (e.g. `setpriv` with its options), in place.
    pub fn start_under(
        wrapper: &[String],
        bootstrap: &str,
        topic: &str,
        watched: &Path,
        extra: &[&str],
    ) -> Collector {
        // Drop counters and backlog read often, unless a test says otherwise.
        let stats: &[&str] = if extra.contains(&"--stats-interval") {
            &[]
        } else {
            &["--stats-interval", "100ms"]
        };
        let binary = env!("CARGO_BIN_EXE_collector");
        let mut command = match wrapper.split_first() {
            Some((program, options)) => {
                let mut command = Command::new(program);
                command.args(options).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--brokers", bootstrap, "--topic", topic])
            .arg("--watch")
            .arg(watched)
            .args(stats)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("VIGIL_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the collector binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("Collecting") {
                    let _ = ready_tx.send(());
                }
                lines.lock().expect("stderr lock").push(line);
            }
        });
        let mut collector = Collector { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return collector;
            }
            if let Ok(Some(status)) = collector.child.try_wait() {
                panic!(
                    "collector exited ({status}) before collecting:\n{}",
                    collector.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "collector did not start within 60 s:\n{}",
                    collector.stderr()
                );
            }
        }
    }

    /// Everything the collector wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for a clean exit; returns its stderr.
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal collector");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for collector") {
                // let the reader thread take the last lines
                std::thread::sleep(Duration::from_millis(100));
                let stderr = self.stderr();
                assert!(
                    status.success(),
                    "collector exited with {status} on SIGTERM:\n{stderr}"
                );
                return stderr;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "collector did not exit within 30 s of SIGTERM:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed event with its bus key.
#[derive(Debug, Clone)]
pub struct Published {
    pub key: String,
    pub event: Event,
}

/// The byte counts of the `kind` roll-ups of `path` among `events`, in
/// order.
/// A TCP server on a free loopback port that accepts one connection and
/// reads until its client closes or resets it; returns the port and how
/// many bytes the server read.
pub fn tcp_server() -> (u16, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("listener address").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut received = 0;
        let mut buffer = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut conn, &mut buffer) {
            if n == 0 {
                break;
            }
            received += n;
        }
        received
    });
    (port, server)
}

pub fn bytes_of(events: &[Published], kind: vigil_schemas::Kind, path: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|p| p.event.kind == kind && p.event.path.as_deref() == Some(path))
        .filter_map(|p| p.event.bytes)
        .collect()
}

/// Consumes `topic` from the beginning until `done` says the events so far
/// are enough, or `timeout` passes; returns what was read either way.
pub async fn consume_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Published]) -> bool,
) -> Vec<Published> {
    let consumer = subscribe(bootstrap, topic);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    while !done(&seen) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout(deadline - now, consumer.recv()).await {
            Ok(Ok(message)) => seen.push(published(&message)),
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => break,
        }
    }
    seen
}

/// Consumes `topic` from the beginning until nothing new arrives for
/// `idle`, or for at most a minute: a collector whose connection sweeps
/// come more often than `idle` keeps a topic busy for ever (each sweep
/// reports the broker's own connections, which carried the last reports).
pub async fn consume_all(bootstrap: &str, topic: &str, idle: Duration) -> Vec<Published> {
    let consumer = subscribe(bootstrap, topic);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "consume_all: {topic} never went quiet for {idle:?}; returning what came in a minute"
            );
            return seen;
        }
        match tokio::time::timeout(idle, consumer.recv()).await {
            Ok(Ok(message)) => seen.push(published(&message)),
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => return seen,
        }
    }
}

fn subscribe(bootstrap: &str, topic: &str) -> StreamConsumer {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let consumer: StreamConsumer =
        vigil_schemas::bus::consumer_config(bootstrap, &format!("test-{topic}-{n}"))
            .create()
            .expect("create a consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn published(message: &rdkafka::message::BorrowedMessage<'_>) -> Published {
    let payload = message.payload().expect("events have a payload");
    let event: Event =
        vigil_schemas::decode(payload).unwrap_or_else(|e| panic!("undecodable event: {e}"));
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    Published { key, event }
}
