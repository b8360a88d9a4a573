//! What a load-test run measured: latency percentiles and histogram,
//! throughput, consumer lag, recall per scenario and false-alert rates,
//! as JSON, as a readable summary, and as an SVG histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenarios::{HISTORY_DAYS_FOR_EVERY_SCENARIO, Injection, Scenario};

/// A received alert or review item, reduced to what the report needs.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub rule_id: String,
    pub principal: String,
    /// Earliest triggering event time (ms).
    pub first_seen_ms: i64,
    /// On the review topic (principal still learning) rather than alerts.
    pub review: bool,
}

/// Percentiles of a latency sample, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(latencies_ms: &[f64]) -> Latency {
        if latencies_ms.is_empty() {
            return Latency::default();
        }
        let mut sorted = latencies_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        Latency {
            samples: sorted.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// Detection of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: &'static str,
    pub injected: usize,
    /// Rounds that could not be injected: the history holds no time the
    /// scenario can happen at (see `scenarios::plan`).
    pub not_injected: usize,
    /// Injections with at least one alert on the alert topic.
    pub detected: usize,
    /// Injections caught only as review items (principal still learning).
    pub review_only: usize,
    pub recall: f64,
    pub rules: Vec<String>,
}

/// False alerts in a window of baseline age.
#[derive(Debug, Clone, Serialize)]
pub struct AgeBucket {
    /// Days of history before the window.
    pub baseline_age_days: i64,
    pub days: i64,
    pub false_alerts: usize,
    pub benign_principal_hours: u64,
    pub false_alerts_per_1000_principal_hours: f64,
}

/// Benign activity per simulated day (from history start).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayCounts {
    pub principal_hours: u64,
    pub events: u64,
}

/// The live phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LivePhase {
    pub seconds: f64,
    pub target_events_per_sec: f64,
    pub produced: u64,
    pub events_per_sec: f64,
    /// Events the producer could not queue at once (it waited: backpressure).
    pub producer_waits: u64,
    pub canaries_sent: usize,
    pub canaries_alerted: usize,
    /// Consumer lag of the detector's group (committed offsets), sampled every 250 ms.
    pub lag_samples: Vec<(f64, i64)>,
    pub lag_max: i64,
    /// Mean of the lag's floor (the lowest sample of the last 1.5 s, which
    /// removes the detector's 1 s offset-commit step) over the first and
    /// the last quarter of the phase.
    pub lag_first_quarter: f64,
    pub lag_last_quarter: f64,
    /// Least-squares slope of the lag's floor after the first quarter,
    /// events per second.
    pub lag_slope_per_sec: f64,
    pub lag_growing: bool,
    /// Alerts in the live phase other than canaries (there should be none).
    pub unexpected_alerts: usize,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub principals: usize,
    pub history_days: i64,
    pub learning_days: u32,
    pub history_events: u64,
    pub history_seconds: f64,
    /// History events per second, produce to fully processed (catch-up).
    pub history_events_per_sec: f64,
    pub live: LivePhase,
    pub latency: Latency,
    /// The first part of `latency`: canary event to the detector's
    /// processing of it (the alert's `time`, millisecond resolution).
    pub latency_to_detector: Latency,
    /// Canary event to the broker acknowledging it (the events producer's
    /// delivery report): the first hop's produce half.
    pub latency_to_ack: Latency,
    /// Histogram of event-to-alert latency: (upper bound ms, count).
    pub histogram: Vec<(f64, usize)>,
    pub scenarios: Vec<ScenarioResult>,
    pub recall: f64,
    pub injections: Vec<Injection>,
    /// From `evaluate_from_day` on (after the baselines had time to mature).
    pub evaluate_from_day: i64,
    pub false_alerts: usize,
    pub benign_principal_hours: u64,
    pub benign_events: u64,
    pub false_alerts_per_1000_principal_hours: f64,
    /// False alerts as a percentage of benign principal-hours.
    pub false_alert_pct_of_principal_hours: f64,
    /// False alerts as a percentage of benign events.
    pub false_alert_pct_of_events: f64,
    pub false_alerts_by_rule: BTreeMap<String, usize>,
    pub false_alerts_by_age: Vec<AgeBucket>,
    pub review_items: usize,
    pub dead_letters: u64,
}

