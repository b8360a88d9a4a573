//! Vigil's load test: a synthetic hospital.
//!
//! Not built yet. It will generate hosts, users with roles and their daily
//! and weekly rhythms in simulated time, inject labelled attacks, drive the
//! real pipeline over Kafka, and report event-to-alert latency percentiles,
//! throughput, consumer lag, recall and false-alert rates.
//!
//! Until then this crate holds no code: the README's status section says so.
