//! The integration-test harness shared by Vigil's crates.
//!
//! [`TestBroker::start`] runs a private tansu broker with in-memory storage on
//! a free loopback port and stops it when dropped; when `VIGIL_TEST_BROKER`
//! names a running broker (`host:port`), that one is used instead. Tests
//! create uniquely named topics ([`TestBroker::topic`]) so they never see each
//! other's records, even on a shared broker.
//!
//! The broker binary is `VIGIL_TANSU` if set, else `tansu` on `PATH`, else
//! `~/.cargo/bin/tansu` (where `deploy/local/setup.sh` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication, TopicResult};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;

use crate::bus;
use crate::{Event, Kind};

/// How long a broker may take to answer after it is started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a test process may go on after a panic before
/// [`exit_when_a_panic_hangs`] ends it; `VIGIL_TEST_PANIC_EXIT_S` overrides.
const PANIC_EXIT_GRACE: Duration = Duration::from_secs(90);

/// Makes a test process that panicked exit with a failure if it is still
/// running [`PANIC_EXIT_GRACE`] later. Installed once per process by
/// [`TestBroker::start`] and [`TestBroker::start_durable`].
///
/// A test that fails while a Kafka client is alive unwinds through that
/// client's drop, and a consumer's drop waits until the consumer is closed,
/// which can take forever when the test's broker is already gone: the
/// failure would become a CI timeout with no message. The watchdog writes
/// the panic to the real stderr (libtest captures the usual output and
/// prints it only when every test is done) and exits with 101.
pub fn exit_when_a_panic_hangs() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let grace = std::env::var("VIGIL_TEST_PANIC_EXIT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(PANIC_EXIT_GRACE);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            static WATCHING: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if WATCHING.swap(true, Ordering::SeqCst) {
                return;
            }
            let thread = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_owned();
            let panic = info.to_string();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                let message = format!(
                    "\nvigil testkit: thread '{thread}' {panic}\n\
                     vigil testkit: the test process is still running {grace:?} after that panic \
                     (most likely a Kafka client's drop waiting for a broker the test has \
                     already stopped); exiting with a failure instead of waiting for the CI timeout\n"
                );
                use std::io::Write;
                let _ = std::io::stderr().write_all(message.as_bytes());
                // `exit` runs no drops: stop the brokers other tests still hold.
                for pid in lock_brokers().drain(..) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
                std::process::exit(101);
            });
        }));
    });
}

/// The process ids of the private brokers running in this process.
static RUNNING_BROKERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn lock_brokers() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING_BROKERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Kafka-protocol broker for one test.
#[derive(Debug)]
pub struct TestBroker {
    bootstrap: String,
    child: Option<Child>,
    log: Option<tempfile::NamedTempFile>,
    /// The SQLite storage of a durable broker.
    storage: Option<tempfile::TempDir>,
}

/// Finds the tansu binary, or says how to install it.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VIGIL_TANSU") {
        return PathBuf::from(path);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.is_file() {
        return cargo_bin;
    }
    panic!(
        "the tansu broker is not installed (looked at $VIGIL_TANSU, $PATH and {}); \
         run deploy/local/setup.sh, or set VIGIL_TEST_BROKER=host:port to use a running broker",
        cargo_bin.display()
    );
}

/// The broker log opened for appending, so that stdout, stderr and a
/// restarted broker add to it instead of overwriting each other.
fn append(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the broker log {}: {e}", path.display()))
}

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("ephemeral listener has an address")
        .port()
}

impl TestBroker {
    /// Starts a private broker, or connects to `VIGIL_TEST_BROKER`. Panics
    /// with the broker's log when it does not come up.
    pub fn start() -> TestBroker {
        exit_when_a_panic_hangs();
        if let Ok(bootstrap) = std::env::var("VIGIL_TEST_BROKER") {
            let broker = TestBroker {
                bootstrap,
                child: None,
                log: None,
                storage: None,
            };
            broker.wait_until_ready();
            return broker;
        }
        TestBroker::private(None)
    }

    /// Starts a private broker with durable (SQLite) storage in a
    /// temporary directory, which a test can [`stop`](TestBroker::stop)
    /// and [`restart`](TestBroker::restart) with its data and on the same
    /// port, to play a broker outage. Never a shared broker.
    pub fn start_durable() -> TestBroker {
        exit_when_a_panic_hangs();
        TestBroker::private(Some(
            tempfile::tempdir().expect("create a temp dir for the broker's storage"),
        ))
    }

