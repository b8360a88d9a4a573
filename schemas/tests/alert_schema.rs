//! What `Alert` writes conforms to `json/alert.v1.schema.json`, and the
//! schema rejects documents a SIEM must not accept.

use vigil_schemas::Alert;
use vigil_schemas::alert::{
    AnalysisTarget, AnomalyAnalysis, JSON_SCHEMA, NewAlert, Observation, Observations,
    RelatedEvent, Severity,
};

fn sample_alert(learning: bool) -> Alert {
    Alert::new(NewAlert {
        rule_id: "phi-bulk-read-off-hours".into(),
        rule_version: 2,
        title: "Bulk PHI read far outside the user's and role's normal hours".into(),
        description: "alice opened 230 PHI files in 15 minutes at 02:10".into(),
        severity: Severity::High,
        hipaa_control: "164.312(b)".into(),
        mitre_techniques: vec!["T1005".into()],
        principal: "alice".into(),
        host: "ehr-01".into(),
        discriminator: "window=2026-11-22T02:00Z".into(),
        related_events: vec![
            RelatedEvent {
                uid: "ehr-01-run1-17".into(),
                kind: "open".into(),
                time: 1_795_000_000_000,
            },
            RelatedEvent {
                uid: "ehr-01-run1-18".into(),
                kind: "open".into(),
                time: 1_795_000_000_500,
            },
        ],
        anomaly_analyses: vec![AnomalyAnalysis {
            analysis_targets: vec![AnalysisTarget {
                name: "alice".into(),
                kind: "user".into(),
            }],
            anomalies: vec![Observations {
                observation_parameter: "user_phi_opens_15m".into(),
                observation_type: "Volume".into(),
                observations: vec![Observation {
                    name: "user_phi_opens_15m".into(),
                    value: "230".into(),
                }],
            }],
            baselines: vec![Observations {
                observation_parameter: "user_phi_opens_15m".into(),
                observation_type: "Volume".into(),
                observations: vec![Observation {
                    name: "mean".into(),
                    value: "4.2".into(),
                }],
            }],
        }],
        learning,
        time_ms: 1_795_000_001_000,
    })
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(JSON_SCHEMA).expect("alert.v1.schema.json is JSON");
    jsonschema::validator_for(&schema).expect("alert.v1.schema.json is a valid JSON Schema")
}

fn errors(document: &serde_json::Value) -> Vec<String> {
    validator()
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn alerts_and_review_items_conform_to_the_json_schema() {
    for learning in [false, true] {
        let alert = sample_alert(learning);
        let document = serde_json::to_value(&alert).expect("alert serializes");
        assert_eq!(
            errors(&document),
            Vec::<String>::new(),
            "learning={learning}"
        );
        assert_eq!(document["class_uid"], 2004);
        assert_eq!(document["type_uid"], 200401);
        assert_eq!(document["severity_id"], 4);
        assert_eq!(
            document["finding_info"]["first_seen_time"],
            1_795_000_000_000_i64
        );
        assert_eq!(
            document["finding_info"]["last_seen_time"],
            1_795_000_000_500_i64
        );
        let expected_log = if learning {
            "vigil.review.v1"
        } else {
            "vigil.alerts.v1"
        };
        assert_eq!(document["metadata"]["log_name"], expected_log);
        let back: Alert = serde_json::from_value(document).expect("reads back");
        assert_eq!(back, alert);
    }
}

#[test]
fn the_schema_rejects_broken_alerts() {
    let good = serde_json::to_value(sample_alert(false)).expect("serializes");
    // (what is broken, JSON pointer, replacement; None removes the field)
    let cases: [(&str, &str, Option<serde_json::Value>); 6] = [
        ("wrong class", "/class_uid", Some(2001.into())),
        ("missing finding uid", "/finding_info/uid", None),
        (
            "not a HIPAA section",
            "/compliance/control",
            Some("PCI 10.2".into()),
        ),
        (
            "not an ATT&CK id",
            "/finding_info/attacks/0/technique/uid",
            Some("bulk".into()),
        ),
        (
            "no triggering events",
            "/finding_info/related_events",
            Some(serde_json::json!([])),
        ),
        ("severity out of range", "/severity_id", Some(42.into())),
    ];
    for (what, pointer, replacement) in cases {
        let mut document = good.clone();
        match replacement {
            Some(value) => *document.pointer_mut(pointer).expect("field exists") = value,
            None => {
                let (parent, field) = pointer.rsplit_once('/').expect("pointer has a parent");
                document
                    .pointer_mut(parent)
                    .and_then(|p| p.as_object_mut())
                    .expect("parent is an object")
                    .remove(field);
            }
        }
        assert!(
            !errors(&document).is_empty(),
            "schema accepted an alert with {what}"
        );
    }
}
