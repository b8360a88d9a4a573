//! OpenTelemetry metrics of Vigil's services, exported over OTLP/HTTP
//! (protobuf) to whatever receives OTLP: an OpenTelemetry Collector,
//! Grafana Alloy, a vendor's agent.
//!
//! Export is off unless an endpoint is given ([`metrics_endpoint`]); the
//! services record into OpenTelemetry's global meter either way, which
//! costs next to nothing while no exporter is installed. [`start`]
//! installs one and returns the [`Telemetry`] handle whose
//! [`Telemetry::shutdown`] exports the final figures.
//!
//! A service keeps its counts as running totals (they also go into its
//! log); a [`Total`] turns a running total into an OpenTelemetry counter by
//! adding what grew since the last [`Total::set`]; a [`Waiting`] is a gauge
//! the exporter works out itself, for a wait in which the service records
//! nothing. Metric names are fixed and carry no attributes: a service's
//! identity is in the resource (`service.name`, `service.instance.id`,
//! `host.name`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Meter, ObservableGauge};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

/// How often metrics are exported unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// How long one export may take before it is abandoned (and logged).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP/HTTP path of metrics under a receiver's base URL.
const METRICS_PATH: &str = "/v1/metrics";

/// A telemetry setting that cannot work, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP endpoint {endpoint:?} (from {from}): {reason}")]
    Endpoint {
        endpoint: String,
        /// Where the endpoint came from (setting or variable).
        from: String,
        reason: String,
    },
    #[error("starting the OTLP metrics exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Where to export metrics, if anywhere: the URL of the metrics resource
/// of an OTLP/HTTP receiver.
///
/// `given` is the base URL Vigil was given (`--otlp-endpoint`,
/// `VIGIL_OTLP_ENDPOINT` or the config file), e.g. `http://127.0.0.1:4318`;
/// `/v1/metrics` is added unless it ends with it. Without it, OpenTelemetry's
/// own variables are honoured: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as
/// given, else `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/metrics`. `None`:
/// nothing asked for export.
pub fn metrics_endpoint(given: Option<&str>) -> Result<Option<String>, TelemetryError> {
    resolve_endpoint(given, |name| std::env::var(name).ok())
}

fn resolve_endpoint(
    given: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, TelemetryError> {
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let (url, source, as_given) = if let Some(base) = given.filter(|g| !g.trim().is_empty()) {
        (
            base.trim().to_owned(),
            "--otlp-endpoint / VIGIL_OTLP_ENDPOINT / otlp_endpoint",
            false,
        )
    } else if let Some(url) = non_empty(env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) {
        (
            url.trim().to_owned(),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            true,
        )
    } else if let Some(base) = non_empty(env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (base.trim().to_owned(), "OTEL_EXPORTER_OTLP_ENDPOINT", false)
    } else {
        return Ok(None);
    };
    let refuse = |reason: &str| TelemetryError::Endpoint {
        endpoint: url.clone(),
        from: source.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            refuse(
                "https is not built in; export over http to an OpenTelemetry Collector on this \
                 host or network, which can forward with TLS",
            )
        } else {
            refuse("expected an http:// URL such as http://127.0.0.1:4318")
        });
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(refuse(
            "no host after http://; expected e.g. http://127.0.0.1:4318",
        ));
    }
    if as_given || url.trim_end_matches('/').ends_with(METRICS_PATH) {
        return Ok(Some(url));
    }
    Ok(Some(format!("{}{METRICS_PATH}", url.trim_end_matches('/'))))
}

/// Exporting metrics: keep it until the service stops, then call
/// [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    endpoint: String,
}

/// Starts exporting every `interval` to `endpoint` (see
/// [`metrics_endpoint`]) and makes the global meter record for it.
/// `service` becomes `service.name` (e.g. `vigil-detector`), `host`
/// `host.name` (the kernel's host name when `None`) and `instance`
/// `service.instance.id` (the host name when `None`).
pub fn start(
    service: &'static str,
    instance: Option<&str>,
    host: Option<&str>,
    endpoint: &str,
    interval: Duration,
) -> Result<Telemetry, TelemetryError> {
    let host = host.map_or_else(kernel_host_name, str::to_owned);
    let instance = instance.map_or_else(|| host.clone(), str::to_owned);
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    let reader = PeriodicReader::builder(Reported {
        inner: exporter,
        endpoint: endpoint.to_owned(),
        failing: AtomicBool::new(false),
    })
    .with_interval(interval)
    .build();
    let resource = Resource::builder_empty()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("host.name", host),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(Telemetry {
        provider,
        endpoint: endpoint.to_owned(),
    })
}

