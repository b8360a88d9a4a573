//! [`Alert`]: the OCSF Detection Finding (class 2004) document published as
//! JSON to `vigil.alerts.v1`, or to `vigil.review.v1` while the principal's
//! baseline is still learning.
//!
//! The shape follows OCSF 1.3 so SIEMs ingest it without custom parsing;
//! Vigil-specific fields sit under `unmapped.vigil`. `json/alert.v1.schema.json`
//! is the JSON Schema SIEM engineers validate against, and a test checks that
//! what this module writes conforms to it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// OCSF schema version the document follows.
pub const OCSF_VERSION: &str = "1.3.0";
/// OCSF class: Detection Finding.
pub const CLASS_UID: u32 = 2004;
/// OCSF category: Findings.
pub const CATEGORY_UID: u32 = 2;
/// OCSF activity: Create.
pub const ACTIVITY_CREATE: u32 = 1;
/// The JSON Schema of this document.
pub const JSON_SCHEMA: &str = include_str!("../json/alert.v1.schema.json");

/// OCSF severity, as a rule header names it (`-- severity: high`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// OCSF `severity_id`.
    pub fn id(self) -> u8 {
        match self {
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
        }
    }

    /// OCSF `severity` caption.
    pub fn caption(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "informational" | "info" => Ok(Severity::Informational),
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity `{other}`; use informational, low, medium, high or critical"
            )),
        }
    }
}

