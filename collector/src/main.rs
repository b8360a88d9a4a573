//! `collector`: runs Vigil's node collector until SIGTERM or SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use vigil_collector::{Args, Config, metrics};
use vigil_schemas::telemetry;

/// Every event is a handful of short strings and an encoded buffer; glibc's
/// malloc and free took about a fifth of the collector's time during a
/// watched-file burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("collector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args).context("configuration")?;
    // Before the collector starts: its instruments are made on the global
    // meter, which must already be the exporting one.
    let telemetry = match &config.otlp_endpoint {
        Some(endpoint) => {
            let host = config
                .host
                .clone()
                .unwrap_or_else(vigil_collector::enrich::host_name);
            let telemetry = telemetry::start(
                metrics::SERVICE,
                None,
                Some(&host),
                endpoint,
                config.otlp_interval,
            )?;
            tracing::info!(
                endpoint,
                interval = %humantime::format_duration(config.otlp_interval),
                "Exporting metrics"
            );
            Some(telemetry)
        }
        None => None,
    };
    let outcome = collect(config);
    // The last figures, sent as the provider shuts down (it blocks up to
    // its export timeout).
    if let Some(telemetry) = telemetry {
        let endpoint = telemetry.endpoint().to_owned();
        if let Err(error) = telemetry.shutdown() {
            tracing::warn!(%endpoint, %error, "The last metrics export failed");
        }
    }
    outcome
}

fn collect(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "Stopping"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "Stopping"),
            }
            on_signal.cancel();
        });
        // On a worker thread rather than this one: the drain tick's timer
        // fires on a worker, which then polls the loop itself instead of
        // waking this thread.
        tokio::spawn(vigil_collector::run(config, shutdown))
            .await
            .context("the collector task panicked")??;
        Ok(())
    })
}
