//! The in-process operator chain, without Kafka: decode → enrich with
//! baselines → evaluate rules → alerts, review items, audit records and
//! dead letters, plus the state write that goes with them.
//!
//! [`crate::pipeline`] feeds it from the consumer and publishes what it
//! returns; `rules test` and the benchmark feed it directly.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use rustc_hash::{FxHashMap, FxHashSet};
use vigil_schemas::{Alert, AuditRecord, Event, Gap, Kind, decode};

use crate::Result;
use crate::audit_chain::{AuditChains, is_audited};
use crate::detection;
use crate::enrich::{Enricher, is_phi};
use crate::events_table::{self, Row};
use crate::roles::RoleFile;
use crate::rules::{Rule, RuleSet};
use crate::state::{ChainHead, StateStore, StateWrite};

/// Most committed alert ids remembered in memory; past it the memory is
/// cleared and the state store answers again.
const ALERTED_CACHE: usize = 100_000;

/// 2000-01-01T00:00:00Z in nanoseconds: no collector event is older, so an
/// earlier time is a host clock that lost its setting (or a corrupt
/// record).
const OLDEST_EVENT_NS: i64 = 946_684_800_000_000_000;

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Input {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A record that could not be processed, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub input: Input,
    pub error: String,
}

/// Everything one batch produces.
#[derive(Debug, Default)]
pub struct Output {
    pub dead_letters: Vec<DeadLetter>,
    pub alerts: Vec<Alert>,
    pub review: Vec<Alert>,
    pub audit: Vec<AuditRecord>,
    /// (rule id, error) for rules that failed on this batch.
    pub rule_errors: Vec<(String, String)>,
    /// Events decoded.
    pub events: usize,
    /// To commit once the outputs are acknowledged.
    pub state: StateWrite,
}

/// A batch after [`Processor::detect`]: its findings in `output`, waiting
/// for [`Processor::finish`].
#[derive(Debug)]
pub struct Detected {
    pub output: Output,
    rows: Vec<Row>,
    /// What [`Processor::finish`] audits, in the order the records came.
    to_audit: Vec<ToAudit>,
    next_offsets: BTreeMap<i32, i64>,
    now_ns: i64,
}

/// One audit record to write for a batch.
#[derive(Debug)]
enum ToAudit {
    /// The event of `rows[i]`, when it is audited.
    Row(usize),
    /// A dead-lettered record: the PHI access (or collector gap) it holds
    /// when it decodes, else a gap saying that the trail is blind to it.
    /// Dead-lettering keeps an event out of the baselines and rules, not
    /// out of the trail.
    Letter {
        partition: i32,
        offset: i64,
        event: Box<Event>,
        principal: String,
    },
}

impl ToAudit {
    /// The audit record a dead letter needs, if any: its `event` when it
    /// decoded and is audited (a wrongly keyed record or one from a host
    /// with a wrong clock), a gap when it did not decode.
    fn letter(
        input: &Input,
        event: Option<Box<Event>>,
        error: &str,
        now_ns: i64,
    ) -> Option<ToAudit> {
        let (event, principal) = match event {
            Some(event) if is_audited(&event, is_phi(&event)) => {
                let principal = event.principal();
                (event, principal)
            }
            Some(_) => return None,
            None => {
                let gap = Box::new(Event {
                    event_id: format!("undecodable-{}-{}", input.partition, input.offset),
                    time_unix_ns: now_ns,
                    kind: Kind::Gap,
                    gap: Some(Gap {
                        lost: 1,
                        lost_kind: None,
                        first_seq: -1,
                        last_seq: -1,
                        reason: format!("undecodable_record: {}", bounded(error, 512)),
                    }),
                    ..Event::default()
                });
                let key = input
                    .key
                    .as_deref()
                    .map(|key| bounded(&String::from_utf8_lossy(key), 256).to_owned());
                (gap, key.unwrap_or_default())
            }
        };
        Some(ToAudit::Letter {
            partition: input.partition,
            offset: input.offset,
            event,
            principal,
        })
    }
}

/// A record [`decode_input`] refused: why, and its event if it decoded
/// (keyed wrongly).
#[derive(Debug)]
pub struct Rejected {
    pub event: Option<Box<Event>>,
    pub error: String,
}

