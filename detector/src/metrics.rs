//! The detector's OpenTelemetry metrics: its running [`Counters`] as
//! monotonic counters named `vigil.detector.*`, and its consumer lag and
//! its wait on the broker as gauges, exported when `detector run` is given
//! an OTLP endpoint (see `vigil_schemas::telemetry`).

use vigil_schemas::telemetry::{self, Level, Seconds, Total, Waiting};

use crate::pipeline::Counters;

/// The meter's name, and `service.name` of the exported resource.
pub const SERVICE: &str = "vigil-detector";

/// One counter per field of [`Counters`], the consumer lag, and how long
/// the detector has been waiting on the broker.
#[derive(Debug)]
pub struct DetectorMetrics {
    batches: Total,
    events: Total,
    alerts: Total,
    review: Total,
    audit: Total,
    dead_letters: Total,
    rule_errors: Total,
    consume_errors: Total,
    skipped: Total,
    recreated: Total,
    reread: Total,
    handed_back: Total,
    process_time: Seconds,
    publish_time: Seconds,
    settle_time: Seconds,
    consumer_lag: Level,
    /// Begun around every wait on the broker (see [`Waiting`]).
    pub broker_wait: Waiting,
}

impl DetectorMetrics {
    /// The counters on the global meter: exported once
    /// `telemetry::start` has run, and free otherwise.
    pub fn new() -> DetectorMetrics {
        let meter = telemetry::meter(SERVICE);
        let total = |name, unit, about| Total::new(&meter, name, unit, about);
        let seconds = |name, about| Seconds::new(&meter, name, about);
        DetectorMetrics {
            batches: total(
                "vigil.detector.batches",
                "{batch}",
                "Micro-batches processed",
            ),
            events: total(
                "vigil.detector.events",
                "{event}",
                "Events processed (decoded, judged and audited)",
            ),
            alerts: total(
                "vigil.detector.alerts",
                "{alert}",
                "Alerts published to the alert topic",
            ),
            review: total(
                "vigil.detector.review_items",
                "{alert}",
                "Alerts of principals still learning, published to the review topic",
            ),
            audit: total(
                "vigil.detector.audit_records",
                "{record}",
                "Records appended to the audit hash chains",
            ),
            dead_letters: total(
                "vigil.detector.dead_letters",
                "{record}",
                "Records sent to the dead-letter topic (undecodable, or with an impossible time)",
            ),
            rule_errors: total(
                "vigil.detector.rule_errors",
                "{error}",
                "Rule runs that failed on a batch",
            ),
            consume_errors: total(
                "vigil.detector.consume_errors",
                "{error}",
                "Transient errors reading the events topic",
            ),
            skipped: total(
                "vigil.detector.skipped",
                "{record}",
                "Records below the stored offset, already processed, skipped",
            ),
            recreated: total(
                "vigil.detector.recreated_partitions",
                "{partition}",
                "Events partitions found recreated and read again from their beginning",
            ),
            reread: total(
                "vigil.detector.reread_partitions",
                "{partition}",
                "Partitions read again from an earlier offset after nothing came from the stored one",
            ),
            handed_back: total(
                "vigil.detector.handed_back",
                "{record}",
                "Records consumed but handed back unprocessed when their partitions were revoked",
            ),
            process_time: seconds(
                "vigil.detector.process.time",
                "Time spent processing batches (decode, baselines, rules, audit)",
            ),
            publish_time: seconds(
                "vigil.detector.publish.time",
                "Time spent handing outputs to the producer, waits on a full queue included",
            ),
            settle_time: seconds(
                "vigil.detector.settle.time",
                "Time spent waiting for earlier batches' acknowledgements and writing their state",
            ),
            consumer_lag: Level::once_known(
                &meter,
                "vigil.detector.consumer_lag",
                "{event}",
                "Events in the assigned events partitions not yet processed and written to the state store",
            ),
            broker_wait: Waiting::new(
                &meter,
                "vigil.detector.broker_wait",
                "How long the detector has been waiting on the broker (acknowledgement of a batch's outputs, room in the producer's queue, an audit chain's tail); 0 when it is not waiting",
            ),
        }
    }

    /// Records the counters as they stand.
    pub fn record(&mut self, c: &Counters) {
        self.batches.set(c.batches);
        self.events.set(c.events);
        self.alerts.set(c.alerts);
        self.review.set(c.review);
        self.audit.set(c.audit);
        self.dead_letters.set(c.dead_letters);
        self.rule_errors.set(c.rule_errors);
        self.consume_errors.set(c.consume_errors);
        self.skipped.set(c.skipped);
        self.recreated.set(c.recreated);
        self.reread.set(c.reread);
        self.handed_back.set(c.handed_back);
        self.process_time.set(c.process_time);
        self.publish_time.set(c.publish_time);
        self.settle_time.set(c.settle_time);
    }

    /// Records the consumer lag as it stands.
    pub fn record_lag(&self, lag: u64) {
        self.consumer_lag.set(lag);
    }
}

impl Default for DetectorMetrics {
    fn default() -> DetectorMetrics {
        DetectorMetrics::new()
    }
}
