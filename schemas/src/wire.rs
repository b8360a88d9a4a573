//! The wire format: Avro single-object encoding, and the table of every
//! schema revision this crate knows.
//!
//! A message is `C3 01`, the writer schema's 8-byte little-endian CRC-64-AVRO
//! fingerprint (of its Parsing Canonical Form), then the Avro binary body.
//! Decoding looks the fingerprint up in [`KNOWN_SCHEMAS`], decodes the body
//! with that writer schema and resolves it into the current revision of the
//! same contract, so a consumer reads messages from older producers.

use std::io::Cursor;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{AuditRecord, Error, Event, Result, codec};

/// The two marker bytes that open every single-object encoded message.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// Every schema revision this build can read, as (contract, revision, `.avsc`
/// text). The highest revision of a contract is the one it writes.
pub const KNOWN_SCHEMAS: [(&str, u32, &str); 3] = [
    ("Event", 1, include_str!("../avro/event.r1.avsc")),
    ("Event", 2, include_str!("../avro/event.r2.avsc")),
    (
        "AuditRecord",
        1,
        include_str!("../avro/audit_record.r1.avsc"),
    ),
];

/// A type that travels on the bus as an Avro record.
pub trait Contract: Serialize + DeserializeOwned {
    /// The contract's name in [`KNOWN_SCHEMAS`].
    const NAME: &'static str;

    /// Appends the Avro binary body of the current revision
    /// (hand-written, see [`crate::codec`]).
    fn write_body(&self, out: &mut Vec<u8>);

    /// Reads a current-revision body; returns the value and the bytes it
    /// took, or why the body is corrupt.
    fn read_body(body: &[u8]) -> std::result::Result<(Self, usize), String>;
}

impl Contract for Event {
    const NAME: &'static str = "Event";

    fn write_body(&self, out: &mut Vec<u8>) {
        codec::write_event(self, out);
    }

    fn read_body(body: &[u8]) -> std::result::Result<(Self, usize), String> {
        codec::read_event(body)
    }
}

impl Contract for AuditRecord {
    const NAME: &'static str = "AuditRecord";

    fn write_body(&self, out: &mut Vec<u8>) {
        codec::write_audit(self, out);
    }

    fn read_body(body: &[u8]) -> std::result::Result<(Self, usize), String> {
        codec::read_audit(body)
    }
}

/// One parsed entry of [`KNOWN_SCHEMAS`], with its reader and writer built
/// once (the registry lives for the whole process).
pub struct KnownSchema {
    pub contract: &'static str,
    pub revision: u32,
    pub schema: &'static Schema,
    /// CRC-64-AVRO of the Parsing Canonical Form.
    pub fingerprint: u64,
    writer: GenericDatumWriter<'static>,
    /// Reads this revision's bodies: straight into the type when this is the
    /// current revision, through schema resolution into it otherwise.
    reader: GenericDatumReader<'static>,
    is_current: bool,
}

impl std::fmt::Debug for KnownSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSchema")
            .field("contract", &self.contract)
            .field("revision", &self.revision)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .field("is_current", &self.is_current)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Registry {
    schemas: Vec<KnownSchema>,
}

