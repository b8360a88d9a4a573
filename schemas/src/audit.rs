//! [`AuditRecord`]: one PHI access or coverage gap on `vigil.audit.v1`,
//! hash-chained per partition.
//!
//! Each record carries the SHA-256 of its predecessor in the same partition
//! (`prev_hash`) and its own (`hash`), computed over the record's Avro binary
//! encoding with `hash` set to empty bytes — an encoding that is canonical
//! because Avro's binary form of a given schema has exactly one byte string
//! per value. Changing, removing or reordering a record breaks the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Gap;
use crate::codec;

/// `prev_hash` of the first record of a partition.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Events lost while the trail was blind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditGap {
    pub lost: i64,
    pub lost_kind: Option<String>,
    pub first_seq: i64,
    pub last_seq: i64,
    pub reason: String,
}

impl From<Gap> for AuditGap {
    fn from(gap: Gap) -> AuditGap {
        AuditGap {
            lost: gap.lost,
            lost_kind: gap.lost_kind,
            first_seq: gap.first_seq,
            last_seq: gap.last_seq,
            reason: gap.reason,
        }
    }
}

/// One PHI access (who, what, when, where, how, outcome) or coverage gap.
/// Field names and order are `avro/audit_record.r1.avsc`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub partition: i32,
    pub seq: i64,
    #[serde(with = "serde_bytes")]
    pub prev_hash: Vec<u8>,
    pub recorded_unix_ns: i64,
    pub event_id: String,
    pub action: String,
    pub time_unix_ns: i64,
    pub host: String,
    pub principal: String,
    pub uid: i64,
    pub login_uid: Option<i64>,
    pub user_name: Option<String>,
    pub pid: i32,
    pub comm: String,
    pub exe: Option<String>,
    pub path: Option<String>,
    pub new_path: Option<String>,
    pub bytes: Option<i64>,
    pub errno: i32,
    pub gap: Option<AuditGap>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// SHA-256 over the record's canonical encoding (with `hash` emptied).
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut body = Vec::with_capacity(256);
        codec::write_audit_unsealed(self, &mut body);
        body.push(0); // `hash`, the last field, as empty bytes
        Sha256::digest(&body).into()
    }

    /// Links this record after `prev_hash` and fills in its own hash.
    pub fn seal(&mut self, prev_hash: [u8; 32]) {
        self.prev_hash = prev_hash.to_vec();
        self.hash = self.compute_hash().to_vec();
    }

    /// True when `hash` matches the record's content.
    pub fn hash_is_valid(&self) -> bool {
        self.compute_hash().as_slice() == self.hash.as_slice()
    }

    /// A JSON view with the hashes as lowercase hex, for humans and exports.
    pub fn as_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("prev_hash".into(), hex::encode(&self.prev_hash).into());
            object.insert("hash".into(), hex::encode(&self.hash).into());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64) -> AuditRecord {
        AuditRecord {
            partition: 0,
            seq,
            prev_hash: Vec::new(),
            recorded_unix_ns: 1_700_000_000_000_000_000,
            event_id: format!("ehr-01-{seq}"),
            action: "open".into(),
            time_unix_ns: 1_700_000_000_000_000_000,
            host: "ehr-01".into(),
            principal: "alice".into(),
            uid: 1000,
            login_uid: Some(1000),
            user_name: Some("alice".into()),
            pid: 4242,
            comm: "cat".into(),
            exe: Some("/usr/bin/cat".into()),
            path: Some("/phi/patient-17.json".into()),
            new_path: None,
            bytes: None,
            errno: 0,
            gap: None,
            source_topic: "vigil.events.v1".into(),
            source_partition: 2,
            source_offset: seq,
            hash: Vec::new(),
        }
    }

    #[test]
    fn sealed_record_verifies_and_any_change_breaks_it() {
        let mut r = record(0);
        r.seal(GENESIS_HASH);
        assert_eq!(r.hash.len(), 32);
        assert!(r.hash_is_valid(), "fresh seal must verify");

        let mut changed = r.clone();
        changed.path = Some("/phi/patient-18.json".into());
        assert!(!changed.hash_is_valid(), "changed path must not verify");

        let mut relinked = r.clone();
        relinked.prev_hash[0] ^= 1;
        assert!(!relinked.hash_is_valid(), "changed link must not verify");
    }

    #[test]
    fn hash_depends_on_predecessor() {
        let mut a = record(1);
        let mut b = record(1);
        a.seal(GENESIS_HASH);
        b.seal([7; 32]);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn json_view_shows_hashes_as_hex() {
        let mut r = record(0);
        r.seal(GENESIS_HASH);
        let json = r.as_json();
        assert_eq!(json["prev_hash"], "0".repeat(64));
        assert_eq!(json["hash"], hex::encode(&r.hash));
        assert_eq!(json["path"], "/phi/patient-17.json");
    }
}
