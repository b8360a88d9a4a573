//! The enrich operator: looks up each event's user, role and host
//! baselines, updates them with the event, and computes its [`Features`].
//!
//! Baselines are cached in memory and written back through the
//! [`StateStore`] with the batch that changed them ([`Enricher::take_writes`]).

use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use vigil_schemas::{Event, Kind};

use crate::Result;
use crate::baseline::{Baseline, Contribution, hour_index, hour_of_week};
use crate::events_table::Features;
use crate::roles::RoleFile;
use crate::state::{Dimension, StateStore};

/// Capabilities that let a process read any file: CAP_DAC_OVERRIDE (1),
/// CAP_DAC_READ_SEARCH (2) and CAP_SYS_ADMIN (21).
const FILE_READ_CAPS: i64 = (1 << 1) | (1 << 2) | (1 << 21);

/// True when the event gives a principal that is not root itself the
/// power of root: a successful setuid or setgid to 0, or a capset granting
/// a capability that reads any file.
pub fn is_escalation(event: &Event) -> bool {
    let not_root = match event.login_uid {
        Some(login) => login != 0,
        None => event.uid != 0,
    };
    let gains = match event.kind {
        Kind::Setuid | Kind::Setgid => event.target_id == Some(0),
        Kind::Capset => event
            .target_id
            .is_some_and(|caps| caps & FILE_READ_CAPS != 0),
        _ => false,
    };
    not_root && gains && event.errno == 0
}

/// The PHI file class of a path: its directory.
pub fn file_class(path: &str) -> Option<&str> {
    Path::new(path)
        .parent()
        .and_then(Path::to_str)
        .filter(|p| !p.is_empty())
}

/// `O_DIRECTORY`, and the bit that makes `O_TMPFILE` with it, as an
/// event's `flags` carry them (Linux's generic values, which x86-64 uses;
/// the schema describes `flags` with them).
const O_DIRECTORY: i32 = 0o200000;
const O_TMPFILE_BIT: i32 = 0o20000000;

/// Whether `event` opens a directory to read its entries (`opendir`, as
/// `ls`, `find` and a shell's `*` do): `O_DIRECTORY` without `O_TMPFILE`
/// (which creates a file in the directory), or a path ending in `/`.
///
/// A listing of a watched directory shows which PHI files it holds, so it
/// is PHI activity, audited and seen by rules; but it opens no PHI file.
/// It is not counted among the principal's PHI opens or distinct PHI
/// files, and its file class is the directory listed, not the one above.
pub fn is_listing(event: &Event) -> bool {
    event.kind == Kind::Open
        && (event
            .flags
            .is_some_and(|flags| flags & O_DIRECTORY != 0 && flags & O_TMPFILE_BIT == 0)
            || event.path.as_deref().is_some_and(|p| p.ends_with('/')))
}

/// The file class of a PHI event's path (see [`is_listing`]).
fn class_of(path: &str, listing: bool) -> Option<&str> {
    if listing {
        Some(path.trim_end_matches('/')).filter(|p| !p.is_empty())
    } else {
        file_class(path)
    }
}

/// One dimension's cached baselines. Each event touches three of them, so
/// lookups borrow the key and a baseline is updated in place; a key is
/// copied only when it first enters the cache or first becomes dirty.
#[derive(Default)]
struct Cache {
    baselines: FxHashMap<String, Cached>,
    /// Keys changed since the last [`Enricher::take_writes`].
    dirty: Vec<String>,
    /// Counts lookups: the `used` stamp of a baseline.
    clock: u64,
}

struct Cached {
    baseline: Baseline,
    dirty: bool,
    /// [`Cache::clock`] at its last lookup.
    used: u64,
    /// The checkpoint that last took its write; 0: never written.
    written: u64,
}

/// Most baselines kept in memory per dimension (a user baseline with a
/// week of hour buckets is about 13 KB, so at most about 650 MB of users).
/// Past it, the least recently used baselines whose writes the store has
/// committed are dropped (down to three quarters of it) and read from the
/// store again when needed. Without a bound every principal ever seen
/// stayed in memory until the next rebalance.
pub const CACHED_BASELINES: usize = 50_000;

impl Cache {
    /// The cached baseline of `key`, read from the store on a miss, marked
    /// as changed.
    fn get_mut(
        &mut self,
        store: &dyn StateStore,
        dimension: Dimension,
        key: &str,
    ) -> Result<&mut Baseline> {
        if !self.baselines.contains_key(key) {
            let baseline = stored(store, dimension, key)?;
            self.baselines.insert(
                key.to_owned(),
                Cached {
                    baseline,
                    dirty: false,
                    used: 0,
                    written: 0,
                },
            );
        }
        let Some(cached) = self.baselines.get_mut(key) else {
            unreachable!("inserted above")
        };
        self.clock += 1;
        cached.used = self.clock;
        if !cached.dirty {
            cached.dirty = true;
            self.dirty.push(key.to_owned());
        }
        Ok(&mut cached.baseline)
    }

