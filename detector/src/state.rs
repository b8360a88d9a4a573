//! Durable detector state behind a small trait: baselines per dimension,
//! consumed offsets, audit chain heads and recently emitted alert ids.
//!
//! [`RocksStore`] is the real store: one column family per kind of state,
//! and every batch's changes — baselines, the offsets that produced them,
//! chain heads, alert ids — land in one atomic `WriteBatch`, so after a
//! crash the state and the offsets agree. [`MemStore`] serves tests that
//! are not about storage.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which baseline a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    User,
    Role,
    Host,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::User, Dimension::Role, Dimension::Host];

    fn column_family(self) -> &'static str {
        match self {
            Dimension::User => "user",
            Dimension::Role => "role",
            Dimension::Host => "host",
        }
    }
}

/// The last record written to one audit partition's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the last record (the next one is `seq + 1`).
    pub seq: i64,
    pub hash: [u8; 32],
    /// Source offset of the event the last record was made from.
    pub source_offset: i64,
}

/// Everything one processed batch changes, written atomically.
#[derive(Debug, Default)]
pub struct StateWrite {
    pub baselines: Vec<(Dimension, String, Vec<u8>)>,
    /// (topic, partition, next offset to consume)
    pub offsets: Vec<(String, i32, i64)>,
    /// (topic, partition, Kafka timestamp in ms of the newest record
    /// processed from it): a record below the stored offset that is newer
    /// than this was never processed, so its topic was recreated (see
    /// `Pipeline::accept`).
    pub newest: Vec<(String, i32, i64)>,
    pub chain_heads: Vec<(i32, ChainHead)>,
    /// (alert id, event time in ms): alerts already published.
    pub alerted: Vec<(String, i64)>,
    /// The enricher's checkpoint `baselines` come from, if they do (see
    /// [`crate::enrich::Enricher::committed`]); not stored.
    pub checkpoint: Option<u64>,
}

/// Storage for detector state.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    fn baseline(&self, dimension: Dimension, key: &str) -> Result<Option<Vec<u8>>>;
    /// Next offset to consume for a partition, if this store has one.
    fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>>;
    /// Kafka timestamp (ms) of the newest record processed from a
    /// partition, if this store has one.
    fn newest(&self, topic: &str, partition: i32) -> Result<Option<i64>>;
    fn chain_head(&self, partition: i32) -> Result<Option<ChainHead>>;
    fn was_alerted(&self, alert_id: &str) -> Result<bool>;
    /// Applies a batch's changes atomically and durably.
    fn commit(&self, write: StateWrite) -> Result<()>;
}

const CF_OFFSETS: &str = "offsets";
const CF_CHAIN: &str = "audit_chain";
const CF_ALERTED: &str = "alerted";
/// Small values about the store itself, such as [`ALERTED_WATERMARK`].
const CF_META: &str = "meta";
/// The newest event time (ms) of any alert id written: alert ids whose
/// event time is more than [`ALERT_MEMORY`] older are dropped.
const ALERTED_WATERMARK: &[u8] = b"alerted_watermark";

/// How long, in event time behind the newest alert, a published alert's id
/// is remembered. Only an event this much older than the newest alert could
/// find its window's alert forgotten and publish it again, under the same
/// id; without a bound the ids (about 60 bytes each) grow forever.
pub const ALERT_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = topic.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Key of a partition's newest processed timestamp, next to its offset.
fn newest_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = offset_key(topic, partition);
    key.extend_from_slice(b"/newest");
    key
}

