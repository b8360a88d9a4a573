//! The collector's OpenTelemetry metrics (`vigil.collector.*`): what it
//! read from the kernel, what it delivered, and every kind of loss the
//! gap events report, as counters; its backlog as gauges. Exported when
//! the collector is given an OTLP endpoint (see `vigil_schemas::telemetry`).

use vigil_schemas::telemetry::{self, Level, Total};

/// The meter's name, and `service.name` of the exported resource.
pub const SERVICE: &str = "vigil-collector";

/// The collector's figures at one moment, as running totals and levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Records read from the kernel's ring buffer.
    pub records: u64,
    /// Events the broker acknowledged.
    pub delivered: u64,
    /// Events the kernel could not write (ring buffer full).
    pub kernel_drops: u64,
    /// Watched descriptors the kernel could not track (table full).
    pub untracked_files: u64,
    /// Program runs the kernel skipped.
    pub skipped_runs: u64,
    /// Events dropped because the queue to the broker was full.
    pub queue_drops: u64,
    /// Events the broker or librdkafka refused for good.
    pub refused: u64,
    /// Producers replaced after a fatal error.
    pub renewed: u64,
    /// Events waiting in the queue to the producer.
    pub queued: u64,
    /// Events with librdkafka, not yet acknowledged.
    pub in_flight: u64,
}

/// One instrument per field of [`Figures`].
#[derive(Debug)]
pub struct CollectorMetrics {
    records: Total,
    delivered: Total,
    kernel_drops: Total,
    untracked_files: Total,
    skipped_runs: Total,
    queue_drops: Total,
    refused: Total,
    renewed: Total,
    queued: Level,
    in_flight: Level,
}

impl CollectorMetrics {
    /// The instruments on the global meter: exported once
    /// `telemetry::start` has run, and free otherwise.
    pub fn new() -> CollectorMetrics {
        let meter = telemetry::meter(SERVICE);
        let total = |name, unit, about| Total::new(&meter, name, unit, about);
        let level = |name, about| Level::new(&meter, name, "{event}", about);
        CollectorMetrics {
            records: total(
                "vigil.collector.records",
                "{record}",
                "Records read from the kernel's ring buffer",
            ),
            delivered: total(
                "vigil.collector.delivered",
                "{event}",
                "Events the broker acknowledged",
            ),
            kernel_drops: total(
                "vigil.collector.kernel_drops",
                "{event}",
                "Events the kernel could not write because the ring buffer was full",
            ),
            untracked_files: total(
                "vigil.collector.untracked_files",
                "{descriptor}",
                "Watched descriptors whose read and write roll-ups are lost (tracking table full)",
            ),
            skipped_runs: total(
                "vigil.collector.skipped_runs",
                "{run}",
                "Program runs the kernel skipped while another BPF program ran on the CPU",
            ),
            queue_drops: total(
                "vigil.collector.queue_drops",
                "{event}",
                "Events dropped because the queue to the broker was full",
            ),
            refused: total(
                "vigil.collector.refused",
                "{event}",
                "Events the broker or librdkafka refused for good",
            ),
            renewed: total(
                "vigil.collector.producer_renewals",
                "{producer}",
                "Producers replaced after a fatal librdkafka error",
            ),
            queued: level(
                "vigil.collector.queued",
                "Events waiting in the queue to the producer (the backlog while the broker is slow or down)",
            ),
            in_flight: level(
                "vigil.collector.in_flight",
                "Events handed to librdkafka and not yet acknowledged",
            ),
        }
    }

    /// Records the figures as they stand.
    pub fn record(&mut self, f: &Figures) {
        self.records.set(f.records);
        self.delivered.set(f.delivered);
        self.kernel_drops.set(f.kernel_drops);
        self.untracked_files.set(f.untracked_files);
        self.skipped_runs.set(f.skipped_runs);
        self.queue_drops.set(f.queue_drops);
        self.refused.set(f.refused);
        self.renewed.set(f.renewed);
        self.queued.set(f.queued);
        self.in_flight.set(f.in_flight);
    }
}

impl Default for CollectorMetrics {
    fn default() -> CollectorMetrics {
        CollectorMetrics::new()
    }
}
