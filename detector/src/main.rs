//! `detector`: Vigil's detector service and its operator commands.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil_detector::alert_text::{self, AlertsOptions};
use vigil_detector::audit_chain::{Verifier, record_from_json};
use vigil_detector::audit_topic::verify_topic;
use vigil_detector::config::{DetectorConfig, RunArgs};
use vigil_detector::metrics;
use vigil_detector::pipeline::Pipeline;
use vigil_detector::rule_tests;
use vigil_detector::tail::{self, TailOptions};
use vigil_schemas::telemetry;

/// The hot path allocates small strings and Arrow buffers per event; glibc's
/// allocator spent about a fifth of the processor benchmark's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Vigil's detector: judges syscall events from the bus against per-user,
/// per-role and per-host baselines, runs the SQL detection rules, and
/// publishes alerts, learning-mode review items, a hash-chained audit trail
/// and dead letters.
#[derive(Debug, Parser)]
#[command(name = "detector", version, about, long_about)]
struct Cli {
    /// Kafka bootstrap servers (host:port, comma separated) [default: 127.0.0.1:9092].
    #[arg(long, global = true, env = "VIGIL_BROKERS")]
    brokers: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the detector service (a consumer group member on the events topic).
    ///
    /// Resumes each partition from the offset stored with its state in
    /// RocksDB. SIGTERM or Ctrl-C finishes the batch in hand, flushes the
    /// producer, writes state and exits. Set VIGIL_LOG=info for progress.
    Run(Box<RunArgs>),

