//! Syscall → alert latency through the real kernel path, many accesses:
//! the benchmark version of `tests/kernel_e2e.rs` (see
//! `tests/kernel_path/mod.rs` for what is measured).
//!
//! ```sh
//! cargo build --release -p vigil-collector
//! sudo -E cargo bench -p vigil-detector --bench kernel_latency
//! ```
//!
//! `VIGIL_BENCH_ACCESSES` (default 500) probe accesses,
//! `VIGIL_BENCH_SPACING_MS` (default 20) apart. Prints min/p50/p95/p99/max
//! per leg. Needs root (eBPF).

#[path = "../tests/kernel_path/mod.rs"]
mod kernel_path;

use std::time::Duration;

use kernel_path::{Plan, measure, summary};

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text}: not a whole number")),
        Err(_) => default,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    let plan = Plan {
        accesses: env_number("VIGIL_BENCH_ACCESSES", 500) as usize,
        spacing: Duration::from_millis(env_number("VIGIL_BENCH_SPACING_MS", 20)),
    };
    let report = measure(&plan);
    assert!(
        report.missing.is_empty() && report.duplicated.is_empty(),
        "accesses without an alert: {:?}; alerted twice: {:?}",
        report.missing,
        report.duplicated
    );
    println!(
        "kernel_latency: syscall -> alert over {} probe accesses, {} ms apart \
         (collector, tansu in memory and detector on this host, release build)\n{}\n\
         reproduce: cargo build --release -p vigil-collector && \
         VIGIL_BENCH_ACCESSES={} VIGIL_BENCH_SPACING_MS={} cargo bench -p vigil-detector --bench kernel_latency",
        report.probes.len(),
        plan.spacing.as_millis(),
        summary(&report.probes),
        plan.accesses,
        plan.spacing.as_millis()
    );
}