/// Slack around an injection's interval when matching alerts to it: a
/// windowed alert's first event is inside, but allow a minute.
const MATCH_SLACK_MS: i64 = 60_000;

fn matches(alert: &Received, injection: &Injection) -> bool {
    alert.principal == injection.principal
        && alert.first_seen_ms >= injection.start_ns / 1_000_000 - MATCH_SLACK_MS
        && alert.first_seen_ms <= injection.end_ns / 1_000_000 + MATCH_SLACK_MS
}

/// Everything [`Report::build`] needs.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub received: &'a [Received],
    pub injections: &'a [Injection],
    /// Scenario rounds the plan could not place.
    pub unplaced: &'a [(Scenario, usize)],
    /// Rule ids that are probes, not detections.
    pub probe_rules: &'a [&'a str],
    pub history_start_ns: i64,
    pub live_start_ns: i64,
    pub days: &'a [DayCounts],
    pub evaluate_from_day: i64,
    pub latencies_ms: &'a [f64],
    /// Canary event to the detector's processing of it.
    pub detector_latencies_ms: &'a [f64],
    pub ack_latencies_ms: &'a [f64],
}

impl Report {
    /// Fills the detection, false-alert and latency parts of `self`.
    pub fn build(&mut self, input: &Inputs<'_>) {
        let detections: Vec<&Received> = input
            .received
            .iter()
            .filter(|r| !input.probe_rules.contains(&r.rule_id.as_str()))
            .collect();
        self.review_items = detections.iter().filter(|r| r.review).count();

        // Recall per scenario.
        self.scenarios.clear();
        let mut detected_total = 0;
        for scenario in Scenario::ALL {
            let injected: Vec<&Injection> = input
                .injections
                .iter()
                .filter(|i| i.scenario == scenario)
                .collect();
            let mut detected = 0;
            let mut review_only = 0;
            let mut rules = std::collections::BTreeSet::new();
            for injection in &injected {
                let hits: Vec<&&Received> = detections
                    .iter()
                    .filter(|r| matches(r, injection))
                    .collect();
                if hits.iter().any(|r| !r.review) {
                    detected += 1;
                } else if !hits.is_empty() {
                    review_only += 1;
                }
                rules.extend(hits.iter().map(|r| r.rule_id.clone()));
            }
            detected_total += detected;
            self.scenarios.push(ScenarioResult {
                scenario: scenario.name(),
                injected: injected.len(),
                not_injected: input
                    .unplaced
                    .iter()
                    .filter(|(s, _)| *s == scenario)
                    .count(),
                detected,
                review_only,
                recall: ratio(detected as f64, injected.len() as f64),
                rules: rules.into_iter().collect(),
            });
        }
        self.recall = ratio(detected_total as f64, input.injections.len() as f64);
        self.injections = input.injections.to_vec();

        // False alerts: alerts (not review items) matching no injection.
        let false_alerts: Vec<&&Received> = detections
            .iter()
            .filter(|r| !r.review && !input.injections.iter().any(|i| matches(r, i)))
            .collect();
        let day_of =
            |ms: i64| (ms * 1_000_000 - input.history_start_ns).div_euclid(crate::hospital::DAY_NS);
        let live_day =
            (input.live_start_ns - input.history_start_ns).div_euclid(crate::hospital::DAY_NS);
        let in_history = |r: &Received| r.first_seen_ms * 1_000_000 < input.live_start_ns;
        self.live.unexpected_alerts = detections.iter().filter(|r| !in_history(r)).count();
        let evaluated: Vec<&&&Received> = false_alerts
            .iter()
            .filter(|r| in_history(r) && day_of(r.first_seen_ms) >= input.evaluate_from_day)
            .collect();
        self.evaluate_from_day = input.evaluate_from_day;
        self.false_alerts = evaluated.len();
        self.false_alerts_by_rule.clear();
        for r in &evaluated {
            *self
                .false_alerts_by_rule
                .entry(r.rule_id.clone())
                .or_default() += 1;
        }
        let window = |from: i64, to: i64| -> (u64, u64) {
            input
                .days
                .iter()
                .enumerate()
                .filter(|(d, _)| (*d as i64) >= from && (*d as i64) < to.min(live_day))
                .fold((0, 0), |(h, e), (_, c)| {
                    (h + c.principal_hours, e + c.events)
                })
        };
        let (hours, events) = window(input.evaluate_from_day, i64::MAX);
        self.benign_principal_hours = hours;
        self.benign_events = events;
        self.false_alerts_per_1000_principal_hours =
            ratio(self.false_alerts as f64 * 1000.0, hours as f64);
        self.false_alert_pct_of_principal_hours =
            ratio(self.false_alerts as f64 * 100.0, hours as f64);
        self.false_alert_pct_of_events = ratio(self.false_alerts as f64 * 100.0, events as f64);

        self.false_alerts_by_age.clear();
        for age in [7, 30, 90] {
            if age >= live_day {
                continue;
            }
            let days = 7.min(live_day - age);
            let (hours, _) = window(age, age + days);
            let count = false_alerts
                .iter()
                .filter(|r| in_history(r))
                .filter(|r| (age..age + days).contains(&day_of(r.first_seen_ms)))
                .count();
            self.false_alerts_by_age.push(AgeBucket {
                baseline_age_days: age,
                days,
                false_alerts: count,
                benign_principal_hours: hours,
                false_alerts_per_1000_principal_hours: ratio(count as f64 * 1000.0, hours as f64),
            });
        }

        self.latency = Latency::of(input.latencies_ms);
        self.latency_to_detector = Latency::of(input.detector_latencies_ms);
        self.latency_to_ack = Latency::of(input.ack_latencies_ms);
        self.histogram = histogram(input.latencies_ms);
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Vigil load test (seed {}): {} principals, {} days of history, learning period {} days",
            self.seed, self.principals, self.history_days, self.learning_days
        );
        let _ = writeln!(
            s,
            "history   {} events in {:.1} s: {:.0} events/s produced and processed",
            self.history_events, self.history_seconds, self.history_events_per_sec
        );
        let l = &self.live;
        let _ = writeln!(
            s,
            "live      {:.1} s at {:.0} events/s (target {:.0}); {} producer waits (backpressure)",
            l.seconds, l.events_per_sec, l.target_events_per_sec, l.producer_waits
        );
        let _ = writeln!(
            s,
            "lag       max {} events; floor (backlog without the 1 s commit step) mean {:.0} in the first quarter, {:.0} in the last, slope {:+.0}/s: {}",
            l.lag_max,
            l.lag_first_quarter,
            l.lag_last_quarter,
            l.lag_slope_per_sec,
            if l.lag_growing {
                "GROWING"
            } else {
                "not growing"
            }
        );
        let t = &self.latency;
        let _ = writeln!(
            s,
            "latency   event -> alert consumed, {} canaries ({} sent): p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            t.samples, l.canaries_sent, t.p50_ms, t.p95_ms, t.p99_ms, t.max_ms
        );
        let a = &self.latency_to_ack;
        let _ = writeln!(
            s,
            "          of which event -> acknowledged by the broker: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
            a.p50_ms, a.p95_ms, a.p99_ms
        );
        let d = &self.latency_to_detector;
        let _ = writeln!(
            s,
            "          of which event -> detector processing: p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms (the rest: alert produce, broker, alert consumer)",
            d.p50_ms, d.p95_ms, d.p99_ms
        );
        let _ = writeln!(
            s,
            "detection recall {:.1}% (alerts topic)",
            self.recall * 100.0
        );
        for r in &self.scenarios {
            let _ = writeln!(
                s,
                "  {:<40} {}/{} detected{}{}  [{}]",
                r.scenario,
                r.detected,
                r.injected,
                if r.review_only > 0 {
                    format!(", {} only as review items", r.review_only)
                } else {
                    String::new()
                },
                if r.not_injected > 0 {
                    format!(
                        ", {} round(s) not injected (history too short: --history-days \
                         {HISTORY_DAYS_FOR_EVERY_SCENARIO} or more)",
                        r.not_injected
                    )
                } else {
                    String::new()
                },
                r.rules.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "false alerts from day {}: {} over {} benign principal-hours = {:.3} per 1,000 ({:.4}% of principal-hours, {:.5}% of {} benign events)",
            self.evaluate_from_day,
            self.false_alerts,
            self.benign_principal_hours,
            self.false_alerts_per_1000_principal_hours,
            self.false_alert_pct_of_principal_hours,
            self.false_alert_pct_of_events,
            self.benign_events
        );
        for (rule, count) in &self.false_alerts_by_rule {
            let _ = writeln!(s, "  {rule}: {count}");
        }
        for b in &self.false_alerts_by_age {
            let _ = writeln!(
                s,
                "  baseline age {:>2} days (next {} days): {} false alerts, {:.3} per 1,000 principal-hours",
                b.baseline_age_days,
                b.days,
                b.false_alerts,
                b.false_alerts_per_1000_principal_hours
            );
        }
        let _ = writeln!(
            s,
            "review items (learning principals): {}; live-phase alerts other than canaries: {}; dead letters: {}",
            self.review_items, l.unexpected_alerts, self.dead_letters
        );
        s
    }

