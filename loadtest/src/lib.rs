//! Vigil's load test: a synthetic hospital that drives the real pipeline
//! over Kafka.
//!
//! [`hospital`] models hosts, people and service accounts with roles and
//! weekly rhythms; [`scenarios`] injects labelled attacks; [`drive`] runs a
//! detector against generated months of simulated history and a live
//! phase in real time; [`report`] turns what came back into latency
//! percentiles, throughput, consumer lag, recall and false-alert rates.

pub mod drive;
pub mod hospital;
pub mod report;
pub mod rng;
pub mod scenarios;
