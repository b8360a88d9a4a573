//! Syscall → alert through the real kernel path: the collector binary's
//! eBPF programs see file accesses in a watched temp dir, a tansu broker on
//! loopback carries the events, the detector binary raises one alert per
//! access with a per-event rule. Asserts every access was alerted exactly
//! once, on the alert topic, with evidence carrying the event's kernel
//! time; prints the latency figures (no time target: that is what
//! `cargo bench -p vigil-detector --bench kernel_latency` reports).
//!
//! Needs root (eBPF) and the collector binary next to the detector's:
//! `cargo build -p vigil-collector` (the workspace's `cargo test` builds it).

mod kernel_path;

use std::time::Duration;

use kernel_path::{Plan, measure, summary};

#[test]
fn every_probe_access_is_alerted_and_latency_is_reported() {
    let plan = Plan {
        accesses: 20,
        spacing: Duration::from_millis(50),
    };
    let report = measure(&plan);
    assert!(
        report.missing.is_empty(),
        "accesses without an alert: {:?}",
        report.missing
    );
    assert!(
        report.duplicated.is_empty(),
        "accesses alerted more than once: {:?}",
        report.duplicated
    );
    assert_eq!(
        report.review, 0,
        "with --learning-days 0 nothing goes to the review topic"
    );
    assert!(
        report.evidence_mismatches.is_empty(),
        "the alert's evidence must carry the event's kernel time: {:?}",
        report.evidence_mismatches
    );
    assert_eq!(report.probes.len(), plan.accesses, "one figure per access");
    // The reader fetches the events and alerts topics' partitions in
    // separate fetch responses as often as in one, so an alert may be seen
    // up to one fetch wait before its event (seen once: -0.38 ms, session
    // 19); more than that would mean the alert did not wait for its event.
    let fetch_wait_ms: f64 = vigil_schemas::bus::fetch_wait_ms()
        .parse()
        .expect("fetch wait in ms");
    for probe in &report.probes {
        assert!(
            probe.total_ms > 0.0 && probe.collector_ms > 0.0 && probe.detector_ms > -fetch_wait_ms,
            "an alert cannot arrive before its syscall, an event before it happened, nor an alert more than one fetch wait ({fetch_wait_ms} ms) before its event: {probe:?}"
        );
    }
    println!(
        "syscall -> alert over {} probe accesses ({} ms apart), debug build:\n{}",
        report.probes.len(),
        plan.spacing.as_millis(),
        summary(&report.probes)
    );
}
