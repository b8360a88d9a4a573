//! Runs the load test: creates a run's own topics on the broker, starts a
//! detector on them, produces simulated history as fast as the pipeline
//! takes it, then a live phase at a fixed rate in real time, and collects
//! every alert and review item for the [`Report`].
//!
//! Latency is measured with canaries: during the live phase the canary
//! principal runs a probe executable `--canary-rate` times a second; the
//! run's rule directory holds, besides the rule pack, one probe rule
//! (`loadtest-canary`) that alerts on it. A canary's latency is the time
//! from its event timestamp (taken just before it is produced) to its
//! alert being consumed — the whole path: producer, broker, detector
//! (decode, baselines, every rule), broker, consumer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use vigil_schemas::bus::{ClientErrors, PolledProducer};
use vigil_schemas::{Alert, Event, bus, encode};

use crate::hospital::{DAY_NS, HOUR_NS, Hospital, Role, canary_event};
use crate::report::{DayCounts, Inputs, LivePhase, Received, Report};
use crate::rng::Rng;
use crate::scenarios::{HISTORY_DAYS_FOR_EVERY_SCENARIO, Injection, plan};

/// The probe rule's id.
pub const CANARY_RULE: &str = "loadtest-canary";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub brokers: String,
    /// The `detector` binary.
    pub detector: PathBuf,
    /// The rule pack (`sql/rules`).
    pub rules: PathBuf,
    /// Where the report, the detector's state and log go.
    pub out: PathBuf,
    pub seed: u64,
    pub people: usize,
    pub app_services: usize,
    pub history_days: i64,
    pub learning_days: u32,
    /// Attacks are injected over the last `attack_days` days of history.
    pub attack_days: i64,
    pub attack_rounds: usize,
    pub bulk_records: u64,
    /// False alerts are counted from this day of history on.
    pub evaluate_from_day: i64,
    pub live_seconds: f64,
    /// Events per second in the live phase, canaries included.
    pub rate: f64,
    pub canary_rate: f64,
    /// How often the live phase hands a burst of events to the producer.
    pub tick: Duration,
    /// Partitions of the events and audit topics.
    pub partitions: i32,
    /// How long to wait for the detector to catch up after the history.
    pub catch_up_timeout: Duration,
    /// Keep the run's detector state (RocksDB, gigabytes for a full run)
    /// instead of deleting it when the run ends.
    pub keep_state: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Topic names of one run.
#[derive(Debug, Clone)]
struct Topics {
    events: String,
    alerts: String,
    review: String,
    audit: String,
    dlq: String,
}

impl Topics {
    fn new(prefix: &str) -> Topics {
        Topics {
            events: format!("{prefix}.events"),
            alerts: format!("{prefix}.alerts"),
            review: format!("{prefix}.review"),
            audit: format!("{prefix}.audit"),
            dlq: format!("{prefix}.dlq"),
        }
    }

    async fn create(&self, brokers: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("creating a Kafka admin client")?;
        let topics = [
            NewTopic::new(&self.events, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&self.alerts, partitions.min(3), TopicReplication::Fixed(1)),
            NewTopic::new(&self.review, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&self.audit, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&self.dlq, 1, TopicReplication::Fixed(1)),
        ];
        let results = admin
            .create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .with_context(|| format!("creating the run's topics on {brokers}; is the broker running (deploy/local/broker.sh start)?"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic} on {brokers}: {code}");
            }
        }
        Ok(())
    }
}

/// Tracks the end offset of every events partition the producer wrote, and
/// how long the broker took to acknowledge each canary.
#[derive(Default)]
struct Delivery {
    ends: Mutex<HashMap<i32, i64>>,
    /// Canary event timestamp to its acknowledgement, in milliseconds.
    canary_acks_ms: Mutex<Vec<f64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    errors: ClientErrors,
}

impl ClientContext for Delivery {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.report(&error, reason);
    }
}

impl ProducerContext for Delivery {
    /// A canary's event timestamp (ns), 0 for every other event.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, canary_sent_ns: usize) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if canary_sent_ns != 0
                    && let Ok(mut acks) = self.canary_acks_ms.lock()
                {
                    acks.push((now_ns() - canary_sent_ns as i64) as f64 / 1e6);
                }
                if let Ok(mut ends) = self.ends.lock() {
                    let end = ends.entry(message.partition()).or_insert(0);
                    *end = (*end).max(message.offset() + 1);
                }
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock()
                    && first.is_none()
                {
                    *first = Some(error.to_string());
                }
            }
        }
    }
}