    /// Detection rules.
    #[command(subcommand)]
    Rules(RulesCommand),

    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),

    /// Print a topic's records as JSON lines.
    ///
    /// Avro records (events, audit records) are decoded by their schema
    /// fingerprint; JSON records (alerts) pass through. Each line carries
    /// topic, partition, offset, timestamp, key, headers, the contract and
    /// the value. A record that cannot be decoded prints a one-line error on
    /// stderr with its partition and offset, and tailing continues. Tail
    /// never joins a consumer group, so it does not move any service's
    /// offsets.
    ///
    /// Example: detector tail --topic vigil.alerts.v1 --from-beginning
    Tail {
        /// Topic to read, e.g. vigil.events.v1.
        #[arg(long, env = "VIGIL_TAIL_TOPIC")]
        topic: String,

        /// Start from the oldest record of each partition instead of new ones.
        #[arg(long, env = "VIGIL_TAIL_FROM_BEGINNING")]
        from_beginning: bool,

        /// Exit after printing this many records.
        #[arg(long, env = "VIGIL_TAIL_COUNT")]
        count: Option<u64>,

        /// Exit when no record has arrived for this many seconds.
        #[arg(long, env = "VIGIL_TAIL_IDLE_TIMEOUT", value_name = "SECONDS")]
        idle_timeout: Option<f64>,
    },

    /// Print alerts and review items as they arrive, two readable lines each.
    ///
    /// The first line: when the finding was made (UTC), its severity, ALERT
    /// (from the alert topic) or REVIEW (from the review topic: the
    /// principal's baseline is still learning, which on a new host is
    /// everyone for the first --learning-days of `detector run`), and the
    /// rule's title. The second: the principal and its role, the host, the
    /// figures that made it anomalous (PHI opens in 15 minutes, events this
    /// hour against the usual, role z-score, hour rarity, what was seen for
    /// the first time, ...), how many triggering events and how long after
    /// the last one the alert was made, the rule id and version, the HIPAA
    /// control and the ATT&CK techniques.
    ///
    /// Follows until Ctrl-C (or --count / --idle-timeout). Only documents
    /// written after it starts are shown unless --from-beginning is given.
    /// For the raw JSON use `detector tail --topic vigil.alerts.v1`.
    ///
    /// Example: detector alerts --from-beginning
    Alerts {
        /// Alert topic.
        #[arg(long, env = "VIGIL_ALERTS_TOPIC", default_value = "vigil.alerts.v1")]
        alerts_topic: String,

        /// Review topic (alerts of principals still learning).
        #[arg(long, env = "VIGIL_REVIEW_TOPIC", default_value = "vigil.review.v1")]
        review_topic: String,

        /// Show alerts only, not review items.
        #[arg(long)]
        no_review: bool,

        /// Print what is already on the topics first.
        #[arg(long)]
        from_beginning: bool,

        /// Only findings of this rule id (e.g. phi-bulk-read).
        #[arg(long, value_name = "ID")]
        rule: Option<String>,

        /// Exit after printing this many alerts and review items.
        #[arg(long)]
        count: Option<u64>,

        /// Exit when nothing has arrived for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<f64>,

        /// Colour severity and label: auto (when stdout is a terminal and
        /// NO_COLOR is unset), always or never.
        #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
        color: String,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run every rule against its test file and print a pass/fail table.
    ///
    /// Each `<DIR>/rules/<id>.sql` needs `<DIR>/tests/<id>.toml` with sample
    /// events, an optional baseline preset and the expected alerts (see
    /// sql/README.md). Exits non-zero when any rule fails.
    Test {
        /// The rule pack directory, holding rules/ and tests/.
        #[arg(default_value = "sql")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every hash chain of the audit trail and name the first broken
    /// link (an altered, missing, duplicated or reordered record).
    ///
    /// Reads the audit topic from the beginning, or an exported file of JSON
    /// lines (`detector tail --topic vigil.audit.v1 --from-beginning` output,
    /// or one audit record JSON per line). The topic is read to the high
    /// watermark each partition had when the read started. Exits 0 when
    /// every chain is intact, 1 when a link is broken, 2 when the topic
    /// could not be read to its end (nothing arrived for --idle-timeout).
    Verify {
        /// Audit topic to read.
        #[arg(
            long,
            env = "VIGIL_AUDIT_TOPIC",
            default_value = "vigil.audit.v1",
            conflicts_with = "file"
        )]
        topic: String,

        /// Exported file to read instead of the topic.
        #[arg(long)]
        file: Option<PathBuf>,

        /// When reading the topic, give up after this many seconds without a
        /// record before every partition was read to its end.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        idle_timeout: f64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("detector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `detector audit verify`: prints each chain's report and returns 0 when
/// every chain is intact, 1 when a link is broken, 2 when the topic was not
/// read to its end.
async fn audit_verify(
    brokers: &str,
    topic: &str,
    file: Option<PathBuf>,
    idle_timeout: f64,
) -> anyhow::Result<ExitCode> {
    let mut verifier = Verifier::default();
    let mut reads = BTreeMap::new();
    match file {
        Some(path) => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?,
            );
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("read {}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let record = record_from_json(&line)
                    .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
                verifier.check(record, &format!("line {}", i + 1));
            }
        }
        None => {
            let idle = seconds("--idle-timeout", idle_timeout)?;
            reads = verify_topic(brokers, topic, idle, &mut verifier).await?;
        }
    }
    let reports = verifier.reports();
    for (partition, report) in &reports {
        println!(
            "partition {partition}: {} records, seq {}..={}: {}",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.broken.as_deref().unwrap_or("intact")
        );
    }
    for (partition, read) in &reads {
        if read.low > 0 && read.high > read.low {
            println!(
                "partition {partition}: offsets below {} are no longer on the broker (retention); its chain is checked from there",
                read.low
            );
        }
    }
    let incomplete: Vec<String> = reads
        .iter()
        .filter(|(_, read)| !read.complete())
        .map(|(partition, read)| {
            format!(
                "partition {partition} read to offset {} of {} (its high watermark when the read started)",
                read.last_read.map_or("none".to_owned(), |o| o.to_string()),
                read.high - 1
            )
        })
        .collect();
    match verifier.first_broken() {
        Some(broken) => {
            println!("BROKEN: {broken}");
            Ok(ExitCode::FAILURE)
        }
        None if !incomplete.is_empty() => {
            println!(
                "INCOMPLETE: nothing arrived from {topic} for {idle_timeout} s before the end was read: {}. \
                 Check the broker is reachable, or raise --idle-timeout.",
                incomplete.join("; ")
            );
            Ok(ExitCode::from(2))
        }
        None => {
            println!("all {} chains intact", reports.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Exports the last figures (the provider's shutdown blocks while it
/// sends them, up to its export timeout) and says so if that failed.
async fn stop_telemetry(telemetry: telemetry::Telemetry) {
    let endpoint = telemetry.endpoint().to_owned();
    match tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%endpoint, %error, "The last metrics export failed")
        }
        Err(error) => tracing::warn!(%endpoint, %error, "Stopping the metrics export failed"),
    }
}

fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .with_context(|| format!("{flag} {secs}: not a duration in seconds"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let brokers = cli
        .brokers
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    match cli.command {
        Command::Run(args) => {
            let config = DetectorConfig::resolve(cli.brokers.as_deref(), &args)?;
            // Before the pipeline exists: its counters are made on the
            // global meter, which must already be the exporting one.
            let telemetry = match &config.otlp_endpoint {
                Some(endpoint) => {
                    let telemetry = telemetry::start(
                        metrics::SERVICE,
                        config.instance_id.as_deref(),
                        None,
                        endpoint,
                        config.otlp_interval,
                    )?;
                    tracing::info!(
                        endpoint,
                        interval_ms = config.otlp_interval.as_millis() as u64,
                        "Exporting metrics"
                    );
                    Some(telemetry)
                }
                None => None,
            };
            let shutdown = CancellationToken::new();
            let signals = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(term) => term,
                        Err(e) => {
                            tracing::error!(error = %e, "Cannot listen for SIGTERM");
                            return;
                        }
                    };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("Shutting down: finishing the batch in hand");
                signals.cancel();
            });
            // Starting waits for the broker if it is down; a signal ends the wait.
            let pipeline = tokio::select! {
                started = Pipeline::start(config.clone()) => started
                    .with_context(|| format!("starting the detector on {}", config.brokers))?,
                _ = shutdown.cancelled() => {
                    eprintln!("detector: stopped while waiting for the broker at {}", config.brokers);
                    return Ok(ExitCode::SUCCESS);
                }
            };
            eprintln!(
                "detector: consuming {} on {} as group {} (state {}, rules {})",
                config.events_topic,
                config.brokers,
                config.group,
                config.state_dir.display(),
                config.rules_dir.display()
            );
            let outcome = pipeline.run(shutdown).await;
            if let Some(telemetry) = telemetry {
                stop_telemetry(telemetry).await;
            }
            let counters = outcome?;
            eprintln!(
                "detector: stopped after {} events: {} alerts, {} review, {} audit records, {} dead letters",
                counters.events,
                counters.alerts,
                counters.review,
                counters.audit,
                counters.dead_letters
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules(RulesCommand::Test { dir }) => {
            let outcomes = rule_tests::run_all(&dir.join("rules"), &dir.join("tests")).await?;
            let width = outcomes
                .iter()
                .map(|o| o.rule.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!("{:width$}  result  detail", "rule");
            for outcome in &outcomes {
                println!(
                    "{:width$}  {}  {}",
                    outcome.rule,
                    if outcome.passed { "pass  " } else { "FAIL  " },
                    outcome.detail
                );
            }
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            Ok(if failed == 0 && !outcomes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit(AuditCommand::Verify {
            topic,
            file,
            idle_timeout,
        }) => audit_verify(&brokers, &topic, file, idle_timeout).await,
        Command::Alerts {
            alerts_topic,
            review_topic,
            no_review,
            from_beginning,
            rule,
            count,
            idle_timeout,
            color,
        } => {
            let color = match color.as_str() {
                "always" => true,
                "never" => false,
                _ => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            };
            let options = AlertsOptions {
                brokers,
                alerts_topic,
                review_topic: (!no_review).then_some(review_topic),
                from_beginning,
                rule,
                count,
                idle_timeout: idle_timeout
                    .map(|secs| seconds("--idle-timeout", secs))
                    .transpose()?,
                color,
            };
            let summary = alert_text::run(&options, &mut std::io::stdout(), &mut std::io::stderr())
                .await
                .with_context(|| format!("follow alerts on {}", options.brokers))?;
            if summary.unreadable > 0 {
                eprintln!(
                    "detector alerts: {} alerts, {} review items, {} unreadable",
                    summary.alerts, summary.review, summary.unreadable
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            topic,
            from_beginning,
            count,
            idle_timeout,
        } => {
            let idle_timeout = idle_timeout
                .map(|secs| seconds("--idle-timeout", secs))
                .transpose()?;
            let options = TailOptions {
                brokers,
                topic,
                from_beginning,
                count,
                idle_timeout,
            };
            let summary = tail::run(&options, &mut std::io::stdout(), &mut std::io::stderr())
                .await
                .with_context(|| format!("tail {} on {}", options.topic, options.brokers))?;
            if summary.undecodable > 0 {
                eprintln!(
                    "detector tail: {} records, {} undecodable",
                    summary.records, summary.undecodable
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