impl Registry {
    fn build() -> Self {
        // The texts are compiled in and parsed by the tests, so a failure
        // here is a bug in this crate, not bad input.
        let parsed: Vec<(&'static str, u32, &'static Schema)> = KNOWN_SCHEMAS
            .iter()
            .map(|&(contract, revision, text)| {
                let schema = Schema::parse_str(text).unwrap_or_else(|e| {
                    panic!("built-in schema {contract} revision {revision} does not parse: {e}")
                });
                let schema: &'static Schema = Box::leak(Box::new(schema));
                (contract, revision, schema)
            })
            .collect();
        let current_of = |contract: &str| {
            parsed
                .iter()
                .filter(|(c, _, _)| *c == contract)
                .max_by_key(|(_, revision, _)| *revision)
                .map(|&(_, revision, schema)| (revision, schema))
                .unwrap_or_else(|| panic!("no schema registered for contract {contract}"))
        };
        let schemas = parsed
            .iter()
            .map(|&(contract, revision, schema)| {
                let built = |what: &str, e: apache_avro::Error| -> ! {
                    panic!(
                        "built-in schema {contract} revision {revision}: cannot build {what}: {e}"
                    )
                };
                let (current_revision, current_schema) = current_of(contract);
                let is_current = current_revision == revision;
                let writer = GenericDatumWriter::builder(schema)
                    .human_readable(false)
                    .build()
                    .unwrap_or_else(|e| built("writer", e));
                let reader = if is_current {
                    GenericDatumReader::builder(schema)
                        .human_readable(false)
                        .build()
                } else {
                    GenericDatumReader::builder(schema)
                        .reader_schema(current_schema)
                        .human_readable(false)
                        .build()
                }
                .unwrap_or_else(|e| built("reader", e));
                KnownSchema {
                    contract,
                    revision,
                    schema,
                    fingerprint: fingerprint(schema),
                    writer,
                    reader,
                    is_current,
                }
            })
            .collect();
        Registry { schemas }
    }

    fn current(&self, contract: &str) -> &KnownSchema {
        self.schemas
            .iter()
            .find(|s| s.contract == contract && s.is_current)
            .unwrap_or_else(|| panic!("no schema registered for contract {contract}"))
    }

    fn by_fingerprint(&self, fingerprint: u64) -> Option<&KnownSchema> {
        self.schemas.iter().find(|s| s.fingerprint == fingerprint)
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::build)
}

/// The CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form.
pub fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// All known schema revisions.
pub fn known_schemas() -> &'static [KnownSchema] {
    &registry().schemas
}

/// The revision a contract is written with.
pub fn current_schema<T: Contract>() -> &'static KnownSchema {
    registry().current(T::NAME)
}

/// Encodes a value with its contract's current schema, single-object framed.
/// The hand-written codec writes any value its type can hold, so this
/// cannot fail.
pub fn encode<T: Contract>(value: &T) -> Vec<u8> {
    let mut out = header(current_schema::<T>());
    value.write_body(&mut out);
    out
}

/// [`encode`] through `apache-avro`'s schema-driven writer instead of the
/// hand-written codec: the reference the codec is tested against.
pub fn encode_schema_driven<T: Contract>(value: &T) -> Result<Vec<u8>> {
    encode_framed(current_schema::<T>(), value)
}

/// Encodes a value with a specific known revision (for tests and for
/// producers pinned to an older revision during a rolling upgrade).
pub fn encode_with_revision<T: Serialize>(
    contract: &str,
    revision: u32,
    value: &T,
) -> Result<Vec<u8>> {
    let known = registry()
        .schemas
        .iter()
        .find(|s| s.contract == contract && s.revision == revision)
        .ok_or_else(|| Error::Encode {
            contract: "unknown",
            reason: format!("no schema {contract} revision {revision} in this build"),
        })?;
    encode_framed(known, value)
}

fn encode_framed<T: Serialize>(known: &KnownSchema, value: &T) -> Result<Vec<u8>> {
    let mut out = header(known);
    avro_body_into(known, value, &mut out)?;
    Ok(out)
}

/// A message buffer holding the single-object header naming `known`.
fn header(known: &KnownSchema) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&known.fingerprint.to_le_bytes());
    out
}

fn avro_body_into<T: Serialize>(known: &KnownSchema, value: &T, out: &mut Vec<u8>) -> Result<()> {
    known
        .writer
        .write_ser(out, value)
        .map(|_| ())
        .map_err(|e| Error::Encode {
            contract: known.contract,
            reason: e.to_string(),
        })
}

