//! Configuration: command-line flags and `VIGIL_*` environment variables
//! (clap), an optional TOML file, and built-in defaults.
//!
//! Precedence, lowest first: defaults < file < environment < flags. Every
//! flag is an `Option` so that "not given" is visible, and the merge takes
//! the first value present in flag/environment (clap resolves those two),
//! then the file, then the default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use vigil_schemas::telemetry;

use crate::error::{Error, Result};

/// Vigil's node collector: watches PHI access at the system-call boundary
/// with eBPF and publishes one Avro event per observation to Kafka.
///
/// File opens (with flags and outcome), read and write byte totals per open
/// file, renames, unlinks, truncates, chmod and chown are reported for paths
/// under the watched prefixes only; execs, exits, TCP connects and accepts
/// (with per-connection byte totals) and uid/gid/capability changes are
/// reported for every process in the uid and cgroup scope. Needs root, or
/// CAP_BPF and CAP_PERFMON.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "collector", version)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys).
    /// Environment variables and flags override it.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Kafka bootstrap servers. Default 127.0.0.1:9092.
    #[arg(long, env = "VIGIL_BROKERS", value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,

    /// Topic events are published to. Default vigil.events.v1.
    #[arg(long, env = "VIGIL_EVENTS_TOPIC", value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Watched PHI path prefixes (directories), comma-separated or repeated.
    /// Default /phi.
    #[arg(
        long = "watch",
        env = "VIGIL_WATCH",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub watch: Option<Vec<PathBuf>>,

    /// Report only these uids (comma-separated). Exclusive with
    /// --exclude-uids; either one replaces both of the file's uid keys.
    #[arg(
        long,
        env = "VIGIL_INCLUDE_UIDS",
        value_delimiter = ',',
        value_name = "UID"
    )]
    pub include_uids: Option<Vec<u32>>,

    /// Report every uid but these (comma-separated).
    #[arg(
        long,
        env = "VIGIL_EXCLUDE_UIDS",
        value_delimiter = ',',
        value_name = "UID"
    )]
    pub exclude_uids: Option<Vec<u32>>,

    /// Report only tasks in these cgroup v2 directories (e.g.
    /// /sys/fs/cgroup/system.slice/ehr.service). Exclusive with
    /// --exclude-cgroups; either one replaces both of the file's cgroup keys.
    #[arg(
        long,
        env = "VIGIL_INCLUDE_CGROUPS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub include_cgroups: Option<Vec<PathBuf>>,

    /// Report every task but those in these cgroup v2 directories.
    #[arg(
        long,
        env = "VIGIL_EXCLUDE_CGROUPS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub exclude_cgroups: Option<Vec<PathBuf>>,

    /// Kernel ring buffer size in bytes (a power of two, at least one page).
    /// Default 8 MiB.
    #[arg(long, env = "VIGIL_RINGBUF_BYTES", value_name = "BYTES")]
    pub ringbuf_bytes: Option<u32>,

    /// Events held in memory while the broker is slow or down; beyond it,
    /// events are dropped and reported as a gap. Default 100000.
    #[arg(long, env = "VIGIL_QUEUE_CAPACITY", value_name = "EVENTS")]
    pub queue_capacity: Option<usize>,

    /// How often the backlog is reported and the kernel drop counters are
    /// read (a loss that a later record marks is reported at that record,
    /// sooner).
    /// Default 1s.
    #[arg(long, env = "VIGIL_STATS_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stats_interval: Option<Duration>,

    /// How long shutdown waits for the broker to take queued events.
    /// Default 10s.
    #[arg(long, env = "VIGIL_FLUSH_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub flush_timeout: Option<Duration>,

    /// Byte roll-ups of a watched file still open are reported at the first
    /// read or write after this long (and at close); those of a TCP
    /// connection still open, this often but at most once a second (and at
    /// close). 0 reports at close (and shutdown) only. Default 60s.
    #[arg(long, env = "VIGIL_ROLLUP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rollup_interval: Option<Duration>,

    /// Watched descriptors tracked at once (all processes together) for
    /// their read and write roll-ups. Past it a newly opened watched file
    /// is still reported, but its roll-ups are lost and counted in a
    /// `kernel_tracking_full` gap. Each slot takes about 700 bytes of
    /// kernel memory, and the exit or fork of a process holding more than
    /// 128 descriptors walks the whole table. Default 16384.
    #[arg(long, env = "VIGIL_TRACKED_FILES", value_name = "DESCRIPTORS")]
    pub tracked_files: Option<u32>,

    /// Host name on events. Default: the kernel's host name.
    #[arg(long, env = "VIGIL_HOST", value_name = "NAME")]
    pub host: Option<String>,

    /// Export metrics (records read, events delivered, every kind of loss,
    /// the backlog: the `vigil.collector.*` metrics) over OTLP/HTTP to this
    /// receiver, e.g. an OpenTelemetry Collector at http://127.0.0.1:4318
    /// (`/v1/metrics` is added). Without it, OpenTelemetry's
    /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is
    /// used if set; otherwise nothing is exported.
    #[arg(long, env = "VIGIL_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// How often metrics are exported. Default 10s.
    #[arg(long, env = "VIGIL_OTLP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub otlp_interval: Option<Duration>,
}

