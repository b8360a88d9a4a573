//! `detector rules test`: runs each rule against its test file and checks
//! the alerts it raises.
//!
//! A test file `sql/tests/<rule id>.toml` holds an optional baseline preset
//! (history generated before the sample events, so baselines are built by
//! the real code), sample events, and what is expected:
//!
//! ```toml
//! [preset]                      # optional: a principal's usual week
//! principal = "alice"           # login name, or uid@host for a service
//! days = 30                     # days of history before the first event
//! hours = [9, 10, 11, 14, 15]   # UTC hours active each weekday
//! events_per_hour = 12
//! path = "/srv/phi/notes/p{i}.txt"
//! # also: host, exe, kind (default open), dst_addr, dst_port,
//! # weekends = true, or weekdays = ["sun"] for particular days
//!
//! # Several principals' histories: [[preset]] tables instead of [preset].
//!
//! [[events]]                    # a group of sample events
//! repeat = 250                  # how many (default 1)
//! at = "2026-11-24T02:10:00Z"   # first event's time (RFC 3339)
//! every = "2s"                  # spacing (default 1s)
//! login_name = "alice"          # human session; or uid = 998 for a service
//! kind = "open"
//! path = "/srv/phi/notes/p{i}.txt"   # {i} = index within the group
//!
//! [expect]
//! alerts = 1                    # alerts on vigil.alerts.v1
//! review = 0                    # alerts in learning mode
//! principals = ["alice"]        # who was alerted on (optional)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vigil_schemas::{Event, Kind, SocketFamily, encode};

use crate::processor::{Input, Processor};
use crate::roles::{RoleFile, RoleMap};
use crate::rules::{RuleSet, parse_duration};
use crate::state::MemStore;
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    preset: Option<Presets>,
    #[serde(default)]
    events: Vec<EventGroup>,
    expect: Expect,
    /// Role mapping for the test, in the mapping file's format.
    roles: Option<toml::Value>,
    /// Learning period for the test (default 7 days, as in production).
    learning_days: Option<u32>,
}

/// `[preset]` (one history) or `[[preset]]` (several).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Presets {
    One(Preset),
    Many(Vec<Preset>),
}

