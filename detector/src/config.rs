//! `detector run` configuration: built-in defaults, then an optional TOML
//! file, then `VIGIL_*` environment variables, then flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_schemas::{telemetry, topics};

use crate::{Error, Result};

/// Flags (and their environment variables) of `detector run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Consumer group; detector instances in one group share the partitions.
    #[arg(long, env = "VIGIL_GROUP")]
    pub group: Option<String>,

    /// Stable identity of this instance in the group (Kafka static
    /// membership, e.g. the StatefulSet pod name): a restarted instance
    /// takes its partitions back at once instead of waiting for the group
    /// to notice the old member is gone.
    #[arg(long, env = "VIGIL_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Topic of collector events [default: vigil.events.v1].
    #[arg(long, env = "VIGIL_EVENTS_TOPIC")]
    pub events_topic: Option<String>,

    /// Topic for alerts [default: vigil.alerts.v1].
    #[arg(long, env = "VIGIL_ALERTS_TOPIC")]
    pub alerts_topic: Option<String>,

    /// Topic for alerts of principals still learning [default: vigil.review.v1].
    #[arg(long, env = "VIGIL_REVIEW_TOPIC")]
    pub review_topic: Option<String>,

    /// Topic for the hash-chained audit trail; needs at least as many
    /// partitions as the events topic [default: vigil.audit.v1].
    #[arg(long, env = "VIGIL_AUDIT_TOPIC")]
    pub audit_topic: Option<String>,

    /// Topic for undecodable records [default: vigil.dlq.v1].
    #[arg(long, env = "VIGIL_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    /// Directory of the RocksDB state (baselines, offsets, chain heads)
    /// [default: ~/.local/state/vigil/detector].
    #[arg(long, env = "VIGIL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Directory of `*.sql` rules, reloaded when files change [default: sql/rules].
    #[arg(long, env = "VIGIL_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,

    /// Role mapping TOML (principal or gid -> role), reloaded when it changes.
    #[arg(long, env = "VIGIL_ROLES")]
    pub roles: Option<PathBuf>,

    /// Trust the broker to serve any offset. Right for Apache Kafka. Without
    /// it, a partition resumed at its stored offset that sends nothing for
    /// 2 s, or whose first record comes after that offset, is read again
    /// from an earlier one, skipping processed records, and an audit chain's
    /// tail that stalls is read from its beginning: tansu's memory storage
    /// cannot fetch from inside a record batch. With it, a tail read that
    /// stalls is an error. `--resume-exact=false` (or
    /// `VIGIL_RESUME_EXACT=false`) turns off a config file's `true`.
    #[arg(
        long,
        env = "VIGIL_RESUME_EXACT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub resume_exact: Option<bool>,

    /// Most events in one micro-batch [default: 1024].
    #[arg(long, env = "VIGIL_BATCH_ROWS")]
    pub batch_rows: Option<usize>,

    /// Longest wait, in milliseconds, for more records before a partial
    /// batch is processed [default: 0: a batch is whatever has arrived
    /// when the previous one is done, so it grows with the load and adds
    /// no wait when the load is light].
    #[arg(long, env = "VIGIL_LINGER_MS")]
    pub linger_ms: Option<u64>,

    /// How often, in milliseconds, baselines and consumed offsets are
    /// written to the state store [default: 1000]. Alerts and audit records
    /// are published with every batch regardless; after a crash the
    /// detector replays at most this much of the stream (0: every batch).
    #[arg(long, env = "VIGIL_CHECKPOINT_MS")]
    pub checkpoint_ms: Option<u64>,

    /// Days from a principal's first event until its alerts leave learning
    /// mode (review topic) for the alert topic [default: 7].
    #[arg(long, env = "VIGIL_LEARNING_DAYS")]
    pub learning_days: Option<u32>,

    /// How far, in milliseconds, an event's time may run ahead of the
    /// detector's clock; later events go to the dead-letter topic instead
    /// of into the baselines, as do events from before the year 2000
    /// [default: 300000 (5 minutes)].
    #[arg(long, env = "VIGIL_MAX_CLOCK_SKEW_MS")]
    pub max_clock_skew_ms: Option<u64>,

    /// Export metrics (events, alerts, dead letters, time per stage, the
    /// consumer lag: the `vigil.detector.*` instruments) over OTLP/HTTP to
    /// this receiver, e.g. an OpenTelemetry Collector at
    /// http://127.0.0.1:4318 (`/v1/metrics` is added). Without it,
    /// OpenTelemetry's `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used if set; otherwise nothing is
    /// exported.
    #[arg(long, env = "VIGIL_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// How often, in milliseconds, metrics are exported [default: 10000].
    #[arg(long, env = "VIGIL_OTLP_INTERVAL_MS")]
    pub otlp_interval_ms: Option<u64>,
}

