//! The test harness's watchdog: a test that panics and then hangs in a
//! drop (as a Kafka consumer's drop can once its broker is gone) ends its
//! process with a failure instead of running into the CI timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_schemas::testkit::TestBroker;

/// Set in the child process this test runs: there the test plays the
/// failing test that hangs.
const CHILD: &str = "VIGIL_PANIC_EXIT_CHILD";

/// Blocks its drop for good, like a consumer polling a stopped broker.
struct HangsOnDrop;

impl Drop for HangsOnDrop {
    fn drop(&mut self) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[test]
fn a_test_that_panics_and_then_hangs_exits_with_a_failure() {
    if std::env::var_os(CHILD).is_some() {
        // Starting a broker installs the watchdog; the broker is one the
        // watchdog must stop, since `exit` runs no drops.
        let broker = TestBroker::start();
        let _ = writeln!(std::io::stderr(), "broker at {}", broker.bootstrap());
        let _client = HangsOnDrop;
        panic!("deliberate failure while a client is alive");
    }

    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "a_test_that_panics_and_then_hangs_exits_with_a_failure",
        ])
        .env(CHILD, "1")
        .env_remove("VIGIL_TEST_BROKER")
        .env("VIGIL_TEST_PANIC_EXIT_S", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run this test binary as the child");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the panicking child was still running after 60 s: the watchdog did not end it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read the child's stderr");

    assert_eq!(status.code(), Some(101), "child stderr:\n{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the child exited before its 2 s grace: {:?}",
        started.elapsed()
    );
    // libtest captures the panic message; the watchdog writes it past the
    // capture so the failure is not lost with the process.
    assert!(
        stderr.contains("deliberate failure while a client is alive")
            && stderr.contains("still running 2s after that panic"),
        "the child's stderr names neither the panic nor the watchdog:\n{stderr}"
    );

    let broker = stderr
        .lines()
        .find_map(|line| line.strip_prefix("broker at "))
        .unwrap_or_else(|| panic!("the child did not start its broker:\n{stderr}"));
    let broker = broker.parse().expect("the broker's address");
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        TcpStream::connect_timeout(&broker, Duration::from_millis(200)).is_err()
    });
    assert!(
        refused,
        "the child's broker at {broker} still answers after the child exited"
    );
}