    fn take_writes(
        &mut self,
        dimension: Dimension,
        checkpoint: u64,
    ) -> Vec<(Dimension, String, Vec<u8>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|key| {
                let cached = self.baselines.get_mut(&key)?;
                cached.dirty = false;
                cached.written = checkpoint;
                Some((dimension, key, cached.baseline.encode()))
            })
            .collect()
    }

    /// Past `limit` baselines, drops the least recently used of those the
    /// store holds as they are (unchanged since a write that `committed`
    /// covers), down to three quarters of `limit`. A baseline whose write
    /// is still in flight stays: read back now, the store would give its
    /// older version.
    fn evict(&mut self, limit: usize, committed: u64) {
        if self.baselines.len() <= limit {
            return;
        }
        let mut evictable: Vec<(u64, &String)> = self
            .baselines
            .iter()
            .filter(|(_, cached)| !cached.dirty && cached.written <= committed)
            .map(|(key, cached)| (cached.used, key))
            .collect();
        let excess = self.baselines.len() - limit * 3 / 4;
        if evictable.len() > excess {
            evictable.select_nth_unstable(excess);
            evictable.truncate(excess);
        }
        let keys: Vec<String> = evictable.into_iter().map(|(_, key)| key.clone()).collect();
        for key in keys {
            self.baselines.remove(&key);
        }
    }

    fn clear(&mut self) {
        self.baselines.clear();
        self.dirty.clear();
    }
}

/// A baseline as stored, or a fresh one.
fn stored(store: &dyn StateStore, dimension: Dimension, key: &str) -> Result<Baseline> {
    let Some(bytes) = store.baseline(dimension, key)? else {
        return Ok(Baseline::default());
    };
    Ok(Baseline::decode(&bytes).unwrap_or_else(|| {
        tracing::warn!(
            ?dimension,
            key,
            "Stored baseline has another state layout (written by another detector version); starting this baseline afresh"
        );
        Baseline::default()
    }))
}

/// Computes features and keeps baselines current.
pub struct Enricher {
    store: Arc<dyn StateStore>,
    roles: RoleFile,
    learning_days: u32,
    users: Cache,
    role_baselines: Cache,
    hosts: Cache,
    /// Checkpoints taken by [`Enricher::take_writes`].
    checkpoints: u64,
    cache_limit: usize,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("learning_days", &self.learning_days)
            .field("users", &self.users.baselines.len())
            .field("roles", &self.role_baselines.baselines.len())
            .field("hosts", &self.hosts.baselines.len())
            .finish_non_exhaustive()
    }
}

/// Whether `event` is an access to a watched (PHI) file: the collector
/// sends file events only for watched paths.
pub fn is_phi(event: &Event) -> bool {
    event.kind.is_file() && event.path.is_some()
}

impl Enricher {
    pub fn new(store: Arc<dyn StateStore>, roles: RoleFile, learning_days: u32) -> Enricher {
        Enricher {
            store,
            roles,
            learning_days,
            users: Cache::default(),
            role_baselines: Cache::default(),
            hosts: Cache::default(),
            checkpoints: 0,
            cache_limit: CACHED_BASELINES,
        }
    }

    pub fn roles_mut(&mut self) -> &mut RoleFile {
        &mut self.roles
    }