    fn private(storage: Option<tempfile::TempDir>) -> TestBroker {
        let port = free_loopback_port();
        let mut broker = TestBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            child: None,
            log: Some(
                tempfile::NamedTempFile::new().expect("create a temp file for the broker log"),
            ),
            storage,
        };
        broker.restart();
        broker
    }

    /// Starts the broker process again after [`stop`](TestBroker::stop),
    /// on the same port and (if durable) with the same data, and waits
    /// until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let log = self
            .log
            .as_ref()
            .expect("only a private broker can be restarted");
        let url = format!("tcp://{}", self.bootstrap);
        let tansu = tansu_binary();
        let mut command = Command::new(&tansu);
        // tansu takes an SQLite path relative to its working directory.
        let engine = match &self.storage {
            Some(dir) => {
                command.current_dir(dir.path());
                "sqlite://tansu.db"
            }
            None => "memory://tansu/",
        };
        let child = command
            .arg("broker")
            .args(["--storage-engine", engine])
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(append(log.path()))
            .stderr(append(log.path()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tansu.display()));
        lock_brokers().push(child.id());
        self.child = Some(child);
        self.wait_until_ready();
    }

    /// Stops a private broker's process; a durable one keeps its data for
    /// [`restart`](TestBroker::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            lock_brokers().retain(|&pid| pid != child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of a private broker that is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// `host:port` to give clients as `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The broker's output so far (empty for an external broker).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log.path()).ok())
            .unwrap_or_default()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr: Option<SocketAddr> = self.bootstrap.parse().ok();
        loop {
            let listening = match addr {
                Some(addr) => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
                None => true,
            };
            if listening && self.answers_metadata() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "broker at {} did not answer a metadata request within {STARTUP_TIMEOUT:?}; broker log:\n{}",
                    self.bootstrap,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers_metadata(&self) -> bool {
        let consumer: BaseConsumer =
            match bus::consumer_config(&self.bootstrap, "vigil-testkit-probe").create() {
                Ok(consumer) => consumer,
                Err(_) => return false,
            };
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
    }

    /// Creates a topic named `<prefix>.<pid>.<n>`, unique to this test run,
    /// and returns its name.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_topic(&name, partitions).await;
        name
    }

    /// Creates a topic with the given partition count.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = self.admin().create_topics([&topic], &admin_options()).await;
        self.check_admin("create", name, results);
    }

    /// Deletes a topic and its records.
    pub async fn delete_topic(&self, name: &str) {
        let results = self.admin().delete_topics(&[name], &admin_options()).await;
        self.check_admin("delete", name, results);
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("create an admin client")
    }

    /// Panics, with the broker's log, unless every topic's `verb` worked.
    fn check_admin(&self, verb: &str, name: &str, results: KafkaResult<Vec<TopicResult>>) {
        let results = results
            .unwrap_or_else(|e| panic!("{verb} topic {name}: {e}; broker log:\n{}", self.log()));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("{verb} topic {topic}: {code}; broker log:\n{}", self.log());
            }
        }
    }

    /// An idempotent `acks=all` producer (the product's settings).
    pub fn producer(&self) -> FutureProducer {
        bus::producer_config(&self.bootstrap)
            .create()
            .expect("create a producer")
    }

    /// A consumer in `group` with the product's settings.
    pub fn consumer(&self, group: &str) -> StreamConsumer {
        bus::consumer_config(&self.bootstrap, group)
            .create()
            .expect("create a consumer")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Admin requests wait up to 10 s for the broker.
fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// A PHI file event of a human session: `user` (uid 1000) on host
/// `ehr-01`, from the `ehr-client` program, at `time` (Unix ns).
pub fn file_event(user: &str, kind: Kind, path: &str, time: i64, seq: i64) -> Event {
    Event {
        event_id: format!("ehr-01-{user}-{seq}"),
        host: "ehr-01".into(),
        seq,
        time_unix_ns: time,
        kind,
        pid: 4242,
        ppid: 1,
        tid: 4242,
        uid: 1000,
        euid: 1000,
        gid: 1000,
        login_uid: Some(1000),
        user_name: Some(user.into()),
        login_name: Some(user.into()),
        comm: "ehr-client".into(),
        exe: Some("/usr/bin/ehr-client".into()),
        cgroup_id: 1,
        path: Some(path.into()),
        flags: Some(0),
        ..Event::default()
    }
}

/// Sends signal `name` (`STOP`, `CONT`, `TERM`) to process `pid` with
/// kill(1); panics if it cannot be sent.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Checks a systemd unit from `deploy/systemd` with `systemd-analyze
/// verify`, which systemd offers for machines where it is not PID 1 (as on
/// the test machines), and panics with what it says is wrong. The unit's
/// `installed` program path is replaced by the `built` one first: verify
/// checks that ExecStart's program exists. A bad line is only a warning
/// to verify, which still succeeds, so any line naming the unit fails.
pub fn assert_systemd_verifies(name: &str, unit: &str, installed: &str, built: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = unit.replace(installed, built);
    assert_ne!(text, unit, "{name}: ExecStart no longer runs {installed}");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian's systemd package) checks {name} but cannot run: {e}")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|line| line.contains(name)).collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify {name}: {}\n{stderr}",
        output.status
    );
}
