//! The hand-written codecs against `apache-avro`'s schema-driven codec:
//! same bytes out, same values in, the same verdict on damaged bodies.

mod common;

use common::{arb_audit, arb_event};
use proptest::prelude::*;
use vigil_schemas::wire::{
    self, HEADER_LEN, current_schema, decode_schema_driven, encode_schema_driven,
};
use vigil_schemas::{AuditRecord, Contract, Event, codec, decode, encode};

/// Both decoders agree: the same value, or both refuse the message.
fn same_verdict<T: Contract + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let hand = decode::<T>(bytes);
    let reference = decode_schema_driven::<T>(bytes);
    match (&hand, &reference) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(
            false,
            "hand-written {:?} but schema-driven {:?}",
            hand,
            reference
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn events_encode_to_the_schema_driven_bytes(event in arb_event()) {
        let bytes = encode(&event);
        prop_assert_eq!(&bytes, &encode_schema_driven(&event).expect("encodes"));
        let back: Event = decode(&bytes).expect("decodes");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn audit_records_encode_to_the_schema_driven_bytes(record in arb_audit()) {
        let bytes = encode(&record);
        prop_assert_eq!(&bytes, &encode_schema_driven(&record).expect("encodes"));
        let back: AuditRecord = decode(&bytes).expect("decodes");
        prop_assert_eq!(back, record);
    }

    #[test]
    fn damaged_events_get_the_schema_driven_verdict(event in arb_event(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = encode(&event);
        let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
        bytes[i] = byte;
        same_verdict::<Event>(&bytes)?;
        let len = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1);
        same_verdict::<Event>(&bytes[..len])?;
    }

    #[test]
    fn damaged_audit_records_get_the_schema_driven_verdict(record in arb_audit(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&record);
        let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
        bytes[i] = byte;
        same_verdict::<AuditRecord>(&bytes)?;
    }

    /// The hash is taken over the hand-written encoding with `hash` emptied,
    /// which must be the schema-driven encoding of the unsealed record: the
    /// chain stays verifiable by any Avro implementation.
    #[test]
    fn the_audit_hash_covers_the_canonical_encoding(record in arb_audit()) {
        use sha2::Digest;
        let unsealed = AuditRecord { hash: Vec::new(), ..record.clone() };
        let canonical = encode_schema_driven(&unsealed).expect("encodes");
        let expected: [u8; 32] = sha2::Sha256::digest(&canonical[HEADER_LEN..]).into();
        prop_assert_eq!(record.compute_hash(), expected);
    }
}

#[test]
fn the_codecs_implement_the_current_revisions() {
    assert_eq!(
        codec::EVENT_REVISION,
        current_schema::<Event>().revision,
        "a new Event revision is registered: update codec::write_event and codec::read_event"
    );
    assert_eq!(
        codec::AUDIT_REVISION,
        current_schema::<AuditRecord>().revision,
        "a new AuditRecord revision is registered: update codec::write_audit and codec::read_audit"
    );
    assert!(
        wire::known_schemas()
            .iter()
            .any(|s| s.contract == "Event" && s.revision == 1)
    );
}

#[test]
fn argv_in_negative_count_blocks_decodes() {
    // Avro lets a writer give an array block a negative count followed by
    // the block's size in bytes; other writers do.
    let mut event = common::sample_event(1);
    event.argv = vec!["cat".into(), "/phi/p.json".into()];
    let bytes = encode(&event);
    let body = &bytes[HEADER_LEN..];
    let mut plain = event.clone();
    plain.argv.clear();
    let without = encode(&plain);
    // The argv block starts where the two encodings first differ.
    let start = without
        .iter()
        .zip(&bytes)
        .position(|(a, b)| a != b)
        .expect("differs")
        - HEADER_LEN;
    assert_eq!(body[start], 4, "a block of two items (zigzag 2)");
    let items_len = 1 + 3 + 1 + 11;
    let mut rewritten = bytes[..HEADER_LEN + start].to_vec();
    rewritten.push(3); // zigzag(-2)
    rewritten.push((items_len * 2) as u8); // zigzag(16)
    rewritten.extend_from_slice(&body[start + 1..]);
    let back: Event = decode(&rewritten).expect("negative-count block decodes");
    assert_eq!(back, event);
    assert_eq!(
        decode_schema_driven::<Event>(&rewritten).expect("reference decodes"),
        event
    );
}