/// How long the history replay's producer gathers records into one batch.
/// The replay is a bulk load whose latency nobody measures, and the local
/// tansu broker lists every stored batch of a partition on each fetch, so
/// fewer, larger batches keep the live phase's fetches cheap.
const HISTORY_LINGER_MS: &str = "50";

/// The events producer with backpressure: when librdkafka's queue is full
/// it waits for deliveries instead of dropping. It starts in bulk mode for
/// the history replay; [`Feed::go_live`] switches to the bus's low-latency
/// producer settings.
struct Feed {
    producer: PolledProducer<Delivery>,
    /// The live phase's producer, created with the feed so that it has its
    /// connection and producer id before the first live event.
    live: Option<PolledProducer<Delivery>>,
    topic: String,
    sent: u64,
    waits: u64,
    /// Next sequence number per host.
    seq: HashMap<String, i64>,
    run: String,
}

impl Feed {
    fn new(brokers: &str, topic: &str, run: &str) -> Result<Feed> {
        let producer = PolledProducer::create(
            bus::producer_config(brokers)
                .set("queue.buffering.max.messages", "200000")
                .set("linger.ms", HISTORY_LINGER_MS)
                .set("batch.num.messages", "100000"),
            Delivery::default(),
        )
        .context("creating the history producer")?;
        let live = PolledProducer::create(
            bus::producer_config(brokers).set("queue.buffering.max.messages", "200000"),
            Delivery::default(),
        )
        .context("creating the live events producer")?;
        Ok(Feed {
            producer,
            live: Some(live),
            topic: topic.to_owned(),
            sent: 0,
            waits: 0,
            seq: HashMap::new(),
            run: run.to_owned(),
        })
    }

