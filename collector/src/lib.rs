//! Vigil's collector: the user-space side of the node agent.
//!
//! The kernel side is C (`collector-ebpf/src/vigil.bpf.c`), compiled by
//! `build.rs` and embedded in this crate. [`run`] loads it, drains its ring
//! buffer and publishes one `vigil_schemas::Event` per record to Kafka.
//!
//! - [`config`] — flags, `VIGIL_*` environment, TOML file and defaults,
//!   merged in that order of precedence.
//! - [`loader`] — privilege check, tracefs, loading the object with its
//!   globals, attaching each program to its tracepoint, the drop counters.
//! - [`scope`] — filling the kernel's scope maps: watched path prefixes (LPM
//!   trie), watched directories (for relative paths), uids, cgroups.
//! - [`record`] — the Rust mirror of `vigil_record.h`, checked field by
//!   field against the C layout.
//! - [`enrich`] — record → event: names, executables, container id, host,
//!   wall-clock time.
//! - [`publish`] — sequence numbers, the bounded queue, gap events, the
//!   idempotent producer.
//! - [`metrics`] — the figures as OpenTelemetry metrics
//!   (`vigil.collector.*`).
//! - [`error`] — the crate's [`Error`].

pub mod config;
pub mod enrich;
pub mod error;
pub mod loader;
pub mod metrics;
pub mod publish;
pub mod record;
pub mod scope;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{Args, Config};
pub use error::{Error, Result};

use enrich::{Enricher, kind_of};
use loader::{DropCounters, KernelLoss, Probes};
use metrics::{CollectorMetrics, Figures};
use publish::Outbox;
use record::RawRecord;

/// How long after a drain that found records the ring buffer is read again.
/// The kernel wakes us at most once per millisecond below its batch
/// threshold (`VIGIL_WAKEUP_GAP_NS` in collector-ebpf/src/vigil.bpf.c); a
/// record submitted inside that gap is read by this follow-up, so this must
/// be longer than the gap.
pub const FOLLOW_UP: std::time::Duration = std::time::Duration::from_millis(2);

/// How often the ring buffer is read when nothing else made us read it: a
/// safety net only (every record either wakes us, is read by a follow-up,
/// or arrives while a wakeup is pending), and all a quiet host pays for.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// What a run did, for the final log line and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the ring buffer.
    pub records: u64,
    /// Events the kernel could not write (ring buffer full).
    pub kernel_drops: u64,
    /// Watched descriptors the kernel could not track (table full): their
    /// read and write roll-ups are lost.
    pub untracked_files: u64,
    /// Program runs the kernel skipped (another BPF program was running
    /// on the CPU), up to the detach.
    pub skipped_runs: u64,
    /// Events dropped because the queue to the broker was full.
    pub queue_drops: u64,
    /// Events never delivered at exit (broker unreachable at shutdown).
    pub undelivered: u64,
    /// Events librdkafka or the broker refused for good (reported by
    /// `delivery_failed` gaps while the collector runs).
    pub refused: u64,
    /// Producers replaced after a fatal librdkafka error.
    pub renewed: u64,
}

