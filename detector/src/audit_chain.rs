//! The audit trail: one [`AuditRecord`] per PHI access or coverage gap,
//! hash-chained per partition of `vigil.audit.v1`, and the verifier that
//! names the first broken link.
//!
//! Audit partition `p` carries the records of events consumed from events
//! partition `p`, so the instance that owns an events partition is the only
//! writer of that chain. A record remembers its source offset; an event at
//! or below the chain head's source offset was already audited (before a
//! crash or by a previous owner) and is not audited twice.

use std::collections::{BTreeMap, HashMap};

use vigil_schemas::audit::{AuditGap, GENESIS_HASH};
use vigil_schemas::{AuditRecord, Event, Kind};

use crate::state::ChainHead;

/// The chains this instance writes.
#[derive(Debug, Default)]
pub struct AuditChains {
    heads: HashMap<i32, ChainHead>,
    changed: BTreeMap<i32, ChainHead>,
}

impl AuditChains {
    /// Sets a partition's head (from the state store or the topic's tail).
    pub fn set_head(&mut self, partition: i32, head: Option<ChainHead>) {
        match head {
            Some(head) => self.heads.insert(partition, head),
            None => self.heads.remove(&partition),
        };
    }

    pub fn head(&self, partition: i32) -> Option<&ChainHead> {
        self.heads.get(&partition)
    }

    /// The next record of `partition`'s chain for `event`, or `None` when
    /// the event was already audited.
    pub fn append(
        &mut self,
        partition: i32,
        event: &Event,
        principal: &str,
        source_topic: &str,
        source_offset: i64,
        recorded_unix_ns: i64,
    ) -> Option<AuditRecord> {
        if self
            .heads
            .get(&partition)
            .is_some_and(|head| source_offset <= head.source_offset)
        {
            return None;
        }
        Some(self.link(
            partition,
            event,
            principal,
            source_topic,
            source_offset,
            recorded_unix_ns,
        ))
    }

    /// Appends `event`, a gap saying that events partition `partition` was
    /// recreated, with source offset -1: every offset of the new partition
    /// is audited from then on, although the chain goes on.
    pub fn restart_source(
        &mut self,
        partition: i32,
        event: &Event,
        principal: &str,
        source_topic: &str,
        recorded_unix_ns: i64,
    ) -> AuditRecord {
        self.link(
            partition,
            event,
            principal,
            source_topic,
            -1,
            recorded_unix_ns,
        )
    }

    /// Seals the next record of `partition`'s chain and makes it the head.
    fn link(
        &mut self,
        partition: i32,
        event: &Event,
        principal: &str,
        source_topic: &str,
        source_offset: i64,
        recorded_unix_ns: i64,
    ) -> AuditRecord {
        let (seq, prev_hash) = match self.heads.get(&partition) {
            Some(head) => (head.seq + 1, head.hash),
            None => (0, GENESIS_HASH),
        };
        let mut record = AuditRecord {
            partition,
            seq,
            prev_hash: Vec::new(),
            recorded_unix_ns,
            event_id: event.event_id.clone(),
            action: event.kind.as_str().to_owned(),
            time_unix_ns: event.time_unix_ns,
            host: event.host.clone(),
            principal: principal.to_owned(),
            uid: event.uid,
            login_uid: event.login_uid,
            user_name: event.user_name.clone(),
            pid: event.pid,
            comm: event.comm.clone(),
            exe: event.exe.clone(),
            path: event.path.clone(),
            new_path: event.new_path.clone(),
            bytes: event.bytes,
            errno: event.errno,
            gap: event.gap.clone().map(AuditGap::from),
            source_topic: source_topic.to_owned(),
            source_partition: partition,
            source_offset,
            hash: Vec::new(),
        };
        record.seal(prev_hash);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&record.hash);
        let head = ChainHead {
            seq,
            hash,
            source_offset,
        };
        self.heads.insert(partition, head.clone());
        self.changed.insert(partition, head);
        record
    }

    /// Heads changed since the last call, for the state write.
    pub fn take_changed(&mut self) -> Vec<(i32, ChainHead)> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Forgets the heads (after a rebalance they are re-read).
    pub fn clear(&mut self) {
        self.heads.clear();
        self.changed.clear();
    }
}

/// True for events that get an audit record.
pub fn is_audited(event: &Event, is_phi: bool) -> bool {
    is_phi || event.kind == Kind::Gap
}

/// What `audit verify` found in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionReport {
    pub records: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The first broken link, if any.
    pub broken: Option<String>,
}

/// Checks chains record by record, in the order they were written.
#[derive(Debug, Default)]
pub struct Verifier {
    partitions: BTreeMap<i32, (PartitionReport, Option<AuditRecord>)>,
}

impl Verifier {
    /// Checks the next record of its partition. `position` says where it
    /// was read (offset or line) for the report.
    pub fn check(&mut self, record: AuditRecord, position: &str) {
        let (report, previous) = self.partitions.entry(record.partition).or_default();
        report.records += 1;
        if report.broken.is_some() {
            return;
        }
        let partition = record.partition;
        let fail = |reason: String| {
            Some(format!(
                "partition {partition} {position} seq {}: {reason}",
                record.seq
            ))
        };
        let broken = if !record.hash_is_valid() {
            fail("content does not match its hash (the record was altered)".into())
        } else {
            match previous {
                None if record.seq == 0 && record.prev_hash != GENESIS_HASH => {
                    fail("first record does not start from the genesis hash".into())
                }
                None => None,
                Some(prev) if record.seq == prev.seq => {
                    fail(format!("duplicate sequence number {}", record.seq))
                }
                Some(prev) if record.seq != prev.seq + 1 => fail(format!(
                    "records {}..={} are missing (previous record is seq {})",
                    prev.seq + 1,
                    record.seq - 1,
                    prev.seq
                )),
                Some(prev) if record.prev_hash != prev.hash => fail(format!(
                    "does not link to seq {} (previous hash differs)",
                    prev.seq
                )),
                Some(_) => None,
            }
        };
        report.broken = broken;
        report.first_seq.get_or_insert(record.seq);
        report.last_seq = Some(record.seq);
        *previous = Some(record);
    }