/// RocksDB-backed state.
pub struct RocksStore {
    db: DB,
    /// [`ALERTED_WATERMARK`] as last written; shared with the `alerted`
    /// family's compaction filter, which drops the ids older than it by
    /// more than [`ALERT_MEMORY`] whenever RocksDB compacts that family.
    alerted_watermark: Arc<AtomicI64>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RocksStore> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let alerted_watermark = Arc::new(AtomicI64::new(i64::MIN));
        let families = Dimension::ALL
            .iter()
            .map(|d| d.column_family())
            .chain([CF_OFFSETS, CF_CHAIN, CF_META])
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
            .chain([ColumnFamilyDescriptor::new(
                CF_ALERTED,
                forget_old_alerts(Arc::clone(&alerted_watermark)),
            )]);
        let db = DB::open_cf_descriptors(&options, dir, families).map_err(|e| Error::State {
            context: format!("open RocksDB at {}", dir.display()),
            source: Box::new(e),
        })?;
        let store = RocksStore {
            db,
            alerted_watermark,
        };
        if let Some(bytes) = store.get(CF_META, ALERTED_WATERMARK)? {
            let watermark = be_i64(&bytes).ok_or_else(|| Error::State {
                context: format!("read the alert ids' watermark in {}", dir.display()),
                source: format!("{} bytes where 8 were expected", bytes.len()).into(),
            })?;
            store.alerted_watermark.store(watermark, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// Compacts the `alerted` family now, dropping the alert ids older than
    /// the watermark by more than [`ALERT_MEMORY`] (RocksDB otherwise does
    /// so as the family's files are compacted in the background).
    pub fn compact_alerted(&self) -> Result<()> {
        self.db
            .compact_range_cf(self.cf(CF_ALERTED)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::State {
            context: format!("column family {name} is missing"),
            source: "state directory was created by another program".into(),
        })
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(|e| Error::State {
            context: format!("read {cf}"),
            source: Box::new(e),
        })
    }

    /// An 8-byte big-endian value of the offsets family; `context` and
    /// `what` name it in the error when the stored bytes are not 8.
    fn get_i64(&self, key: &[u8], context: &str, what: &str) -> Result<Option<i64>> {
        self.get(CF_OFFSETS, key)?
            .map(|bytes| {
                be_i64(&bytes).ok_or_else(|| Error::State {
                    context: context.to_owned(),
                    source: format!("{} bytes where an 8-byte {what} belongs", bytes.len()).into(),
                })
            })
            .transpose()
    }
}

fn be_i64(bytes: &[u8]) -> Option<i64> {
    bytes.try_into().ok().map(i64::from_be_bytes)
}

/// Options for the `alerted` family: a compaction filter removing the ids
/// whose event time is more than [`ALERT_MEMORY`] older than `watermark`.
/// A value that is not a time is kept.
fn forget_old_alerts(watermark: Arc<AtomicI64>) -> Options {
    let memory = ALERT_MEMORY.as_millis() as i64;
    let mut options = Options::default();
    // The filter only sees files being compacted: a small memtable (tens of
    // thousands of ids) reaches a file soon, and every file is compacted
    // again at least daily, so forgotten ids do not linger for weeks.
    options.set_write_buffer_size(4 << 20);
    options.set_periodic_compaction_seconds(24 * 3600);
    options.set_compaction_filter(
        "forget_old_alerts",
        move |_level: u32, _key: &[u8], value: &[u8]| {
            let horizon = watermark.load(Ordering::Relaxed).saturating_sub(memory);
            match be_i64(value) {
                Some(time) if time < horizon => rocksdb::compaction_filter::Decision::Remove,
                _ => rocksdb::compaction_filter::Decision::Keep,
            }
        },
    );
    options
}

impl StateStore for RocksStore {
    fn baseline(&self, dimension: Dimension, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(dimension.column_family(), key.as_bytes())
    }

    fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.get_i64(
            &offset_key(topic, partition),
            &format!("stored offset of {topic}/{partition}"),
            "offset",
        )
    }

    fn newest(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.get_i64(
            &newest_key(topic, partition),
            &format!("stored newest timestamp of {topic}/{partition}"),
            "time",
        )
    }

    fn chain_head(&self, partition: i32) -> Result<Option<ChainHead>> {
        self.get(CF_CHAIN, &partition.to_be_bytes())?
            .map(|bytes| {
                postcard::from_bytes(&bytes).map_err(|e| Error::State {
                    context: format!("decode audit chain head of partition {partition}"),
                    source: Box::new(e),
                })
            })
            .transpose()
    }

    fn was_alerted(&self, alert_id: &str) -> Result<bool> {
        Ok(self.get(CF_ALERTED, alert_id.as_bytes())?.is_some())
    }

    fn commit(&self, write: StateWrite) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (dimension, key, value) in &write.baselines {
            batch.put_cf(self.cf(dimension.column_family())?, key.as_bytes(), value);
        }
        for (topic, partition, offset) in &write.offsets {
            batch.put_cf(
                self.cf(CF_OFFSETS)?,
                offset_key(topic, *partition),
                offset.to_be_bytes(),
            );
        }
        for (topic, partition, time_ms) in &write.newest {
            batch.put_cf(
                self.cf(CF_OFFSETS)?,
                newest_key(topic, *partition),
                time_ms.to_be_bytes(),
            );
        }
        for (partition, head) in &write.chain_heads {
            let bytes = postcard::to_allocvec(head).map_err(|e| Error::State {
                context: "encode audit chain head".into(),
                source: Box::new(e),
            })?;
            batch.put_cf(self.cf(CF_CHAIN)?, partition.to_be_bytes(), bytes);
        }
        for (alert_id, time_ms) in &write.alerted {
            batch.put_cf(
                self.cf(CF_ALERTED)?,
                alert_id.as_bytes(),
                time_ms.to_be_bytes(),
            );
        }
        let newest = write.alerted.iter().map(|(_, time)| *time).max();
        let watermark = newest.filter(|&t| t > self.alerted_watermark.load(Ordering::Relaxed));
        if let Some(watermark) = watermark {
            batch.put_cf(
                self.cf(CF_META)?,
                ALERTED_WATERMARK,
                watermark.to_be_bytes(),
            );
        }
        // Written to the WAL without fsync: a crashed process loses nothing
        // (the kernel holds the WAL), and a power loss only rolls the state
        // back a few batches, which are then processed again — outputs are
        // deterministic, audit records already on the topic are skipped and
        // alerts repeat under the same id (docs/detector.md). An fsync per
        // batch cost more than a millisecond of every batch's latency.
        let options = rocksdb::WriteOptions::default();
        self.db
            .write_opt(batch, &options)
            .map_err(|e| Error::State {
                context: "commit batch state".into(),
                source: Box::new(e),
            })?;
        if let Some(watermark) = watermark {
            self.alerted_watermark.store(watermark, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// In-memory state for tests that are not about storage (and for
/// `rules test`, which must not touch a service's state).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    baselines: HashMap<(&'static str, String), Vec<u8>>,
    offsets: HashMap<(String, i32), i64>,
    newest: HashMap<(String, i32), i64>,
    chain: HashMap<i32, ChainHead>,
    alerted: HashMap<String, i64>,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StateStore for MemStore {
    fn baseline(&self, dimension: Dimension, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .baselines
            .get(&(dimension.column_family(), key.to_owned()))
            .cloned())
    }

    fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .lock()
            .offsets
            .get(&(topic.to_owned(), partition))
            .copied())
    }

    fn newest(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .lock()
            .newest
            .get(&(topic.to_owned(), partition))
            .copied())
    }