/// Decodes and checks one record: it must be an event keyed by its
/// principal.
pub fn decode_input(input: &Input) -> std::result::Result<Event, Rejected> {
    let undecodable = |error: String| Rejected { event: None, error };
    let payload = input
        .payload
        .as_deref()
        .ok_or_else(|| undecodable("record has no value".to_owned()))?;
    let event: Event = decode(payload).map_err(|e| undecodable(e.to_string()))?;
    let principal = event.principal();
    let error = match input.key.as_deref() {
        Some(key) if key == principal.as_bytes() => return Ok(event),
        Some(key) => format!(
            "record key `{}` is not the event's principal `{principal}`; the producer must key events by principal",
            bounded(&String::from_utf8_lossy(key), 256)
        ),
        None => {
            format!("record has no key; the producer must key events by principal (`{principal}`)")
        }
    };
    Err(Rejected {
        event: Some(Box::new(event)),
        error,
    })
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The operator chain and its state.
#[derive(Debug)]
pub struct Processor {
    store: Arc<dyn StateStore>,
    enricher: Enricher,
    rules: RuleSet,
    chains: AuditChains,
    opened: HashSet<i32>,
    events_topic: String,
    /// Ids of alerts emitted by batches whose state is not committed yet
    /// (the pipeline processes the next batch while the broker
    /// acknowledges the previous one's outputs).
    uncommitted_alerts: HashSet<String>,
    /// Ids of alerts known to be committed, so that a window still open
    /// in the next batches does not cost a state-store read per batch
    /// (bounded by [`ALERTED_CACHE`]).
    committed_alerts: FxHashSet<String>,
    /// How often baselines and offsets are checkpointed; see
    /// [`Processor::with_checkpoint_interval`].
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    /// Next offsets of the batches processed since the last checkpoint.
    deferred_offsets: BTreeMap<i32, i64>,
    /// Events further ahead of the detector's clock are dead-lettered;
    /// see [`Processor::with_clock_check`].
    max_ahead: Option<Duration>,
    /// Recreated events partitions, with why and when (see
    /// [`Processor::restart_source`]): their gap records are made and
    /// published with the next batch, not before, so that no checkpoint
    /// writes a chain head whose record was never published.
    restarts: Vec<(i32, String, i64)>,
}

impl Processor {
    pub fn new(
        store: Arc<dyn StateStore>,
        rules: RuleSet,
        roles: RoleFile,
        learning_days: u32,
        events_topic: &str,
    ) -> Processor {
        Processor {
            enricher: Enricher::new(store.clone(), roles, learning_days),
            store,
            rules,
            chains: AuditChains::default(),
            opened: HashSet::new(),
            events_topic: events_topic.to_owned(),
            uncommitted_alerts: HashSet::new(),
            committed_alerts: FxHashSet::default(),
            checkpoint_interval: Duration::ZERO,
            last_checkpoint: Instant::now(),
            deferred_offsets: BTreeMap::new(),
            max_ahead: None,
            restarts: Vec::new(),
        }
    }

    /// Dead-letters events stamped more than `max_ahead` after the time
    /// the batch is processed, or before the year 2000, instead of learning
    /// from them. Without it (the default, for rule tests and replays of
    /// recorded streams) every event's time is taken as it is. An event
    /// from a host whose clock runs a day ahead would otherwise fill hour
    /// slots that real time has not reached, freeze that principal's hour
    /// baselines until it does, and pin `minutes_since_escalation` at 0;
    /// one from 1970 would end learning mode at once.
    pub fn with_clock_check(mut self, max_ahead: Duration) -> Processor {
        self.max_ahead = Some(max_ahead);
        self
    }

    /// Why an event's time cannot be trusted, if it cannot.
    fn implausible_time(&self, event: &Event, now_ns: i64) -> Option<String> {
        let max_ahead = self.max_ahead?;
        let time = event.time_unix_ns;
        if time < OLDEST_EVENT_NS {
            return Some(format!(
                "event time {time} ns is before the year 2000; the clock of host `{}` is not set (or the record is corrupt)",
                event.host
            ));
        }
        let ahead = time.saturating_sub(now_ns);
        let limit = i64::try_from(max_ahead.as_nanos()).unwrap_or(i64::MAX);
        (ahead > limit).then(|| {
            format!(
                "event time {} is {} ahead of the detector's clock (more than the allowed {}); fix the clock of host `{}` (or raise the detector's --max-clock-skew-ms)",
                crate::alert_text::utc_millis(time.div_euclid(1_000_000)),
                humantime::format_duration(Duration::from_secs((ahead / 1_000_000_000) as u64)),
                humantime::format_duration(max_ahead),
                event.host
            )
        })
    }

    /// Checkpoints baselines and consumed offsets at most once per
    /// `interval` instead of with every batch (zero, the default: every
    /// batch). A baseline touched by many batches is then encoded and
    /// written once per interval, not once per batch. Batches in between
    /// still write their alert ids and audit chain heads; their offsets
    /// wait for the next checkpoint together with the baselines they
    /// changed, so after a crash the detector replays from the last
    /// checkpoint and rebuilds exactly that state (audit records and alerts
    /// already published are recognised by chain head and alert id).
    pub fn with_checkpoint_interval(mut self, interval: Duration) -> Processor {
        self.checkpoint_interval = interval;
        self
    }

    /// Whether processed batches wait for a checkpoint.
    pub fn has_deferred(&self) -> bool {
        !self.deferred_offsets.is_empty()
    }

    /// The baselines and offsets deferred since the last checkpoint, to be
    /// committed once every batch processed so far is acknowledged (idle,
    /// shutdown, before a rebalance).
    pub fn checkpoint(&mut self) -> StateWrite {
        self.last_checkpoint = Instant::now();
        let (checkpoint, baselines) = self.enricher.take_writes();
        StateWrite {
            baselines,
            checkpoint: Some(checkpoint),
            chain_heads: self.chains.take_changed(),
            offsets: std::mem::take(&mut self.deferred_offsets)
                .into_iter()
                .map(|(partition, offset)| (self.events_topic.clone(), partition, offset))
                .collect(),
            // Written with each batch by the pipeline.
            newest: Vec::new(),
            alerted: Vec::new(),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn rules_mut(&mut self) -> &mut RuleSet {
        &mut self.rules
    }

    pub fn enricher_mut(&mut self) -> &mut Enricher {
        &mut self.enricher
    }

    /// Partitions whose audit chain has not been opened since the last
    /// rebalance.
    pub fn unopened(&self, partitions: impl IntoIterator<Item = i32>) -> Vec<i32> {
        let mut unopened: Vec<i32> = partitions
            .into_iter()
            .filter(|p| !self.opened.contains(p))
            .collect();
        unopened.sort_unstable();
        unopened.dedup();
        unopened
    }

    /// Opens a partition's chain at the later of the stored head and the
    /// head read from the audit topic (records published before a crash
    /// that the state did not yet record).
    pub fn open_chain(&mut self, partition: i32, from_topic: Option<ChainHead>) -> Result<()> {
        let stored = self.store.chain_head(partition)?;
        let head = match (stored, from_topic) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
            (a, b) => a.or(b),
        };
        self.chains.set_head(partition, head);
        self.opened.insert(partition);
        Ok(())
    }

    /// Starts `partition` of the events topic again from its offset 0 after
    /// the topic was recreated (`why` says how that was seen): its audit
    /// chain gets a gap record saying so, published first with the next
    /// batch, after which every offset of the new partition is audited.
    /// Its chain must be open; its offsets and baselines already written
    /// (see `Pipeline::restart_partition`).
    pub fn restart_source(&mut self, partition: i32, why: &str, now_ns: i64) {
        self.restarts.push((partition, why.to_owned(), now_ns));
        self.deferred_offsets.remove(&partition);
    }

    /// The gap records of the partitions restarted since the last batch,
    /// appended to their chains.
    fn restart_records(&mut self) -> Vec<AuditRecord> {
        let restarts = std::mem::take(&mut self.restarts);
        restarts
            .into_iter()
            .map(|(partition, why, now_ns)| {
                let gap = Event {
                    event_id: format!("events-recreated-{partition}-{now_ns}"),
                    time_unix_ns: now_ns,
                    kind: Kind::Gap,
                    gap: Some(Gap {
                        lost: -1,
                        lost_kind: None,
                        first_seq: -1,
                        last_seq: -1,
                        reason: format!("events_topic_recreated: {}", bounded(&why, 512)),
                    }),
                    ..Event::default()
                };
                self.chains.restart_source(
                    partition,
                    &gap,
                    "vigil-detector",
                    &self.events_topic,
                    now_ns,
                )
            })
            .collect()
    }

    /// Forgets caches and chain heads after partitions were revoked.
    pub fn reset_after_rebalance(&mut self) {
        self.enricher.clear_cache();
        self.chains.clear();
        self.opened.clear();
        self.deferred_offsets.clear();
        // Not in the state, so the next owner sees the recreation again.
        self.restarts.clear();
    }

    /// Processes one batch of records in order. `now_ns` stamps alerts and
    /// audit records. The same as [`Processor::detect`] then
    /// [`Processor::finish`].
    pub async fn process(&mut self, inputs: Vec<Input>, now_ns: i64) -> Result<Output> {
        let detected = self.detect(inputs, now_ns).await?;
        Ok(self.finish(detected))
    }

    /// The first half of processing a batch: decodes, enriches and runs
    /// every rule. The findings (`alerts`, `review`) and dead letters are
    /// final and can be published at once; audit records and the batch's
    /// state come from [`Processor::finish`], which must be called next.
    pub async fn detect(&mut self, inputs: Vec<Input>, now_ns: i64) -> Result<Detected> {
        let mut output = Output::default();
        let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut rows: Vec<Row> = Vec::with_capacity(inputs.len());
        let mut to_audit: Vec<ToAudit> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let next = next_offsets
                .entry(input.partition)
                .or_insert(input.offset + 1);
            *next = (*next).max(input.offset + 1);
            match decode_input(&input) {
                Ok(event) => {
                    if let Some(error) = self.implausible_time(&event, now_ns) {
                        to_audit.extend(ToAudit::letter(
                            &input,
                            Some(Box::new(event)),
                            &error,
                            now_ns,
                        ));
                        output.dead_letters.push(DeadLetter { input, error });
                        continue;
                    }
                    let features = self.enricher.enrich(&event)?;
                    to_audit.push(ToAudit::Row(rows.len()));
                    rows.push(Row {
                        event,
                        features,
                        partition: input.partition,
                        offset: input.offset,
                    });
                }
                Err(Rejected { event, error }) => {
                    to_audit.extend(ToAudit::letter(&input, event, &error, now_ns));
                    output.dead_letters.push(DeadLetter { input, error });
                }
            }
        }
        output.events = rows.len();

        if !rows.is_empty() && !self.rules.is_empty() {
            let batch = events_table::build_batch(&rows)?;
            let index: FxHashMap<&str, usize> = rows
                .iter()
                .enumerate()
                .rev()
                .map(|(i, r)| (r.event.event_id.as_str(), i))
                .collect();
            let now_ms = now_ns.div_euclid(1_000_000);
            let mut fired: HashSet<String> = HashSet::new();
            for (rule, result) in self.rules.evaluate(&batch).await {
                let results = match result {
                    Ok(results) => results,
                    Err(error) => {
                        let (results, failed) = isolate(&self.rules, rule, &batch, error).await;
                        let mut dead = 0;
                        for (rows_failed, error) in &failed {
                            for row in &rows[rows_failed.clone()] {
                                dead += 1;
                                output.dead_letters.push(DeadLetter {
                                    input: Input {
                                        partition: row.partition,
                                        offset: row.offset,
                                        key: Some(row.features.principal.clone().into_bytes()),
                                        payload: Some(vigil_schemas::encode(&row.event)),
                                    },
                                    error: format!(
                                        "rule `{}` failed on this event ({error}); the other rules ran on it",
                                        rule.header.id
                                    ),
                                });
                            }
                        }
                        let first = failed.first().map(|(_, e)| e.as_str()).unwrap_or_default();
                        output.rule_errors.push((
                            rule.header.id.clone(),
                            format!(
                                "{first} (on {dead} of {} events, dead-lettered; the rule ran on the others)",
                                rows.len()
                            ),
                        ));
                        results
                    }
                };
                let store = &self.store;
                let uncommitted = &self.uncommitted_alerts;
                let committed = &mut self.committed_alerts;
                let new_alerts =
                    detection::alerts(&rule.header, &results, &rows, &index, now_ms, |id| {
                        if fired.contains(id) || uncommitted.contains(id) || committed.contains(id)
                        {
                            return Ok(false);
                        }
                        if store.was_alerted(id)? {
                            remember(committed, id.to_owned());
                            return Ok(false);
                        }
                        Ok(true)
                    })?;
                for alert in new_alerts {
                    let id = alert.id().to_owned();
                    fired.insert(id.clone());
                    self.uncommitted_alerts.insert(id.clone());
                    output
                        .state
                        .alerted
                        .push((id, alert.finding_info.first_seen_time));
                    if alert.unmapped.vigil.learning {
                        output.review.push(alert);
                    } else {
                        output.alerts.push(alert);
                    }
                }
            }
        }
        Ok(Detected {
            output,
            rows,
            to_audit,
            next_offsets,
            now_ns,
        })
    }

    /// The second half of processing a batch: appends its audited events to
    /// the audit chains and adds the state to write once everything is
    /// acknowledged.
    pub fn finish(&mut self, detected: Detected) -> Output {
        let Detected {
            mut output,
            rows,
            to_audit,
            next_offsets,
            now_ns,
        } = detected;
        let mut audit = self.restart_records();
        audit.append(&mut output.audit);
        output.audit = audit;
        for item in &to_audit {
            let (partition, offset, event, principal) = match item {
                ToAudit::Row(i) => {
                    let row = &rows[*i];
                    if !is_audited(&row.event, row.features.is_phi) {
                        continue;
                    }
                    (
                        row.partition,
                        row.offset,
                        &row.event,
                        &row.features.principal,
                    )
                }
                ToAudit::Letter {
                    partition,
                    offset,
                    event,
                    principal,
                } => (*partition, *offset, &**event, principal),
            };
            if let Some(record) = self.chains.append(
                partition,
                event,
                principal,
                &self.events_topic,
                offset,
                now_ns,
            ) {
                output.audit.push(record);
            }
        }

        output.state.chain_heads = self.chains.take_changed();
        for (partition, next) in next_offsets {
            let deferred = self.deferred_offsets.entry(partition).or_insert(next);
            *deferred = (*deferred).max(next);
        }
        if self.last_checkpoint.elapsed() >= self.checkpoint_interval {
            let checkpoint = self.checkpoint();
            output.state.baselines = checkpoint.baselines;
            output.state.offsets = checkpoint.offsets;
            output.state.checkpoint = checkpoint.checkpoint;
        }
        output
    }

    /// Writes a processed batch's state (after its outputs were
    /// acknowledged). Batches must be committed in the order they were
    /// processed.
    pub fn commit(&mut self, state: StateWrite) -> Result<()> {
        let alerted: Vec<String> = state.alerted.iter().map(|(id, _)| id.clone()).collect();
        let checkpoint = state.checkpoint;
        self.store.commit(state)?;
        if let Some(checkpoint) = checkpoint {
            self.enricher.committed(checkpoint);
        }
        for id in alerted {
            self.uncommitted_alerts.remove(&id);
            remember(&mut self.committed_alerts, id);
        }
        Ok(())
    }
}

/// Most runs of a failing rule spent, per batch, on finding the events it
/// fails on.
const MAX_ISOLATION_RUNS: usize = 64;

/// After `rule` failed on the whole `batch` (division by zero, a failed
/// cast: a value in some event), runs it on halves of the batch, then on
/// halves of the halves that fail, down to single events, within
/// [`MAX_ISOLATION_RUNS`] runs. Returns the results of the parts it ran on
/// and the row ranges it failed on, each with its error: single events, or
/// larger ranges when the budget ran out. A rule that aggregates across
/// events sees only the part it runs on.
async fn isolate(
    rules: &RuleSet,
    rule: &Rule,
    batch: &RecordBatch,
    error: DataFusionError,
) -> (Vec<RecordBatch>, Vec<(Range<usize>, String)>) {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    let mut todo = vec![(0..batch.num_rows(), error.to_string())];
    let mut runs = 0;
    while let Some((range, error)) = todo.pop() {
        if range.len() <= 1 || runs >= MAX_ISOLATION_RUNS {
            failed.push((range, error));
            continue;
        }
        let middle = range.start + range.len() / 2;
        for half in [middle..range.end, range.start..middle] {
            runs += 1;
            let part = batch.slice(half.start, half.len());
            match rules.evaluate_rule(rule, &part).await {
                Ok(part_results) => results.extend(part_results),
                Err(e) => todo.push((half, e.to_string())),
            }
        }
    }
    failed.sort_by_key(|(range, _)| range.start);
    (results, failed)
}

fn remember(committed: &mut FxHashSet<String>, id: String) {
    if committed.len() >= ALERTED_CACHE {
        committed.clear();
    }
    committed.insert(id);
}
