//! OpenTelemetry metrics: a collector given `--otlp-endpoint` exports its
//! figures over OTLP/HTTP while it runs and once more as it stops, and they
//! agree with what reached the bus.
//!
//! The receiver is `vigil_schemas::otlp_receiver` (an OpenTelemetry
//! Collector cannot be installed here); the exporter, the protocol and the
//! collector with its eBPF programs are the real ones. Needs root.

mod common;

use std::time::Duration;

use common::{Collector, consume_all, require_root};
use vigil_schemas::otlp_receiver::OtlpReceiver;
use vigil_schemas::testkit::TestBroker;

const SERVICE: &str = "vigil-collector";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_are_exported_while_collecting_and_at_shutdown() {
    require_root();
    let broker = TestBroker::start();
    let topic = broker.topic("collector.metrics", 1).await;
    let watched = tempfile::tempdir().expect("watched temp dir");
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.base_url();

    let collector = Collector::start(
        broker.bootstrap(),
        &topic,
        watched.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-interval",
            "300ms",
            "--host",
            "metrics-test-host",
        ],
    );
    const FILES: u64 = 20;
    for i in 0..FILES {
        let path = watched.path().join(format!("record-{i}.txt"));
        std::fs::write(&path, b"fake patient record").expect("write");
        std::fs::read(&path).expect("read back");
    }
    // While it runs: each file's creating open and reading open are
    // records, delivered and exported without a shutdown.
    let delivered = receiver.wait_for_sum(
        SERVICE,
        "vigil.collector.delivered",
        (2 * FILES) as f64,
        Duration::from_secs(30),
    );
    assert!(
        delivered.is_some_and(|d| d >= (2 * FILES) as f64),
        "vigil.collector.delivered while running: {delivered:?}; exported: {:?}\n{}",
        receiver.metric_names(SERVICE),
        collector.stderr()
    );
    let exports_before_stop = receiver.exports();
    let log = collector.stop();
    assert!(
        receiver.exports() > exports_before_stop,
        "no export at shutdown:\n{log}"
    );
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());

    // After the stop, everything delivered is on the topic, and the last
    // export counted exactly that.
    let published = consume_all(broker.bootstrap(), &topic, Duration::from_secs(2)).await;
    let sum = |name| receiver.latest_sum(SERVICE, name).unwrap_or(-1.0);
    assert_eq!(
        sum("vigil.collector.delivered"),
        published.len() as f64,
        "{log}"
    );
    assert!(sum("vigil.collector.records") >= (2 * FILES) as f64);
    for lost in [
        "vigil.collector.kernel_drops",
        "vigil.collector.queue_drops",
        "vigil.collector.refused",
        "vigil.collector.queued",
    ] {
        assert_eq!(sum(lost), 0.0, "{lost} (exported at 0, not left out)");
    }
    assert_eq!(
        receiver.resource(SERVICE, "host.name").as_deref(),
        Some("metrics-test-host")
    );
    assert!(log.contains("Exporting metrics"), "{log}");
}
