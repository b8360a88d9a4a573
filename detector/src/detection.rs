//! The emit operator's first half: turns rule results into OCSF alerts.
//!
//! Rows of one rule are grouped by principal and by what makes a firing
//! distinct — the event (per-event rules) or the window (rules with a
//! `window`) — and each group becomes one [`Alert`] with a deterministic id,
//! its triggering events, and the baseline figures of its first event.

use rustc_hash::FxHashMap;

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use vigil_schemas::Alert;
use vigil_schemas::alert::{
    AnalysisTarget, AnomalyAnalysis, NewAlert, Observation, Observations, RelatedEvent,
};

use crate::events_table::{Features, Row};
use crate::rules::RuleHeader;

/// Most triggering events listed in one alert.
pub const MAX_RELATED_EVENTS: usize = 50;

/// A result batch's `event_id` column as strings (cast when a rule
/// returned it as another type); `None` when the rule did not select it.
fn event_id_column(batch: &RecordBatch) -> Option<StringArray> {
    let column = batch.column(batch.schema().index_of("event_id").ok()?);
    match column.as_any().downcast_ref::<StringArray>() {
        Some(strings) => Some(strings.clone()),
        None => cast(column, &DataType::Utf8)
            .ok()?
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned(),
    }
}

/// What makes one firing of a rule distinct from another for a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Discriminator<'a> {
    /// Per-event rules: the event.
    Event(&'a str),
    /// Windowed rules: the window's start, in nanoseconds.
    Window(i64),
}

impl std::fmt::Display for Discriminator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discriminator::Event(id) => write!(f, "event={id}"),
            Discriminator::Window(start) => write!(f, "window={start}"),
        }
    }
}

fn observation(name: &str, value: impl ToString) -> Observation {
    Observation {
        name: name.to_owned(),
        value: value.to_string(),
    }
}

fn observations(parameter: &str, kind: &str, values: Vec<Observation>) -> Observations {
    Observations {
        observation_parameter: parameter.to_owned(),
        observation_type: kind.to_owned(),
        observations: values,
    }
}

/// The baseline figures that made an event anomalous.
pub fn anomaly_analyses(features: &Features) -> Vec<AnomalyAnalysis> {
    let mut user_anomalies = vec![
        observations(
            "user_hour_events",
            "Volume",
            vec![
                observation("user_hour_events", features.user_hour_events),
                observation("user_z_volume", format!("{:.2}", features.user_z_volume)),
            ],
        ),
        observations(
            "user_phi_opens_15m",
            "Volume",
            vec![observation(
                "user_phi_opens_15m",
                features.user_phi_opens_15m,
            )],
        ),
        observations(
            "hour_rarity",
            "Time",
            vec![observation(
                "hour_rarity",
                format!("{:.3}", features.hour_rarity),
            )],
        ),
    ];
    let novel: Vec<Observation> = [
        ("first_seen_exe", features.first_seen_exe),
        ("first_seen_destination", features.first_seen_destination),
        ("first_seen_file_class", features.first_seen_file_class),
        ("first_seen_host", features.first_seen_host),
    ]
    .into_iter()
    .filter(|(_, seen)| *seen)
    .map(|(name, _)| observation(name, true))
    .collect();
    if !novel.is_empty() {
        user_anomalies.push(observations("first_seen", "Novelty", novel));
    }
    if features.hours_on_host < 24.0 {
        user_anomalies.push(observations(
            "hours_on_host",
            "Novelty",
            vec![observation(
                "hours_on_host",
                format!("{:.1}", features.hours_on_host),
            )],
        ));
    }
    if let Some(minutes) = features.minutes_since_escalation
        && minutes < 60.0
    {
        user_anomalies.push(observations(
            "minutes_since_escalation",
            "Privilege",
            vec![observation(
                "minutes_since_escalation",
                format!("{minutes:.1}"),
            )],
        ));
    }
    vec![
        AnomalyAnalysis {
            analysis_targets: vec![AnalysisTarget {
                name: features.principal.clone(),
                kind: "user".into(),
            }],
            anomalies: user_anomalies,
            baselines: vec![observations(
                "user_hour_events",
                "Volume",
                vec![
                    observation(
                        "user_hour_mean_events",
                        format!("{:.2}", features.user_hour_mean_events),
                    ),
                    observation("baseline_days", features.baseline_days),
                ],
            )],
        },
        AnomalyAnalysis {
            analysis_targets: vec![AnalysisTarget {
                name: features.role.clone(),
                kind: "role".into(),
            }],
            anomalies: vec![observations(
                "role_z_volume",
                "Volume",
                vec![observation(
                    "role_z_volume",
                    format!("{:.2}", features.role_z_volume),
                )],
            )],
            baselines: vec![],
        },
    ]
}

