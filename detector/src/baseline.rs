//! The baseline model: how a user, a role or a host usually behaves, by
//! hour of week, and the features that compare an event against it.
//!
//! Each entity keeps, per hour-of-week bucket (168 of them, Monday 00:00 UTC
//! = 0), exponentially weighted means and variances of its hourly volume —
//! events, distinct PHI files, bytes read, bytes sent — and how often it is
//! active in that hour at all. The open hour's totals accumulate as events
//! arrive; when an event from a later hour arrives, the closed hour (and any
//! silent hours between, as zeros) is folded into its bucket. A user also
//! keeps first-seen sets (executables, destinations, PHI file classes), when
//! it first appeared on each host, when it last gained root, a 15-minute
//! rolling window of PHI opens and bytes read, and the number of distinct
//! days it has been observed (its maturity).
//!
//! Time is the event's own timestamp, so replayed or simulated history
//! builds the same baselines as live traffic.

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

/// Hour-of-week buckets.
pub const BUCKETS: usize = 168;
/// Weight of a new observation in the decayed statistics (about five weeks
/// of memory per bucket).
pub const ALPHA: f64 = 0.2;
/// Most silent hours folded in one step (four weeks): older silence adds
/// nothing the decay has not already forgotten.
const MAX_SILENT_FOLDS: i64 = 4 * BUCKETS as i64;
/// First-seen sets stop growing here (a principal with more distinct
/// executables than this is not one whose novelty means much).
const MAX_SEEN: usize = 4096;
/// The open hour keeps at most this many distinct PHI file hashes. Past
/// it, only a sample is kept (see [`Baseline::add`]) and the hour's count
/// of distinct files is estimated from it, within about 2%: a bulk copy of
/// 100,000 files still reads as about 100,000, while the baseline stays
/// a few tens of kilobytes (it is written to the store with every batch
/// that touches it).
const MAX_OPEN_FILES: usize = 4096;
/// Rolling window length in minutes.
pub const ROLLING_MINUTES: usize = 15;

/// First byte of an encoded baseline; bumped whenever the layout changes,
/// so state written by another version is recognised instead of misread.
const STATE_VERSION: u8 = 4;

const NS_PER_MINUTE: i64 = 60_000_000_000;
const NS_PER_HOUR: i64 = 60 * NS_PER_MINUTE;
const NS_PER_DAY: i64 = 24 * NS_PER_HOUR;

/// Hours since the epoch for a timestamp.
pub fn hour_index(time_unix_ns: i64) -> i64 {
    time_unix_ns.div_euclid(NS_PER_HOUR)
}

/// Hour of week, Monday 00:00 UTC = 0 (the epoch was a Thursday).
pub fn hour_of_week(hour_index: i64) -> usize {
    // 1970-01-01 00:00 was Thursday 00:00 = hour 72 of its week.
    (hour_index + 72).rem_euclid(BUCKETS as i64) as usize
}

/// A stable 64-bit hash (FNV-1a) for set membership; stable across runs and
/// builds, unlike `std`'s randomised hasher.
pub fn stable_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A [`stable_hash`] with every bit mixed into its low bits (MurmurHash3's
/// 64-bit finalizer): FNV-1a's bit k depends only on bits 0..=k of the
/// text's bytes, so paths differing in their digits would share low bits
/// and sample unevenly.
fn sample_bits(hash: u64) -> u64 {
    let mut h = hash;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What a week's observations weigh `weeks` weeks later.
fn weeks_of_decay(weeks: i64) -> f64 {
    // Past 10,000 weeks the weight is 0 in any case.
    (1.0 - ALPHA).powi(weeks.clamp(0, 10_000) as i32)
}

/// The four volume features, as one vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub events: f64,
    pub phi_files: f64,
    pub bytes_read: f64,
    pub bytes_sent: f64,
}

impl Volume {
    fn as_array(self) -> [f64; 4] {
        [
            self.events,
            self.phi_files,
            self.bytes_read,
            self.bytes_sent,
        ]
    }
}

/// Decayed statistics of one hour-of-week bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Observations folded in.
    pub n: u32,
    pub mean: [f64; 4],
    pub var: [f64; 4],
    /// Decayed share of observed hours in which the entity was active.
    pub active: f64,
}

