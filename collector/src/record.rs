//! The Rust mirror of `collector-ebpf/src/vigil_record.h`.
//!
//! The structs here are checked field by field (offset and size) against the
//! C header by the tests below, from numbers the C compiler prints at build
//! time (`layout.rs`, written by `build.rs`). The kind numbers and sizes come
//! from the same generated file, so they are never kept in step by eye.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Constants and field offsets measured from `vigil_record.h` at build time.
pub mod layout {
    include!(concat!(env!("OUT_DIR"), "/layout.rs"));
}

use layout::{ADDR_LEN, COMM_LEN, PATH_LEN};

/// `struct vigil_record`: one event as the kernel wrote it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawRecord {
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub bytes: u64,
    pub target: i64,
    pub kind: u32,
    pub err: i32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub auid: u32,
    pub flags: i32,
    pub mode: u32,
    pub args_len: u32,
    pub dirfd: i32,
    pub dirfd2: i32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// The low 16 bits of the kernel's count of lost records (all CPUs)
    /// when this one was written: a change from the previous record's
    /// means records were lost in between.
    pub loss_mark: u16,
    pub saddr: [u8; ADDR_LEN],
    pub daddr: [u8; ADDR_LEN],
    pub comm: [u8; COMM_LEN],
    pub path: [u8; PATH_LEN],
    pub path2: [u8; PATH_LEN],
}

/// `struct vigil_tracked`: a staged syscall, watched descriptor or traced
/// connection with its byte counters.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawTracked {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub rec: RawRecord,
}

/// `struct vigil_inode_key`: a watched directory for relative paths.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    pub reserved: u32,
}

// SAFETY: `RawRecord`, `RawTracked` and `InodeKey` are `repr(C)` structs of
// integers and byte arrays with no padding (the layout tests check that their
// size equals the C structs', which have none), so every bit pattern is a
// valid value and every byte is initialised.
unsafe impl aya::Pod for RawRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for RawTracked {}
// SAFETY: as above.
unsafe impl aya::Pod for InodeKey {}

impl std::fmt::Debug for RawRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecord")
            .field("kind", &self.kind)
            .field("err", &self.err)
            .field("pid", &self.pid)
            .field("comm", &self.comm())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RawTracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTracked")
            .field("read_bytes", &self.read_bytes)
            .field("write_bytes", &self.write_bytes)
            .field("rec", &self.rec)
            .finish()
    }
}

/// The bytes of a record the kernel writes without `path2` (every kind but
/// exec and rename): everything before that field (`VIGIL_RECORD_SHORT` in
/// `vigil.bpf.c`).
pub const SHORT_LEN: usize = std::mem::offset_of!(RawRecord, path2);

impl RawRecord {
    /// Reads a record from ring-buffer bytes, whole or short (without
    /// `path2`, which then reads as empty); `None` when the slice is too
    /// short to be either.
    pub fn from_bytes(bytes: &[u8]) -> Option<RawRecord> {
        const FULL: usize = std::mem::size_of::<RawRecord>();
        if bytes.len() >= FULL {
            // SAFETY: the slice holds at least size_of::<RawRecord>() bytes,
            // the read is unaligned, and every bit pattern is a valid
            // RawRecord (see the Pod impl above).
            return Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawRecord>()) });
        }
        if bytes.len() < SHORT_LEN {
            return None;
        }
        let mut rec = std::mem::MaybeUninit::<RawRecord>::zeroed();
        // SAFETY: `rec` is SHORT_LEN + (FULL - SHORT_LEN) bytes, all zeroed
        // (a valid RawRecord: see the Pod impl above); the first SHORT_LEN
        // are overwritten from the slice, which holds at least that many,
        // and the two do not overlap.
        Some(unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), rec.as_mut_ptr().cast::<u8>(), SHORT_LEN);
            rec.assume_init()
        })
    }

    /// The task's command name.
    pub fn comm(&self) -> String {
        c_string(&self.comm)
    }

    /// The file path, or the executable for exec records.
    pub fn path(&self) -> String {
        c_string(&self.path)
    }

    /// The second path (rename destination).
    pub fn path2(&self) -> String {
        c_string(&self.path2)
    }

    /// Exec arguments: the NUL-separated argv bytes the kernel copied.
    pub fn argv(&self) -> Vec<String> {
        let len = (self.args_len as usize).min(PATH_LEN);
        self.path2[..len]
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    /// Local and remote IP addresses, for network records.
    pub fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        match self.family {
            AF_INET => Some((ipv4(&self.saddr), ipv4(&self.daddr))),
            AF_INET6 => Some((
                IpAddr::V6(Ipv6Addr::from(self.saddr)),
                IpAddr::V6(Ipv6Addr::from(self.daddr)),
            )),
            _ => None,
        }
    }
}