impl Presets {
    fn all(&self) -> &[Preset] {
        match self {
            Presets::One(one) => std::slice::from_ref(one),
            Presets::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preset {
    principal: String,
    #[serde(default = "default_host")]
    host: String,
    days: u32,
    hours: Vec<u32>,
    events_per_hour: u32,
    #[serde(default = "default_preset_path")]
    path: String,
    #[serde(default = "default_exe")]
    exe: String,
    /// Include weekends (default false: weekdays only).
    #[serde(default)]
    weekends: bool,
    /// Only these days ("mon" .. "sun"); overrides `weekends`.
    weekdays: Option<Vec<String>>,
    #[serde(default = "default_kind")]
    kind: String,
    dst_addr: Option<String>,
    dst_port: Option<i32>,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn default_host() -> String {
    "ehr-01".into()
}
fn default_preset_path() -> String {
    "/srv/phi/records/p{i}.json".into()
}
fn default_exe() -> String {
    "/usr/bin/ehr-client".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventGroup {
    #[serde(default = "one")]
    repeat: u32,
    at: String,
    every: Option<String>,
    #[serde(default = "default_host")]
    host: String,
    login_name: Option<String>,
    login_uid: Option<i64>,
    uid: Option<i64>,
    gid: Option<i64>,
    #[serde(default = "default_kind")]
    kind: String,
    path: Option<String>,
    new_path: Option<String>,
    exe: Option<String>,
    parent_exe: Option<String>,
    comm: Option<String>,
    dst_addr: Option<String>,
    dst_port: Option<i32>,
    bytes: Option<i64>,
    errno: Option<i32>,
    /// Open flags (0 for opens when not given).
    flags: Option<i32>,
    target_id: Option<i64>,
}

fn one() -> u32 {
    1
}
fn default_kind() -> String {
    "open".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    alerts: usize,
    #[serde(default)]
    review: usize,
    principals: Option<Vec<String>>,
}

/// The outcome of one rule's test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub rule: String,
    pub passed: bool,
    pub detail: String,
}

fn parse_time(text: &str) -> std::result::Result<i64, String> {
    let time = humantime::parse_rfc3339(text).map_err(|e| format!("`{text}`: {e}"))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .map_err(|_| format!("`{text}` is before 1970"))
}

fn event_from(
    group: &EventGroup,
    i: u32,
    time: i64,
    seq: i64,
) -> std::result::Result<Event, String> {
    let kind = Kind::named(&group.kind).ok_or_else(|| format!("unknown kind `{}`", group.kind))?;
    let fill = |s: &Option<String>| s.as_ref().map(|s| s.replace("{i}", &i.to_string()));
    let login_uid = group.login_uid.or(group.login_name.as_ref().map(|_| 1000));
    let uid = group.uid.or(login_uid).unwrap_or(1000);
    Ok(Event {
        event_id: format!("{}-test-{seq}", group.host),
        host: group.host.clone(),
        seq,
        time_unix_ns: time,
        kind,
        errno: group.errno.unwrap_or(0),
        pid: 4000 + i as i32,
        ppid: 1,
        tid: 4000 + i as i32,
        uid,
        euid: uid,
        gid: group.gid.unwrap_or(uid),
        login_uid,
        user_name: group.login_name.clone(),
        login_name: group.login_name.clone(),
        comm: group.comm.clone().unwrap_or_else(|| "test".into()),
        exe: fill(&group.exe),
        parent_exe: fill(&group.parent_exe),
        cgroup_id: 1,
        path: fill(&group.path),
        new_path: fill(&group.new_path),
        flags: group.flags.or(matches!(kind, Kind::Open).then_some(0)),
        family: group.dst_addr.as_ref().map(|a| {
            if a.contains(':') {
                SocketFamily::Inet6
            } else {
                SocketFamily::Inet
            }
        }),
        dst_addr: group.dst_addr.clone(),
        dst_port: group.dst_port,
        bytes: group.bytes,
        target_id: group.target_id,
        ..Event::default()
    })
}

fn input_for(event: &Event, offset: i64) -> Input {
    Input {
        partition: 0,
        offset,
        key: Some(event.principal().into_bytes()),
        payload: Some(encode(event)),
    }
}

/// The preset's history: `events_per_hour` PHI opens in each listed hour of
/// each day, ending the day before `end`.
fn preset_events(preset: &Preset, end_ns: i64) -> std::result::Result<Vec<Event>, String> {
    const DAY: i64 = 86_400_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;
    let first_day = end_ns.div_euclid(DAY) - i64::from(preset.days);
    let group = EventGroup {
        repeat: 1,
        at: String::new(),
        every: None,
        host: preset.host.clone(),
        login_name: if preset.principal.contains('@') {
            None
        } else {
            Some(preset.principal.clone())
        },
        login_uid: None,
        uid: preset
            .principal
            .split_once('@')
            .and_then(|(uid, _)| uid.parse().ok()),
        gid: None,
        kind: preset.kind.clone(),
        path: (preset.dst_addr.is_none()).then(|| preset.path.clone()),
        new_path: None,
        exe: Some(preset.exe.clone()),
        parent_exe: None,
        comm: None,
        dst_addr: preset.dst_addr.clone(),
        dst_port: preset.dst_port,
        bytes: None,
        errno: None,
        flags: None,
        target_id: None,
    };
    let days: Vec<usize> = match &preset.weekdays {
        Some(names) => names
            .iter()
            .map(|name| {
                WEEKDAYS
                    .iter()
                    .position(|d| d.eq_ignore_ascii_case(name))
                    .ok_or_else(|| format!("preset.weekdays: `{name}` is not one of {WEEKDAYS:?}"))
            })
            .collect::<std::result::Result<_, _>>()?,
        None if preset.weekends => (0..7).collect(),
        None => (0..5).collect(),
    };
    let mut events = Vec::new();
    for day in first_day..end_ns.div_euclid(DAY) {
        // 1970-01-01 was a Thursday: day 0 -> weekday index 3 (Mon = 0).
        let weekday = (day + 3).rem_euclid(7) as usize;
        if !days.contains(&weekday) {
            continue;
        }
        for &hour in &preset.hours {
            for i in 0..preset.events_per_hour {
                let spacing = HOUR / i64::from(preset.events_per_hour.max(1));
                let time = day * DAY + i64::from(hour) * HOUR + i64::from(i) * spacing;
                events.push(event_from(&group, i, time, events.len() as i64)?);
            }
        }
    }
    Ok(events)
}

/// Runs one rule file against one test file.
pub async fn run_one(rule_file: &Path, test_file: &Path) -> TestOutcome {
    let rule_name = rule_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    match run_checked(rule_file, test_file).await {
        Ok(detail) => TestOutcome {
            rule: rule_name,
            passed: true,
            detail,
        },
        Err(detail) => TestOutcome {
            rule: rule_name,
            passed: false,
            detail,
        },
    }
}

async fn run_checked(rule_file: &Path, test_file: &Path) -> std::result::Result<String, String> {
    let rule_text = std::fs::read_to_string(rule_file)
        .map_err(|e| format!("cannot read {}: {e}", rule_file.display()))?;
    let test_text = std::fs::read_to_string(test_file)
        .map_err(|e| format!("cannot read {}: {e}", test_file.display()))?;
    let test: TestFile =
        toml::from_str(&test_text).map_err(|e| format!("{}: {e}", test_file.display()))?;

    let mut rules = RuleSet::new();
    let rule = rules
        .compile(rule_file, &rule_text)
        .await
        .map_err(|e| e.to_string())?;
    rules.insert(rule);
    let roles = match &test.roles {
        Some(value) => {
            let text = toml::to_string(value).map_err(|e| e.to_string())?;
            RoleFile::with_map(
                RoleMap::parse(&text, &test_file.display().to_string())
                    .map_err(|e| e.to_string())?,
            )
        }
        None => RoleFile::open(None).map_err(|e| e.to_string())?,
    };
    let mut processor = Processor::new(
        Arc::new(MemStore::default()),
        rules,
        roles,
        test.learning_days.unwrap_or(7),
        "test.events",
    );

    let mut samples = Vec::new();
    for (g, group) in test.events.iter().enumerate() {
        let start = parse_time(&group.at).map_err(|e| format!("events[{g}].at: {e}"))?;
        let every = match &group.every {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("events[{g}].every: `{text}` is not a duration like 2s (1s to 366d)")
            })?,
            None => Duration::from_secs(1),
        };
        for i in 0..group.repeat {
            let time = start + i64::from(i) * every.as_nanos() as i64;
            samples.push((group.clone(), i, time));
        }
    }
    samples.sort_by_key(|(_, _, time)| *time);
    let first_sample = samples.first().map(|(_, _, t)| *t).unwrap_or(0);

    let mut events = Vec::new();
    for preset in test.preset.as_ref().map(Presets::all).unwrap_or_default() {
        events.extend(preset_events(preset, first_sample)?);
    }
    events.sort_by_key(|e| e.time_unix_ns);
    for (seq, event) in events.iter_mut().enumerate() {
        event.seq = seq as i64;
        event.event_id = format!("{}-history-{seq}", event.host);
    }
    let history = events.len();
    for (group, i, time) in &samples {
        events.push(event_from(group, *i, *time, events.len() as i64)?);
    }

    let mut alerts = 0;
    let mut review = 0;
    let mut principals = BTreeSet::new();
    // History and samples never share a batch, so alerts the history raises
    // are told apart from those of the samples.
    let (history_events, sample_events) = events.split_at(history);
    let chunks = history_events
        .chunks(256)
        .map(|chunk| (true, chunk))
        .chain(sample_events.chunks(256).map(|chunk| (false, chunk)));
    let mut offset = 0i64;
    for (is_history, chunk) in chunks {
        let inputs = chunk
            .iter()
            .map(|e| {
                offset += 1;
                input_for(e, offset - 1)
            })
            .collect::<Vec<_>>();
        let now = chunk.last().map(|e| e.time_unix_ns).unwrap_or(0);
        let output = processor
            .process(inputs, now)
            .await
            .map_err(|e| e.to_string())?;
        if let Some((rule, error)) = output.rule_errors.first() {
            return Err(format!("rule {rule} failed: {error}"));
        }
        if let Some(letter) = output.dead_letters.first() {
            return Err(format!("a test event was refused: {}", letter.error));
        }
        if !is_history {
            for alert in output.alerts.iter().chain(&output.review) {
                principals.insert(alert.unmapped.vigil.principal.clone());
            }
            alerts += output.alerts.len();
            review += output.review.len();
        }
        processor.commit(output.state).map_err(|e| e.to_string())?;
    }

    let mut problems = Vec::new();
    if alerts != test.expect.alerts {
        problems.push(format!(
            "expected {} alerts, got {alerts}",
            test.expect.alerts
        ));
    }
    if review != test.expect.review {
        problems.push(format!(
            "expected {} review items, got {review}",
            test.expect.review
        ));
    }
    if let Some(expected) = &test.expect.principals {
        let expected: BTreeSet<String> = expected.iter().cloned().collect();
        if expected != principals {
            problems.push(format!(
                "expected principals {expected:?}, got {principals:?}"
            ));
        }
    }
    let summary = format!(
        "{} sample events after {history} history events: {alerts} alerts, {review} review",
        samples.len()
    );
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{}; {summary}", problems.join("; ")))
    }
}

/// Runs every rule in `rules_dir` against `tests_dir/<id>.toml`. A rule
/// without a test file fails: every rule needs one.
pub async fn run_all(rules_dir: &Path, tests_dir: &Path) -> Result<Vec<TestOutcome>> {
    let mut rule_files: Vec<PathBuf> = std::fs::read_dir(rules_dir)
        .map_err(|e| Error::Config {
            what: rules_dir.display().to_string(),
            reason: format!("cannot read the rule directory: {e}"),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    rule_files.sort();
    let mut outcomes = Vec::new();
    for rule_file in rule_files {
        let stem = rule_file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let test_file = tests_dir.join(format!("{stem}.toml"));
        if !test_file.exists() {
            outcomes.push(TestOutcome {
                rule: stem,
                passed: false,
                detail: format!("no test file {}", test_file.display()),
            });
            continue;
        }
        outcomes.push(run_one(&rule_file, &test_file).await);
    }
    Ok(outcomes)
}
