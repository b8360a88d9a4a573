//! Hand-written Avro binary codecs for the current revisions of the two
//! contracts on the hot path: the detector decodes every event and encodes
//! every audit record, and the collector encodes every event.
//!
//! The schema-driven reader and writer of `apache-avro` go through serde
//! with a schema lookup per field; these write and read the same bytes
//! directly, about an order of magnitude faster. They are bound to one
//! revision each ([`EVENT_REVISION`], [`AUDIT_REVISION`]): a test fails when
//! a new current revision is registered without them being updated, and
//! property tests check them byte for byte against the schema-driven codec
//! ([`crate::wire::encode_schema_driven`], [`crate::wire::decode_schema_driven`]).
//! Older writer revisions keep going through schema resolution.

use crate::audit::{AuditGap, AuditRecord};
use crate::event::{Event, Gap, Kind, SocketFamily};

/// The `Event` revision [`write_event`] and [`read_event`] implement.
pub const EVENT_REVISION: u32 = 2;
/// The `AuditRecord` revision [`write_audit`] and [`read_audit`] implement.
pub const AUDIT_REVISION: u32 = 1;

/// Socket families in schema order.
const FAMILIES: [SocketFamily; 4] = [
    SocketFamily::Unix,
    SocketFamily::Inet,
    SocketFamily::Inet6,
    SocketFamily::Other,
];

// ---------------------------------------------------------------- writing

fn put_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_int(out: &mut Vec<u8>, value: i32) {
    put_long(out, i64::from(value));
}

fn put_bytes(out: &mut Vec<u8>, value: &[u8]) {
    put_long(out, value.len() as i64);
    out.extend_from_slice(value);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_bytes(out, value.as_bytes());
}

/// A `["null", T]` union: branch 0 for null, 1 then the value.
fn put_option<T>(out: &mut Vec<u8>, value: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(2); // zigzag(1)
            put(out, value);
        }
    }
}

fn put_opt_str(out: &mut Vec<u8>, value: &Option<String>) {
    put_option(out, value.as_deref(), put_str);
}

fn put_opt_long(out: &mut Vec<u8>, value: Option<i64>) {
    put_option(out, value, put_long);
}

fn put_opt_int(out: &mut Vec<u8>, value: Option<i32>) {
    put_option(out, value, put_int);
}

/// The fields of a `Gap` (events) or `AuditGap` (audit records) record;
/// the two schemas give them the same fields in the same order.
fn put_gap(
    out: &mut Vec<u8>,
    lost: i64,
    lost_kind: &Option<String>,
    first_seq: i64,
    last_seq: i64,
    reason: &str,
) {
    put_long(out, lost);
    put_opt_str(out, lost_kind);
    put_long(out, first_seq);
    put_long(out, last_seq);
    put_str(out, reason);
}

/// Appends the Avro binary body of `event` (revision [`EVENT_REVISION`]).
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    put_str(out, &event.event_id);
    put_str(out, &event.host);
    put_long(out, event.seq);
    put_long(out, event.time_unix_ns);
    // Both enums are declared in their schema's symbol order, so the
    // discriminant is the symbol's index.
    put_int(out, event.kind as i32);
    put_int(out, event.errno);
    put_int(out, event.pid);
    put_int(out, event.ppid);
    put_int(out, event.tid);
    put_long(out, event.uid);
    put_long(out, event.euid);
    put_long(out, event.gid);
    put_opt_long(out, event.login_uid);
    put_opt_str(out, &event.user_name);
    put_opt_str(out, &event.login_name);
    put_str(out, &event.comm);
    put_opt_str(out, &event.exe);
    if !event.argv.is_empty() {
        put_long(out, event.argv.len() as i64);
        for arg in &event.argv {
            put_str(out, arg);
        }
    }
    out.push(0); // end of the array's blocks
    put_opt_str(out, &event.parent_exe);
    put_long(out, event.cgroup_id);
    put_opt_str(out, &event.container_id);
    put_opt_str(out, &event.path);
    put_opt_str(out, &event.new_path);
    put_opt_int(out, event.flags);
    put_opt_int(out, event.mode);
    put_option(out, event.family, |out, family| put_int(out, family as i32));
    put_opt_str(out, &event.src_addr);
    put_opt_int(out, event.src_port);
    put_opt_str(out, &event.dst_addr);
    put_opt_int(out, event.dst_port);
    put_opt_long(out, event.bytes);
    put_opt_long(out, event.target_id);
    put_option(out, event.gap.as_ref(), |out, g| {
        put_gap(
            out,
            g.lost,
            &g.lost_kind,
            g.first_seq,
            g.last_seq,
            &g.reason,
        );
    });
}