/// `AF_INET` as the kernel records it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel records it.
pub const AF_INET6: u16 = 10;

fn ipv4(bytes: &[u8; ADDR_LEN]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of, size_of_val};

    macro_rules! fields {
        ($c:literal, $ty:ty, $value:expr, [$($field:ident),* $(,)?]) => {
            vec![$(($c, stringify!($field), offset_of!($ty, $field), size_of_val(&$value.$field))),*]
        };
    }

    fn zeroed_record() -> RawRecord {
        RawRecord::from_bytes(&[0u8; size_of::<RawRecord>()]).expect("a zero record parses")
    }

    #[test]
    fn rust_mirror_matches_the_c_header_field_by_field() {
        let rec = zeroed_record();
        let tracked = RawTracked {
            read_bytes: 0,
            write_bytes: 0,
            rec,
        };
        let key = InodeKey {
            ino: 0,
            dev: 0,
            reserved: 0,
        };
        let mut rust = fields!(
            "vigil_record",
            RawRecord,
            rec,
            [
                ktime_ns, cgroup_id, bytes, target, kind, err, pid, tid, ppid, uid, euid, gid,
                auid, flags, mode, args_len, dirfd, dirfd2, family, sport, dport, loss_mark, saddr,
                daddr, comm, path, path2
            ]
        );
        rust.extend(fields!(
            "vigil_tracked",
            RawTracked,
            tracked,
            [read_bytes, write_bytes, rec]
        ));
        rust.extend(fields!(
            "vigil_inode_key",
            InodeKey,
            key,
            [ino, dev, reserved]
        ));
        // The path key is aya's LpmTrie Key<[u8; PATH_LEN]>: a u32 prefix
        // length then the data.
        rust.push(("vigil_path_key", "prefixlen", 0, 4));
        rust.push(("vigil_path_key", "data", 4, PATH_LEN));

        let mut c: Vec<_> = layout::FIELDS.to_vec();
        rust.sort();
        c.sort();
        assert_eq!(
            rust, c,
            "collector/src/record.rs no longer mirrors collector-ebpf/src/vigil_record.h"
        );
        assert_eq!(size_of::<RawRecord>(), layout::SIZE_VIGIL_RECORD);
        assert_eq!(size_of::<RawTracked>(), layout::SIZE_VIGIL_TRACKED);
        assert_eq!(size_of::<InodeKey>(), layout::SIZE_VIGIL_INODE_KEY);
        assert_eq!(
            size_of::<aya::maps::lpm_trie::Key<[u8; PATH_LEN]>>(),
            layout::SIZE_VIGIL_PATH_KEY
        );
    }

    #[test]
    fn short_slices_are_not_records() {
        assert!(RawRecord::from_bytes(&[0u8; 16]).is_none());
        assert!(RawRecord::from_bytes(&vec![0u8; SHORT_LEN - 1]).is_none());
    }

    #[test]
    fn records_without_path2_read_with_an_empty_path2() {
        let mut bytes = vec![0xffu8; SHORT_LEN];
        bytes[offset_of!(RawRecord, path)..][..5].copy_from_slice(b"/phi\0");
        let rec = RawRecord::from_bytes(&bytes).expect("a short record parses");
        assert_eq!(rec.path(), "/phi");
        assert_eq!(rec.path2(), "");
        assert_eq!(rec.pid, u32::MAX, "fields before path2 are kept");
        assert_eq!(
            SHORT_LEN,
            layout::FIELDS
                .iter()
                .find(|(s, f, _, _)| *s == "vigil_record" && *f == "path2")
                .map(|(_, _, offset, _)| *offset)
                .expect("path2 in the layout"),
            "the short record ends where the C header's path2 starts"
        );
    }

    #[test]
    fn strings_stop_at_the_first_nul_and_argv_splits_on_nul() {
        let mut rec = zeroed_record();
        rec.comm[..4].copy_from_slice(b"cat\0");
        rec.path[..9].copy_from_slice(b"/phi/a\0xx");
        rec.path2[..12].copy_from_slice(b"cat\0-n\0/phi\0");
        rec.args_len = 12;
        assert_eq!(rec.comm(), "cat");
        assert_eq!(rec.path(), "/phi/a");
        assert_eq!(rec.argv(), vec!["cat", "-n", "/phi"]);
    }

    #[test]
    fn addresses_follow_the_family() {
        let mut rec = zeroed_record();
        rec.family = AF_INET;
        rec.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        rec.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let (src, dst) = rec.addresses().expect("inet has addresses");
        assert_eq!(src.to_string(), "127.0.0.1");
        assert_eq!(dst.to_string(), "10.1.2.3");
        rec.family = 1;
        assert!(rec.addresses().is_none());
    }
}