/// The kernel's host name, or `unknown` where there is none to read.
fn kernel_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Telemetry {
    /// Where the metrics go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what was recorded since the last export and stops. An
    /// export that fails is returned as its reason (the service has
    /// stopped anyway; the caller logs it).
    pub fn shutdown(self) -> Result<(), String> {
        self.provider.shutdown().map_err(|e| e.to_string())
    }
}

/// An exporter whose failures reach the service's log. OpenTelemetry logs
/// a failed export only at debug level; an operator whose dashboards went
/// blank should find why at the default level: the first failure is a
/// warning, the recovery a line of its own, and nothing is repeated at
/// every interval in between.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: PushMetricExporter> PushMetricExporter for Reported<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let outcome = self.inner.export(metrics).await;
        match &outcome {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                %error,
                "Metrics export failed; trying again at every interval"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "Metrics export works again")
            }
            _ => {}
        }
        outcome
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The meter a service records with: the global one, which exports once
/// [`start`] has run and does nothing otherwise.
pub fn meter(service: &'static str) -> Meter {
    opentelemetry::global::meter(service)
}

/// A running total kept by a service, exported as a monotonic counter.
#[derive(Debug)]
pub struct Total {
    counter: Counter<u64>,
    reported: u64,
}

impl Total {
    /// A counter named `name` (e.g. `vigil.detector.events`), with its unit
    /// in UCUM braces (e.g. `{event}`) and a one-line description.
    pub fn new(
        meter: &Meter,
        name: &'static str,
        unit: &'static str,
        about: &'static str,
    ) -> Total {
        let counter = meter
            .u64_counter(name)
            .with_unit(unit)
            .with_description(about)
            .build();
        // Exported from the start, at 0 until it grows: a dashboard tells
        // "none yet" from "not reported".
        counter.add(0, &[]);
        Total {
            counter,
            reported: 0,
        }
    }

    /// Records the running total: the counter grows by what the total
    /// grew since the last call (a total never shrinks; one that seems to
    /// is taken as unchanged).
    pub fn set(&mut self, total: u64) {
        if total > self.reported {
            self.counter.add(total - self.reported, &[]);
            self.reported = total;
        }
    }
}

/// A quantity that goes up and down (a queue's length), exported as a
/// gauge of its latest value.
#[derive(Debug)]
pub struct Level {
    gauge: Gauge<u64>,
}

impl Level {
    /// A gauge named `name` with its unit and a one-line description;
    /// exported from the start, at 0 until set.
    pub fn new(
        meter: &Meter,
        name: &'static str,
        unit: &'static str,
        about: &'static str,
    ) -> Level {
        let level = Level::once_known(meter, name, unit, about);
        level.set(0);
        level
    }

    /// A gauge as [`Level::new`] makes, exported only from its first
    /// [`Level::set`]: for a quantity not known at the start (a consumer's
    /// lag before the broker has told it where the log ends), where 0
    /// would be a false "none".
    pub fn once_known(
        meter: &Meter,
        name: &'static str,
        unit: &'static str,
        about: &'static str,
    ) -> Level {
        let gauge = meter
            .u64_gauge(name)
            .with_unit(unit)
            .with_description(about)
            .build();
        Level { gauge }
    }

    /// Records the quantity as it is now.
    pub fn set(&self, value: u64) {
        self.gauge.record(value, &[]);
    }
}

/// A running total of seconds (time spent in some stage), exported as a
/// monotonic counter with unit `s`.
#[derive(Debug)]
pub struct Seconds {
    counter: Counter<f64>,
    reported: Duration,
}

impl Seconds {
    /// A counter named `name` with unit `s` and a one-line description.
    pub fn new(meter: &Meter, name: &'static str, about: &'static str) -> Seconds {
        let counter = meter
            .f64_counter(name)
            .with_unit("s")
            .with_description(about)
            .build();
        // Exported from the start, as a [`Total`] is.
        counter.add(0.0, &[]);
        Seconds {
            counter,
            reported: Duration::ZERO,
        }
    }

    /// Records the running total of time, as [`Total::set`] does counts.
    pub fn set(&mut self, total: Duration) {
        if total > self.reported {
            self.counter.add((total - self.reported).as_secs_f64(), &[]);
            self.reported = total;
        }
    }
}

/// How long a service has been stuck waiting on something outside it (a
/// broker that does not answer), exported as a gauge in seconds that is
/// worked out when each export is taken: it goes on growing through a wait
/// in which the service itself records nothing. 0 while nothing waits.
#[derive(Debug)]
pub struct Waiting {
    start: Arc<WaitStart>,
    _gauge: ObservableGauge<f64>,
}

/// When the wait under way began, in nanoseconds after `base` plus one; 0
/// when none is under way.
#[derive(Debug)]
struct WaitStart {
    base: Instant,
    began: AtomicU64,
}

