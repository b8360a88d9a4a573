//! `detector alerts`: alerts and review items as readable lines, as they
//! arrive.
//!
//! [`format_alert`] turns one OCSF alert document into two lines a person
//! can read at a terminal: when, how severe, whether it is a real alert or a
//! review item of a principal whose baseline is still learning, the rule's
//! title; then who, on which host, and the figures that made it anomalous.
//! [`run`] follows the alert and review topics and prints each document
//! that way.
//!
//! Like `detector tail`, it reads without a consumer group (partitions are
//! assigned directly), so it never moves a service's committed offsets.
//! Partitions are read from their beginning, and unless `from_beginning` is
//! set, records written before the command started are skipped: asking the
//! tansu broker for its "end" offset can land inside a stored record batch,
//! where it answers nothing (see docs/detector.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::{Message, Offset};
use vigil_schemas::Alert;

use crate::tail::{assigned_consumer, recv_within};
use crate::{Error, Result};

/// Where a document arrived, which decides its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The alert topic: the principal's baseline is mature.
    Alert,
    /// The review topic: the principal is still in learning mode.
    Review,
}

impl Channel {
    fn label(self) -> &'static str {
        match self {
            Channel::Alert => "ALERT",
            Channel::Review => "REVIEW (baseline learning)",
        }
    }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct AlertsOptions {
    pub brokers: String,
    pub alerts_topic: String,
    /// `None`: alerts only.
    pub review_topic: Option<String>,
    /// Print the documents already on the topics first.
    pub from_beginning: bool,
    /// Only documents of this rule id.
    pub rule: Option<String>,
    /// Stop after this many documents.
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle_timeout: Option<Duration>,
    /// ANSI colours for severity and label.
    pub color: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertsSummary {
    pub alerts: u64,
    pub review: u64,
    pub unreadable: u64,
}

pub(crate) fn utc_millis(ms: i64) -> String {
    let time = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    };
    // 2026-11-22T13:16:42.123Z -> 2026-11-22 13:16:42.123 UTC
    let text = humantime::format_rfc3339_millis(time).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// The time of day part of [`utc_millis`].
fn clock(ms: i64) -> String {
    let full = utc_millis(ms);
    full.split(' ').nth(1).unwrap_or_default().to_owned()
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Observation values of an alert by name, and the role it was judged
/// against.
struct Figures<'a> {
    values: BTreeMap<&'a str, &'a str>,
    role: Option<&'a str>,
}

impl<'a> Figures<'a> {
    fn of(alert: &'a Alert) -> Figures<'a> {
        let mut values = BTreeMap::new();
        let mut role = None;
        for analysis in &alert.anomaly_analyses {
            for target in &analysis.analysis_targets {
                if target.kind == "role" {
                    role = Some(target.name.as_str());
                }
            }
            for group in analysis.anomalies.iter().chain(&analysis.baselines) {
                for observation in &group.observations {
                    values
                        .entry(observation.name.as_str())
                        .or_insert(observation.value.as_str());
                }
            }
        }
        Figures { values, role }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).copied()
    }

    /// The figures that made the finding, in a fixed order, as phrases.
    fn phrases(&self) -> Vec<String> {
        let mut phrases = Vec::new();
        if let Some(opens) = self.get("user_phi_opens_15m") {
            phrases.push(format!("{opens} PHI opens in 15 min"));
        }
        if let Some(events) = self.get("user_hour_events") {
            let mut phrase = format!("{events} events this hour");
            let usual = self.get("user_hour_mean_events");
            let z = self.get("user_z_volume");
            match (usual, z) {
                (Some(usual), Some(z)) => write!(phrase, " (usual {usual}, z {z})"),
                (None, Some(z)) => write!(phrase, " (z {z})"),
                (Some(usual), None) => write!(phrase, " (usual {usual})"),
                (None, None) => Ok(()),
            }
            .ok();
            phrases.push(phrase);
        }
        if let Some(z) = self.get("role_z_volume") {
            match self.role {
                Some(role) => phrases.push(format!("vs role {role} z {z}")),
                None => phrases.push(format!("role z {z}")),
            }
        }
        if let Some(rarity) = self.get("hour_rarity") {
            phrases.push(format!("hour rarity {rarity}"));
        }
        let novel: Vec<&str> = [
            ("first_seen_exe", "program"),
            ("first_seen_destination", "destination"),
            ("first_seen_file_class", "file class"),
            ("first_seen_host", "host"),
        ]
        .into_iter()
        .filter(|(name, _)| self.get(name) == Some("true"))
        .map(|(_, label)| label)
        .collect();
        if !novel.is_empty() {
            phrases.push(format!("first time: {}", novel.join(", ")));
        }
        if let Some(hours) = self.get("hours_on_host") {
            phrases.push(format!("{hours} h on this host"));
        }
        if let Some(minutes) = self.get("minutes_since_escalation") {
            phrases.push(format!("{minutes} min after gaining root"));
        }
        if let Some(days) = self.get("baseline_days") {
            phrases.push(format!(
                "baseline {days} day{}",
                if days == "1" { "" } else { "s" }
            ));
        }
        phrases
    }
}

/// Two readable lines (joined by `\n`, no trailing newline) for one alert
/// document:
///
/// ```text
/// 2026-11-23 10:00:07.000 UTC  HIGH      REVIEW (baseline learning)  A user opened ...
///     alice (role physician) on ehr-01 · 201 PHI opens in 15 min · ... · 3 open events from 10:00:05.000, alerted 2000 ms after the last · rule phi-bulk-read v2 · HIPAA 164.312(b) · ATT&CK T1005
/// ```
pub fn format_alert(alert: &Alert, channel: Channel, color: bool) -> String {
    let severity = alert.severity.to_ascii_uppercase();
    let severity_code = match alert.severity_id {
        5 => "1;31",
        4 => "31",
        3 => "33",
        _ => "36",
    };
    let label_code = match channel {
        Channel::Alert => "1;31",
        Channel::Review => "1;33",
    };
    let mut first = format!(
        "{}  {}  {}  {}",
        utc_millis(alert.time),
        paint(&format!("{severity:<8}"), severity_code, color),
        paint(channel.label(), label_code, color),
        alert.finding_info.title
    );
    if alert.unmapped.vigil.learning != (channel == Channel::Review) {
        // A document on the wrong topic is worth a word, not a guess.
        first.push_str(if alert.unmapped.vigil.learning {
            " [marked learning]"
        } else {
            " [marked mature]"
        });
    }

    let figures = Figures::of(alert);
    let who = match figures.role {
        Some(role) => format!(
            "{} (role {role}) on {}",
            alert.unmapped.vigil.principal, alert.device.hostname
        ),
        None => format!(
            "{} on {}",
            alert.unmapped.vigil.principal, alert.device.hostname
        ),
    };
    let mut parts = vec![who];
    parts.extend(figures.phrases());

    let related = &alert.finding_info.related_events;
    if !related.is_empty() {
        let mut kinds: Vec<&str> = related.iter().map(|e| e.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let noun = if related.len() == 1 {
            "event"
        } else {
            "events"
        };
        parts.push(format!(
            "{} {} {noun} from {}, alerted {} ms after the last",
            related.len(),
            kinds.join("/"),
            clock(alert.finding_info.first_seen_time),
            alert.time - alert.finding_info.last_seen_time
        ));
    }
    parts.push(format!(
        "rule {} v{}",
        alert.unmapped.vigil.rule_id, alert.unmapped.vigil.rule_version
    ));
    parts.push(format!("HIPAA {}", alert.compliance.control));
    let techniques: Vec<&str> = alert
        .finding_info
        .attacks
        .iter()
        .map(|a| a.technique.uid.as_str())
        .collect();
    if !techniques.is_empty() {
        parts.push(format!("ATT&CK {}", techniques.join(", ")));
    }
    format!("{first}\n    {}", parts.join(" · "))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Follows the alert (and review) topics, writing two lines per document
/// to `out` and a line per unreadable record to `err`.
pub async fn run(
    options: &AlertsOptions,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<AlertsSummary> {
    if options.review_topic.as_deref() == Some(options.alerts_topic.as_str()) {
        return Err(Error::Config {
            what: "--review-topic".into(),
            reason: format!(
                "is the alert topic too ({}); name the review topic (default vigil.review.v1) or pass --no-review",
                options.alerts_topic
            ),
        });
    }
    let started_ms = now_ms();
    let mut topics = vec![options.alerts_topic.as_str()];
    topics.extend(options.review_topic.as_deref());
    let consumer = assigned_consumer(&options.brokers, "vigil-alerts", &topics, Offset::Beginning)?;

    let mut summary = AlertsSummary::default();
    while options
        .count
        .is_none_or(|count| summary.alerts + summary.review < count)
    {
        let Some(next) = recv_within(&consumer, options.idle_timeout).await else {
            break;
        };
        let message = next.map_err(|e| Error::kafka("consume alerts", e))?;
        if !options.from_beginning
            && message
                .timestamp()
                .to_millis()
                .is_some_and(|ms| ms < started_ms)
        {
            continue;
        }
        let channel = if message.topic() == options.alerts_topic {
            Channel::Alert
        } else {
            Channel::Review
        };
        match serde_json::from_slice::<Alert>(message.payload().unwrap_or_default()) {
            Ok(alert) => {
                if options
                    .rule
                    .as_ref()
                    .is_some_and(|rule| *rule != alert.unmapped.vigil.rule_id)
                {
                    continue;
                }
                match channel {
                    Channel::Alert => summary.alerts += 1,
                    Channel::Review => summary.review += 1,
                }
                writeln!(out, "{}", format_alert(&alert, channel, options.color))?;
                out.flush()?;
            }
            Err(reason) => {
                summary.unreadable += 1;
                writeln!(
                    err,
                    "unreadable alert document: topic {} partition {} offset {}: {reason}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )?;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use vigil_schemas::testkit::file_event;
    use vigil_schemas::{Event, Kind, encode};

    use super::*;
    use crate::processor::{Input, Processor};
    use crate::roles::RoleFile;
    use crate::rules::RuleSet;
    use crate::state::MemStore;

    /// Monday 2026-11-23 10:00:00 UTC.
    const TEN_AM: i64 = 1_795_428_000_000_000_000;

    const BULK_READ: &str = "\
-- id: bulk-read-demo
-- title: A user opened more than 200 PHI files in 15 minutes
-- severity: high
-- hipaa: 164.312(b)
-- mitre: T1005, T1119
-- version: 2
-- window: 15m
SELECT * FROM events
WHERE is_phi AND kind = 'open' AND errno = 0 AND user_phi_opens_15m > 200
";

    /// Alice opens patient file `seq`, 10 ms after the previous one.
    fn open(seq: i64) -> Event {
        file_event(
            "alice",
            Kind::Open,
            &format!("/srv/phi/patient-{seq:04}.txt"),
            TEN_AM + seq * 10_000_000,
            seq,
        )
    }

    /// Runs 205 opens through the detector's own operator chain and returns
    /// the review item it raised, as the JSON document on the wire.
    async fn bulk_read_review_item() -> Alert {
        let mut rules = RuleSet::new();
        let rule = rules
            .compile(Path::new("bulk-read-demo.sql"), BULK_READ)
            .await
            .expect("the test rule compiles");
        rules.insert(rule);
        let mut processor = Processor::new(
            Arc::new(MemStore::default()),
            rules,
            RoleFile::open(None).expect("no role file"),
            7,
            "test.events",
        );
        let inputs = (1..=205)
            .map(|seq| {
                let event = open(seq);
                Input {
                    partition: 0,
                    offset: seq,
                    key: Some(event.principal().into_bytes()),
                    payload: Some(encode(&event)),
                }
            })
            .collect();
        // Detected 2 s after the first open (the 205th is at +2.05 s).
        let output = processor
            .process(inputs, TEN_AM + 4_000_000_000)
            .await
            .expect("batch processes");
        assert!(
            output.alerts.is_empty(),
            "a new principal is still learning"
        );
        assert_eq!(output.review.len(), 1, "one review item per window");
        let wire = serde_json::to_vec(&output.review[0]).expect("alert serializes");
        serde_json::from_slice(&wire).expect("alert document parses")
    }

    #[tokio::test]
    async fn review_item_reads_as_two_lines_with_its_key_figures() {
        let alert = bulk_read_review_item().await;
        let text = format_alert(&alert, Channel::Review, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "two lines:\n{text}");
        assert_eq!(
            lines[0],
            "2026-11-23 10:00:04.000 UTC  HIGH      REVIEW (baseline learning)  \
             A user opened more than 200 PHI files in 15 minutes"
        );
        // The figures are the first triggering event's: the 201st open
        // (10:00:02.010), the first past the threshold; by then nothing is
        // seen for the first time any more.
        let expected = [
            "    alice (role unassigned) on ehr-01",
            "201 PHI opens in 15 min",
            "201 events this hour (usual 0.00, z 201.00)",
            "vs role unassigned z 201.00",
            "hour rarity 1.000",
            "0.0 h on this host",
            "baseline 1 day",
            "5 open events from 10:00:02.010, alerted 1950 ms after the last",
            "rule bulk-read-demo v2",
            "HIPAA 164.312(b)",
            "ATT&CK T1005, T1119",
        ]
        .join(" · ");
        assert_eq!(lines[1], expected);
    }

    #[tokio::test]
    async fn alert_topic_label_and_colour() {
        let mut alert = bulk_read_review_item().await;
        alert.unmapped.vigil.learning = false;
        let plain = format_alert(&alert, Channel::Alert, false);
        assert!(plain.contains("  HIGH      ALERT  A user"), "{plain}");
        assert!(!plain.contains("REVIEW"), "{plain}");
        assert!(
            !plain.contains('\x1b'),
            "no escapes without colour: {plain}"
        );
        let coloured = format_alert(&alert, Channel::Alert, true);
        assert!(coloured.contains("\x1b[31mHIGH    \x1b[0m"), "{coloured:?}");
        // A learning document that arrived on the alert topic says so.
        alert.unmapped.vigil.learning = true;
        let odd = format_alert(&alert, Channel::Alert, false);
        assert!(
            odd.lines()
                .next()
                .is_some_and(|l| l.ends_with("[marked learning]")),
            "{odd}"
        );
    }

    /// The same topic as alert and review topic is refused before any
    /// connection, naming the flag and what to do.
    #[tokio::test]
    async fn the_same_topic_for_alerts_and_review_is_refused() {
        let options = AlertsOptions {
            brokers: "127.0.0.1:1".into(),
            alerts_topic: "vigil.alerts.v1".into(),
            review_topic: Some("vigil.alerts.v1".into()),
            from_beginning: false,
            rule: None,
            count: None,
            idle_timeout: None,
            color: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let error = run(&options, &mut out, &mut err)
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("--review-topic") && error.contains("--no-review"),
            "{error}"
        );
        assert!(out.is_empty() && err.is_empty());
    }

    /// `run` against a real broker: both topics are followed, the rule
    /// filter holds, an unreadable record is named with its position and
    /// skipped, and without `from_beginning` older documents are not shown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_both_topics_filters_by_rule_and_names_unreadable_records() {
        use rdkafka::producer::FutureRecord;
        use vigil_schemas::testkit::TestBroker;

        let broker = TestBroker::start();
        let alerts_topic = broker.topic("alerts.text", 1).await;
        let review_topic = broker.topic("review.text", 1).await;
        let review = bulk_read_review_item().await;
        let mut alert = review.clone();
        alert.unmapped.vigil.learning = false;
        let mut other_rule = alert.clone();
        other_rule.unmapped.vigil.rule_id = "some-other-rule".into();
        let json = |a: &Alert| serde_json::to_vec(a).expect("alert serializes");
        let records: [(&str, Vec<u8>); 4] = [
            (&alerts_topic, b"not an alert document".to_vec()),
            (&alerts_topic, json(&other_rule)),
            (&alerts_topic, json(&alert)),
            (&review_topic, json(&review)),
        ];
        for (topic, payload) in &records {
            broker
                .producer()
                .send(
                    FutureRecord::to(topic).key("alice").payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        }

        let mut options = AlertsOptions {
            brokers: broker.bootstrap().to_owned(),
            alerts_topic: alerts_topic.clone(),
            review_topic: Some(review_topic.clone()),
            from_beginning: true,
            rule: Some("bulk-read-demo".into()),
            count: Some(2),
            idle_timeout: Some(Duration::from_secs(30)),
            color: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = run(&options, &mut out, &mut err).await.expect("follows");
        let (out, err) = (
            String::from_utf8(out).expect("utf-8 stdout"),
            String::from_utf8(err).expect("utf-8 stderr"),
        );
        assert_eq!(
            summary,
            AlertsSummary {
                alerts: 1,
                review: 1,
                unreadable: 1
            },
            "stdout:\n{out}\nstderr:\n{err}"
        );
        assert_eq!(out.lines().count(), 4, "two lines per document:\n{out}");
        assert_eq!(out.matches("  ALERT  ").count(), 1, "{out}");
        assert_eq!(
            out.matches("REVIEW (baseline learning)").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("some-other-rule"), "{out}");
        assert!(
            err.contains(&format!(
                "unreadable alert document: topic {alerts_topic} partition 0 offset 0"
            )),
            "{err}"
        );

        // Started after they were written: none of them is shown.
        options.from_beginning = false;
        options.count = None;
        options.idle_timeout = Some(Duration::from_secs(3));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let summary = run(&options, &mut out, &mut err).await.expect("follows");
        assert_eq!(summary, AlertsSummary::default());
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(utc_millis(1_795_428_000_123), "2026-11-23 10:00:00.123 UTC");
        assert_eq!(clock(1_795_428_000_123), "10:00:00.123");
    }
}
