//! `audit verify` on the audit topic: every partition is read from its
//! beginning to the high watermark it had when the read started, and each
//! record is checked as it arrives, so memory holds one record per
//! partition however long the trail is.
//!
//! A read that stops early (the broker went quiet for the idle timeout
//! before a partition reached its high watermark) is reported as
//! incomplete, never as intact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset};
use vigil_schemas::{AuditRecord, bus, decode};

use crate::audit_chain::Verifier;
use crate::tail::{assigned_consumer, partitions_of, recv_within};
use crate::{Error, Result};

/// How long the read goes on after every partition reached its high
/// watermark: tansu's memory storage (0.6) reports the high watermark as
/// the last record batch's first offset + 1, so the rest of that batch
/// arrives after the watermark is reached.
const QUIET: Duration = Duration::from_millis(300);

/// How often a long read says how far it got (on stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How far one audit partition was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRead {
    /// The first offset the broker still holds when the read started
    /// (above 0 when retention deleted the oldest records).
    pub low: i64,
    /// The high watermark when the read started.
    pub high: i64,
    /// The last offset read, if any.
    pub last_read: Option<i64>,
}

impl PartitionRead {
    /// The partition was read to its high watermark (or held nothing).
    pub fn complete(&self) -> bool {
        self.high <= self.low || self.last_read.is_some_and(|offset| offset >= self.high - 1)
    }
}

/// Reads every partition of `topic` from its beginning into `verifier`.
/// Stops when every partition reached the high watermark it had at the
/// start and then nothing came for a moment, or when nothing came for
/// `idle` before that; the returned reads say which.
pub async fn verify_topic(
    brokers: &str,
    topic: &str,
    idle: Duration,
    verifier: &mut Verifier,
) -> Result<BTreeMap<i32, PartitionRead>> {
    // The watermarks are read before the partitions are assigned, so no
    // record is fetched before the end of the read is fixed.
    let mut reads = BTreeMap::new();
    let probe: BaseConsumer = bus::consumer_config(brokers, "vigil-audit-verify")
        .create()
        .map_err(|e| Error::kafka("create audit reader", e))?;
    for partition in partitions_of(&probe, brokers, topic)? {
        let (low, high) = probe
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| Error::kafka(format!("watermarks of {topic}/{partition}"), e))?;
        let read = PartitionRead {
            low,
            high,
            last_read: None,
        };
        reads.insert(partition, read);
    }
    drop(probe);
    let consumer = assigned_consumer(brokers, "vigil-audit-verify", &[topic], Offset::Beginning)?;

    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    let mut records = 0u64;
    loop {
        let wait = if reads.values().all(PartitionRead::complete) {
            QUIET
        } else {
            idle
        };
        let Some(next) = recv_within(&consumer, Some(wait)).await else {
            break;
        };
        let message = next.map_err(|e| Error::kafka(format!("consume {topic}"), e))?;
        let (partition, offset) = (message.partition(), message.offset());
        records += 1;
        if let Some(read) = reads.get_mut(&partition) {
            read.last_read = Some(read.last_read.map_or(offset, |last| last.max(offset)));
        }
        let position = format!("(topic partition {partition} offset {offset})");
        let record = match message.payload() {
            Some(bytes) => decode::<AuditRecord>(bytes).map_err(|e| e.to_string()),
            None => Err("the record has no value".to_owned()),
        };
        match record {
            Ok(record) => verifier.check(record, &position),
            Err(reason) => verifier.unreadable(partition, &position, &reason),
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            let done = reads.values().filter(|r| r.complete()).count();
            eprintln!(
                "audit verify: {records} records read in {} s; {done} of {} partitions read to their end",
                started.elapsed().as_secs(),
                reads.len()
            );
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_complete_at_its_high_watermark_or_when_empty() {
        let read = |low, high, last_read| PartitionRead {
            low,
            high,
            last_read,
        };
        assert!(read(0, 0, None).complete(), "empty");
        assert!(read(5, 5, None).complete(), "emptied by retention");
        assert!(!read(0, 10, None).complete(), "nothing read");
        assert!(!read(0, 10, Some(8)).complete(), "one short");
        assert!(read(0, 10, Some(9)).complete(), "last offset read");
        assert!(read(0, 10, Some(12)).complete(), "past the watermark");
    }
}
