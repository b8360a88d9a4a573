//! `collector`: runs Vigil's node collector until SIGTERM or SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use vigil_collector::{Args, Config};

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