/// Appends the Avro binary body of `record` (revision [`AUDIT_REVISION`]).
pub fn write_audit(record: &AuditRecord, out: &mut Vec<u8>) {
    write_audit_unsealed(record, out);
    put_bytes(out, &record.hash);
}

/// Everything of [`write_audit`] but the last field, `hash`: the hash is
/// computed over this followed by an empty `hash` (one zero byte).
pub(crate) fn write_audit_unsealed(record: &AuditRecord, out: &mut Vec<u8>) {
    put_int(out, record.partition);
    put_long(out, record.seq);
    put_bytes(out, &record.prev_hash);
    put_long(out, record.recorded_unix_ns);
    put_str(out, &record.event_id);
    put_str(out, &record.action);
    put_long(out, record.time_unix_ns);
    put_str(out, &record.host);
    put_str(out, &record.principal);
    put_long(out, record.uid);
    put_opt_long(out, record.login_uid);
    put_opt_str(out, &record.user_name);
    put_int(out, record.pid);
    put_str(out, &record.comm);
    put_opt_str(out, &record.exe);
    put_opt_str(out, &record.path);
    put_opt_str(out, &record.new_path);
    put_opt_long(out, record.bytes);
    put_int(out, record.errno);
    put_option(out, record.gap.as_ref(), |out, g| {
        put_gap(
            out,
            g.lost,
            &g.lost_kind,
            g.first_seq,
            g.last_seq,
            &g.reason,
        );
    });
    put_str(out, &record.source_topic);
    put_int(out, record.source_partition);
    put_long(out, record.source_offset);
}

// ---------------------------------------------------------------- reading

/// Reads an Avro binary body front to back. Every error names the field
/// being read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    field: &'static str,
}