    /// Numbers `event` in its host's sequence and produces it; a `canary`'s
    /// acknowledgement time is recorded.
    fn send(&mut self, mut event: Event, canary: bool) -> Result<()> {
        let seq = self.seq.entry(event.host.clone()).or_insert(0);
        *seq += 1;
        event.seq = *seq;
        event.event_id = format!("{}:{}:{}", event.host, self.run, event.seq);
        let key = event.principal();
        let payload = encode(&event);
        let opaque = if canary {
            usize::try_from(event.time_unix_ns).unwrap_or(0)
        } else {
            0
        };
        let mut record = BaseRecord::with_opaque_to(&self.topic, opaque)
            .key(&key)
            .payload(&payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.waits += 1;
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing to {}: {e}", self.topic),
            }
        }
        self.sent += 1;
        if let Some(error) = self.first_error() {
            bail!("the broker refused events: {error}");
        }
        Ok(())
    }

    fn first_error(&self) -> Option<String> {
        self.producer
            .context()
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    }

    /// Canary acknowledgement times so far (live phase).
    fn canary_acks_ms(&self) -> Vec<f64> {
        self.producer
            .context()
            .canary_acks_ms
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    fn ends(&self) -> HashMap<i32, i64> {
        self.producer
            .context()
            .ends
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Flushes the bulk producer and continues with the live one (the bus's
    /// producer settings, linger of [`bus::PRODUCER_LINGER_MS`]), keeping
    /// the partition ends delivered so far.
    fn go_live(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(error) = self.first_error() {
            bail!("the broker refused history events: {error}");
        }
        let Some(live) = self.live.take() else {
            return Ok(());
        };
        let ends = self.ends();
        if let Ok(mut live_ends) = live.context().ends.lock() {
            *live_ends = ends;
        }
        self.producer = live;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .context("flushing the events producer")
    }
}

/// Reads the detector group's committed offsets and computes its lag.
struct LagProbe {
    consumer: BaseConsumer,
    topic: String,
}

impl LagProbe {
    fn new(brokers: &str, group: &str, topic: &str) -> Result<LagProbe> {
        let consumer: BaseConsumer = bus::consumer_config(brokers, group)
            .create()
            .context("creating the lag probe")?;
        Ok(LagProbe {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Events produced but not yet committed by the detector.
    fn lag(&self, ends: &HashMap<i32, i64>) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for partition in ends.keys() {
            tpl.add_partition(&self.topic, *partition);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .context("reading the detector's committed offsets")?;
        let mut lag = 0;
        for (partition, end) in ends {
            let done = committed
                .find_partition(&self.topic, *partition)
                .and_then(|p| match p.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0);
            lag += (end - done).max(0);
        }
        Ok(lag)
    }
}

/// What the reader collected.
#[derive(Default)]
struct Collected {
    received: Vec<Received>,
    canary_latencies_ms: Vec<f64>,
    /// Canary event to the detector processing it (the alert's `time`).
    canary_detector_ms: Vec<f64>,
    bad: Vec<String>,
}

fn spawn_reader(
    brokers: &str,
    group: &str,
    topics: &Topics,
    canary_sent: Arc<Mutex<HashMap<String, i64>>>,
    collected: Arc<Mutex<Collected>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = bus::consumer_config(brokers, group)
        .create()
        .context("creating the alert reader")?;
    consumer
        .subscribe(&[&topics.alerts, &topics.review])
        .context("subscribing to the alert topics")?;
    let review_topic = topics.review.clone();
    Ok(tokio::spawn(async move {
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "Reading alerts");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let arrived = now_ns();
            let review = message.topic() == review_topic;
            let alert: Alert = match message.payload().map(serde_json::from_slice) {
                Some(Ok(alert)) => alert,
                other => {
                    let why = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "empty payload".into(),
                    };
                    if let Ok(mut c) = collected.lock() {
                        c.bad.push(format!(
                            "{}/{} offset {}: {why}",
                            message.topic(),
                            message.partition(),
                            message.offset()
                        ));
                    }
                    continue;
                }
            };
            let rule_id = alert.unmapped.vigil.rule_id.clone();
            let mut latency = None;
            let mut to_detector = None;
            if rule_id == CANARY_RULE {
                let sent = canary_sent.lock().ok().and_then(|sent| {
                    alert
                        .finding_info
                        .related_events
                        .iter()
                        .find_map(|e| sent.get(&e.uid).copied())
                });
                latency = sent.map(|t| (arrived - t) as f64 / 1e6);
                to_detector = sent.map(|t| alert.time as f64 - t as f64 / 1e6);
            }
            if let Ok(mut c) = collected.lock() {
                c.received.push(Received {
                    rule_id,
                    principal: alert.unmapped.vigil.principal.clone(),
                    first_seen_ms: alert.finding_info.first_seen_time,
                    review,
                });
                c.canary_latencies_ms.extend(latency);
                c.canary_detector_ms.extend(to_detector);
            }
        }
    }))
}

/// Copies the rule pack and adds the probe rule.
fn prepare_rules(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut count = 0;
    for entry in std::fs::read_dir(from)
        .with_context(|| format!("reading the rule pack {}", from.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "sql") {
            let name = path.file_name().context("rule file name")?;
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
            count += 1;
        }
    }
    if count == 0 {
        bail!("no *.sql rules in {}", from.display());
    }
    std::fs::write(
        to.join(format!("{CANARY_RULE}.sql")),
        format!(
            "-- id: {CANARY_RULE}\n-- title: Load-test latency probe\n-- severity: informational\n-- hipaa: 164.312(b)\n-- mitre: T1005\n-- version: 1\nSELECT * FROM events WHERE kind = 'exec' AND path = '{}'\n",
            crate::hospital::CANARY_EXE
        ),
    )?;
    Ok(count)
}

/// The running detector child.
struct DetectorProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl DetectorProcess {
    fn start(options: &Options, topics: &Topics, group: &str, work: &Path) -> Result<Self> {
        if !options.detector.exists() {
            bail!(
                "the detector binary {} does not exist; build it with `cargo build --release -p vigil-detector` or pass --detector",
                options.detector.display()
            );
        }
        let log = work.join("detector.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(&options.detector)
            .arg("run")
            .args(["--brokers", &options.brokers])
            .args(["--group", group])
            .args(["--instance-id", &format!("{group}-1")])
            .args(["--events-topic", &topics.events])
            .args(["--alerts-topic", &topics.alerts])
            .args(["--review-topic", &topics.review])
            .args(["--audit-topic", &topics.audit])
            .args(["--dlq-topic", &topics.dlq])
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--rules-dir")
            .arg(work.join("rules"))
            .arg("--roles")
            .arg(work.join("roles.toml"))
            .args(["--learning-days", &options.learning_days.to_string()])
            .env(
                "VIGIL_LOG",
                std::env::var("VIGIL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", options.detector.display()))?;
        Ok(DetectorProcess { child, log })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            bail!(
                "the detector exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait for it to flush and exit.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the detector did not stop within 30 s of SIGTERM");
            }
        }
        Ok(())
    }
}

/// Runs the load test and returns its report (also written to `out`).
pub async fn run(options: &Options) -> Result<Report> {
    let started = now_ns();
    let run_id = format!("{}-{}", options.seed, started / 1_000_000_000);
    let prefix = format!("loadtest.{run_id}");
    let topics = Topics::new(&prefix);
    let work = options.out.join(format!("run-{run_id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let hospital = Hospital::new(options.seed, options.people, options.app_services);
    std::fs::write(work.join("roles.toml"), hospital.roles_toml())?;
    let rules = prepare_rules(&options.rules, &work.join("rules"))?;
    topics.create(&options.brokers, options.partitions).await?;
    let group = format!("{prefix}.detector");
    let mut detector = DetectorProcess::start(options, &topics, &group, &work)?;
    eprintln!(
        "loadtest: {} principals, {rules} rules + probe, topics {prefix}.*, detector log {}",
        hospital.principals.len(),
        detector.log.display()
    );

    let canary_sent = Arc::new(Mutex::new(HashMap::new()));
    let collected = Arc::new(Mutex::new(Collected::default()));
    let reader = spawn_reader(
        &options.brokers,
        &format!("{prefix}.reader"),
        &topics,
        canary_sent.clone(),
        collected.clone(),
    )?;

    // History: whole hours up to the current one.
    let history_end = started.div_euclid(HOUR_NS) * HOUR_NS;
    let history_start = history_end - options.history_days * DAY_NS;
    let attacks_from = history_end - options.attack_days.min(options.history_days) * DAY_NS;
    let (planned, unplaced) = plan(
        &hospital,
        options.attack_rounds,
        attacks_from,
        history_end - HOUR_NS,
        history_start,
        options.bulk_records,
    );
    for (scenario, round) in &unplaced {
        eprintln!(
            "loadtest: the {} scenario is not injected in round {}: its weekday and hour \
             do not occur in the {} days of history before the live phase (it needs \
             --history-days {HISTORY_DAYS_FOR_EVERY_SCENARIO} or more); the report's recall row \
             counts it as not injected",
            scenario.name(),
            round + 1,
            options.history_days
        );
    }
    let mut attack_events: HashMap<i64, Vec<Event>> = HashMap::new();
    let mut injections: Vec<Injection> = Vec::new();
    for (injection, events) in planned {
        for event in events {
            attack_events
                .entry(event.time_unix_ns.div_euclid(HOUR_NS))
                .or_default()
                .push(event);
        }
        injections.push(injection);
    }

    let mut feed = Feed::new(&options.brokers, &topics.events, &run_id)?;
    let lag_probe = LagProbe::new(&options.brokers, &group, &topics.events)?;
    let mut days = vec![DayCounts::default(); options.history_days.max(0) as usize];
    let history_clock = Instant::now();
    let mut last_progress = Instant::now();
    let mut hour = history_start;
    while hour < history_end {
        let mut events: Vec<Event> = Vec::new();
        let day = &mut days[((hour - history_start) / DAY_NS) as usize];
        for principal in &hospital.principals {
            let benign = hospital.hour_of(principal, hour);
            if !benign.is_empty() {
                day.principal_hours += 1;
                day.events += benign.len() as u64;
            }
            events.extend(benign);
        }
        if let Some(attack) = attack_events.remove(&hour.div_euclid(HOUR_NS)) {
            events.extend(attack);
        }
        events.sort_by_key(|e| e.time_unix_ns);
        for event in events {
            feed.send(event, false)?;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            detector.check_alive()?;
            let lag = lag_probe.lag(&feed.ends()).unwrap_or(-1);
            eprintln!(
                "loadtest: history day {}/{}: {} events produced ({:.0}/s), detector lag {lag}",
                (hour - history_start) / DAY_NS + 1,
                options.history_days,
                feed.sent,
                feed.sent as f64 / history_clock.elapsed().as_secs_f64(),
            );
            last_progress = Instant::now();
        }
        hour += HOUR_NS;
    }
    feed.flush()?;
    let history_events = feed.sent;

    // Wait for the detector to process all of it.
    let deadline = Instant::now() + options.catch_up_timeout;
    loop {
        detector.check_alive()?;
        let lag = lag_probe.lag(&feed.ends())?;
        if lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the detector still had {lag} events to process {:?} after the history was produced; see {}",
                options.catch_up_timeout,
                detector.log.display()
            );
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            eprintln!("loadtest: waiting for the detector to catch up: lag {lag}");
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history_seconds = history_clock.elapsed().as_secs_f64();
    eprintln!(
        "loadtest: history done: {history_events} events processed in {history_seconds:.1} s; live phase: {:.0} events/s for {:.0} s",
        options.rate, options.live_seconds
    );

    // Live phase.
    feed.go_live()?;
    let live = live_phase(
        options,
        &hospital,
        &mut feed,
        &lag_probe,
        &canary_sent,
        &collected,
        &mut detector,
    )
    .await?;
    let canary_acks_ms = feed.canary_acks_ms();

    detector.stop().await?;
    reader.abort();
    if !options.keep_state {
        let state = work.join("state");
        if let Err(e) = std::fs::remove_dir_all(&state) {
            eprintln!("loadtest: could not delete {}: {e}", state.display());
        }
    }
    let dead_letters = count_messages(&options.brokers, &topics.dlq, &prefix).unwrap_or(0);

    let collected = collected
        .lock()
        .map_err(|_| anyhow::anyhow!("reader poisoned"))?;
    if let Some(bad) = collected.bad.first() {
        bail!("an alert could not be read: {bad}");
    }
    let mut report = Report {
        seed: options.seed,
        principals: hospital.principals.len(),
        history_days: options.history_days,
        learning_days: options.learning_days,
        history_events,
        history_seconds,
        history_events_per_sec: history_events as f64 / history_seconds.max(1e-9),
        live: live.clone(),
        dead_letters,
        ..Report::default()
    };
    report.build(&Inputs {
        received: &collected.received,
        injections: &injections,
        unplaced: &unplaced,
        probe_rules: &[CANARY_RULE],
        history_start_ns: history_start,
        live_start_ns: history_end,
        days: &days,
        evaluate_from_day: options.evaluate_from_day,
        latencies_ms: &collected.canary_latencies_ms,
        detector_latencies_ms: &collected.canary_detector_ms,
        ack_latencies_ms: &canary_acks_ms,
    });
    // `build` fills the live phase's unexpected-alert count.
    report.live.canaries_alerted = collected.canary_latencies_ms.len();
    write_report(&report, &options.out)?;
    Ok(report)
}

async fn live_phase(
    options: &Options,
    hospital: &Hospital,
    feed: &mut Feed,
    lag_probe: &LagProbe,
    canary_sent: &Arc<Mutex<HashMap<String, i64>>>,
    collected: &Arc<Mutex<Collected>>,
    detector: &mut DetectorProcess,
) -> Result<LivePhase> {
    let workers: Vec<_> = hospital.by_role(Role::AppService).collect();
    if workers.is_empty() && options.rate > options.canary_rate {
        bail!("the live phase needs application workers (--app-services > 0)");
    }
    let makers: Vec<_> = workers
        .iter()
        .map(|p| crate::hospital::EventMaker::new(p))
        .collect();
    let canary = hospital.canary();
    let mut rng = Rng::keyed(options.seed, &[0x11fe]);
    let tick = options.tick;
    let ticks_per_sec = 1.0 / tick.as_secs_f64();
    let mut live = LivePhase {
        target_events_per_sec: options.rate,
        ..LivePhase::default()
    };
    let sent_before = feed.sent;
    let waits_before = feed.waits;
    let start = Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut owed = 0.0;
    let mut canaries_owed = 0.0;
    let mut n = 0usize;
    let mut next_lag = Instant::now();
    while start.elapsed().as_secs_f64() < options.live_seconds {
        interval.tick().await;
        owed += options.rate / ticks_per_sec;
        canaries_owed += options.canary_rate / ticks_per_sec;
        while canaries_owed >= 1.0 {
            let event = canary_event(canary, now_ns());
            let time = event.time_unix_ns;
            let id = format!(
                "{}:{}:{}",
                event.host,
                feed.run,
                feed.seq.get(&event.host).copied().unwrap_or(0) + 1
            );
            if let Ok(mut sent) = canary_sent.lock() {
                sent.insert(id, time);
            }
            feed.send(event, true)?;
            live.canaries_sent += 1;
            canaries_owed -= 1.0;
            owed -= 1.0;
        }
        while owed >= 1.0 && !makers.is_empty() {
            let maker = &makers[n % makers.len()];
            let event = hospital.app_event(maker, n / makers.len(), now_ns(), &mut rng);
            feed.send(event, false)?;
            n += 1;
            owed -= 1.0;
        }
        if Instant::now() >= next_lag {
            detector.check_alive()?;
            let lag = lag_probe.lag(&feed.ends()).unwrap_or(-1);
            live.lag_samples.push((start.elapsed().as_secs_f64(), lag));
            next_lag += LAG_SAMPLE_EVERY;
        }
    }
    live.seconds = start.elapsed().as_secs_f64();
    live.produced = feed.sent - sent_before;
    live.producer_waits = feed.waits - waits_before;
    live.events_per_sec = live.produced as f64 / live.seconds;
    feed.flush()?;

    // Give the last canaries time to come back.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let alerted = collected
            .lock()
            .map(|c| c.canary_latencies_ms.len())
            .unwrap_or(0);
        if alerted >= live.canaries_sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live.lag_max = live.lag_samples.iter().map(|(_, l)| *l).max().unwrap_or(0);
    let verdict = lag_verdict(&live.lag_samples, options.rate);
    live.lag_first_quarter = verdict.first_quarter;
    live.lag_last_quarter = verdict.last_quarter;
    live.lag_slope_per_sec = verdict.slope_per_sec;
    live.lag_growing = verdict.growing;
    Ok(live)
}

/// Whether consumer lag grew over the live phase.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LagVerdict {
    first_quarter: f64,
    last_quarter: f64,
    /// Least-squares slope after the first quarter, events per second.
    slope_per_sec: f64,
    growing: bool,
}

/// How often the live phase samples the detector group's committed lag.
const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Longer than the detector's checkpoint interval (1 s): the lowest lag
/// seen over this window is the backlog without the events merely waiting
/// for the next offset commit.
const LAG_FLOOR_WINDOW_SECS: f64 = 1.5;

/// Each sample's lowest lag over the [`LAG_FLOOR_WINDOW_SECS`] before it.
/// The detector commits its group offsets with its checkpoint, so committed
/// lag is a sawtooth from near 0 to about a second's events; sampled at a
/// steady rate, the sawtooth's phase drifts and the raw samples jump
/// between its ends. Its floor is the real backlog.
fn lag_floor(samples: &[(f64, i64)]) -> Vec<(f64, i64)> {
    samples
        .iter()
        .enumerate()
        .map(|(i, &(t, _))| {
            let floor = samples[..=i]
                .iter()
                .rev()
                .take_while(|(earlier, _)| t - earlier < LAG_FLOOR_WINDOW_SECS)
                .map(|(_, lag)| *lag)
                .min()
                .unwrap_or(0);
            (t, floor)
        })
        .collect()
}

/// Lag is growing when the detector falls behind by more than 2% of the
/// input rate (least-squares slope) and ends further behind than it was,
/// both judged on the lag's floor ([`lag_floor`]). The first quarter is
/// left out of both: the stream is still starting.
fn lag_verdict(samples: &[(f64, i64)], rate: f64) -> LagVerdict {
    let samples = &lag_floor(samples)[..];
    let quarter = (samples.len() / 4).max(1).min(samples.len());
    let mean =
        |xs: &[(f64, i64)]| xs.iter().map(|(_, l)| *l as f64).sum::<f64>() / xs.len().max(1) as f64;
    let settled = &samples[quarter.min(samples.len().saturating_sub(2))..];
    let second_quarter = &settled[..quarter.min(settled.len())];
    let last_quarter = &samples[samples.len() - quarter..];
    let slope_per_sec = slope(settled);
    LagVerdict {
        first_quarter: mean(&samples[..quarter]),
        last_quarter: mean(last_quarter),
        slope_per_sec,
        growing: slope_per_sec > 0.02 * rate && mean(last_quarter) > mean(second_quarter),
    }
}

/// Least-squares slope of (time, lag) samples, in events per second.
fn slope(samples: &[(f64, i64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_l = samples.iter().map(|(_, l)| *l as f64).sum::<f64>() / n;
    let covariance: f64 = samples
        .iter()
        .map(|(t, l)| (t - mean_t) * (*l as f64 - mean_l))
        .sum();
    let variance: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// Counts the messages of a (small) topic by reading it to its end.
fn count_messages(brokers: &str, topic: &str, prefix: &str) -> Result<u64> {
    let consumer: BaseConsumer =
        bus::consumer_config(brokers, &format!("{prefix}.count")).create()?;
    consumer.subscribe(&[topic])?;
    let mut count = 0;
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(2) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message?;
            count += 1;
            idle = Instant::now();
        }
    }
    Ok(count)
}

/// Writes report.json, report.txt and latency.svg into `out`.
pub fn write_report(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join("report.txt"), report.summary())?;
    std::fs::write(out.join("latency.svg"), report.histogram_svg())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_slope_is_events_per_second() {
        let rising: Vec<(f64, i64)> = (0..10)
            .map(|t| (f64::from(t), 500 * i64::from(t)))
            .collect();
        assert!((slope(&rising) - 500.0).abs() < 1e-9);
        let flat: Vec<(f64, i64)> = (0..10).map(|t| (f64::from(t), 42)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(0.0, 5)]), 0.0);
    }

    #[test]
    fn lag_that_steps_up_to_a_checkpoint_and_stays_is_not_growing() {
        // Committed offsets trail by one checkpoint (about 1 s of 20,000
        // events/s) once the stream is continuous.
        let step: Vec<(f64, i64)> = (0..31)
            .map(|t| {
                (
                    f64::from(t),
                    if t < 5 {
                        400
                    } else {
                        20_400 - 20 * i64::from(t)
                    },
                )
            })
            .collect();
        let verdict = lag_verdict(&step, 20_000.0);
        assert!(!verdict.growing, "{verdict:?}");
        assert!(verdict.last_quarter > verdict.first_quarter);
    }

    /// A 1 s checkpoint sampled every 250 ms: lag climbs from about 0 to a
    /// second's events and drops at each commit.
    fn sawtooth(backlog: impl Fn(f64) -> i64) -> Vec<(f64, i64)> {
        (0..240)
            .map(|i| {
                let t = f64::from(i) * 0.25 + 0.01;
                (t, backlog(t) + (t.fract() * 20_000.0) as i64)
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_sawtooth_is_not_growing() {
        let verdict = lag_verdict(&sawtooth(|_| 300), 20_000.0);
        assert!(!verdict.growing, "{verdict:?}");
        assert!(verdict.slope_per_sec.abs() < 50.0, "{verdict:?}");
    }

    #[test]
    fn a_sawtooth_over_a_rising_backlog_is_growing() {
        let verdict = lag_verdict(&sawtooth(|t| (t * 1_000.0) as i64), 20_000.0);
        assert!(verdict.growing, "{verdict:?}");
        assert!(
            (verdict.slope_per_sec - 1_000.0).abs() < 100.0,
            "{verdict:?}"
        );
    }

    #[test]
    fn lag_that_keeps_rising_is_growing() {
        let rising: Vec<(f64, i64)> = (0..31)
            .map(|t| (f64::from(t), 1_000 * i64::from(t)))
            .collect();
        let verdict = lag_verdict(&rising, 20_000.0);
        assert!(verdict.growing, "{verdict:?}");
        assert!((verdict.slope_per_sec - 1_000.0).abs() < 1e-6);
        assert!(!lag_verdict(&[], 20_000.0).growing);
        assert!(!lag_verdict(&[(0.0, 10)], 20_000.0).growing);
    }
}