/// The deterministic alert id: the same rule version firing for the same
/// principal over the same window (or the same triggering events) always
/// yields the same id, so at-least-once delivery can be de-duplicated.
pub fn alert_id(rule_id: &str, rule_version: u32, principal: &str, discriminator: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        rule_id.as_bytes(),
        &rule_version.to_be_bytes(),
        principal.as_bytes(),
        discriminator.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// An OCSF Detection Finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub class_uid: u32,
    pub class_name: String,
    pub category_uid: u32,
    pub category_name: String,
    pub activity_id: u32,
    pub activity_name: String,
    pub type_uid: u32,
    pub type_name: String,
    pub severity_id: u8,
    pub severity: String,
    pub status_id: u8,
    pub status: String,
    /// Milliseconds since the Unix epoch when the finding was made.
    pub time: i64,
    pub message: String,
    pub metadata: Metadata,
    pub finding_info: FindingInfo,
    pub compliance: Compliance,
    pub actor: Actor,
    pub device: Device,
    pub anomaly_analyses: Vec<AnomalyAnalysis>,
    pub unmapped: Unmapped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: String,
    pub uid: String,
    pub log_name: String,
    pub product: Product,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub vendor_name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingInfo {
    /// The deterministic alert id (see [`alert_id`]).
    pub uid: String,
    pub title: String,
    pub desc: String,
    pub types: Vec<String>,
    pub analytic: Analytic,
    pub attacks: Vec<Attack>,
    /// The events that triggered the finding.
    pub related_events: Vec<RelatedEvent>,
    /// Milliseconds since the Unix epoch of the first and last triggering event.
    pub first_seen_time: i64,
    pub last_seen_time: i64,
}

/// The rule that produced the finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analytic {
    pub uid: String,
    pub name: String,
    /// 1 = Rule.
    pub type_id: u8,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attack {
    pub technique: Technique,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Technique {
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelatedEvent {
    pub uid: String,
    /// The event kind (`open`, `exec`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compliance {
    pub standards: Vec<String>,
    /// The HIPAA control the finding evidences, e.g. `164.312(b)`.
    pub control: String,
    pub requirements: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub hostname: String,
}

/// Why the behaviour is anomalous: what was observed against which baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyAnalysis {
    pub analysis_targets: Vec<AnalysisTarget>,
    pub anomalies: Vec<Observations>,
    pub baselines: Vec<Observations>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisTarget {
    pub name: String,
    /// `user`, `role` or `host`.
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    pub observation_parameter: String,
    pub observation_type: String,
    pub observations: Vec<Observation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub name: String,
    pub value: String,
}

/// Vigil's fields outside the OCSF model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmapped {
    pub vigil: VigilFields,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VigilFields {
    pub principal: String,
    pub rule_id: String,
    pub rule_version: u32,
    /// True when the principal's baseline was still learning, so the alert
    /// went to the review topic.
    pub learning: bool,
}

/// What a detector knows when a rule fires; [`Alert::new`] adds the OCSF
/// constants.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub rule_id: String,
    pub rule_version: u32,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub hipaa_control: String,
    pub mitre_techniques: Vec<String>,
    pub principal: String,
    pub host: String,
    /// Window start or triggering event ids: what makes this firing distinct.
    pub discriminator: String,
    pub related_events: Vec<RelatedEvent>,
    pub anomaly_analyses: Vec<AnomalyAnalysis>,
    pub learning: bool,
    pub time_ms: i64,
}

impl Alert {
    /// Builds the finding, deriving its deterministic id.
    pub fn new(input: NewAlert) -> Alert {
        let uid = alert_id(
            &input.rule_id,
            input.rule_version,
            &input.principal,
            &input.discriminator,
        );
        let first_seen_time = input
            .related_events
            .iter()
            .map(|e| e.time)
            .min()
            .unwrap_or(input.time_ms);
        let last_seen_time = input
            .related_events
            .iter()
            .map(|e| e.time)
            .max()
            .unwrap_or(input.time_ms);
        Alert {
            class_uid: CLASS_UID,
            class_name: "Detection Finding".into(),
            category_uid: CATEGORY_UID,
            category_name: "Findings".into(),
            activity_id: ACTIVITY_CREATE,
            activity_name: "Create".into(),
            type_uid: CLASS_UID * 100 + ACTIVITY_CREATE,
            type_name: "Detection Finding: Create".into(),
            severity_id: input.severity.id(),
            severity: input.severity.caption().into(),
            status_id: 1,
            status: "New".into(),
            time: input.time_ms,
            message: input.title.clone(),
            metadata: Metadata {
                version: OCSF_VERSION.into(),
                uid: uid.clone(),
                log_name: if input.learning {
                    crate::topics::REVIEW.into()
                } else {
                    crate::topics::ALERTS.into()
                },
                product: Product {
                    name: "Vigil".into(),
                    vendor_name: "Vigil".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            },
            finding_info: FindingInfo {
                uid,
                title: input.title.clone(),
                desc: input.description,
                types: vec!["PHI access anomaly".into()],
                analytic: Analytic {
                    uid: input.rule_id.clone(),
                    name: input.title,
                    type_id: 1,
                    kind: "Rule".into(),
                    version: input.rule_version.to_string(),
                },
                attacks: input
                    .mitre_techniques
                    .into_iter()
                    .map(|uid| Attack {
                        technique: Technique { uid },
                        version: "v15".into(),
                    })
                    .collect(),
                related_events: input.related_events,
                first_seen_time,
                last_seen_time,
            },
            compliance: Compliance {
                standards: vec!["HIPAA Security Rule".into()],
                control: input.hipaa_control.clone(),
                requirements: vec![format!("45 CFR §{}", input.hipaa_control)],
            },
            actor: Actor {
                user: User {
                    name: input.principal.clone(),
                    uid: None,
                },
            },
            device: Device {
                hostname: input.host,
            },
            anomaly_analyses: input.anomaly_analyses,
            unmapped: Unmapped {
                vigil: VigilFields {
                    principal: input.principal,
                    rule_id: input.rule_id,
                    rule_version: input.rule_version,
                    learning: input.learning,
                },
            },
        }
    }

    /// The deterministic id (also `finding_info.uid` and `metadata.uid`).
    pub fn id(&self) -> &str {
        &self.finding_info.uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_id_is_deterministic_and_sensitive_to_every_part() {
        let base = alert_id("phi-bulk-read", 3, "alice", "2026-11-22T02:00");
        assert_eq!(
            base,
            alert_id("phi-bulk-read", 3, "alice", "2026-11-22T02:00")
        );
        assert_eq!(base.len(), 32);
        for other in [
            alert_id("phi-bulk-read-x", 3, "alice", "2026-11-22T02:00"),
            alert_id("phi-bulk-read", 4, "alice", "2026-11-22T02:00"),
            alert_id("phi-bulk-read", 3, "bob", "2026-11-22T02:00"),
            alert_id("phi-bulk-read", 3, "alice", "2026-11-22T02:15"),
        ] {
            assert_ne!(base, other);
        }
        // Length-prefixing keeps shifted boundaries apart.
        assert_ne!(alert_id("ab", 1, "c", ""), alert_id("a", 1, "bc", ""));
    }

    #[test]
    fn severity_parses_header_words_and_rejects_others() {
        assert_eq!("High".parse::<Severity>(), Ok(Severity::High));
        assert_eq!(" info ".parse::<Severity>(), Ok(Severity::Informational));
        let err = "urgent"
            .parse::<Severity>()
            .expect_err("urgent is no severity");
        assert!(err.contains("urgent"), "{err}");
    }
}
