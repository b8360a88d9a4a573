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

/// One dimension's cached baselines. Each event touches three of them, so
/// lookups borrow the key and a baseline is updated in place; a key is
/// copied only when it first enters the cache or first becomes dirty.
#[derive(Default)]
struct Cache {
    baselines: FxHashMap<String, Cached>,
    /// Keys changed since the last [`Enricher::take_writes`].
    dirty: Vec<String>,
}

struct Cached {
    baseline: Baseline,
    dirty: bool,
}

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
                },
            );
        }
        let Some(cached) = self.baselines.get_mut(key) else {
            unreachable!("inserted above")
        };
        if !cached.dirty {
            cached.dirty = true;
            self.dirty.push(key.to_owned());
        }
        Ok(&mut cached.baseline)
    }

    fn take_writes(&mut self, dimension: Dimension) -> Vec<(Dimension, String, Vec<u8>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|key| {
                let cached = self.baselines.get_mut(&key)?;
                cached.dirty = false;
                Some((dimension, key, cached.baseline.encode()))
            })
            .collect()
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
        let file_class = if is_phi {
            event
                .path
                .as_deref()
                .and_then(file_class)
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
            is_open: is_phi && event.kind == Kind::Open,
            phi_path: if is_phi { event.path.as_deref() } else { None },
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

    /// The changed baselines since the last call, encoded for the store.
    pub fn take_writes(&mut self) -> Vec<(Dimension, String, Vec<u8>)> {
        let mut writes = self.users.take_writes(Dimension::User);
        writes.extend(self.role_baselines.take_writes(Dimension::Role));
        writes.extend(self.hosts.take_writes(Dimension::Host));
        writes
    }

    /// Forgets cached baselines (after a rebalance, another instance may
    /// have changed them).
    pub fn clear_cache(&mut self) {
        self.users.clear();
        self.role_baselines.clear();
        self.hosts.clear();
    }
}