type Read<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn field(&mut self, name: &'static str) -> &mut Self {
        self.field = name;
        self
    }

    fn fail<T>(&self, what: impl std::fmt::Display) -> Read<T> {
        Err(format!(
            "field `{}` at body byte {}: {what}",
            self.field, self.at
        ))
    }

    fn long(&mut self) -> Read<i64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return self.fail("the body ends inside a number");
            };
            self.at += 1;
            // Of a tenth byte only the lowest bit fits; like other Avro
            // readers, ignore the rest.
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        self.fail("a variable-length number longer than 64 bits")
    }

    fn int(&mut self) -> Read<i32> {
        let value = self.long()?;
        match i32::try_from(value) {
            Ok(value) => Ok(value),
            Err(_) => self.fail(format_args!("{value} does not fit an Avro int")),
        }
    }

    fn bytes(&mut self) -> Read<&'a [u8]> {
        let len = self.long()?;
        let Ok(len) = usize::try_from(len) else {
            return self.fail(format_args!("negative length {len}"));
        };
        let remaining = self.bytes.len() - self.at;
        if len > remaining {
            return self.fail(format_args!(
                "length {len} runs past the end of the body ({remaining} bytes left)"
            ));
        }
        let value = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(value)
    }

    fn string(&mut self) -> Read<String> {
        let bytes = self.bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => self.fail(format_args!("string is not UTF-8: {e}")),
        }
    }

    /// The branch of a `["null", T]` union: false for null.
    fn present(&mut self) -> Read<bool> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            other => self.fail(format_args!("union branch {other} of a two-branch union")),
        }
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.present()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_string(&mut self) -> Read<Option<String>> {
        self.option(Self::string)
    }

    fn opt_long(&mut self) -> Read<Option<i64>> {
        self.option(Self::long)
    }

    fn opt_int(&mut self) -> Read<Option<i32>> {
        self.option(Self::int)
    }

    fn symbol<T: Copy>(&mut self, symbols: &[T]) -> Read<T> {
        let index = self.int()?;
        match usize::try_from(index).ok().and_then(|i| symbols.get(i)) {
            Some(symbol) => Ok(*symbol),
            None => self.fail(format_args!(
                "enum index {index} outside its {} symbols",
                symbols.len()
            )),
        }
    }

    fn string_array(&mut self) -> Read<Vec<String>> {
        let mut items = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(items);
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long()?;
            }
            let count = count.unsigned_abs();
            // Each item takes at least one byte, which bounds the
            // reservation by what the body can hold.
            let remaining = (self.bytes.len() - self.at) as u64;
            if count > remaining {
                return self.fail(format_args!(
                    "array block of {count} items in {remaining} bytes"
                ));
            }
            items.reserve(count as usize);
            for _ in 0..count {
                items.push(self.string()?);
            }
        }
    }

    /// A `Gap` record; an `AuditGap` has the same fields in the same order.
    fn gap(&mut self) -> Read<Gap> {
        Ok(Gap {
            lost: self.field("gap.lost").long()?,
            lost_kind: self.field("gap.lost_kind").opt_string()?,
            first_seq: self.field("gap.first_seq").long()?,
            last_seq: self.field("gap.last_seq").long()?,
            reason: self.field("gap.reason").string()?,
        })
    }
}

/// Reads an Event body (revision [`EVENT_REVISION`]); returns the event and
/// the number of bytes it took.
pub fn read_event(body: &[u8]) -> Read<(Event, usize)> {
    let mut r = Reader {
        bytes: body,
        at: 0,
        field: "",
    };
    let event = Event {
        event_id: r.field("event_id").string()?,
        host: r.field("host").string()?,
        seq: r.field("seq").long()?,
        time_unix_ns: r.field("time_unix_ns").long()?,
        kind: r.field("kind").symbol(&Kind::ALL)?,
        errno: r.field("errno").int()?,
        pid: r.field("pid").int()?,
        ppid: r.field("ppid").int()?,
        tid: r.field("tid").int()?,
        uid: r.field("uid").long()?,
        euid: r.field("euid").long()?,
        gid: r.field("gid").long()?,
        login_uid: r.field("login_uid").opt_long()?,
        user_name: r.field("user_name").opt_string()?,
        login_name: r.field("login_name").opt_string()?,
        comm: r.field("comm").string()?,
        exe: r.field("exe").opt_string()?,
        argv: r.field("argv").string_array()?,
        parent_exe: r.field("parent_exe").opt_string()?,
        cgroup_id: r.field("cgroup_id").long()?,
        container_id: r.field("container_id").opt_string()?,
        path: r.field("path").opt_string()?,
        new_path: r.field("new_path").opt_string()?,
        flags: r.field("flags").opt_int()?,
        mode: r.field("mode").opt_int()?,
        family: r.field("family").option(|r| r.symbol(&FAMILIES))?,
        src_addr: r.field("src_addr").opt_string()?,
        src_port: r.field("src_port").opt_int()?,
        dst_addr: r.field("dst_addr").opt_string()?,
        dst_port: r.field("dst_port").opt_int()?,
        bytes: r.field("bytes").opt_long()?,
        target_id: r.field("target_id").opt_long()?,
        gap: r.field("gap").option(Reader::gap)?,
    };
    Ok((event, r.at))
}

