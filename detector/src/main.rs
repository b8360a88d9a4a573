//! `detector`: Vigil's detector service and its operator commands.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vigil_detector::tail::{self, TailOptions};

/// Vigil's detector: judges syscall events from the bus against per-user,
/// per-role and per-host baselines and publishes alerts and a hash-chained
/// audit trail.
///
/// Built so far: `tail`. The `run` service, `rules test` and `audit verify`
/// come next (see README.md).
#[derive(Debug, Parser)]
#[command(name = "detector", version, about, long_about)]
struct Cli {
    /// Kafka bootstrap servers (host:port, comma separated).
    #[arg(
        long,
        global = true,
        env = "VIGIL_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a topic's records as JSON lines.
    ///
    /// Avro records (events, audit records) are decoded by their schema
    /// fingerprint; JSON records (alerts) pass through. Each line carries
    /// topic, partition, offset, timestamp, key, headers, the contract and
    /// the value. A record that cannot be decoded prints a one-line error on
    /// stderr with its partition and offset, and tailing continues.
    /// Tail never joins a consumer group, so it does not move any service's
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
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("detector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Tail {
            topic,
            from_beginning,
            count,
            idle_timeout,
        } => {
            let idle_timeout = idle_timeout
                .map(|secs| {
                    Duration::try_from_secs_f64(secs).with_context(|| {
                        format!("--idle-timeout {secs}: not a duration in seconds")
                    })
                })
                .transpose()?;
            let options = TailOptions {
                brokers: cli.brokers,
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
