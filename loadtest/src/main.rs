//! `loadtest`: drives a synthetic hospital through Vigil's real pipeline
//! over Kafka and reports latency, throughput, lag, recall and false
//! alerts. See `loadtest --help` and the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vigil_loadtest::drive::{Options, run};

/// Synthetic hospital load test for Vigil.
///
/// Creates its own topics on the broker (names start with `loadtest.`),
/// starts a detector on them with the rule pack plus a latency-probe rule,
/// produces `--history-days` of simulated hospital activity with labelled
/// attacks as fast as the pipeline takes it, then a live phase of
/// `--rate` events/s for `--live-seconds` in real time. Writes
/// report.json, report.txt and latency.svg to `--out` and prints the
/// summary. The broker must be running (deploy/local/broker.sh start).
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "VIGIL_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,

    /// The detector binary [default: `detector` next to this program].
    #[arg(long)]
    detector: Option<PathBuf>,

    /// The rule pack to load.
    #[arg(long, default_value = "sql/rules")]
    rules: PathBuf,

    /// Directory for the report and the run's detector state and log.
    #[arg(long, env = "LOADTEST_OUT", default_value = "loadtest-report")]
    out: PathBuf,

    /// Random seed: the same seed gives the same hospital, history and attacks.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Staff (people with logins; services are added).
    #[arg(long, default_value_t = 120)]
    people: usize,

    /// Application workers carrying the live phase's load.
    #[arg(long, default_value_t = 200)]
    app_services: usize,

    /// Days of simulated history before the live phase.
    #[arg(long, default_value_t = 100)]
    history_days: i64,

    /// The detector's learning period in days.
    #[arg(long, default_value_t = 7)]
    learning_days: u32,

    /// Attacks are injected over the last this many days of history.
    #[arg(long, default_value_t = 7)]
    attack_days: i64,

    /// How many times each attack scenario is injected.
    #[arg(long, default_value_t = 3)]
    attack_rounds: usize,

    /// Records copied in the 2 AM bulk-copy scenario.
    #[arg(long, default_value_t = 2000)]
    bulk_records: u64,

    /// Count false alerts from this day of history on (baselines mature).
    #[arg(long, default_value_t = 30)]
    evaluate_from_day: i64,

    /// Length of the live phase in seconds.
    #[arg(long, default_value_t = 60.0)]
    live_seconds: f64,

    /// Events per second in the live phase (canaries included).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,

    /// Latency-probe events per second in the live phase.
    #[arg(long, default_value_t = 100.0)]
    canary_rate: f64,

    /// How often, in milliseconds, the live phase hands the events owed so
    /// far to the producer (rate × tick per burst). Each burst becomes one
    /// produce request and one stored batch per partition on the broker.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    tick_ms: u64,

    /// Partitions of the run's events and audit topics (its alerts topic
    /// gets at most 3). The local tansu broker lists every stored batch of
    /// a partition on each fetch that finds new data, so fewer partitions
    /// mean less broker work per event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,

    /// How long to wait for the detector to work through the history.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    catch_up_timeout: Duration,

    /// Keep the run's detector state (RocksDB; gigabytes after a full run)
    /// under --out instead of deleting it at the end.
    #[arg(long)]
    keep_state: bool,

    /// Exit 1 when the median event-to-alert latency is above this.
    #[arg(long)]
    assert_p50_ms: Option<f64>,

    /// Exit 1 when the 99th percentile latency is above this.
    #[arg(long)]
    assert_p99_ms: Option<f64>,

    /// Exit 1 when recall (share of injected attacks alerted on) is below this, 0..1.
    #[arg(long)]
    assert_recall: Option<f64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let detector = cli.detector.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("detector")))
            .unwrap_or_else(|| PathBuf::from("detector"))
    });
    let options = Options {
        brokers: cli.brokers.clone(),
        detector,
        rules: cli.rules.clone(),
        out: cli.out.clone(),
        seed: cli.seed,
        people: cli.people,
        app_services: cli.app_services,
        history_days: cli.history_days,
        learning_days: cli.learning_days,
        attack_days: cli.attack_days,
        attack_rounds: cli.attack_rounds,
        bulk_records: cli.bulk_records,
        evaluate_from_day: cli.evaluate_from_day,
        live_seconds: cli.live_seconds,
        rate: cli.rate,
        canary_rate: cli.canary_rate,
        tick: Duration::from_millis(cli.tick_ms),
        partitions: cli.partitions,
        catch_up_timeout: cli.catch_up_timeout,
        keep_state: cli.keep_state,
    };
    let report = match run(&options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.summary());
    println!(
        "report: {}/report.json, report.txt, latency.svg",
        cli.out.display()
    );
    let mut failed = Vec::new();
    if let Some(limit) = cli.assert_p50_ms
        && !(report.latency.samples > 0 && report.latency.p50_ms <= limit)
    {
        failed.push(format!(
            "p50 latency {:.1} ms > {limit} ms ({} samples)",
            report.latency.p50_ms, report.latency.samples
        ));
    }
    if let Some(limit) = cli.assert_p99_ms
        && !(report.latency.samples > 0 && report.latency.p99_ms <= limit)
    {
        failed.push(format!(
            "p99 latency {:.1} ms > {limit} ms",
            report.latency.p99_ms
        ));
    }
    if let Some(limit) = cli.assert_recall
        && report.recall < limit
    {
        failed.push(format!("recall {:.3} < {limit}", report.recall));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in failed {
            eprintln!("loadtest: FAILED: {f}");
        }
        ExitCode::from(1)
    }
}
