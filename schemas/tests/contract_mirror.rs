//! The Rust types mirror the `.avsc` files field for field, in order.

mod common;

use apache_avro::Schema;
use vigil_schemas::wire;
use vigil_schemas::{AuditRecord, Event};

fn schema_fields(contract: &str) -> Vec<String> {
    let known = wire::known_schemas()
        .iter()
        .filter(|s| s.contract == contract)
        .max_by_key(|s| s.revision)
        .expect("contract is known");
    match &known.schema {
        Schema::Record(record) => record.fields.iter().map(|f| f.name.clone()).collect(),
        other => panic!("{contract} is not a record: {other:?}"),
    }
}

fn json_fields<T: serde::Serialize>(value: &T) -> Vec<String> {
    // apache_avro's serializer keeps the struct's declaration order.
    match apache_avro::to_value(value).expect("serializes") {
        apache_avro::types::Value::Record(fields) => fields.into_iter().map(|(n, _)| n).collect(),
        other => panic!("not a record: {other:?}"),
    }
}

#[test]
fn event_type_matches_current_event_schema() {
    assert_eq!(
        json_fields(&common::sample_event(1)),
        schema_fields("Event")
    );
}

#[test]
fn audit_type_matches_current_audit_schema() {
    let record = AuditRecord {
        partition: 0,
        seq: 0,
        prev_hash: vec![0; 32],
        recorded_unix_ns: 0,
        event_id: "e".into(),
        action: "open".into(),
        time_unix_ns: 0,
        host: "h".into(),
        principal: "p".into(),
        uid: 0,
        login_uid: None,
        user_name: None,
        pid: 0,
        comm: "c".into(),
        exe: None,
        path: None,
        new_path: None,
        bytes: None,
        errno: 0,
        gap: None,
        source_topic: "t".into(),
        source_partition: 0,
        source_offset: 0,
        hash: vec![0; 32],
    };
    assert_eq!(json_fields(&record), schema_fields("AuditRecord"));
    let bytes = vigil_schemas::encode(&record);
    let back: AuditRecord = vigil_schemas::decode(&bytes).expect("and decodes");
    assert_eq!(back, record);
}

#[test]
fn kind_enum_matches_schema_symbols() {
    let known = wire::current_schema::<Event>();
    let Schema::Record(record) = &known.schema else {
        panic!("event is a record")
    };
    let kind = record
        .fields
        .iter()
        .find(|f| f.name == "kind")
        .expect("event has kind");
    let Schema::Enum(e) = &kind.schema else {
        panic!("kind is an enum")
    };
    let rust: Vec<&str> = vigil_schemas::Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(e.symbols, rust);
}
