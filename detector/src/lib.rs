//! Vigil's detector: the stateful service between `vigil.events.v1` and the
//! alert, audit, review and dead-letter topics.
//!
//! Built so far:
//! - [`tail`] — `detector tail`: prints any Vigil topic as JSON lines for
//!   humans and tests, decoding Avro by fingerprint and passing JSON through.
//! - [`error`] — the crate's [`Error`] type.
//!
//! The consumer, baselines (RocksDB), SQL rules (DataFusion) and outputs are
//! the next piece of work (see the README's status section).

pub mod error;
pub mod tail;

pub use error::{Error, Result};