/// The TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub topic: Option<String>,
    pub watch: Option<Vec<PathBuf>>,
    pub include_uids: Option<Vec<u32>>,
    pub exclude_uids: Option<Vec<u32>>,
    pub include_cgroups: Option<Vec<PathBuf>>,
    pub exclude_cgroups: Option<Vec<PathBuf>>,
    pub ringbuf_bytes: Option<u32>,
    pub queue_capacity: Option<usize>,
    #[serde(default, with = "humantime_opt")]
    pub stats_interval: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub flush_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub rollup_interval: Option<Duration>,
    pub tracked_files: Option<u32>,
    pub host: Option<String>,
    pub otlp_endpoint: Option<String>,
    #[serde(default, with = "humantime_opt")]
    pub otlp_interval: Option<Duration>,
}

mod humantime_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Which uids or cgroups are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope<T> {
    All,
    Only(Vec<T>),
    AllBut(Vec<T>),
}

/// Bounds of `tracked_files`: below 16 the table is useless; 262,144 slots
/// take about 190 MB of kernel memory.
const TRACKED_FILES_MIN: u32 = 16;
const TRACKED_FILES_MAX: u32 = 262_144;

/// The merged configuration the collector runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub topic: String,
    pub watch: Vec<PathBuf>,
    pub uids: Scope<u32>,
    pub cgroups: Scope<PathBuf>,
    pub ringbuf_bytes: u32,
    pub queue_capacity: usize,
    pub stats_interval: Duration,
    pub flush_timeout: Duration,
    pub rollup_interval: Duration,
    pub tracked_files: u32,
    pub host: Option<String>,
    /// Where metrics are exported (the OTLP/HTTP metrics URL), if anywhere.
    pub otlp_endpoint: Option<String>,
    pub otlp_interval: Duration,
}

