//! The single-object wire format: round-trips, schema evolution and every
//! kind of damaged message.

mod common;

use common::{arb_event, sample_event};
use proptest::prelude::*;
use vigil_schemas::wire::{self, HEADER_LEN, MAGIC};
use vigil_schemas::{AuditRecord, Decoded, Error, Event, decode, decode_any, encode};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_event_round_trips(event in arb_event()) {
        let bytes = encode(&event);
        prop_assert_eq!(&bytes[..2], &MAGIC);
        let back: Event = decode(&bytes).expect("what we wrote decodes");
        prop_assert_eq!(&back, &event);
        let any = decode_any(&bytes).expect("decode_any reads it too");
        prop_assert_eq!(any, Decoded::Event(Box::new(event)));
    }

    #[test]
    fn every_truncation_is_an_error(event in arb_event(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&event);
        let len = cut.index(bytes.len());
        let result = decode::<Event>(&bytes[..len]);
        match result {
            Err(Error::Truncated { .. }) => prop_assert!(len < HEADER_LEN),
            Err(Error::Corrupt { .. }) => prop_assert!(len >= HEADER_LEN),
            other => prop_assert!(false, "cut at {} of {}: {:?}", len, bytes.len(), other),
        }
    }

    /// A flipped bit never panics and is always caught in the header. In the
    /// body it gives a body error or decodes to some event: Avro has no
    /// checksum (Kafka's record-batch CRC guards the bytes in transit), and
    /// some bits — the top of a 10-byte varint — carry no information.
    #[test]
    fn bit_flips_never_panic_and_header_flips_are_caught(event in arb_event(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode(&event);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let result = decode::<Event>(&bytes);
        if i < 2 {
            let is_bad_magic = matches!(result, Err(Error::BadMagic { .. }));
            prop_assert!(is_bad_magic, "{:?}", result);
        } else if i < HEADER_LEN {
            let is_unknown = matches!(result, Err(Error::UnknownFingerprint { .. }));
            prop_assert!(is_unknown, "{:?}", result);
        } else {
            let body_outcome = matches!(
                result,
                Ok(_) | Err(Error::Corrupt { .. }) | Err(Error::TrailingBytes { .. })
            );
            prop_assert!(body_outcome, "{:?}", result);
        }
    }
}

#[test]
fn revision_1_messages_decode_into_the_current_event() {
    // Revision 1 of the event, as an older collector would write it: the
    // current event's fields without `argv`.
    let current = sample_event(7);
    let mut fields = match serde_json::to_value(&current).expect("to json") {
        serde_json::Value::Object(map) => map,
        other => panic!("event is not an object: {other}"),
    };
    fields.remove("argv").expect("current revision has argv");

    // Encode through the revision-1 schema by going JSON -> Avro value.
    let r1 = wire::known_schemas()
        .iter()
        .find(|s| s.contract == "Event" && s.revision == 1)
        .expect("revision 1 is known");
    let old = encode_json_with(r1.schema, &serde_json::Value::Object(fields));
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&r1.fingerprint.to_le_bytes());
    message.extend_from_slice(&old);

    assert_ne!(
        r1.fingerprint,
        wire::current_schema::<Event>().fingerprint,
        "revisions must differ"
    );
    let decoded: Event = decode(&message).expect("revision 1 decodes with the current reader");
    assert_eq!(
        decoded.argv,
        Vec::<String>::new(),
        "argv takes its default when absent"
    );
    assert_eq!(
        Event {
            argv: current.argv.clone(),
            ..decoded
        },
        current
    );
}

/// Encodes a JSON object as an Avro datum of `schema`, field by field, the
/// way an independent producer would (not through this crate's types).
fn encode_json_with(schema: &apache_avro::Schema, json: &serde_json::Value) -> Vec<u8> {
    let value = json_to_avro(schema, json);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("writer for the schema")
        .write_value_to_vec(value)
        .expect("json matches the schema")
}