/// Reads an AuditRecord body (revision [`AUDIT_REVISION`]); returns the
/// record and the number of bytes it took.
pub fn read_audit(body: &[u8]) -> Read<(AuditRecord, usize)> {
    let mut r = Reader {
        bytes: body,
        at: 0,
        field: "",
    };
    let record = AuditRecord {
        partition: r.field("partition").int()?,
        seq: r.field("seq").long()?,
        prev_hash: r.field("prev_hash").bytes()?.to_vec(),
        recorded_unix_ns: r.field("recorded_unix_ns").long()?,
        event_id: r.field("event_id").string()?,
        action: r.field("action").string()?,
        time_unix_ns: r.field("time_unix_ns").long()?,
        host: r.field("host").string()?,
        principal: r.field("principal").string()?,
        uid: r.field("uid").long()?,
        login_uid: r.field("login_uid").opt_long()?,
        user_name: r.field("user_name").opt_string()?,
        pid: r.field("pid").int()?,
        comm: r.field("comm").string()?,
        exe: r.field("exe").opt_string()?,
        path: r.field("path").opt_string()?,
        new_path: r.field("new_path").opt_string()?,
        bytes: r.field("bytes").opt_long()?,
        errno: r.field("errno").int()?,
        gap: r.field("gap").option(Reader::gap)?.map(AuditGap::from),
        source_topic: r.field("source_topic").string()?,
        source_partition: r.field("source_partition").int()?,
        source_offset: r.field("source_offset").long()?,
        hash: r.field("hash").bytes()?.to_vec(),
    };
    Ok((record, r.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_round_trip(value: i64) -> (Vec<u8>, i64) {
        let mut out = Vec::new();
        put_long(&mut out, value);
        let mut r = Reader {
            bytes: &out,
            at: 0,
            field: "x",
        };
        let read = r.long().expect("reads back");
        assert_eq!(r.at, out.len(), "reads every byte of {value}");
        (out, read)
    }

    #[test]
    fn enum_discriminants_are_schema_symbol_indexes() {
        for (index, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind:?}");
        }
        for (index, family) in FAMILIES.iter().enumerate() {
            assert_eq!(*family as usize, index, "{family:?}");
        }
    }

    #[test]
    fn longs_are_zigzag_varints() {
        assert_eq!(long_round_trip(0).0, [0x00]);
        assert_eq!(long_round_trip(-1).0, [0x01]);
        assert_eq!(long_round_trip(1).0, [0x02]);
        assert_eq!(long_round_trip(-64).0, [0x7F]);
        assert_eq!(long_round_trip(64).0, [0x80, 0x01]);
        for value in [i64::MIN, i64::MAX, i64::MIN + 1, 1 << 40, -(1 << 40)] {
            assert_eq!(long_round_trip(value).1, value);
        }
        assert_eq!(long_round_trip(i64::MIN).0.len(), 10);
    }

    #[test]
    fn overlong_numbers_and_ints_out_of_range_are_errors() {
        let mut r = Reader {
            bytes: &[0xFF; 11],
            at: 0,
            field: "seq",
        };
        let error = r.long().expect_err("eleven continuation bytes");
        assert!(error.contains("`seq`"), "{error}");

        let mut out = Vec::new();
        put_long(&mut out, i64::from(i32::MAX) + 1);
        let mut r = Reader {
            bytes: &out,
            at: 0,
            field: "pid",
        };
        let error = r.int().expect_err("too big for an int");
        assert!(error.contains("does not fit"), "{error}");
    }

    #[test]
    fn strings_past_the_end_are_errors_not_panics() {
        let mut r = Reader {
            bytes: &[0x7E, b'a'],
            at: 0,
            field: "host",
        };
        let error = r.string().expect_err("length 63 in one byte");
        assert!(error.contains("runs past the end"), "{error}");
    }
}