impl Config {
    /// Merges flags and environment (`args`) over the file named by
    /// `args.config` over the defaults.
    pub fn load(args: Args) -> Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    fn merge(args: Args, file: FileConfig) -> Result<Config> {
        let uids = scope(
            "uids",
            (args.include_uids, args.exclude_uids),
            (file.include_uids, file.exclude_uids),
        )?;
        let cgroups = scope(
            "cgroups",
            (args.include_cgroups, args.exclude_cgroups),
            (file.include_cgroups, file.exclude_cgroups),
        )?;
        let ringbuf_bytes = args.ringbuf_bytes.or(file.ringbuf_bytes).unwrap_or(8 << 20);
        if !ringbuf_bytes.is_power_of_two() || ringbuf_bytes < 4096 {
            return Err(Error::Setting(format!(
                "ringbuf_bytes {ringbuf_bytes} must be a power of two of at least 4096"
            )));
        }
        let tracked_files = args.tracked_files.or(file.tracked_files).unwrap_or(16_384);
        if !(TRACKED_FILES_MIN..=TRACKED_FILES_MAX).contains(&tracked_files) {
            return Err(Error::Setting(format!(
                "tracked_files {tracked_files} must be between {TRACKED_FILES_MIN} and {TRACKED_FILES_MAX}"
            )));
        }
        let watch = args
            .watch
            .or(file.watch)
            .unwrap_or_else(|| vec![PathBuf::from("/phi")]);
        if let Some(relative) = watch.iter().find(|path| !path.is_absolute()) {
            return Err(Error::Setting(format!(
                "watched path {} must be absolute",
                relative.display()
            )));
        }
        let stats_interval = args
            .stats_interval
            .or(file.stats_interval)
            .unwrap_or(Duration::from_secs(1));
        if stats_interval.is_zero() {
            return Err(Error::Setting(
                "stats_interval must be longer than 0, like 1s or 500ms".to_owned(),
            ));
        }
        let otlp_endpoint =
            telemetry::metrics_endpoint(args.otlp_endpoint.or(file.otlp_endpoint).as_deref())
                .map_err(|e| Error::Setting(e.to_string()))?;
        let otlp_interval = args
            .otlp_interval
            .or(file.otlp_interval)
            .unwrap_or(telemetry::DEFAULT_INTERVAL);
        if otlp_interval.is_zero() {
            return Err(Error::Setting(
                "otlp_interval must be longer than 0, like 10s".to_owned(),
            ));
        }
        Ok(Config {
            brokers: args
                .brokers
                .or(file.brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            topic: args
                .topic
                .or(file.topic)
                .unwrap_or_else(|| vigil_schemas::topics::EVENTS.to_owned()),
            watch,
            uids,
            cgroups,
            ringbuf_bytes,
            queue_capacity: args
                .queue_capacity
                .or(file.queue_capacity)
                .unwrap_or(100_000)
                .max(1),
            stats_interval,
            flush_timeout: args
                .flush_timeout
                .or(file.flush_timeout)
                .unwrap_or(Duration::from_secs(10)),
            rollup_interval: args
                .rollup_interval
                .or(file.rollup_interval)
                .unwrap_or(Duration::from_secs(60)),
            tracked_files,
            host: args.host.or(file.host),
            otlp_endpoint,
            otlp_interval,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A scope's (include, exclude) lists as one source gives them.
type ScopePair<T> = (Option<Vec<T>>, Option<Vec<T>>);

/// One scope from its pair in flags and environment and in the file. The
/// pair is one setting: flags or environment giving either half replace
/// both of the file's, so `--include-uids` overrides a file's
/// `exclude_uids` instead of clashing with it.
fn scope<T>(what: &str, args: ScopePair<T>, file: ScopePair<T>) -> Result<Scope<T>> {
    let (include, exclude) = if args.0.is_some() || args.1.is_some() {
        args
    } else {
        file
    };
    match (include, exclude) {
        (Some(_), Some(_)) => Err(Error::Setting(format!(
            "include_{what} and exclude_{what} cannot both be set"
        ))),
        (Some(only), None) => Ok(Scope::Only(only)),
        (None, Some(but)) => Ok(Scope::AllBut(but)),
        (None, None) => Ok(Scope::All),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid test TOML")
    }

    #[test]
    fn the_example_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/collector.toml");
        let args = Args {
            config: Some(path),
            ..Args::default()
        };
        let config = Config::load(args).expect("deploy/config/collector.toml is valid");
        assert_eq!(config.watch.len(), 3);
        assert_eq!(config.uids, Scope::AllBut(vec![998]));
        assert_eq!(config.rollup_interval, Duration::from_secs(60));
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/metrics")
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let config = Config::merge(Args::default(), FileConfig::default()).expect("valid");
        assert_eq!(config.brokers, "127.0.0.1:9092");
        assert_eq!(config.topic, "vigil.events.v1");
        assert_eq!(config.watch, vec![PathBuf::from("/phi")]);
        assert_eq!(config.uids, Scope::All);
        assert_eq!(config.ringbuf_bytes, 8 << 20);
        assert_eq!(config.stats_interval, Duration::from_secs(1));
    }

    #[test]
    fn the_otlp_endpoint_and_interval_come_from_the_file_unless_flags_say() {
        let from_file = || {
            file(
                r#"
                otlp_endpoint = "http://otel.example:4318"
                otlp_interval = "30s"
                "#,
            )
        };
        let config = Config::merge(Args::default(), from_file()).expect("valid");
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://otel.example:4318/v1/metrics")
        );
        assert_eq!(config.otlp_interval, Duration::from_secs(30));
        let args = Args::parse_from([
            "collector",
            "--otlp-endpoint",
            "http://127.0.0.1:4318/",
            "--otlp-interval",
            "2s",
        ]);
        let config = Config::merge(args, from_file()).expect("valid");
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/metrics")
        );
        assert_eq!(config.otlp_interval, Duration::from_secs(2));
        let refused = Config::merge(
            Args::parse_from(["collector", "--otlp-endpoint", "otel:4318"]),
            FileConfig::default(),
        )
        .expect_err("no scheme")
        .to_string();
        assert!(refused.contains("expected an http:// URL"), "{refused}");
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let from_file = file(
            r#"
            brokers = "kafka-1:9092"
            topic = "file.topic"
            watch = ["/srv/ehr", "/var/lib/pacs"]
            exclude_uids = [998]
            stats_interval = "250ms"
            "#,
        );
        let args = Args::parse_from(["collector", "--topic", "flag.topic"]);
        let config = Config::merge(args, from_file).expect("valid");
        assert_eq!(config.brokers, "kafka-1:9092");
        assert_eq!(config.topic, "flag.topic");
        assert_eq!(
            config.watch,
            vec![PathBuf::from("/srv/ehr"), PathBuf::from("/var/lib/pacs")]
        );
        assert_eq!(config.uids, Scope::AllBut(vec![998]));
        assert_eq!(config.stats_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let error = toml::from_str::<FileConfig>("brokers = \"a\"\nwatchh = [\"/x\"]\n")
            .expect_err("typo must be refused");
        assert!(error.to_string().contains("watchh"), "{error}");
    }

    #[test]
    fn include_and_exclude_together_are_refused() {
        let args = Args::parse_from(["collector", "--include-uids", "1", "--exclude-uids", "2"]);
        let error = Config::merge(args, FileConfig::default()).expect_err("conflict");
        assert!(error.to_string().contains("cannot both be set"), "{error}");
    }

    #[test]
    fn a_flag_scope_replaces_the_file_scope_of_the_other_kind() {
        let args = Args::parse_from(["collector", "--include-uids", "1000"]);
        let config = Config::merge(args, file("exclude_uids = [0]\n")).expect("flag wins");
        assert_eq!(config.uids, Scope::Only(vec![1000]));
        let config = Config::merge(Args::default(), file("exclude_uids = [0]\n")).expect("file");
        assert_eq!(config.uids, Scope::AllBut(vec![0]));
        let both = file("include_uids = [1]\nexclude_uids = [2]\n");
        assert!(Config::merge(Args::default(), both).is_err());
    }

    #[test]
    fn a_zero_stats_interval_is_refused() {
        let args = Args::parse_from(["collector", "--stats-interval", "0s"]);
        let error = Config::merge(args, FileConfig::default()).expect_err("zero");
        assert!(error.to_string().contains("stats_interval"), "{error}");
    }

    #[test]
    fn ring_buffer_size_must_be_a_power_of_two() {
        let args = Args::parse_from(["collector", "--ringbuf-bytes", "5000"]);
        assert!(Config::merge(args, FileConfig::default()).is_err());
    }

    #[test]
    fn the_tracking_table_size_is_bounded() {
        for bad in ["8", "1000000"] {
            let args = Args::parse_from(["collector", "--tracked-files", bad]);
            let error = Config::merge(args, FileConfig::default()).expect_err(bad);
            assert!(error.to_string().contains("tracked_files"), "{error}");
        }
        let config = Config::merge(
            Args::parse_from(["collector"]),
            file("tracked_files = 1024"),
        )
        .expect("valid");
        assert_eq!(config.tracked_files, 1024);
        let config = Config::merge(Args::parse_from(["collector"]), FileConfig::default());
        assert_eq!(config.expect("defaults").tracked_files, 16_384);
    }

    #[test]
    fn repeated_and_comma_separated_watch_flags_combine() {
        let args = Args::parse_from(["collector", "--watch", "/a,/b", "--watch", "/c"]);
        let config = Config::merge(args, FileConfig::default()).expect("valid");
        assert_eq!(config.watch.len(), 3);
    }
}