/// Alerts for one rule's results over a batch of `rows`; `index` maps event
/// ids to rows. `wanted` is asked with each candidate's alert id first, and
/// only the alerts it wants are built (an ongoing window's alert is found
/// again in every batch; building it each time would be wasted work).
pub fn alerts(
    rule: &RuleHeader,
    results: &[RecordBatch],
    rows: &[Row],
    index: &FxHashMap<&str, usize>,
    now_ms: i64,
    mut wanted: impl FnMut(&str) -> crate::Result<bool>,
) -> crate::Result<Vec<Alert>> {
    // (principal, discriminator) -> row indexes, in first-seen order.
    let mut groups: FxHashMap<(&str, Discriminator<'_>), Vec<usize>> = FxHashMap::default();
    let mut order: Vec<(&str, Discriminator<'_>)> = Vec::new();
    // A rule may return an event more than once (a join, a union).
    let mut listed = vec![false; rows.len()];
    for batch in results {
        let Some(ids) = event_id_column(batch) else {
            continue;
        };
        for event_id in ids.iter().flatten() {
            let Some(&i) = index.get(event_id) else {
                continue;
            };
            if std::mem::replace(&mut listed[i], true) {
                continue;
            }
            let row = &rows[i];
            let discriminator = match rule.window {
                Some(window) => {
                    let width = window.as_nanos().max(1) as i64;
                    Discriminator::Window(row.event.time_unix_ns.div_euclid(width) * width)
                }
                None => Discriminator::Event(&row.event.event_id),
            };
            let key = (row.features.principal.as_str(), discriminator);
            let members = groups.entry(key).or_default();
            if members.is_empty() {
                order.push(key);
            }
            members.push(i);
        }
    }
    let mut alerts = Vec::new();
    for key in order {
        let discriminator = key.1.to_string();
        let id = vigil_schemas::alert::alert_id(&rule.id, rule.version, key.0, &discriminator);
        if !wanted(&id)? {
            continue;
        }
        if let Some(alert) = (|| {
            let members = groups.get(&key)?;
            let first = &rows[*members.first()?];
            let f = &first.features;
            let target = first
                .event
                .path
                .as_deref()
                .or(first.event.exe.as_deref())
                .unwrap_or(first.event.comm.as_str());
            let description = format!(
                "{} (role {}) on {}: {} {}; {} events this hour (usual {:.1}, z {:.1}, role z {:.1}), {} PHI opens in 15 min, hour rarity {:.2}",
                f.principal,
                f.role,
                first.event.host,
                first.event.kind.as_str(),
                target,
                f.user_hour_events,
                f.user_hour_mean_events,
                f.user_z_volume,
                f.role_z_volume,
                f.user_phi_opens_15m,
                f.hour_rarity,
            );
            Some(Alert::new(NewAlert {
                rule_id: rule.id.clone(),
                rule_version: rule.version,
                title: rule.title.clone(),
                description,
                severity: rule.severity,
                hipaa_control: rule.hipaa.clone(),
                mitre_techniques: rule.mitre.clone(),
                principal: key.0.to_owned(),
                host: first.event.host.clone(),
                discriminator,
                related_events: members
                    .iter()
                    .take(MAX_RELATED_EVENTS)
                    .map(|&i| RelatedEvent {
                        uid: rows[i].event.event_id.clone(),
                        kind: rows[i].event.kind.as_str().to_owned(),
                        time: rows[i].event.time_unix_ns.div_euclid(1_000_000),
                    })
                    .collect(),
                anomaly_analyses: anomaly_analyses(f),
                learning: f.learning,
                time_ms: now_ms,
            }))
        })() {
            alerts.push(alert);
        }
    }
    Ok(alerts)
}
