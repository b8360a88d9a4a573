//! An OTLP/HTTP metrics receiver for the integration tests: it takes what
//! the services' real exporters send to `/v1/metrics` (protobuf), decodes
//! it with OpenTelemetry's own message types and keeps it for the test to
//! read.
//!
//! It stands in for an OpenTelemetry Collector, which cannot be installed
//! on these machines; it answers as one does (200 with an empty
//! `ExportMetricsServiceResponse`), and what the test checks is the
//! exporter's request, decoded, not anything the receiver made up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, metric, number_data_point};
use prost::Message;

/// What the receiver took in.
#[derive(Debug, Default)]
struct Received {
    exports: Vec<ExportMetricsServiceRequest>,
    /// Requests it could not take (wrong path, undecodable body), as text.
    refused: Vec<String>,
}

/// A receiver on a free loopback port, until dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    port: u16,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("otlp receiver".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let received = Arc::clone(&received);
                        std::thread::spawn(move || serve(stream, &received));
                    }
                })
                .expect("start the OTLP receiver");
        }
        OtlpReceiver {
            port,
            received,
            stop,
        }
    }

    /// The base URL to give a service (`--otlp-endpoint`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Export requests received so far.
    pub fn exports(&self) -> usize {
        self.lock().exports.len()
    }

    /// Requests the receiver could not take, described.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// The value of the counter (sum) or gauge `name` in the latest export
    /// of `service` that carried it, added over its data points.
    pub fn latest_sum(&self, service: &str, name: &str) -> Option<f64> {
        let received = self.lock();
        received
            .exports
            .iter()
            .rev()
            .find_map(|export| value_in(export, service, name))
    }

    /// The value of `name` in each export of `service` that carried it,
    /// oldest first: how a gauge moved.
    pub fn history(&self, service: &str, name: &str) -> Vec<f64> {
        let received = self.lock();
        received
            .exports
            .iter()
            .filter_map(|export| value_in(export, service, name))
            .collect()
    }

    /// Waits until the sum `name` of `service` reaches `at_least`, or
    /// `timeout` passes; returns the latest value either way.
    pub fn wait_for_sum(
        &self,
        service: &str,
        name: &str,
        at_least: f64,
        timeout: Duration,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let latest = self.latest_sum(service, name);
            if latest.is_some_and(|v| v >= at_least) || Instant::now() >= deadline {
                return latest;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A resource attribute (e.g. `host.name`) of the latest export of
    /// `service`.
    pub fn resource(&self, service: &str, key: &str) -> Option<String> {
        let received = self.lock();
        received.exports.iter().rev().find_map(|export| {
            resources_of(export, service)
                .next()
                .and_then(|rm| resource_attribute(rm, key))
        })
    }

    /// Every metric name `service` exported, sorted.
    pub fn metric_names(&self, service: &str) -> Vec<String> {
        let received = self.lock();
        let mut names: Vec<String> = received
            .exports
            .iter()
            .flat_map(|export| metrics_of(export, service))
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The parts of `export` whose resource is `service`.
fn resources_of<'a>(
    export: &'a ExportMetricsServiceRequest,
    service: &'a str,
) -> impl Iterator<Item = &'a ResourceMetrics> {
    export
        .resource_metrics
        .iter()
        .filter(move |rm| resource_attribute(rm, "service.name").as_deref() == Some(service))
}

/// Every metric of `service` in `export`.
fn metrics_of<'a>(
    export: &'a ExportMetricsServiceRequest,
    service: &'a str,
) -> impl Iterator<Item = &'a Metric> {
    resources_of(export, service)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
}

/// The counter (sum) or gauge `name` of `service` in one export, added
/// over its data points.
fn value_in(export: &ExportMetricsServiceRequest, service: &str, name: &str) -> Option<f64> {
    metrics_of(export, service)
        .filter(|m| m.name == name)
        .find_map(|m| {
            let points = match &m.data {
                Some(metric::Data::Sum(sum)) => &sum.data_points,
                Some(metric::Data::Gauge(gauge)) => &gauge.data_points,
                _ => return None,
            };
            Some(
                points
                    .iter()
                    .map(|p| match p.value {
                        Some(number_data_point::Value::AsInt(v)) => v as f64,
                        Some(number_data_point::Value::AsDouble(v)) => v,
                        None => 0.0,
                    })
                    .sum(),
            )
        })
}

fn resource_attribute(rm: &ResourceMetrics, key: &str) -> Option<String> {
    rm.resource
        .as_ref()?
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

/// Serves one connection: HTTP/1.1 requests, kept alive until the client
/// closes it.
fn serve(stream: TcpStream, received: &Mutex<Received>) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut length = 0usize;
        let mut encoding = None;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("content-encoding") {
                    encoding = Some(value.to_owned());
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default();
        let status = if !request_line.starts_with("POST ") || path != "/v1/metrics" {
            refuse(
                received,
                format!("{} (only POST /v1/metrics is served)", request_line.trim()),
            );
            "404 Not Found"
        } else if let Some(encoding) = encoding {
            refuse(
                received,
                format!("Content-Encoding {encoding} (not expected)"),
            );
            "415 Unsupported Media Type"
        } else {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(export) => {
                    received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .exports
                        .push(export);
                    "200 OK"
                }
                Err(e) => {
                    refuse(
                        received,
                        format!("undecodable export of {length} bytes: {e}"),
                    );
                    "400 Bad Request"
                }
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn refuse(received: &Mutex<Received>, why: String) {
    received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused
        .push(why);
}