    fn chain_head(&self, partition: i32) -> Result<Option<ChainHead>> {
        Ok(self.lock().chain.get(&partition).cloned())
    }

    fn was_alerted(&self, alert_id: &str) -> Result<bool> {
        Ok(self.lock().alerted.contains_key(alert_id))
    }

    fn commit(&self, write: StateWrite) -> Result<()> {
        let mut inner = self.lock();
        for (dimension, key, value) in write.baselines {
            inner
                .baselines
                .insert((dimension.column_family(), key), value);
        }
        for (topic, partition, offset) in write.offsets {
            inner.offsets.insert((topic, partition), offset);
        }
        for (topic, partition, time_ms) in write.newest {
            inner.newest.insert((topic, partition), time_ms);
        }
        for (partition, head) in write.chain_heads {
            inner.chain.insert(partition, head);
        }
        for (alert_id, time) in write.alerted {
            inner.alerted.insert(alert_id, time);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn StateStore) {
        assert_eq!(store.offset("t", 0).expect("read"), None);
        store
            .commit(StateWrite {
                baselines: vec![(Dimension::User, "alice".into(), vec![1, 2, 3])],
                offsets: vec![("t".into(), 0, 42), ("t".into(), 1, 7)],
                newest: vec![("t".into(), 0, 1_700_000_000_000)],
                chain_heads: vec![(
                    0,
                    ChainHead {
                        seq: 9,
                        hash: [5; 32],
                        source_offset: 41,
                    },
                )],
                alerted: vec![("abc".into(), 1)],
                checkpoint: None,
            })
            .expect("commit");
        assert_eq!(
            store.baseline(Dimension::User, "alice").expect("read"),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            store.baseline(Dimension::Role, "alice").expect("read"),
            None
        );
        assert_eq!(store.offset("t", 0).expect("read"), Some(42));
        assert_eq!(
            store.newest("t", 0).expect("read"),
            Some(1_700_000_000_000),
            "kept apart from the offset"
        );
        assert_eq!(store.newest("t", 1).expect("read"), None);
        assert_eq!(store.offset("t", 1).expect("read"), Some(7));
        assert_eq!(store.offset("u", 0).expect("read"), None);
        assert_eq!(store.chain_head(0).expect("read").map(|h| h.seq), Some(9));
        assert!(store.was_alerted("abc").expect("read"));
        assert!(!store.was_alerted("abd").expect("read"));
    }

    #[test]
    fn mem_store_keeps_what_it_is_given() {
        exercise(&MemStore::default());
    }

    #[test]
    fn rocks_store_keeps_state_across_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        exercise(&RocksStore::open(dir.path()).expect("open"));
        let reopened = RocksStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.offset("t", 0).expect("read"), Some(42));
        assert_eq!(
            reopened.baseline(Dimension::User, "alice").expect("read"),
            Some(vec![1, 2, 3])
        );
    }

    fn alert(store: &RocksStore, id: &str, time_ms: i64) {
        store
            .commit(StateWrite {
                alerted: vec![(id.into(), time_ms)],
                ..StateWrite::default()
            })
            .expect("commit");
    }

    fn remembered(store: &RocksStore) -> Vec<&'static str> {
        ["old", "recent", "newest", "older"]
            .into_iter()
            .filter(|id| store.was_alerted(id).expect("read"))
            .collect()
    }

    #[test]
    fn alert_ids_are_forgotten_a_week_behind_the_newest_alert() {
        let dir = tempfile::tempdir().expect("temp dir");
        let day = 24 * 3600 * 1000;
        let memory = ALERT_MEMORY.as_millis() as i64;
        let store = RocksStore::open(dir.path()).expect("open");
        alert(&store, "old", 0);
        alert(&store, "recent", 2 * day);
        store.compact_alerted().expect("compact");
        assert_eq!(remembered(&store), ["old", "recent"]);

        alert(&store, "newest", memory + day);
        store.compact_alerted().expect("compact");
        assert_eq!(remembered(&store), ["recent", "newest"]);

        // The watermark outlives a restart: an id written after it, but
        // already older than the memory, goes at the next compaction.
        drop(store);
        let store = RocksStore::open(dir.path()).expect("reopen");
        alert(&store, "older", day / 2);
        assert_eq!(remembered(&store), ["recent", "newest", "older"]);
        store.compact_alerted().expect("compact");
        assert_eq!(remembered(&store), ["recent", "newest"]);
    }
}
