//! Vigil's data contracts: every program that touches the bus uses this crate,
//! and nothing else defines the wire format.
//!
//! - [`event`] — [`Event`], one system-call-level observation published by a
//!   collector to `vigil.events.v1`, and [`Event::principal`], the key that
//!   routes it to the detector instance owning that identity's baselines.
//! - [`audit`] — [`AuditRecord`], one PHI access or coverage gap on
//!   `vigil.audit.v1`, and the SHA-256 hash that chains records per partition.
//! - [`alert`] — [`Alert`], the OCSF Detection Finding (class 2004) JSON
//!   document on `vigil.alerts.v1` and `vigil.review.v1`, with its
//!   deterministic id. `json/alert.v1.schema.json` is its JSON Schema.
//! - [`wire`] — the Avro single-object encoding (`C3 01`, 8-byte CRC-64-AVRO
//!   fingerprint, body) and the table of every schema revision this crate
//!   knows, so any known writer revision decodes into the current type.
//! - [`codec`] — hand-written Avro binary for the current Event and
//!   AuditRecord revisions, the hot path of every program on the bus; tested
//!   byte for byte against the schema-driven codec.
//! - [`topics`] — the topic names and their default partition counts.
//! - `bus` (feature `kafka`) — the rdkafka client settings every program on
//!   the bus shares: idempotent `acks=all` producers, manually committed
//!   consumers with a short fetch wait (the tansu broker answers a fetch only
//!   when the wait expires).
//! - [`error`] — the crate's [`Error`] type.
//! - `telemetry` (feature `telemetry`) — the services' OpenTelemetry
//!   metrics: the OTLP/HTTP exporter, off unless an endpoint is given, and
//!   running totals turned into counters.
//! - `testkit` (feature `testkit`) — the integration-test harness shared by
//!   the crates: a private tansu broker on loopback and uniquely named topics;
//!   `otlp_receiver`, an OTLP/HTTP endpoint that keeps the metrics exported
//!   to it.
//!
//! The `.avsc` files under `avro/` are the source of truth for the Avro
//! contracts; the Rust types mirror them and a test checks every field.

pub mod alert;
pub mod audit;
#[cfg(feature = "kafka")]
pub mod bus;
pub mod codec;
pub mod error;
pub mod event;
#[cfg(feature = "testkit")]
pub mod otlp_receiver;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topics;
pub mod wire;

pub use alert::Alert;
pub use audit::AuditRecord;
pub use error::{Error, Result};
pub use event::{Event, Gap, Kind, SocketFamily};
pub use wire::{Contract, Decoded, decode, decode_any, encode};