    /// Updates the baselines with `event` and returns its features.
    pub fn enrich(&mut self, event: &Event) -> Result<Features> {
        let principal = event.principal();
        let role = self.roles.map().role_of(&principal, event.gid).to_owned();
        let hour = hour_index(event.time_unix_ns);
        let is_phi = is_phi(event);
        let listing = is_phi && is_listing(event);
        let file_class = if is_phi {
            event
                .path
                .as_deref()
                .and_then(|path| class_of(path, listing))
                .map(str::to_owned)
        } else {
            None
        };
        let mut features = Features {
            principal,
            role,
            is_phi,
            file_class,
            hour_of_week: hour_of_week(hour) as i32,
            ..Features::default()
        };
        if event.kind == Kind::Gap {
            // A coverage gap is about the pipeline, not about a person.
            return Ok(features);
        }

        let store = self.store.as_ref();
        let user = self
            .users
            .get_mut(store, Dimension::User, &features.principal)?;
        let role_baseline = self
            .role_baselines
            .get_mut(store, Dimension::Role, &features.role)?;
        let host = self.hosts.get_mut(store, Dimension::Host, &event.host)?;

        for (closed_hour, volume) in user.advance_to(hour) {
            role_baseline.fold_member_hour(closed_hour, volume);
        }
        host.advance_to(hour);

        let bytes = event.bytes.unwrap_or(0).max(0) as u64;
        let contribution = Contribution {
            is_phi,
            is_open: is_phi && event.kind == Kind::Open && !listing,
            phi_path: if is_phi && !listing {
                event.path.as_deref()
            } else {
                None
            },
            bytes_read: if is_phi && event.kind == Kind::Read {
                bytes
            } else {
                0
            },
            bytes_sent: if event.kind == Kind::Send { bytes } else { 0 },
        };
        user.add(event.time_unix_ns, contribution);
        host.add(event.time_unix_ns, contribution);

        let bucket = user.bucket(hour);
        features.user_hour_events = user.open.events as i64;
        features.user_hour_mean_events = bucket.mean[0];
        features.user_z_volume = bucket.z(0, user.open.events);
        features.user_z_phi_files = bucket.z(1, user.open.phi_files);
        features.user_z_bytes_read = bucket.z(2, user.open.bytes_read);
        features.user_z_bytes_sent = bucket.z(3, user.open.bytes_sent);
        features.role_z_volume = role_baseline.bucket(hour).z(0, user.open.events);
        features.host_z_volume = host.bucket(hour).z(0, host.open.events);
        features.hour_rarity = 1.0 - bucket.active;

        if let Some(exe) = event.exe.as_deref() {
            features.first_seen_exe = Baseline::first_seen(&mut user.seen_exe, exe);
        }
        if matches!(event.kind, Kind::Connect | Kind::Send)
            && let Some(addr) = event.dst_addr.as_deref()
        {
            let destination = format!("{addr}:{}", event.dst_port.unwrap_or(0));
            features.first_seen_destination =
                Baseline::first_seen(&mut user.seen_destination, &destination);
        }
        if let Some(class) = features.file_class.as_deref() {
            features.first_seen_file_class = Baseline::first_seen(&mut user.seen_file_class, class);
        }
        features.hours_on_host = user.hours_on_host(&event.host, event.time_unix_ns);
        features.first_seen_host = features.hours_on_host == 0.0;
        if is_escalation(event) {
            user.note_escalation(event.time_unix_ns);
        }
        features.minutes_since_escalation = user.minutes_since_escalation(event.time_unix_ns);

        let (opens, bytes_read) = user.rolling(event.time_unix_ns);
        features.user_phi_opens_15m = i64::from(opens);
        features.user_phi_bytes_read_15m = bytes_read.min(i64::MAX as u64) as i64;
        features.baseline_days = user.days_observed as i32;
        features.baseline_age_days = user.age_days(event.time_unix_ns) as i32;
        // Maturity is calendar age, so a weekly job is judged after a week
        // of its history, not after seven of its runs.
        features.learning = features.baseline_age_days < self.learning_days as i32;
        Ok(features)
    }

    /// The changed baselines since the last call, encoded for the store,
    /// and the number of this checkpoint, to give [`Enricher::committed`]
    /// once the store has them.
    pub fn take_writes(&mut self) -> (u64, Vec<(Dimension, String, Vec<u8>)>) {
        self.checkpoints += 1;
        let checkpoint = self.checkpoints;
        let mut writes = self.users.take_writes(Dimension::User, checkpoint);
        writes.extend(self.role_baselines.take_writes(Dimension::Role, checkpoint));
        writes.extend(self.hosts.take_writes(Dimension::Host, checkpoint));
        (checkpoint, writes)
    }

    /// The store committed the writes of `checkpoint` (and, committing in
    /// order, of every earlier one): baselines past the cache limit can be
    /// dropped.
    pub fn committed(&mut self, checkpoint: u64) {
        for cache in [&mut self.users, &mut self.role_baselines, &mut self.hosts] {
            cache.evict(self.cache_limit, checkpoint);
        }
    }

    /// Keeps at most `limit` baselines per dimension in memory (default
    /// [`CACHED_BASELINES`]).
    pub fn with_cache_limit(mut self, limit: usize) -> Enricher {
        self.cache_limit = limit;
        self
    }

    /// How many baselines of users, roles and hosts are in memory.
    pub fn cached(&self) -> (usize, usize, usize) {
        (
            self.users.baselines.len(),
            self.role_baselines.baselines.len(),
            self.hosts.baselines.len(),
        )
    }

    /// Forgets cached baselines (after a rebalance, another instance may
    /// have changed them).
    pub fn clear_cache(&mut self) {
        self.users.clear();
        self.role_baselines.clear();
        self.hosts.clear();
    }
}

#[cfg(test)]
mod tests {
    use vigil_schemas::Kind;
    use vigil_schemas::testkit::file_event;

    use super::*;
    use crate::roles::RoleFile;
    use crate::state::{MemStore, StateWrite};