/// Runs the collector until `shutdown` is cancelled: loads and attaches the
/// programs, publishes events, then detaches, flushes and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary> {
    loader::check_capabilities()?;
    loader::ensure_tracefs()?;
    let host = config.host.clone().unwrap_or_else(enrich::host_name);

    let (producer, deliveries) = publish::producer(&config.brokers, config.queue_capacity)?;
    let check = {
        let (brokers, topic) = (config.brokers.clone(), config.topic.clone());
        tokio::task::spawn_blocking(move || {
            let checked = publish::check_topic(&producer, &brokers, &topic, publish::TOPIC_CHECK);
            (producer, checked)
        })
    };
    let (producer, checked) = check
        .await
        .map_err(|e| Error::Setting(format!("topic check task: {e}")))?;
    checked?;

    let mut probes = Probes::load(&config)?;
    let mut ring = register(probes.take_events()?)?;
    let mut drops = probes.take_drops()?;

    let (mut outbox, rx) = Outbox::new(host.clone(), config.queue_capacity);
    outbox.started();
    let mut publisher = tokio::spawn(publish::publish(
        rx,
        producer,
        Arc::clone(&deliveries),
        config.topic.clone(),
        shutdown.clone(),
        config.flush_timeout,
    ));

    let mut enricher = Enricher::new(host.clone());
    let mut records = 0u64;
    let mut metrics = CollectorMetrics::new();
    info!(
        programs = probes.attached(),
        host = %host,
        topic = %config.topic,
        brokers = %config.brokers,
        watch = %scope::describe(&config.watch),
        "Collecting"
    );

    // The kernel wakes us for a record on a quiet host and otherwise once a
    // batch has built up; after every drain that found records we look
    // again after FOLLOW_UP; the tick is a safety net.
    let mut poll = tokio::time::interval(DRAIN_INTERVAL);
    let mut follow_up: Option<tokio::time::Instant> = None;
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_delivered = 0;
    let mut stats = tokio::time::interval(config.stats_interval);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An error that ends collecting still detaches, drains and flushes
    // below: what was collected is delivered before the error is returned.
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = stats.tick() => {
                records += drain(ring.get_mut(), &mut enricher, &mut outbox, &mut drops);
                report_drops(&mut drops, &mut outbox);
                report_skips(&mut probes, &mut outbox);
                report_refused(&deliveries, &mut outbox);
                outbox.report_losses();
                // Report the backlog while the broker takes nothing (down
                // or stalled) or the queue itself is filling.
                let in_flight = deliveries.in_flight();
                let delivered = deliveries.delivered.load(Ordering::Relaxed);
                let stalled = delivered == last_delivered && in_flight > 0;
                last_delivered = delivered;
                metrics.record(&Figures {
                    records,
                    delivered,
                    kernel_drops: drops.total(),
                    untracked_files: drops.untracked(),
                    skipped_runs: probes.skipped_total(),
                    queue_drops: outbox.lost_total(),
                    refused: deliveries.refused_total.load(Ordering::Relaxed),
                    renewed: deliveries.renewed.load(Ordering::Relaxed),
                    queued: outbox.backlog() as u64,
                    in_flight,
                });
                if stalled || outbox.backlog() > 0 {
                    warn!(
                        queued = outbox.backlog(),
                        in_flight,
                        delivered,
                        queue_drops = outbox.lost_total(),
                        kernel_drops = drops.total(),
                        "Backlog"
                    );
                }
            }
            // It returns only after shutdown or with an error (a producer
            // renewal that failed, a panic): queued events would pile up
            // and every loss report be lost with them.
            ended = &mut publisher => {
                let cause = match ended {
                    Ok(Ok(undelivered)) => format!("it returned with {undelivered} undelivered"),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("task: {e}"),
                };
                error!(records, cause = %cause, "Publisher stopped; exiting");
                return Err(Error::PublisherStopped(cause));
            }
            _ = poll.tick() => {
                records += drain(ring.get_mut(), &mut enricher, &mut outbox, &mut drops);
            }
            _ = tokio::time::sleep_until(follow_up.unwrap_or_else(tokio::time::Instant::now)),
                if follow_up.is_some() => {
                let found = drain(ring.get_mut(), &mut enricher, &mut outbox, &mut drops);
                records += found;
                follow_up = (found > 0).then(|| tokio::time::Instant::now() + FOLLOW_UP);
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => {
                        let e = Error::io("waiting on the ring buffer", e);
                        error!(error = %e, "Cannot wait on the ring buffer; stopping");
                        failure = Some(e);
                        break;
                    }
                };
                records += drain(guard.get_inner_mut(), &mut enricher, &mut outbox, &mut drops);
                guard.clear_ready();
                // A record submitted between the drain and clear_ready woke
                // nobody: read once more so it is not left until the follow-up.
                records += drain(guard.get_inner_mut(), &mut enricher, &mut outbox, &mut drops);
                follow_up = Some(tokio::time::Instant::now() + FOLLOW_UP);
            }
        }
    }

    // The program info goes with the programs.
    report_skips(&mut probes, &mut outbox);
    let skipped_runs = probes.skipped_total();
    info!("Shutting down: detaching programs");
    let still_open = probes.detach();
    records += drain(ring.get_mut(), &mut enricher, &mut outbox, &mut drops);
    info!(
        rollups = still_open.len(),
        "Reporting the bytes of watched files still open"
    );
    for raw in &still_open {
        if let Some(event) = enricher.event(raw) {
            outbox.push(event);
        }
    }
    drop(probes);
    report_drops(&mut drops, &mut outbox);
    report_refused(&deliveries, &mut outbox);
    outbox.report_losses();
    let queue_drops = outbox.lost_total();
    drop(outbox);
    let undelivered = match publisher.await {
        Ok(Ok(undelivered)) => undelivered,
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            error!(error = %e, "Publisher task failed");
            0
        }
    };
    let summary = Summary {
        records,
        kernel_drops: drops.total(),
        untracked_files: drops.untracked(),
        skipped_runs,
        queue_drops,
        undelivered,
        refused: deliveries.refused_total.load(Ordering::Relaxed),
        renewed: deliveries.renewed.load(Ordering::Relaxed),
    };
    metrics.record(&Figures {
        records: summary.records,
        delivered: deliveries.delivered.load(Ordering::Relaxed),
        kernel_drops: summary.kernel_drops,
        untracked_files: summary.untracked_files,
        skipped_runs: summary.skipped_runs,
        queue_drops: summary.queue_drops,
        refused: summary.refused,
        renewed: summary.renewed,
        queued: 0,
        in_flight: deliveries.in_flight(),
    });
    let late = deliveries.take_refused();
    if late.lost() > 0 || late.gaps > 0 {
        error!(
            lost = late.lost(),
            gaps_lost = late.gaps,
            first_seq = late.first_seq,
            last_seq = late.last_seq,
            error = %late.error,
            "Events refused while stopping; no gap event can report them now"
        );
    }
    info!(
        records = summary.records,
        kernel_drops = summary.kernel_drops,
        untracked_files = summary.untracked_files,
        skipped_runs = summary.skipped_runs,
        queue_drops = summary.queue_drops,
        undelivered = summary.undelivered,
        refused = summary.refused,
        renewed = summary.renewed,
        "Stopped"
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Registers the ring buffer's descriptor with tokio's reactor.
#[allow(unsafe_code)]
fn register(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map's file descriptor (an OwnedFd inside
    // MapData), which stays open and unchanged until the RingBuf, and so the
    // AsyncFd, is dropped; as_raw_fd always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("registering the ring buffer with tokio", e.into()))
}

/// Reads every record available now; returns how many. Losses the kernel
/// marked on a record are reported just before it.
fn drain(
    ring: &mut RingBuf<MapData>,
    enricher: &mut Enricher,
    outbox: &mut Outbox,
    drops: &mut DropCounters,
) -> u64 {
    let mut count = 0;
    while let Some(item) = ring.next() {
        count += 1;
        let Some(raw) = RawRecord::from_bytes(&item) else {
            warn!(len = item.len(), "Short ring-buffer record skipped");
            continue;
        };
        drop(item);
        if drops.lost_before(raw.loss_mark) {
            report_drops(drops, outbox);
        }
        if let Some(event) = enricher.event(&raw) {
            outbox.push(event);
        }
    }
    count
}

/// Logs the events refused since the last report and has the outbox
/// report them with a `delivery_failed` gap.
fn report_refused(deliveries: &publish::DeliveryStats, outbox: &mut Outbox) {
    let refused = deliveries.take_refused();
    if refused.lost() == 0 && refused.gaps == 0 {
        return;
    }
    error!(
        lost = refused.lost(),
        kinds = ?refused.kinds,
        first_seq = refused.first_seq,
        last_seq = refused.last_seq,
        gaps_lost = refused.gaps,
        carried_from_gaps = refused.carried,
        error = %refused.error,
        reason = publish::DELIVERY_FAILED,
        "Events refused for good by librdkafka or the broker (check the topic and the broker's log)"
    );
    outbox.refused(refused);
}

fn report_skips(probes: &mut Probes, outbox: &mut Outbox) {
    for (program, count) in probes.new_skips() {
        outbox.skipped_runs(&program, count);
    }
}

fn report_drops(drops: &mut DropCounters, outbox: &mut Outbox) {
    match drops.new_drops() {
        Ok(fresh) => {
            for (loss, count) in fresh {
                match loss {
                    KernelLoss::RingBufFull(kind) => {
                        let kind = kind_of(kind).unwrap_or(vigil_schemas::Kind::Unknown);
                        outbox.kernel_drops(kind, count);
                    }
                    KernelLoss::Untracked => outbox.untracked_files(count),
                }
            }
        }
        Err(e) => warn!(error = %e, "Cannot read the kernel drop counters"),
    }
}