impl Bucket {
    fn fold(&mut self, volume: Volume) {
        // Early on, weigh observations equally; later, decay at ALPHA.
        self.fold_at(volume, ALPHA.max(1.0 / f64::from(self.n + 1)));
    }

    /// Folds `volume` in with weight `alpha` (0..=1) against what the
    /// bucket holds.
    fn fold_at(&mut self, volume: Volume, alpha: f64) {
        for (i, x) in volume.as_array().into_iter().enumerate() {
            let diff = x - self.mean[i];
            let increment = alpha * diff;
            self.mean[i] += increment;
            self.var[i] = (1.0 - alpha) * (self.var[i] + diff * increment);
        }
        let was_active = if volume.events > 0.0 { 1.0 } else { 0.0 };
        self.active += alpha * (was_active - self.active);
        self.n = self.n.saturating_add(1);
    }

    /// How far `x` is above this bucket's usual value of feature `i`, in
    /// standard deviations. The deviation has a floor (1, or 10% of the
    /// mean) so a perfectly regular history does not make every change
    /// infinitely surprising; an empty bucket compares against zero.
    pub fn z(&self, i: usize, x: f64) -> f64 {
        let std = self.var[i].sqrt().max(1.0).max(0.1 * self.mean[i].abs());
        (x - self.mean[i]) / std
    }
}

/// One entity's baseline (a user, a role or a host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Empty until the first hour closes, then [`BUCKETS`] long.
    pub buckets: Vec<Bucket>,
    /// Hour index of the open hour, or `None` before the first event.
    pub open_hour: Option<i64>,
    pub open: Volume,
    /// Distinct PHI files of the open hour: every one, or when there were
    /// more than [`MAX_OPEN_FILES`], those whose hash has its low
    /// `open_files_level` bits zero.
    open_files: FxHashSet<u64>,
    pub seen_exe: FxHashSet<u64>,
    pub seen_destination: FxHashSet<u64>,
    pub seen_file_class: FxHashSet<u64>,
    /// Host (hashed) -> when the entity was first seen on it.
    pub seen_host: FxHashMap<u64, i64>,
    /// When the entity last gained root (see [`Baseline::note_escalation`]).
    pub last_escalation_ns: Option<i64>,
    /// Day index of the first and the last observed day, and how many
    /// distinct days.
    pub first_day: Option<i64>,
    pub last_day: Option<i64>,
    pub days_observed: u32,
    /// Rolling window: (minute index, PHI opens, PHI bytes read) per slot.
    rolling: Vec<(i64, u32, u64)>,
    /// A role's weights, per bucket: the week of the newest member-hour
    /// folded in and the decayed weight of all of them (empty for users and
    /// hosts; see [`Baseline::fold_member_hour`]).
    member_weights: Vec<(i64, f64)>,
    /// How many low hash bits a PHI file of the open hour needs zero to be
    /// kept in `open_files` (0: all are kept).
    open_files_level: u8,
}

/// What an event contributes to the volume features.
#[derive(Debug, Clone, Copy, Default)]
pub struct Contribution<'a> {
    pub is_phi: bool,
    pub is_open: bool,
    pub phi_path: Option<&'a str>,
    pub bytes_read: u64,
    pub bytes_sent: u64,
}