/// The same settings in a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    brokers: Option<String>,
    group: Option<String>,
    instance_id: Option<String>,
    events_topic: Option<String>,
    alerts_topic: Option<String>,
    review_topic: Option<String>,
    audit_topic: Option<String>,
    dlq_topic: Option<String>,
    state_dir: Option<PathBuf>,
    rules_dir: Option<PathBuf>,
    roles: Option<PathBuf>,
    batch_rows: Option<usize>,
    linger_ms: Option<u64>,
    checkpoint_ms: Option<u64>,
    learning_days: Option<u32>,
    resume_exact: Option<bool>,
    max_clock_skew_ms: Option<u64>,
    otlp_endpoint: Option<String>,
    otlp_interval_ms: Option<u64>,
}

/// Most events in one micro-batch: the batch's rows are allocated up front.
pub const MAX_BATCH_ROWS: usize = 1_000_000;
/// Longest learning period: ten years.
pub const MAX_LEARNING_DAYS: u32 = 3650;

/// Resolved settings of the detector service.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    pub brokers: String,
    pub group: String,
    pub instance_id: Option<String>,
    pub events_topic: String,
    pub alerts_topic: String,
    pub review_topic: String,
    pub audit_topic: String,
    pub dlq_topic: String,
    pub state_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub roles: Option<PathBuf>,
    pub batch_rows: usize,
    pub linger: Duration,
    pub checkpoint_interval: Duration,
    pub learning_days: u32,
    pub resume_exact: bool,
    /// Events further ahead of the detector's clock are dead-lettered.
    pub max_clock_skew: Duration,
    /// Where metrics are exported (the OTLP/HTTP metrics URL), if anywhere.
    pub otlp_endpoint: Option<String>,
    pub otlp_interval: Duration,
}

impl DetectorConfig {
    /// Defaults that work on one machine with `deploy/local/broker.sh`.
    pub fn defaults(brokers: &str) -> DetectorConfig {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        DetectorConfig {
            brokers: brokers.to_owned(),
            group: "vigil-detector".into(),
            instance_id: None,
            events_topic: topics::EVENTS.into(),
            alerts_topic: topics::ALERTS.into(),
            review_topic: topics::REVIEW.into(),
            audit_topic: topics::AUDIT.into(),
            dlq_topic: topics::DLQ.into(),
            state_dir: home.join(".local/state/vigil/detector"),
            rules_dir: PathBuf::from("sql/rules"),
            roles: None,
            batch_rows: 1024,
            linger: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            learning_days: 7,
            resume_exact: false,
            max_clock_skew: Duration::from_secs(300),
            otlp_endpoint: None,
            otlp_interval: telemetry::DEFAULT_INTERVAL,
        }
    }

