//! Topic names and default partition counts.
//!
//! Events are keyed by principal, so the events topic's partition count bounds
//! how many detector instances can share the work. The audit topic's
//! partitions are separate hash chains: audit partition `p` holds the chain
//! of events partition `p`, so it needs at least as many partitions.

/// Syscall events from collectors (Avro [`crate::Event`], key = principal).
pub const EVENTS: &str = "vigil.events.v1";
/// Alerts for the SOC (OCSF Detection Finding JSON).
pub const ALERTS: &str = "vigil.alerts.v1";
/// Hash-chained audit trail of PHI accesses (Avro [`crate::AuditRecord`]).
pub const AUDIT: &str = "vigil.audit.v1";
/// Alerts about principals still in learning mode, for human review.
pub const REVIEW: &str = "vigil.review.v1";
/// Records that could not be processed, with their original bytes.
pub const DLQ: &str = "vigil.dlq.v1";

/// Every Vigil topic with its default partition count.
pub const ALL: [(&str, i32); 5] = [(EVENTS, 6), (ALERTS, 3), (AUDIT, 6), (REVIEW, 1), (DLQ, 1)];