impl Baseline {
    /// Decodes a stored baseline; `None` when it was written by a detector
    /// with another state layout (or is corrupt).
    pub fn decode(bytes: &[u8]) -> Option<Baseline> {
        match bytes.split_first() {
            Some((&STATE_VERSION, body)) => postcard::from_bytes(body).ok(),
            // Version 3 lacked `open_files_level`, the last field (0 is
            // one zero byte); version 2 also `member_weights` before it (an
            // empty one is one zero byte, its length).
            Some((3, body)) => postcard::from_bytes(&[body, &[0]].concat()).ok(),
            Some((2, body)) => postcard::from_bytes(&[body, &[0, 0]].concat()).ok(),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain owned data into a Vec cannot fail.
        let mut bytes = vec![STATE_VERSION];
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        bytes
    }

    /// The bucket of an hour (an empty one before any hour has closed).
    pub fn bucket(&self, hour_index: i64) -> Bucket {
        self.buckets
            .get(hour_of_week(hour_index))
            .copied()
            .unwrap_or_default()
    }

    /// Moves the open hour forward to `hour`, folding the closed hour and
    /// the silent hours between. Returns the folded hours (hour index,
    /// volume) so a role can fold its members' hours too. Events from an
    /// earlier hour than the open one count into the open hour.
    pub fn advance_to(&mut self, hour: i64) -> Vec<(i64, Volume)> {
        let mut folded = Vec::new();
        match self.open_hour {
            None => self.open_hour = Some(hour),
            Some(open) if hour > open => {
                if self.buckets.is_empty() {
                    self.buckets = vec![Bucket::default(); BUCKETS];
                }
                self.buckets[hour_of_week(open)].fold(self.open);
                folded.push((open, self.open));
                let first_silent = (hour - MAX_SILENT_FOLDS).max(open + 1);
                for silent in first_silent..hour {
                    self.buckets[hour_of_week(silent)].fold(Volume::default());
                    folded.push((silent, Volume::default()));
                }
                self.open_hour = Some(hour);
                self.open = Volume::default();
                self.open_files.clear();
                self.open_files_level = 0;
            }
            Some(_) => {}
        }
        folded
    }

    /// Counts a PHI file into the open hour's distinct files. Up to
    /// [`MAX_OPEN_FILES`] every file is kept and the count is exact. Past
    /// it, the sample is halved (only hashes with one more low bit zero are
    /// kept) as often as needed to stay within the bound, and the count is
    /// the sample's size times 2^level: a uniform hash keeps each distinct
    /// file with probability 2^-level, whatever the order or repetitions.
    fn add_open_file(&mut self, hash: u64) {
        let mask = (1u64 << self.open_files_level) - 1;
        if sample_bits(hash) & mask != 0 || !self.open_files.insert(hash) {
            return;
        }
        while self.open_files.len() > MAX_OPEN_FILES && self.open_files_level < 63 {
            self.open_files_level += 1;
            let mask = (1u64 << self.open_files_level) - 1;
            self.open_files
                .retain(|&kept| sample_bits(kept) & mask == 0);
        }
        self.open.phi_files =
            self.open_files.len() as f64 * 2f64.powi(i32::from(self.open_files_level));
    }

    /// Adds an event to the open hour and the rolling window.
    pub fn add(&mut self, time_unix_ns: i64, contribution: Contribution<'_>) {
        self.open.events += 1.0;
        if let Some(path) = contribution.phi_path {
            self.add_open_file(stable_hash(path));
        }
        self.open.bytes_read += contribution.bytes_read as f64;
        self.open.bytes_sent += contribution.bytes_sent as f64;

        if contribution.is_phi {
            let minute = time_unix_ns.div_euclid(NS_PER_MINUTE);
            if self.rolling.len() != ROLLING_MINUTES {
                self.rolling = vec![(i64::MIN, 0, 0); ROLLING_MINUTES];
            }
            let slot = &mut self.rolling[minute.rem_euclid(ROLLING_MINUTES as i64) as usize];
            // A slot already holding a later minute means this event is older
            // than the window (a late arrival, say a collector's backlog): it
            // must not wipe the later minute's counts.
            if slot.0 < minute {
                *slot = (minute, 0, 0);
            }
            if slot.0 == minute {
                if contribution.is_open {
                    slot.1 += 1;
                }
                slot.2 += contribution.bytes_read;
            }
        }

        let day = time_unix_ns.div_euclid(NS_PER_DAY);
        if self.first_day.is_none_or(|first| day < first) {
            self.first_day = Some(day);
        }
        if self.last_day.is_none_or(|last| day > last) {
            self.last_day = Some(day);
            self.days_observed += 1;
        }
    }

    /// Folds a member's closed hour into this role, without touching the
    /// role's open hour. A role's bucket decays by week, not by
    /// observation: every member-hour of a week weighs the same, each week
    /// counts 1 - [`ALPHA`] as much as the next (the five weeks of memory a
    /// user's bucket has), and a member-hour of an earlier week (the
    /// silent hours a returning member folds) weighs what it would have
    /// weighed then.
    pub fn fold_member_hour(&mut self, hour: i64, volume: Volume) {
        if self.buckets.is_empty() {
            self.buckets = vec![Bucket::default(); BUCKETS];
        }
        if self.member_weights.len() != BUCKETS {
            self.member_weights = vec![(i64::MIN, 0.0); BUCKETS];
        }
        let bucket = hour_of_week(hour);
        let week = hour.div_euclid(BUCKETS as i64);
        let (newest, total) = &mut self.member_weights[bucket];
        let folded = self.buckets[bucket].n;
        if *newest == i64::MIN && folded > 0 {
            // A bucket from before the weights were kept (state version 2):
            // as much weight as the per-observation decay gave it.
            *newest = week;
            *total = f64::from(folded).min(1.0 / ALPHA);
        }
        let weight = if week >= *newest {
            *total *= weeks_of_decay(week.saturating_sub(*newest));
            *newest = week;
            1.0
        } else {
            weeks_of_decay(*newest - week)
        };
        *total += weight;
        self.buckets[bucket].fold_at(volume, weight / *total);
    }

    /// PHI opens and PHI bytes read in the rolling window ending at `time`.
    pub fn rolling(&self, time_unix_ns: i64) -> (u32, u64) {
        let now = time_unix_ns.div_euclid(NS_PER_MINUTE);
        self.rolling
            .iter()
            .filter(|(minute, _, _)| *minute > now - ROLLING_MINUTES as i64 && *minute <= now)
            .fold((0, 0), |(opens, bytes), (_, o, b)| (opens + o, bytes + b))
    }

    /// Whole days from the entity's first observed day to the day of
    /// `time_unix_ns` (0 on its first day): the age of its baseline.
    pub fn age_days(&self, time_unix_ns: i64) -> i64 {
        self.first_day.map_or(0, |first| {
            (time_unix_ns.div_euclid(NS_PER_DAY) - first).max(0)
        })
    }

    /// Hours since the entity was first seen on `host` (0 the first time;
    /// remembers it).
    pub fn hours_on_host(&mut self, host: &str, time_unix_ns: i64) -> f64 {
        let hash = stable_hash(host);
        let first = match self.seen_host.get(&hash) {
            Some(first) => *first,
            None => {
                if self.seen_host.len() < MAX_SEEN {
                    self.seen_host.insert(hash, time_unix_ns);
                }
                time_unix_ns
            }
        };
        (time_unix_ns - first).max(0) as f64 / NS_PER_HOUR as f64
    }

    /// Remembers that the entity gained root at `time_unix_ns`.
    pub fn note_escalation(&mut self, time_unix_ns: i64) {
        self.last_escalation_ns = Some(
            self.last_escalation_ns
                .map_or(time_unix_ns, |t| t.max(time_unix_ns)),
        );
    }

    /// Minutes since the entity last gained root, if it ever did.
    pub fn minutes_since_escalation(&self, time_unix_ns: i64) -> Option<f64> {
        self.last_escalation_ns
            .map(|t| (time_unix_ns - t).max(0) as f64 / NS_PER_MINUTE as f64)
    }

    /// True the first time `value` is seen in `set` (and remembers it).
    pub fn first_seen(set: &mut FxHashSet<u64>, value: &str) -> bool {
        let hash = stable_hash(value);
        if set.contains(&hash) {
            return false;
        }
        if set.len() < MAX_SEEN {
            set.insert(hash);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = NS_PER_HOUR;

    fn phi_open(path: &str) -> Contribution<'_> {
        Contribution {
            is_phi: true,
            is_open: true,
            phi_path: Some(path),
            bytes_read: 0,
            bytes_sent: 0,
        }
    }

    #[test]
    fn epoch_is_thursday() {
        assert_eq!(hour_of_week(0), 3 * 24);
        // 2026-11-23 00:00 UTC is a Monday.
        let monday = 1_795_392_000_i64 * 1_000_000_000;
        assert_eq!(hour_of_week(hour_index(monday)), 0);
    }

    #[test]
    fn a_regular_weekly_hour_learns_its_volume() {
        let mut b = Baseline::default();
        // Ten weeks of 20 events every Monday 09:00, nothing else.
        let monday9 = 1_795_392_000_i64 * 1_000_000_000 + 9 * HOUR;
        for week in 0..10 {
            let start = monday9 + week * 168 * HOUR;
            b.advance_to(hour_index(start));
            for i in 0..20 {
                b.add(start + i, phi_open("/phi/a"));
            }
        }
        b.advance_to(hour_index(monday9 + 10 * 168 * HOUR));
        let bucket = b.bucket(hour_index(monday9));
        assert!((bucket.mean[0] - 20.0).abs() < 1.0, "{bucket:?}");
        assert!(bucket.active > 0.9);
        assert!(bucket.z(0, 20.0).abs() < 1.0);
        assert!(bucket.z(0, 200.0) > 10.0);
        // The same hour on Tuesday has only ever been silent.
        let tuesday9 = b.bucket(hour_index(monday9 + 24 * HOUR));
        assert!(tuesday9.active < 0.01, "{tuesday9:?}");
        assert!(tuesday9.z(0, 20.0) > 10.0);
        assert_eq!(b.days_observed, 10);
        // Ten Mondays: 63 days from the first to the last.
        assert_eq!(b.age_days(monday9 + 9 * 168 * HOUR), 63);
    }

    /// `members` members of a role each read `events` PHI files in the
    /// Monday 09:00 hour of `week`, and their hours close.
    fn role_week(role: &mut Baseline, members: &mut [Baseline], week: i64, events: usize) {
        let monday9 = 1_795_392_000_i64 * 1_000_000_000 + 9 * HOUR;
        let start = monday9 + week * 168 * HOUR;
        for member in members.iter_mut() {
            for (hour, volume) in member.advance_to(hour_index(start)) {
                role.fold_member_hour(hour, volume);
            }
            for i in 0..events {
                member.add(start + i as i64, phi_open("/phi/a"));
            }
            for (hour, volume) in member.advance_to(hour_index(start) + 1) {
                role.fold_member_hour(hour, volume);
            }
        }
    }

    #[test]
    fn a_role_remembers_weeks_not_member_hours() {
        let monday9 = hour_index(1_795_392_000_i64 * 1_000_000_000 + 9 * HOUR);
        let mut role = Baseline::default();
        let mut members = vec![Baseline::default(); 10];
        for week in 0..6 {
            role_week(&mut role, &mut members, week, 100);
        }
        let learned = role.bucket(monday9);
        assert!((learned.mean[0] - 100.0).abs() < 1.0, "{learned:?}");
        // One quiet Monday morning for the whole role: a week, not the
        // role's whole memory. Folded per member-hour at 0.2, ten quiet
        // hours left 100 * 0.8^10 = 11 of the mean.
        role_week(&mut role, &mut members, 6, 0);
        let quiet = role.bucket(monday9);
        assert!(
            (60.0..90.0).contains(&quiet.mean[0]),
            "one quiet week of five weeks' memory: {quiet:?}"
        );
    }

    #[test]
    fn a_returning_member_does_not_wipe_the_role() {
        let monday9 = hour_index(1_795_392_000_i64 * 1_000_000_000 + 9 * HOUR);
        let mut role = Baseline::default();
        let mut members = vec![Baseline::default(); 10];
        let mut away = vec![Baseline::default()];
        role_week(&mut role, &mut away, 0, 100);
        for week in 0..8 {
            role_week(&mut role, &mut members, week, 100);
        }
        // Back after seven weeks away: four weeks of silent hours (the
        // most folded at once) go into the role, each for the week it
        // belongs to. Folded at 0.2 apiece they took the Monday 09:00 mean
        // to 100 * 0.8^4 = 41 (53 after the member's own busy hour).
        role_week(&mut role, &mut away, 8, 100);
        let bucket = role.bucket(monday9);
        assert!(
            bucket.mean[0] > 90.0,
            "four silent hours among 80 busy ones: {bucket:?}"
        );
    }

    #[test]
    fn rolling_window_forgets_after_fifteen_minutes() {
        let mut b = Baseline::default();
        let t0 = 1_795_392_000_i64 * 1_000_000_000;
        for i in 0..30 {
            b.add(t0 + i * NS_PER_MINUTE / 2, phi_open("/phi/x"));
        }
        // Two opens a minute over minutes 0..=14.
        assert_eq!(b.rolling(t0 + 14 * NS_PER_MINUTE).0, 30);
        assert_eq!(b.rolling(t0 + 15 * NS_PER_MINUTE).0, 28);
        assert_eq!(b.rolling(t0 + 40 * NS_PER_MINUTE).0, 0);
    }

    #[test]
    fn a_late_event_does_not_wipe_the_rolling_window() {
        let mut b = Baseline::default();
        let t0 = 1_795_392_000_i64 * 1_000_000_000;
        let now = t0 + 20 * NS_PER_MINUTE;
        for _ in 0..5 {
            b.add(now, phi_open("/phi/x"));
        }
        // Fifteen minutes older, it lands on the same slot as `now`.
        b.add(now - 15 * NS_PER_MINUTE, phi_open("/phi/y"));
        assert_eq!(b.rolling(now).0, 5);
        assert_eq!(b.rolling(now - 15 * NS_PER_MINUTE).0, 0);
    }

    #[test]
    fn first_seen_is_true_once() {
        let mut set = FxHashSet::default();
        assert!(Baseline::first_seen(&mut set, "/usr/bin/scp"));
        assert!(!Baseline::first_seen(&mut set, "/usr/bin/scp"));
        assert!(Baseline::first_seen(&mut set, "/usr/bin/rsync"));
    }

    #[test]
    fn baselines_survive_encoding() {
        let mut b = Baseline::default();
        b.advance_to(10);
        b.add(10 * HOUR, phi_open("/phi/a"));
        Baseline::first_seen(&mut b.seen_exe, "/bin/cat");
        b.hours_on_host("ehr-01", 10 * HOUR);
        b.note_escalation(10 * HOUR);
        let bytes = b.encode();
        let back = Baseline::decode(&bytes).expect("decodes");
        assert_eq!(back, b);
        // State of another layout version is refused, not misread.
        let mut other = bytes.clone();
        other[0] = STATE_VERSION + 1;
        assert_eq!(Baseline::decode(&other), None);
        assert_eq!(Baseline::decode(&bytes[1..]), None);
    }

    #[test]
    fn an_hour_of_many_files_is_counted_from_a_bounded_sample() {
        let mut b = Baseline::default();
        b.advance_to(10);
        for i in 0..1_000 {
            b.add(10 * HOUR, phi_open(&format!("/srv/phi/patient-{i}.json")));
            b.add(10 * HOUR, phi_open(&format!("/srv/phi/patient-{i}.json")));
        }
        assert_eq!(b.open.phi_files, 1_000.0, "exact below the bound");

        for i in 1_000..100_000 {
            b.add(10 * HOUR, phi_open(&format!("/srv/phi/patient-{i}.json")));
        }
        // Repeats in any order change nothing.
        for i in (0..100_000).step_by(7) {
            b.add(10 * HOUR, phi_open(&format!("/srv/phi/patient-{i}.json")));
        }
        let estimate = b.open.phi_files;
        assert!(
            (95_000.0..105_000.0).contains(&estimate),
            "100,000 distinct files estimated as {estimate}"
        );
        assert!(
            b.open_files.len() <= MAX_OPEN_FILES,
            "{}",
            b.open_files.len()
        );
        assert!(b.encode().len() < 64 * 1024, "{} bytes", b.encode().len());

        // The next hour starts exact again.
        b.advance_to(11);
        b.add(11 * HOUR, phi_open("/srv/phi/patient-1.json"));
        assert_eq!(b.open.phi_files, 1.0);
        assert_eq!(
            b.bucket(10).mean[1],
            estimate,
            "the first fold takes the hour as it is"
        );
    }

    #[test]
    fn version_3_state_still_decodes() {
        let mut b = Baseline::default();
        b.advance_to(10);
        b.add(10 * HOUR, phi_open("/phi/a"));
        let mut bytes = b.encode();
        assert_eq!(bytes.pop(), Some(0), "level 0 is one zero byte");
        bytes[0] = 3;
        assert_eq!(Baseline::decode(&bytes), Some(b));
    }

    #[test]
    fn version_2_state_still_decodes() {
        let monday9 = hour_index(1_795_392_000_i64 * 1_000_000_000 + 9 * HOUR);
        let mut role = Baseline::default();
        role_week(&mut role, &mut [Baseline::default()], 0, 100);
        for _ in 0..9 {
            role.buckets[hour_of_week(monday9)].fold(Volume {
                events: 100.0,
                ..Volume::default()
            });
        }
        role.member_weights.clear();
        // Version 2's layout: the same fields without `member_weights` and
        // `open_files_level`.
        let mut bytes = role.encode();
        assert_eq!(bytes.pop(), Some(0), "level 0 is one zero byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one zero byte");
        bytes[0] = 2;
        let back = Baseline::decode(&bytes).expect("version 2 decodes");
        assert_eq!(back, role);
        // Its buckets carry on with the weight they had: a quiet week
        // moves a learned bucket, it does not replace it.
        let mut back = back;
        back.fold_member_hour(monday9 + 168, Volume::default());
        let bucket = back.bucket(monday9);
        assert!(
            (70.0..90.0).contains(&bucket.mean[0]),
            "one quiet member-hour against a learned bucket: {bucket:?}"
        );
    }

    #[test]
    fn hours_on_host_count_from_the_first_visit() {
        let mut b = Baseline::default();
        assert_eq!(b.hours_on_host("ws-07", 5 * HOUR), 0.0);
        assert_eq!(b.hours_on_host("ws-07", 8 * HOUR), 3.0);
        assert_eq!(b.hours_on_host("ws-09", 8 * HOUR), 0.0);
    }

    #[test]
    fn escalation_age_is_in_minutes_from_the_latest() {
        let mut b = Baseline::default();
        assert_eq!(b.minutes_since_escalation(HOUR), None);
        b.note_escalation(HOUR);
        b.note_escalation(HOUR / 2);
        assert_eq!(
            b.minutes_since_escalation(HOUR + 10 * NS_PER_MINUTE),
            Some(10.0)
        );
    }
}