    /// The latency histogram as an SVG bar chart.
    pub fn histogram_svg(&self) -> String {
        histogram_svg(&self.histogram, &self.latency)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Bucket upper bounds in milliseconds (roughly logarithmic).
const BOUNDS_MS: [f64; 16] = [
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    50.0,
    75.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    f64::INFINITY,
];

fn histogram(latencies_ms: &[f64]) -> Vec<(f64, usize)> {
    let mut counts = vec![0usize; BOUNDS_MS.len()];
    for &l in latencies_ms {
        let i = BOUNDS_MS
            .iter()
            .position(|b| l <= *b)
            .unwrap_or(BOUNDS_MS.len() - 1);
        counts[i] += 1;
    }
    BOUNDS_MS.iter().copied().zip(counts).collect()
}

fn histogram_svg(histogram: &[(f64, usize)], latency: &Latency) -> String {
    let width = 760.0;
    let height = 360.0;
    let (left, right, top, bottom) = (60.0, 20.0, 50.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max = histogram.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1) as f64;
    let bar_w = plot_w / histogram.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="20" font-size="14">Vigil event → alert latency ({} samples)</text>"##,
        latency.samples
    );
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="38">p50 {:.1} ms · p95 {:.1} ms · p99 {:.1} ms · max {:.1} ms</text>"##,
        latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms
    );
    for (i, (bound, count)) in histogram.iter().enumerate() {
        let h = plot_h * (*count as f64) / max;
        let x = left + i as f64 * bar_w;
        let y = top + plot_h - h;
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="#4a7bb7"><title>{count}</title></rect>"##,
            bar_w - 4.0
        );
        let label = if bound.is_infinite() {
            ">1000".to_owned()
        } else {
            format!("≤{bound}")
        };
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            x + bar_w / 2.0 - 2.0,
            top + plot_h + 16.0
        );
        if *count > 0 {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{count}</text>"##,
                x + bar_w / 2.0 - 2.0,
                y - 4.0
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"##,
        top + plot_h,
        left + plot_w
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency bucket (ms)</text>"##,
        left + plot_w / 2.0,
        height - 20.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hospital::{DAY_NS, HOUR_NS};

    #[test]
    fn percentiles_pick_ranks() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 51.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latency::of(&[]).samples, 0);
    }

    #[test]
    fn histogram_counts_every_sample_once() {
        let h = histogram(&[0.5, 1.0, 1.5, 9.0, 2000.0]);
        assert_eq!(h.iter().map(|(_, c)| c).sum::<usize>(), 5);
        assert_eq!(h[0].1, 2, "≤1 ms");
        assert_eq!(h[1].1, 1, "≤2 ms");
        assert_eq!(h.last().map(|(_, c)| *c), Some(1));
        let svg = histogram_svg(&h, &Latency::of(&[0.5, 1.0, 1.5, 9.0, 2000.0]));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1 + h.len());
    }

    #[test]
    fn recall_and_false_alerts_are_counted_against_ground_truth() {
        let start = 1_795_392_000 * 1_000_000_000;
        let injection = Injection {
            scenario: Scenario::DatabaseShell,
            principal: "999@db-01".into(),
            start_ns: start + 40 * DAY_NS,
            end_ns: start + 40 * DAY_NS + HOUR_NS,
            events: 2,
        };
        let missed = Injection {
            scenario: Scenario::PhishedAssistant,
            principal: "pa000".into(),
            start_ns: start + 41 * DAY_NS,
            end_ns: start + 41 * DAY_NS + HOUR_NS,
            events: 400,
        };
        let alert = |principal: &str, at_ns: i64, rule: &str, review: bool| Received {
            rule_id: rule.into(),
            principal: principal.into(),
            first_seen_ms: at_ns / 1_000_000,
            review,
        };
        let received = vec![
            alert("999@db-01", injection.start_ns, "db-service-shell", false),
            // A false alert on day 35, one before evaluation starts, a
            // review item, and a canary: only the first counts.
            alert("dr001", start + 35 * DAY_NS, "phi-bulk-read", false),
            alert("dr002", start + 10 * DAY_NS, "phi-bulk-read", false),
            alert("rn001", start + 36 * DAY_NS, "phi-bulk-read", true),
            alert(
                "65000@loadgen",
                start + 36 * DAY_NS,
                "loadtest-canary",
                false,
            ),
        ];
        let days = vec![
            DayCounts {
                principal_hours: 100,
                events: 10_000
            };
            60
        ];
        let mut report = Report::default();
        report.build(&Inputs {
            received: &received,
            injections: &[injection, missed],
            unplaced: &[(Scenario::BackupWrongDayNewDestination, 2)],
            probe_rules: &["loadtest-canary"],
            history_start_ns: start,
            live_start_ns: start + 60 * DAY_NS,
            days: &days,
            evaluate_from_day: 30,
            latencies_ms: &[3.0, 4.0],
            detector_latencies_ms: &[1.0, 2.0],
            ack_latencies_ms: &[0.5, 1.0],
        });
        assert_eq!(report.recall, 0.5);
        let scenario = |name: &str| {
            report
                .scenarios
                .iter()
                .find(|s| s.scenario == name)
                .expect("scenario")
                .clone()
        };
        let shell = scenario("database-spawns-shell");
        assert_eq!((shell.injected, shell.detected), (1, 1));
        assert_eq!(shell.rules, vec!["db-service-shell".to_owned()]);
        assert_eq!(shell.not_injected, 0);
        let backup = scenario("backup-tuesday-new-destination");
        assert_eq!((backup.injected, backup.not_injected), (0, 1));
        assert!(
            report.summary().contains(
                "backup-tuesday-new-destination           0/0 detected, 1 round(s) not injected"
            ),
            "{}",
            report.summary()
        );
        assert_eq!(report.false_alerts, 1);
        assert_eq!(report.benign_principal_hours, 3000);
        assert!((report.false_alerts_per_1000_principal_hours - 1000.0 / 3000.0).abs() < 1e-9);
        assert_eq!(report.review_items, 1);
        let age30 = report
            .false_alerts_by_age
            .iter()
            .find(|b| b.baseline_age_days == 30)
            .expect("age 30");
        assert_eq!(age30.false_alerts, 1);
        let age7 = report
            .false_alerts_by_age
            .iter()
            .find(|b| b.baseline_age_days == 7)
            .expect("age 7");
        assert_eq!(age7.false_alerts, 1, "the day-10 alert");
        assert!(
            report
                .false_alerts_by_age
                .iter()
                .all(|b| b.baseline_age_days != 90)
        );
        assert!(report.summary().contains("database-spawns-shell"));
    }
}