fn json_to_avro(
    schema: &apache_avro::Schema,
    json: &serde_json::Value,
) -> apache_avro::types::Value {
    use apache_avro::Schema as S;
    use apache_avro::types::Value as V;
    match (schema, json) {
        (S::Record(record), serde_json::Value::Object(map)) => V::Record(
            record
                .fields
                .iter()
                .map(|f| {
                    let v = map.get(&f.name).cloned().unwrap_or(serde_json::Value::Null);
                    (f.name.clone(), json_to_avro(&f.schema, &v))
                })
                .collect(),
        ),
        (S::Union(union), v) => {
            let variants = union.variants();
            if v.is_null() {
                V::Union(0, Box::new(V::Null))
            } else {
                V::Union(1, Box::new(json_to_avro(&variants[1], v)))
            }
        }
        (S::Enum(e), serde_json::Value::String(s)) => {
            let index = e
                .symbols
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s} is no symbol"));
            V::Enum(index as u32, s.clone())
        }
        (S::String, serde_json::Value::String(s)) => V::String(s.clone()),
        (S::Int, serde_json::Value::Number(n)) => {
            V::Int(i32::try_from(n.as_i64().expect("integer")).expect("fits i32"))
        }
        (S::Long, serde_json::Value::Number(n)) => V::Long(n.as_i64().expect("integer")),
        (S::Array(a), serde_json::Value::Array(items)) => {
            V::Array(items.iter().map(|i| json_to_avro(&a.items, i)).collect())
        }
        (schema, json) => panic!("no conversion of {json} to {schema:?}"),
    }
}

#[test]
fn a_flipped_length_prefix_is_corruption() {
    let mut bytes = encode(&sample_event(1));
    // The body opens with event_id's length as a zigzag varint (one byte
    // here); setting its continuation bit makes the length absurd.
    assert!(bytes[HEADER_LEN] < 0x80, "one-byte length prefix");
    bytes[HEADER_LEN] |= 0x80;
    let result = decode::<Event>(&bytes);
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
}

#[test]
fn unknown_fingerprint_is_named() {
    let mut bytes = encode(&sample_event(1));
    bytes[2..HEADER_LEN].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    match decode::<Event>(&bytes) {
        Err(Error::UnknownFingerprint { fingerprint }) => {
            assert_eq!(fingerprint, 0x0123_4567_89ab_cdef);
            let text = Error::UnknownFingerprint { fingerprint }.to_string();
            assert!(text.contains("0123456789abcdef"), "{text}");
        }
        other => panic!("expected UnknownFingerprint, got {other:?}"),
    }
}

#[test]
fn json_is_not_mistaken_for_avro() {
    let result = decode_any(br#"{"class_uid":2004}"#);
    assert!(
        matches!(
            result,
            Err(Error::BadMagic {
                found: [b'{', b'"']
            })
        ),
        "{result:?}"
    );
}

#[test]
fn empty_and_header_only_messages_are_errors() {
    assert!(matches!(
        decode::<Event>(&[]),
        Err(Error::Truncated { len: 0 })
    ));
    let bytes = encode(&sample_event(1));
    assert!(matches!(
        decode::<Event>(&bytes[..HEADER_LEN]),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn trailing_bytes_are_corruption() {
    let mut bytes = encode(&sample_event(1));
    bytes.extend_from_slice(&[0, 0, 0]);
    assert!(
        matches!(
            decode::<Event>(&bytes),
            Err(Error::TrailingBytes { extra: 3, .. })
        ),
        "{:?}",
        decode::<Event>(&bytes)
    );
}

#[test]
fn an_event_is_not_an_audit_record() {
    let bytes = encode(&sample_event(1));
    match decode::<AuditRecord>(&bytes) {
        Err(Error::WrongContract { expected, found }) => {
            assert_eq!((expected, found), ("AuditRecord", "Event"));
        }
        other => panic!("expected WrongContract, got {other:?}"),
    }
}

#[test]
fn fingerprints_are_crc64_avro_little_endian() {
    // Test vector from the Avro specification's fingerprint test data:
    // the schema "null" has CRC-64-AVRO 7195948357588979594.
    let null = apache_avro::Schema::parse_str(r#""null""#).expect("parses");
    assert_eq!(wire::fingerprint(&null), 7_195_948_357_588_979_594);
    // Every known revision has its own fingerprint, and the header carries it.
    let known = wire::known_schemas();
    for (i, a) in known.iter().enumerate() {
        for b in &known[i + 1..] {
            assert_ne!(
                a.fingerprint, b.fingerprint,
                "{} r{} vs {} r{}",
                a.contract, a.revision, b.contract, b.revision
            );
        }
    }
    let bytes = encode(&sample_event(1));
    assert_eq!(
        bytes[2..HEADER_LEN],
        wire::current_schema::<Event>().fingerprint.to_le_bytes()
    );
}