    /// Marks `partition` broken at `position` by something that is not an
    /// audit record (an undecodable or empty record in the audit topic),
    /// unless an earlier link already broke it.
    pub fn unreadable(&mut self, partition: i32, position: &str, reason: &str) {
        let (report, _) = self.partitions.entry(partition).or_default();
        if report.broken.is_none() {
            report.broken = Some(format!(
                "partition {partition} {position}: not an audit record: {reason}"
            ));
        }
    }

    /// Per-partition results.
    pub fn reports(&self) -> BTreeMap<i32, PartitionReport> {
        self.partitions
            .iter()
            .map(|(p, (report, _))| (*p, report.clone()))
            .collect()
    }

    /// The first broken link over all partitions.
    pub fn first_broken(&self) -> Option<String> {
        self.partitions
            .values()
            .find_map(|(report, _)| report.broken.clone())
    }
}

/// Parses one exported audit line: the JSON view of a record (hashes in
/// hex), or a `detector tail` line whose `value` is one.
pub fn record_from_json(line: &str) -> std::result::Result<AuditRecord, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("contract").is_some() {
        if value["contract"] != "AuditRecord" {
            return Err(format!(
                "a {} record, not an AuditRecord",
                value["contract"]
            ));
        }
        value = value["value"].take();
    }
    for field in ["prev_hash", "hash"] {
        let hex_text = value
            .get(field)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("`{field}` is missing or not a hex string"))?;
        let bytes = hex::decode(hex_text).map_err(|e| format!("`{field}` is not hex: {e}"))?;
        value[field] = serde_json::Value::from(bytes);
    }
    serde_json::from_value(value).map_err(|e| format!("not an audit record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> Event {
        Event {
            event_id: format!("h-{i}"),
            host: "h".into(),
            seq: i,
            time_unix_ns: i,
            kind: Kind::Open,
            pid: 1,
            tid: 1,
            uid: 1000,
            euid: 1000,
            gid: 1000,
            login_uid: Some(1000),
            user_name: Some("alice".into()),
            login_name: Some("alice".into()),
            comm: "cat".into(),
            path: Some(format!("/phi/{i}")),
            flags: Some(0),
            ..Event::default()
        }
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut chains = AuditChains::default();
        (0..n)
            .map(|i| {
                chains
                    .append(0, &event(i), "alice", "events", i, 0)
                    .expect("new record")
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> Option<String> {
        let mut verifier = Verifier::default();
        for (i, r) in records.iter().enumerate() {
            verifier.check(r.clone(), &format!("line {}", i + 1));
        }
        verifier.first_broken()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let records = chain(10);
        assert_eq!(records[0].seq, 0);
        assert_eq!(records[9].seq, 9);
        assert_eq!(verify(&records), None);
    }

    #[test]
    fn already_audited_offsets_are_skipped() {
        let mut chains = AuditChains::default();
        assert!(chains.append(0, &event(5), "a", "t", 5, 0).is_some());
        assert!(chains.append(0, &event(5), "a", "t", 5, 0).is_none());
        assert!(chains.append(0, &event(3), "a", "t", 3, 0).is_none());
        assert_eq!(
            chains.append(0, &event(6), "a", "t", 6, 0).map(|r| r.seq),
            Some(1)
        );
    }

    #[test]
    fn after_a_source_restart_its_offsets_are_audited_again_in_the_same_chain() {
        let mut chains = AuditChains::default();
        let mut records = vec![
            chains
                .append(0, &event(7), "a", "t", 7, 0)
                .expect("new record"),
        ];
        assert!(chains.append(0, &event(0), "a", "t", 0, 0).is_none());
        let restart = chains.restart_source(0, &event(-1), "detector", "t", 0);
        assert_eq!((restart.seq, restart.source_offset), (1, -1));
        records.push(restart);
        records.push(
            chains
                .append(0, &event(0), "a", "t", 0, 0)
                .expect("offset 0 of the new partition is audited"),
        );
        assert_eq!(records[2].seq, 2);
        assert_eq!(verify(&records), None, "one unbroken chain");
    }

    #[test]
    fn tampering_is_named() {
        let mut records = chain(10);
        records[4].path = Some("/phi/other".into());
        let broken = verify(&records).expect("altered record found");
        assert!(
            broken.contains("line 5 seq 4") && broken.contains("altered"),
            "{broken}"
        );

        let mut records = chain(10);
        records.remove(6);
        let broken = verify(&records).expect("deletion found");
        assert!(
            broken.contains("seq 7") && broken.contains("6..=6 are missing"),
            "{broken}"
        );

        let mut records = chain(10);
        records.insert(3, records[2].clone());
        let broken = verify(&records).expect("duplicate found");
        assert!(broken.contains("duplicate sequence number 2"), "{broken}");
    }

    #[test]
    fn exported_json_reads_back() {
        let record = chain(1).remove(0);
        let line = record.as_json().to_string();
        assert_eq!(record_from_json(&line).expect("parses"), record);
        let tail_line = serde_json::json!({"contract": "AuditRecord", "value": record.as_json()});
        assert_eq!(
            record_from_json(&tail_line.to_string()).expect("parses"),
            record
        );
        assert!(record_from_json("{}").is_err());
    }
}