impl WaitStart {
    fn waited(&self) -> Duration {
        match self.began.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            began => self
                .base
                .elapsed()
                .saturating_sub(Duration::from_nanos(began - 1)),
        }
    }
}

impl Waiting {
    /// A gauge named `name`, unit `s`, with a one-line description;
    /// exported from the start, at 0 until a wait begins.
    pub fn new(meter: &Meter, name: &'static str, about: &'static str) -> Waiting {
        let start = Arc::new(WaitStart {
            base: Instant::now(),
            began: AtomicU64::new(0),
        });
        let observed = Arc::clone(&start);
        let gauge = meter
            .f64_observable_gauge(name)
            .with_unit("s")
            .with_description(about)
            .with_callback(move |gauge| gauge.observe(observed.waited().as_secs_f64(), &[]))
            .build();
        Waiting {
            start,
            _gauge: gauge,
        }
    }

    /// Marks a wait as begun; it is over when the returned guard is
    /// dropped. A wait begun inside another is part of it: the outer one's
    /// start stands, and only the outer guard ends it.
    pub fn begin(&self) -> Wait<'_> {
        let now = self.start.base.elapsed().as_nanos() as u64 + 1;
        let began = self
            .start
            .began
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        Wait {
            start: &self.start,
            began,
        }
    }

    /// How long the wait under way has lasted (zero when none is).
    pub fn waited(&self) -> Duration {
        self.start.waited()
    }
}

/// A wait under way (see [`Waiting::begin`]); dropping it ends the wait.
#[derive(Debug)]
#[must_use = "the wait ends when this guard is dropped"]
pub struct Wait<'a> {
    start: &'a WaitStart,
    began: bool,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.began {
            self.start.began.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_lasts_from_its_outermost_begin_to_that_guard_s_drop() {
        let waiting = Waiting::new(&meter("vigil-test"), "vigil.test.wait", "a test wait");
        assert_eq!(waiting.waited(), Duration::ZERO, "before any wait");
        let outer = waiting.begin();
        std::thread::sleep(Duration::from_millis(30));
        let inner = waiting.begin();
        std::thread::sleep(Duration::from_millis(10));
        drop(inner);
        let waited = waiting.waited();
        assert!(
            waited >= Duration::from_millis(40),
            "the inner wait restarted or ended the outer one: {waited:?}"
        );
        drop(outer);
        assert_eq!(waiting.waited(), Duration::ZERO, "after the outer guard");
        let again = waiting.begin();
        assert!(
            waiting.waited() < Duration::from_millis(30),
            "a new wait starts from 0: {:?}",
            waiting.waited()
        );
        drop(again);
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_given_base_url_gets_the_metrics_path() {
        for (given, expected) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/metrics"),
            ("http://otel:4318/", "http://otel:4318/v1/metrics"),
            ("http://otel:4318/v1/metrics", "http://otel:4318/v1/metrics"),
            ("http://gw/otlp", "http://gw/otlp/v1/metrics"),
        ] {
            assert_eq!(
                resolve_endpoint(Some(given), env(&[])).expect("valid"),
                Some(expected.to_owned()),
                "from {given}"
            );
        }
    }

    #[test]
    fn opentelemetry_variables_are_honoured_when_nothing_is_given() {
        assert_eq!(resolve_endpoint(None, env(&[])).expect("valid"), None);
        assert_eq!(
            resolve_endpoint(
                None,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318")])
            )
            .expect("valid"),
            Some("http://a:4318/v1/metrics".to_owned())
        );
        // The per-signal variable is a whole URL and wins over the base.
        assert_eq!(
            resolve_endpoint(
                None,
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:9000/m"),
                ])
            )
            .expect("valid"),
            Some("http://b:9000/m".to_owned())
        );
        // What Vigil was given wins over both.
        assert_eq!(
            resolve_endpoint(
                Some("http://c:4318"),
                env(&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:9000/m")])
            )
            .expect("valid"),
            Some("http://c:4318/v1/metrics".to_owned())
        );
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused_with_the_fix() {
        let https = resolve_endpoint(Some("https://otel:4318"), env(&[]))
            .expect_err("https is not built in")
            .to_string();
        assert!(https.contains("https is not built in"), "{https}");
        let bare = resolve_endpoint(Some("otel:4318"), env(&[]))
            .expect_err("no scheme")
            .to_string();
        assert!(bare.contains("expected an http:// URL"), "{bare}");
        let from_env = resolve_endpoint(None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")]))
            .expect_err("no host")
            .to_string();
        assert!(
            from_env.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && from_env.contains("no host"),
            "{from_env}"
        );
    }
}
