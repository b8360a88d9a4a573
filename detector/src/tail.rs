//! `detector tail`: a topic as JSON lines.
//!
//! Each record prints as one JSON object on stdout: topic, partition, offset,
//! timestamp, key, headers, the contract it decoded as (`Event`,
//! `AuditRecord` or `json`) and the value. A record that is neither a known
//! Avro message nor JSON prints one line on stderr naming its partition,
//! offset and what is wrong, and tailing goes on.
//!
//! Tail reads without a consumer group (partitions are assigned directly), so
//! it never moves a service's committed offsets.

use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use vigil_schemas::{bus, decode_any};

use crate::pipeline::consume_error_is_fatal;
use crate::{Error, Result};

/// What to tail.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub brokers: String,
    pub topic: String,
    /// Start at each partition's first record instead of its end.
    pub from_beginning: bool,
    /// Stop after this many records (decoded or not).
    pub count: Option<u64>,
    /// Stop when no record arrives for this long.
    pub idle_timeout: Option<Duration>,
}

/// How a tail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TailSummary {
    pub records: u64,
    pub undecodable: u64,
}

/// Renders one record's payload: `(contract, value)` or why it cannot be read.
pub fn render_payload(payload: Option<&[u8]>) -> std::result::Result<(String, Value), String> {
    let Some(bytes) = payload else {
        return Ok(("null".into(), Value::Null));
    };
    match decode_any(bytes) {
        Ok(decoded) => Ok((decoded.contract().to_owned(), decoded.to_json())),
        Err(avro_error) => match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => Ok(("json".into(), value)),
            _ => Err(avro_error.to_string()),
        },
    }
}

fn record_json(message: &BorrowedMessage<'_>, contract: String, value: Value) -> Value {
    let headers: serde_json::Map<String, Value> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let v = h
                        .value
                        .map(|v| Value::String(String::from_utf8_lossy(v).into_owned()))
                        .unwrap_or(Value::Null);
                    (h.key.to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp_ms": message.timestamp().to_millis(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "contract": contract,
        "value": value,
    })
}

/// A consumer outside any consumer group (so it never moves a service's
/// committed offsets), assigned every partition of `topics` from `start`.
/// `client` names it to the broker, with this process's id appended.
pub(crate) fn assigned_consumer(
    brokers: &str,
    client: &str,
    topics: &[&str],
    start: Offset,
) -> Result<StreamConsumer> {
    let mut config = bus::consumer_config(brokers, &format!("{client}-{}", std::process::id()));
    config.set("enable.partition.eof", "false");
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| Error::kafka("create consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    for &topic in topics {
        for partition in partitions_of(&consumer, brokers, topic)? {
            assignment
                .add_partition_offset(topic, partition, start)
                .map_err(|e| Error::kafka("build assignment", e))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka("assign partitions", e))?;
    Ok(consumer)
}

/// The partitions of `topic`, or [`Error::UnknownTopic`] when the broker
/// has none.
pub(crate) fn partitions_of(
    consumer: &impl Consumer,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("read metadata of {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::UnknownTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        });
    }
    Ok(partitions)
}

/// The next message, or `None` when nothing arrived within `idle` (no
/// limit when `idle` is `None`). Errors librdkafka retries by itself (a
/// lost broker connection) are logged and waited out; only fatal ones are
/// returned.
pub(crate) async fn recv_within(
    consumer: &StreamConsumer,
    idle: Option<Duration>,
) -> Option<KafkaResult<BorrowedMessage<'_>>> {
    loop {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, consumer.recv()).await.ok(),
            None => Some(consumer.recv().await),
        };
        match next {
            Some(Err(error)) if !consume_error_is_fatal(&error) => {
                tracing::warn!(%error, "Consumer error; librdkafka retries");
            }
            next => return next,
        }
    }
}

/// Tails a topic, writing JSON lines to `out` and errors to `err`.
pub async fn run(
    options: &TailOptions,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<TailSummary> {
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let consumer = assigned_consumer(&options.brokers, "vigil-tail", &[&options.topic], start)?;

    let mut summary = TailSummary::default();
    while options.count.is_none_or(|count| summary.records < count) {
        let Some(next) = recv_within(&consumer, options.idle_timeout).await else {
            break;
        };
        let message = next.map_err(|e| Error::kafka(format!("consume {}", options.topic), e))?;
        summary.records += 1;
        match render_payload(message.payload()) {
            Ok((contract, value)) => {
                let line = record_json(&message, contract, value);
                writeln!(out, "{line}")?;
            }
            Err(reason) => {
                summary.undecodable += 1;
                writeln!(
                    err,
                    "undecodable record: topic {} partition {} offset {}: {reason}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )?;
            }
        }
        out.flush()?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_passes_through() {
        let (contract, value) =
            render_payload(Some(br#"{"class_uid":2004}"#)).expect("json renders");
        assert_eq!(contract, "json");
        assert_eq!(value["class_uid"], 2004);
    }

    #[test]
    fn garbage_is_an_error_that_says_why() {
        let reason = render_payload(Some(b"\x00\x01garbage")).expect_err("garbage");
        assert!(reason.contains("not a Vigil Avro message"), "{reason}");
    }

    #[test]
    fn damaged_avro_is_not_rescued_as_json() {
        // C3 01 + unknown fingerprint: must report the Avro error.
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&[0xFF; 8]);
        let reason = render_payload(Some(&bytes)).expect_err("unknown fingerprint");
        assert!(
            reason.contains("unknown writer schema fingerprint"),
            "{reason}"
        );
    }

    #[test]
    fn empty_payload_is_null() {
        assert_eq!(
            render_payload(None).expect("tombstone"),
            ("null".to_owned(), Value::Null)
        );
    }
}
