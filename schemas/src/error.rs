//! The crate's error type.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong reading or writing a Vigil message.
///
/// Every decoding failure is a value of this type, never a panic: a detector
/// routes the undecodable record to the dead-letter topic with this error's
/// text as the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the 10-byte single-object header.
    #[error(
        "message is {len} bytes, shorter than the 10-byte Avro single-object header; it was truncated or is not a Vigil Avro message"
    )]
    Truncated { len: usize },

    /// The first two bytes are not the single-object marker `C3 01`.
    #[error(
        "message starts with {found:02X?}, not the Avro single-object marker [C3, 01]; it is not a Vigil Avro message (JSON alerts are read as JSON, not with this decoder)"
    )]
    BadMagic { found: [u8; 2] },

    /// The writer schema's fingerprint is not in this build's table.
    #[error(
        "unknown writer schema fingerprint {fingerprint:016x}; the producer uses a schema this build does not know (upgrade the consumer) or the header is corrupt"
    )]
    UnknownFingerprint { fingerprint: u64 },

    /// The message is a known contract, but not the one the caller asked for.
    #[error("message is a {found} but a {expected} was expected; check the topic")]
    WrongContract {
        expected: &'static str,
        found: &'static str,
    },

    /// The body does not decode with the writer schema its header names.
    #[error("corrupt or truncated {contract} body (writer revision {revision}): {reason}")]
    Corrupt {
        contract: &'static str,
        revision: u32,
        reason: String,
    },

    /// The body decoded but bytes were left over.
    #[error(
        "{contract} body (writer revision {revision}) has {extra} trailing bytes after the record; the message is corrupt"
    )]
    TrailingBytes {
        contract: &'static str,
        revision: u32,
        extra: usize,
    },

    /// A value could not be written with its schema (a bug in the caller or
    /// in this crate's mirror of the schema).
    #[error("cannot encode {contract}: {reason}")]
    Encode {
        contract: &'static str,
        reason: String,
    },
}
