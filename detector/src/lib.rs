//! Vigil's detector: the stateful service between `vigil.events.v1` and the
//! alert, audit, review and dead-letter topics.
//!
//! The hot path is a chain of operators over Arrow record batches,
//! [`processor::Processor`]: decode → enrich with baselines → evaluate rules
//! → emit. Modules, in the order data flows:
//!
//! - [`pipeline`] — `detector run`: the consumer group, micro-batching,
//!   publishing outputs, committing state and offsets, graceful shutdown.
//! - [`processor`] — the operator chain without Kafka, and dead letters.
//! - [`enrich`] — per-event features from the user, role and host baselines.
//! - [`baseline`] — the baseline model: hour-of-week decayed statistics,
//!   first-seen sets, rolling windows, maturity.
//! - [`roles`] — the reloadable principal/group → role mapping.
//! - [`events_table`] — the `events` table's Arrow schema and batch builder.
//! - [`rules`] — SQL rules: header, validation, plan once, run per batch,
//!   hot reload (DataFusion); [`regex_once`] compiles their regular
//!   expressions once per plan instead of once per batch.
//! - [`detection`] — rule results → OCSF alerts with deterministic ids.
//! - [`audit_chain`] — hash-chained audit records and `audit verify`.
//! - [`audit_topic`] — `audit verify` reading the audit topic to its end.
//! - [`state`] — the state store trait, RocksDB and in-memory stores.
//! - [`rule_tests`] — `detector rules test`.
//! - [`tail`] — `detector tail`.
//! - [`alert_text`] — `detector alerts`: alerts and review items as
//!   readable lines.
//! - [`metrics`] — the counters as OpenTelemetry metrics (`vigil.detector.*`).
//! - [`config`] — `detector run` settings; [`error`] — the error type.

pub mod alert_text;
pub mod audit_chain;
pub mod audit_topic;
pub mod baseline;
pub mod config;
pub mod detection;
pub mod enrich;
pub mod error;
pub mod events_table;
pub mod metrics;
pub mod pipeline;
pub mod processor;
pub mod regex_once;
pub mod roles;
pub mod rule_tests;
pub mod rules;
pub mod state;
pub mod tail;

pub use error::{Error, Result};