/// Reads the header: the writer schema the message names.
fn writer_of(bytes: &[u8]) -> Result<&'static KnownSchema> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 2 && bytes[..2] != MAGIC {
            return Err(Error::BadMagic {
                found: [bytes[0], bytes[1]],
            });
        }
        return Err(Error::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(Error::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fingerprint = u64::from_le_bytes(le);
    registry()
        .by_fingerprint(fingerprint)
        .ok_or(Error::UnknownFingerprint { fingerprint })
}

/// Decodes a message written with any known revision of `T`'s contract into
/// the current `T`.
pub fn decode<T: Contract>(bytes: &[u8]) -> Result<T> {
    decode_body(writer_of_contract::<T>(bytes)?, bytes)
}

/// [`decode`] through `apache-avro`'s schema-driven reader for every
/// revision, the current one included: the reference the hand-written codec
/// is tested against.
pub fn decode_schema_driven<T: Contract>(bytes: &[u8]) -> Result<T> {
    decode_body_schema_driven(writer_of_contract::<T>(bytes)?, bytes)
}

/// The writer schema the header names, which must be one of `T`'s.
fn writer_of_contract<T: Contract>(bytes: &[u8]) -> Result<&'static KnownSchema> {
    let writer = writer_of(bytes)?;
    if writer.contract != T::NAME {
        return Err(Error::WrongContract {
            expected: T::NAME,
            found: writer.contract,
        });
    }
    Ok(writer)
}

/// A body must be read to its last byte.
fn all_read(writer: &KnownSchema, body: &[u8], consumed: usize) -> Result<()> {
    if consumed < body.len() {
        return Err(Error::TrailingBytes {
            contract: writer.contract,
            revision: writer.revision,
            extra: body.len() - consumed,
        });
    }
    Ok(())
}

fn decode_body<T: Contract>(writer: &'static KnownSchema, bytes: &[u8]) -> Result<T> {
    if !writer.is_current {
        return decode_body_schema_driven(writer, bytes);
    }
    let body = &bytes[HEADER_LEN..];
    let (value, consumed) = T::read_body(body).map_err(|reason| Error::Corrupt {
        contract: writer.contract,
        revision: writer.revision,
        reason,
    })?;
    all_read(writer, body, consumed)?;
    Ok(value)
}

fn decode_body_schema_driven<T: Contract>(writer: &'static KnownSchema, bytes: &[u8]) -> Result<T> {
    let body = &bytes[HEADER_LEN..];
    let corrupt = |e: apache_avro::Error| Error::Corrupt {
        contract: writer.contract,
        revision: writer.revision,
        reason: e.to_string(),
    };
    let mut cursor = Cursor::new(body);
    let value: T = if writer.is_current {
        writer.reader.read_deser(&mut cursor).map_err(corrupt)?
    } else {
        let resolved = writer.reader.read_value(&mut cursor).map_err(corrupt)?;
        apache_avro::from_value(&resolved).map_err(corrupt)?
    };
    let consumed = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    all_read(writer, body, consumed)?;
    Ok(value)
}

/// A decoded message of any known contract.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Event(Box<Event>),
    Audit(Box<AuditRecord>),
}

impl Decoded {
    /// The contract's name.
    pub fn contract(&self) -> &'static str {
        match self {
            Decoded::Event(_) => Event::NAME,
            Decoded::Audit(_) => AuditRecord::NAME,
        }
    }

    /// The record as a JSON object (bytes fields as lowercase hex).
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing these plain structs to JSON cannot fail.
        let result = match self {
            Decoded::Event(e) => serde_json::to_value(e),
            Decoded::Audit(a) => serde_json::to_value(a.as_json()),
        };
        result.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}

/// Decodes a message of any known contract, choosing by fingerprint.
pub fn decode_any(bytes: &[u8]) -> Result<Decoded> {
    let writer = writer_of(bytes)?;
    match writer.contract {
        Event::NAME => decode_body::<Event>(writer, bytes).map(|e| Decoded::Event(Box::new(e))),
        AuditRecord::NAME => {
            decode_body::<AuditRecord>(writer, bytes).map(|a| Decoded::Audit(Box::new(a)))
        }
        other => Err(Error::Corrupt {
            contract: "unknown",
            revision: writer.revision,
            reason: format!("contract {other} has no decoder"),
        }),
    }
}
