//! `detector run` in process against a real tansu broker and a real RocksDB:
//! events in; alerts, review items, audit records and dead letters out;
//! rules hot-reloaded.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    DAY, MONDAY, alert_json, file_event, produce_events, produce_raw, read_topic, rule_of,
};
use rdkafka::Message;
use rdkafka::message::Headers;
use vigil_detector::audit_chain::Verifier;
use vigil_schemas::testkit::TestBroker;
use vigil_schemas::{AuditRecord, Kind, decode};

const SETTLE: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_alerts_review_items_audit_records_and_dead_letters() {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 2).await;
    let rules = common::rules_dir(&["phi-bulk-read", "audit-log-tampering"]);
    let state = tempfile::tempdir().expect("state dir");
    let config = common::config(&broker, &topics, state.path(), rules.path());
    let (shutdown, running) = common::spawn_detector(config, "detector starts").await;

    // A malformed record and a wrongly keyed one first: both must go to the
    // dead-letter topic and the good records after them still be processed.
    produce_raw(&broker, &topics.events, "alice", b"not an event").await;
    let mut wrong_key = file_event("alice", Kind::Open, "/srv/phi/x.json", MONDAY, 0);
    wrong_key.event_id = "wrong-key".into();
    let payload = vigil_schemas::encode(&wrong_key);
    produce_raw(&broker, &topics.events, "mallory", &payload).await;
    // Events from hosts with a wrong clock: a day ahead, and 1970.
    let tomorrow = vigil_detector::pipeline::now_unix_ns() + DAY;
    let ahead = file_event("dave", Kind::Open, "/srv/phi/d.json", tomorrow, 0);
    let unset = file_event("dave", Kind::Open, "/srv/phi/d.json", 5_000_000_000, 1);
    produce_events(&broker, &topics.events, &[ahead, unset]).await;

    let mut events = Vec::new();
    // Alice: a few opens on Monday (history), then 250 on Wednesday at 02:10.
    for i in 0..5 {
        events.push(file_event(
            "alice",
            Kind::Open,
            &format!("/srv/phi/a{i}.json"),
            MONDAY + 9 * 3_600_000_000_000 + i,
            i,
        ));
    }
    let wednesday_0210 = MONDAY + 2 * DAY + 2 * 3_600_000_000_000 + 600_000_000_000;
    for i in 0..250 {
        events.push(file_event(
            "alice",
            Kind::Open,
            &format!("/srv/phi/b{i}.json"),
            wednesday_0210 + i * 2_000_000_000,
            100 + i,
        ));
    }
    // Carol: never seen before, same burst -> learning -> review.
    for i in 0..250 {
        events.push(file_event(
            "carol",
            Kind::Open,
            &format!("/srv/phi/c{i}.json"),
            wednesday_0210 + i * 2_000_000_000,
            i,
        ));
    }
    // Mallory truncates the audit log (per-event rule; new principal -> review).
    events.push(file_event(
        "mallory",
        Kind::Truncate,
        "/var/log/audit/audit.log",
        wednesday_0210,
        0,
    ));
    // A non-PHI event: no audit record.
    let mut exec = file_event("bob", Kind::Exec, "/usr/bin/ls", wednesday_0210, 0);
    exec.path = None;
    events.push(exec);
    produce_events(&broker, &topics.events, &events).await;

    let dlq = read_topic(&broker, &topics.dlq, 4, SETTLE, TIMEOUT).await;
    assert_eq!(dlq.len(), 4, "all four bad records are dead letters");
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| -> String {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == key))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let errors: Vec<String> = dlq.iter().map(|m| header(m, "vigil.error")).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not a Vigil Avro message")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("is not the event's principal")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ahead of the detector's clock") && e.contains("host `ehr-01`")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("before the year 2000")),
        "{errors:?}"
    );
    for message in &dlq {
        assert_eq!(header(message, "vigil.source.topic"), topics.events);
        assert!(!header(message, "vigil.source.offset").is_empty());
        assert!(message.payload().is_some(), "original bytes are kept");
    }
    assert!(
        dlq.iter()
            .any(|m| m.payload() == Some(b"not an event".as_slice()))
    );

    let alerts = read_topic(&broker, &topics.alerts, 1, SETTLE, TIMEOUT).await;
    let alerts: Vec<serde_json::Value> = alerts.iter().map(alert_json).collect();
    assert_eq!(alerts.len(), 1, "one windowed alert for alice: {alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["unmapped"]["vigil"]["principal"], "alice");
    assert_eq!(alert["finding_info"]["analytic"]["uid"], "phi-bulk-read");
    assert_eq!(alert["compliance"]["control"], "164.312(b)");
    assert_eq!(
        alert["finding_info"]["attacks"][0]["technique"]["uid"],
        "T1005"
    );
    assert!(
        alert["finding_info"]["related_events"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "alert lists its triggering events"
    );
    let schema: serde_json::Value =
        serde_json::from_str(vigil_schemas::alert::JSON_SCHEMA).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    assert!(
        validator.is_valid(alert),
        "alert conforms to alert.v1.schema.json"
    );

    let review = read_topic(&broker, &topics.review, 2, SETTLE, TIMEOUT).await;
    let review: BTreeSet<(String, String)> = review
        .iter()
        .map(alert_json)
        .map(|a| {
            (
                a["unmapped"]["vigil"]["principal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                rule_of(&a),
            )
        })
        .collect();
    assert_eq!(
        review,
        BTreeSet::from([
            ("carol".to_owned(), "phi-bulk-read".to_owned()),
            ("mallory".to_owned(), "audit-log-tampering".to_owned()),
        ])
    );

    // Every PHI access, including the three dead-lettered ones that
    // decoded, plus a gap for the record that did not.
    let expected_audit = 5 + 250 + 250 + 1 + 4;
    let audit = read_topic(&broker, &topics.audit, expected_audit, SETTLE, TIMEOUT).await;
    assert_eq!(
        audit.len(),
        expected_audit,
        "one audit record per PHI access and per undecodable record"
    );
    let mut records: Vec<(i32, i64, AuditRecord)> = audit
        .iter()
        .map(|m| {
            let record: AuditRecord =
                decode(m.payload().expect("payload")).expect("audit record decodes");
            assert_eq!(
                record.partition,
                m.partition(),
                "chain partition = topic partition"
            );
            (m.partition(), m.offset(), record)
        })
        .collect();
    records.sort_by_key(|(p, o, _)| (*p, *o));
    let gaps: Vec<&AuditRecord> = records
        .iter()
        .map(|(_, _, r)| r)
        .filter(|r| r.gap.is_some())
        .collect();
    assert_eq!(
        gaps.len(),
        1,
        "one gap, for the undecodable record: {gaps:#?}"
    );
    let gap = gaps[0].gap.as_ref().expect("a gap");
    assert!(
        gap.reason.starts_with("undecodable_record: ")
            && gap.reason.contains("not a Vigil Avro message"),
        "the gap says why the trail is blind: {gap:?}"
    );
    assert_eq!((gap.lost, gaps[0].principal.as_str()), (1, "alice"));
    let dead_lettered_accesses: BTreeSet<(&str, i64)> = records
        .iter()
        .map(|(_, _, r)| r)
        .filter(|r| r.event_id == "wrong-key" || r.principal == "dave")
        .map(|r| (r.event_id.as_str(), r.time_unix_ns))
        .collect();
    assert_eq!(
        dead_lettered_accesses,
        BTreeSet::from([
            ("wrong-key", MONDAY),
            ("ehr-01-dave-0", tomorrow),
            ("ehr-01-dave-1", 5_000_000_000),
        ]),
        "dead-lettered PHI accesses are audited with the times their hosts gave"
    );
    let mut verifier = Verifier::default();
    for (_, offset, record) in records {
        verifier.check(record, &format!("offset {offset}"));
    }
    assert_eq!(verifier.first_broken(), None, "chains verify");

    shutdown.cancel();
    let counters = running.await.expect("task").expect("clean shutdown");
    assert_eq!(counters.dead_letters, 4);
    assert_eq!(counters.audit, expected_audit as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rules_are_refused_and_a_fixed_version_is_hot_reloaded() {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["audit-log-tampering"]);
    let broken_path = rules.path().join("phi-write.sql");
    let header = "-- id: phi-write\n-- title: PHI written\n-- severity: low\n-- hipaa: 164.312(c)(1)\n-- mitre: T1565\n-- version: 1\n";
    std::fs::write(
        &broken_path,
        format!("{header}SELECT * FROM events\nWHERE kind = 'write' AND is_ph\n"),
    )
    .expect("write broken rule");
    let (_, errors) = vigil_detector::rules::RuleSet::load_dir(rules.path()).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("phi-write.sql line 8"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].reason.contains("did you mean `is_phi`"),
        "{}",
        errors[0]
    );

    let state = tempfile::tempdir().expect("state dir");
    let mut config = common::config(&broker, &topics, state.path(), rules.path());
    config.learning_days = 0;
    let (shutdown, running) = common::spawn_detector(config, "starts with one rule refused").await;

    let t = MONDAY + 14 * 3_600_000_000_000;
    produce_events(
        &broker,
        &topics.events,
        &[
            file_event("mallory", Kind::Truncate, "/var/log/audit/audit.log", t, 0),
            file_event("dave", Kind::Write, "/srv/phi/w1.json", t, 1),
        ],
    )
    .await;
    let alerts = read_topic(&broker, &topics.alerts, 1, SETTLE, TIMEOUT).await;
    let rules_fired: Vec<String> = alerts.iter().map(|m| rule_of(&alert_json(m))).collect();
    assert_eq!(
        rules_fired,
        vec!["audit-log-tampering"],
        "the good rule runs, the broken one does not"
    );

    // Fix the rule; the detector picks it up within a couple of seconds.
    std::fs::write(
        &broken_path,
        format!("{header}SELECT * FROM events\nWHERE kind = 'write' AND is_phi\n"),
    )
    .expect("write fixed rule");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    produce_events(
        &broker,
        &topics.events,
        &[file_event(
            "dave",
            Kind::Write,
            "/srv/phi/w2.json",
            t + 1,
            2,
        )],
    )
    .await;
    let alerts = read_topic(&broker, &topics.alerts, 2, SETTLE, TIMEOUT).await;
    let rules_fired: BTreeSet<String> = alerts.iter().map(|m| rule_of(&alert_json(m))).collect();
    assert_eq!(
        rules_fired,
        BTreeSet::from(["audit-log-tampering".to_owned(), "phi-write".to_owned()])
    );

    shutdown.cancel();
    running.await.expect("task").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_big_to_republish_is_dead_lettered_without_its_value() {
    let broker = TestBroker::start();
    let topics = common::topics(&broker, 1).await;
    let rules = common::rules_dir(&["phi-bulk-read"]);
    let state = tempfile::tempdir().expect("state dir");
    let config = common::config(&broker, &topics, state.path(), rules.path());
    let (shutdown, running) = common::spawn_detector(config, "detector starts").await;

    // 1.2 MB: more than a dead letter may carry (librdkafka's default
    // message.max.bytes), sent by a producer allowed 2 MB.
    let producer: rdkafka::producer::FutureProducer =
        vigil_schemas::bus::producer_config(broker.bootstrap())
            .set("message.max.bytes", "2000000")
            .create()
            .expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topics.events)
                .key("alice")
                .payload(&vec![b'x'; 1_200_000]),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes a 1.2 MB record");
    let after = file_event("alice", Kind::Open, "/srv/phi/after.json", MONDAY, 1);
    produce_events(&broker, &topics.events, &[after]).await;

    let dlq = read_topic(&broker, &topics.dlq, 1, SETTLE, TIMEOUT).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload(), None, "the value is left out");
    assert_eq!(dlq[0].key(), Some(b"alice".as_slice()), "the key is kept");
    let omitted = dlq[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "vigil.omitted"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    assert!(
        omitted.starts_with("value (1200000 bytes) too big"),
        "{omitted:?}"
    );
    let audit = read_topic(&broker, &topics.audit, 2, SETTLE, TIMEOUT).await;
    let audit: Vec<AuditRecord> = audit
        .iter()
        .map(|m| decode(m.payload().expect("payload")).expect("audit record decodes"))
        .collect();
    let shapes: Vec<(bool, &str)> = audit
        .iter()
        .map(|r| (r.gap.is_some(), r.event_id.as_str()))
        .collect();
    assert_eq!(
        shapes,
        [(true, "undecodable-0-0"), (false, "ehr-01-alice-1")],
        "a gap for the record, then the next event, still processed"
    );
    assert!(!running.is_finished(), "{:?}", running.await);
    shutdown.cancel();
    let counters = running.await.expect("task").expect("clean shutdown");
    assert_eq!(counters.dead_letters, 1);
}