    const MINUTE: i64 = 60_000_000_000;
    /// Monday 2026-11-09 09:00 UTC.
    const NINE: i64 = 1_794_182_400_000_000_000 + 9 * 60 * MINUTE;

    fn open(user: &str, minute: i64) -> Event {
        file_event(
            user,
            Kind::Open,
            "/srv/phi/a.json",
            NINE + minute * MINUTE,
            0,
        )
    }

    /// Takes a checkpoint and writes it to `store`; returns its number.
    fn checkpoint(enricher: &mut Enricher, store: &MemStore) -> u64 {
        let (number, baselines) = enricher.take_writes();
        store
            .commit(StateWrite {
                baselines,
                ..StateWrite::default()
            })
            .expect("commit");
        number
    }

    /// What `opendir` passes: O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC.
    const OPENDIR: i32 = 0o2204000;

    fn listing(user: &str, path: &str, flags: Option<i32>, minute: i64) -> Event {
        let mut event = file_event(user, Kind::Open, path, NINE + minute * MINUTE, 0);
        event.flags = flags;
        event
    }

    #[test]
    fn a_directory_listing_is_phi_activity_of_that_directory_but_opens_no_phi_file() {
        let mut enricher = Enricher::new(
            Arc::new(MemStore::default()),
            RoleFile::open(None).expect("roles"),
            7,
        );
        let opened = enricher.enrich(&open("ann", 0)).expect("enrich");
        assert_eq!(opened.file_class.as_deref(), Some("/srv/phi"));
        assert_eq!(opened.user_phi_opens_15m, 1);

        // `ls /srv/phi`, and a shell's `/srv/phi/*`: the class of the
        // files already read, not `/srv` (a class no file has), and no
        // more opens.
        for (path, flags) in [
            ("/srv/phi", Some(OPENDIR)),
            ("/srv/phi/", Some(OPENDIR)),
            ("/srv/phi/", None),
        ] {
            let listed = enricher
                .enrich(&listing("ann", path, flags, 1))
                .expect("enrich");
            assert!(listed.is_phi, "{path} {flags:?}: audited and seen by rules");
            assert_eq!(
                listed.file_class.as_deref(),
                Some("/srv/phi"),
                "{path} {flags:?}"
            );
            assert!(!listed.first_seen_file_class, "{path} {flags:?}");
            assert_eq!(listed.user_phi_opens_15m, 1, "{path} {flags:?}");
        }
        // A directory never read from is a new class when listed.
        let other = enricher
            .enrich(&listing("ann", "/srv/phi/notes", Some(OPENDIR), 2))
            .expect("enrich");
        assert_eq!(other.file_class.as_deref(), Some("/srv/phi/notes"));
        assert!(other.first_seen_file_class);

        // O_TMPFILE carries the O_DIRECTORY bit but makes a file: an open.
        let tmpfile = enricher
            .enrich(&listing("ann", "/srv/phi/new", Some(0o20200002), 3))
            .expect("enrich");
        assert_eq!(tmpfile.file_class.as_deref(), Some("/srv/phi"));
        assert_eq!(tmpfile.user_phi_opens_15m, 2);
    }

    #[test]
    fn baselines_past_the_cache_limit_are_dropped_once_committed_and_read_back() {
        let store = Arc::new(MemStore::default());
        let mut enricher = Enricher::new(store.clone(), RoleFile::open(None).expect("roles"), 7)
            .with_cache_limit(8);
        let users: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
        for user in &users {
            enricher.enrich(&open(user, 0)).expect("enrich");
        }
        assert_eq!(
            enricher.cached().0,
            20,
            "nothing is dropped before a checkpoint"
        );

        let first = checkpoint(&mut enricher, &store);
        enricher.committed(first - 1);
        assert_eq!(
            enricher.cached().0,
            20,
            "baselines whose writes are still in flight stay"
        );
        enricher.committed(first);
        assert_eq!(
            enricher.cached().0,
            6,
            "down to three quarters of the limit"
        );
        assert_eq!(enricher.cached().2, 1, "one host, under the limit, stays");

        // Changed baselines stay until their write is committed.
        for user in &users {
            enricher.enrich(&open(user, 2)).expect("enrich");
        }
        enricher.committed(first);
        assert_eq!(enricher.cached().0, 20, "all changed since the last write");
        let second = checkpoint(&mut enricher, &store);
        enricher.committed(second);
        assert_eq!(enricher.cached().0, 6);

        // A dropped baseline comes back from the store with its history:
        // user0's opens at minutes 0 and 2, and this one.
        let features = enricher.enrich(&open("user0", 3)).expect("enrich");
        assert_eq!(features.user_phi_opens_15m, 3, "{features:?}");
        assert_eq!(enricher.cached().0, 7);
    }
}