    /// Defaults < file < environment/flags (`args`, which clap already
    /// merged from both). `brokers_from_cli` is `None` when neither the flag
    /// nor the environment named the brokers.
    pub fn resolve(brokers_from_cli: Option<&str>, args: &RunArgs) -> Result<DetectorConfig> {
        let mut config = DetectorConfig::defaults(brokers_from_cli.unwrap_or("127.0.0.1:9092"));
        let mut otlp_endpoint = args.otlp_endpoint.clone();
        let mut otlp_interval_ms = args.otlp_interval_ms;
        if let Some(path) = &args.config {
            let file = read_file(path)?;
            macro_rules! from_file {
                ($($field:ident),*) => { $( if let Some(v) = file.$field { config.$field = v; } )* };
            }
            if brokers_from_cli.is_none()
                && let Some(brokers) = file.brokers
            {
                config.brokers = brokers;
            }
            from_file!(
                group,
                events_topic,
                alerts_topic,
                review_topic,
                audit_topic,
                dlq_topic,
                state_dir,
                rules_dir,
                batch_rows,
                learning_days
            );
            if file.roles.is_some() {
                config.roles = file.roles;
            }
            if file.instance_id.is_some() {
                config.instance_id = file.instance_id;
            }
            if let Some(ms) = file.linger_ms {
                config.linger = Duration::from_millis(ms);
            }
            if let Some(ms) = file.checkpoint_ms {
                config.checkpoint_interval = Duration::from_millis(ms);
            }
            if let Some(exact) = file.resume_exact {
                config.resume_exact = exact;
            }
            if let Some(ms) = file.max_clock_skew_ms {
                config.max_clock_skew = Duration::from_millis(ms);
            }
            otlp_endpoint = otlp_endpoint.or(file.otlp_endpoint);
            otlp_interval_ms = otlp_interval_ms.or(file.otlp_interval_ms);
        }
        macro_rules! from_args {
            ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { config.$field = v; } )* };
        }
        from_args!(
            group,
            events_topic,
            alerts_topic,
            review_topic,
            audit_topic,
            dlq_topic,
            state_dir,
            rules_dir,
            batch_rows,
            learning_days
        );
        if args.roles.is_some() {
            config.roles = args.roles.clone();
        }
        if args.instance_id.is_some() {
            config.instance_id = args.instance_id.clone();
        }
        if let Some(ms) = args.linger_ms {
            config.linger = Duration::from_millis(ms);
        }
        if let Some(ms) = args.checkpoint_ms {
            config.checkpoint_interval = Duration::from_millis(ms);
        }
        if let Some(exact) = args.resume_exact {
            config.resume_exact = exact;
        }
        if let Some(ms) = args.max_clock_skew_ms {
            config.max_clock_skew = Duration::from_millis(ms);
        }
        if !(1..=MAX_BATCH_ROWS).contains(&config.batch_rows) {
            return Err(Error::Config {
                what: "batch_rows".into(),
                reason: format!(
                    "{} is not between 1 and {MAX_BATCH_ROWS} (the default, 1024, suits most loads)",
                    config.batch_rows
                ),
            });
        }
        config.otlp_endpoint =
            telemetry::metrics_endpoint(otlp_endpoint.as_deref()).map_err(|e| Error::Config {
                what: "otlp_endpoint".into(),
                reason: e.to_string(),
            })?;
        if let Some(ms) = otlp_interval_ms {
            if ms == 0 {
                return Err(Error::Config {
                    what: "otlp_interval_ms".into(),
                    reason: "0 is not an interval; the default, 10000, suits most collectors"
                        .into(),
                });
            }
            config.otlp_interval = Duration::from_millis(ms);
        }
        if config.learning_days > MAX_LEARNING_DAYS {
            return Err(Error::Config {
                what: "learning_days".into(),
                reason: format!(
                    "{} is more than {MAX_LEARNING_DAYS} days; nothing would ever leave learning mode",
                    config.learning_days
                ),
            });
        }
        Ok(config)
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        what: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| Error::Config {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_in_deploy_loads() {
        let args = RunArgs {
            config: Some(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/detector.toml"),
            ),
            ..RunArgs::default()
        };
        let config =
            DetectorConfig::resolve(None, &args).expect("deploy/config/detector.toml is valid");
        assert_eq!(config.group, "vigil-detector");
        // The unit's StateDirectory=vigil/detector.
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/vigil/detector"));
        assert_eq!(config.rules_dir, PathBuf::from("/opt/vigil/sql/rules"));
        assert_eq!(config.roles, Some(PathBuf::from("/etc/vigil/roles.toml")));
        assert!(config.resume_exact);
        assert_eq!(config.otlp_interval, Duration::from_secs(10));
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("detector.toml");
        std::fs::write(
            &file,
            "brokers = \"10.0.0.1:9092\"\ngroup = \"from-file\"\nbatch_rows = 64\nlinger_ms = 2\nmax_clock_skew_ms = 60000\n",
        )
        .expect("write");
        let args = RunArgs {
            config: Some(file.clone()),
            group: Some("from-flag".into()),
            ..RunArgs::default()
        };
        let config = DetectorConfig::resolve(None, &args).expect("resolves");
        assert_eq!(config.brokers, "10.0.0.1:9092");
        assert_eq!(config.group, "from-flag");
        assert_eq!(config.batch_rows, 64);
        assert_eq!(config.linger, Duration::from_millis(2));
        assert_eq!(config.events_topic, "vigil.events.v1");
        assert_eq!(config.max_clock_skew, Duration::from_secs(60));

        let config = DetectorConfig::resolve(Some("127.0.0.2:9092"), &args).expect("resolves");
        assert_eq!(config.brokers, "127.0.0.2:9092", "flag beats file");
    }

    #[test]
    fn resume_exact_from_the_file_can_be_turned_off_by_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("detector.toml");
        std::fs::write(&file, "resume_exact = true\n").expect("write");
        let path = file.to_str().expect("UTF-8 temp path");
        let resolved = |extra: &[&str]| {
            let cli = Cli::try_parse_from(["run", "--config", path].iter().chain(extra))
                .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
            DetectorConfig::resolve(None, &cli.run)
                .expect("resolves")
                .resume_exact
        };
        assert!(resolved(&[]), "the file's true");
        assert!(
            !resolved(&["--resume-exact=false"]),
            "the flag's false wins"
        );
        assert!(!resolved(&["--resume-exact=no"]));
        assert!(resolved(&["--resume-exact"]), "a bare flag is true");
        assert!(
            Cli::try_parse_from(["run", "--resume-exact=maybe"]).is_err(),
            "not a yes or no"
        );
    }

    #[test]
    fn batch_rows_and_learning_days_out_of_range_are_refused() {
        let refused = |args: RunArgs, what: &str| {
            let err = DetectorConfig::resolve(None, &args).expect_err(what);
            assert!(err.to_string().contains(what), "{err}");
        };
        refused(
            RunArgs {
                batch_rows: Some(0),
                ..RunArgs::default()
            },
            "batch_rows",
        );
        refused(
            RunArgs {
                batch_rows: Some(MAX_BATCH_ROWS + 1),
                ..RunArgs::default()
            },
            "batch_rows",
        );
        refused(
            RunArgs {
                learning_days: Some(u32::MAX),
                ..RunArgs::default()
            },
            "learning_days",
        );
        let most = RunArgs {
            batch_rows: Some(MAX_BATCH_ROWS),
            learning_days: Some(MAX_LEARNING_DAYS),
            ..RunArgs::default()
        };
        assert!(DetectorConfig::resolve(None, &most).is_ok());
    }

    #[test]
    fn the_otlp_endpoint_comes_from_the_file_unless_a_flag_names_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("detector.toml");
        std::fs::write(
            &file,
            "otlp_endpoint = \"http://otel.example:4318\"\notlp_interval_ms = 2500\n",
        )
        .expect("write");
        let from_file = RunArgs {
            config: Some(file.clone()),
            ..RunArgs::default()
        };
        let config = DetectorConfig::resolve(None, &from_file).expect("resolves");
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://otel.example:4318/v1/metrics")
        );
        assert_eq!(config.otlp_interval, Duration::from_millis(2500));

        let flagged = RunArgs {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..from_file
        };
        let config = DetectorConfig::resolve(None, &flagged).expect("resolves");
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/metrics")
        );

        for (args, what) in [
            (
                RunArgs {
                    otlp_endpoint: Some("https://otel:4318".into()),
                    ..RunArgs::default()
                },
                "https is not built in",
            ),
            (
                RunArgs {
                    otlp_endpoint: Some("http://otel:4318".into()),
                    otlp_interval_ms: Some(0),
                    ..RunArgs::default()
                },
                "otlp_interval_ms",
            ),
        ] {
            let err = DetectorConfig::resolve(None, &args).expect_err(what);
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("detector.toml");
        std::fs::write(&file, "batch_row = 64\n").expect("write");
        let args = RunArgs {
            config: Some(file),
            ..RunArgs::default()
        };
        let err = DetectorConfig::resolve(None, &args).expect_err("typo");
        assert!(err.to_string().contains("batch_row"), "{err}");
    }
}
