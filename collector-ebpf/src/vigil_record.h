/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0) */
/*
 * The record layout shared by the kernel programs (vigil.bpf.c) and the
 * collector in user space (collector/src/record.rs).
 *
 * The includer provides the fixed-width types (__u8 ... __u64): vmlinux.h in
 * the kernel programs, <linux/types.h> in the collector's layout probe. The
 * Rust mirror is checked field by field (offset and size) against this file
 * by a unit test, from numbers the C compiler prints at build time.
 *
 * Every field is a fixed-width integer or byte array and every struct is
 * laid out without implicit padding, so the same bytes mean the same thing on
 * both sides.
 */
#ifndef VIGIL_RECORD_H
#define VIGIL_RECORD_H

#define VIGIL_COMM_LEN 16
#define VIGIL_PATH_LEN 256
#define VIGIL_ADDR_LEN 16

/* Login uid of a task that never logged in (daemons, early boot). */
#define VIGIL_AUID_UNSET 0xffffffffu

/* What a record reports. The values are the wire between kernel and
 * collector only; the bus carries vigil_schemas::Kind. */
enum vigil_kind {
	VIGIL_KIND_EXEC = 1,
	VIGIL_KIND_EXIT = 2,
	VIGIL_KIND_OPEN = 3,
	VIGIL_KIND_READ = 4,
	VIGIL_KIND_WRITE = 5,
	VIGIL_KIND_RENAME = 6,
	VIGIL_KIND_UNLINK = 7,
	VIGIL_KIND_TRUNCATE = 8,
	VIGIL_KIND_CHMOD = 9,
	VIGIL_KIND_CHOWN = 10,
	VIGIL_KIND_CONNECT = 11,
	VIGIL_KIND_ACCEPT = 12,
	VIGIL_KIND_SEND = 13,
	VIGIL_KIND_RECV = 14,
	VIGIL_KIND_SETUID = 15,
	VIGIL_KIND_SETGID = 16,
	VIGIL_KIND_CAPSET = 17,
	/* One past the last kind: the size of the per-kind drop counters. */
	VIGIL_KIND_MAX = 18,
};

/* The slots of the drop counters past the kinds: losses that are not a
 * full ring buffer. */
enum vigil_loss {
	/* A watched descriptor that could not be tracked because open_files
	 * or files_owners was full: its read and write roll-ups are lost. */
	VIGIL_LOSS_UNTRACKED = VIGIL_KIND_MAX,
	/* The number of drop counters. */
	VIGIL_DROPS_MAX = VIGIL_KIND_MAX + 1,
};

/* Uid and cgroup scope modes (globals uid_mode, cgroup_mode). */
enum vigil_scope_mode {
	VIGIL_SCOPE_ALL = 0,      /* every uid / cgroup */
	VIGIL_SCOPE_INCLUDE = 1,  /* only those in the map */
	VIGIL_SCOPE_EXCLUDE = 2,  /* all but those in the map */
};

/* One event, as written into the ring buffer. */
struct vigil_record {
	__u64 ktime_ns;   /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at entry, or at exit for exit-only syscalls */
	__u64 cgroup_id;  /* cgroup v2 id of the task */
	__u64 bytes;      /* read/write/send/recv roll-up total */
	__s64 target;     /* chown: new uid; setuid/setgid: new id; capset: effective set */
	__u32 kind;       /* enum vigil_kind */
	__s32 err;        /* 0 on success, otherwise the positive errno */
	__u32 pid;        /* thread-group id */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 auid;       /* login uid; VIGIL_AUID_UNSET when unset */
	__s32 flags;      /* open(2) flags */
	__u32 mode;       /* open(2) mode with O_CREAT, chmod mode */
	__u32 args_len;   /* exec: bytes of argv in path2 */
	__s32 dirfd;      /* directory descriptor path is relative to (AT_FDCWD: the working directory) */
	__s32 dirfd2;     /* the same for path2 (rename destination) */
	__u16 family;     /* AF_INET / AF_INET6 for network records */
	__u16 sport;      /* local port, host byte order */
	__u16 dport;      /* remote port, host byte order */
	__u16 loss_mark;  /* low 16 bits of the kernel's loss count when this record was written */
	__u8 saddr[VIGIL_ADDR_LEN]; /* local address: 4 bytes for IPv4, 16 for IPv6 */
	__u8 daddr[VIGIL_ADDR_LEN]; /* remote address */
	char comm[VIGIL_COMM_LEN];
	char path[VIGIL_PATH_LEN];  /* file path as the caller gave it; exec: executable */
	char path2[VIGIL_PATH_LEN]; /* rename: destination; exec: argv, NUL-separated */
};

/* A record waiting for something: a syscall's exit (keyed by thread id), the
 * close of a watched descriptor (keyed by pid << 32 | fd) or of a traced
 * connection (keyed by the socket's address). The counters are the byte
 * roll-ups of a watched descriptor. */
struct vigil_tracked {
	__u64 read_bytes;
	__u64 write_bytes;
	struct vigil_record rec;
};

/* Key of the watched path prefixes (an LPM trie over path bytes). */
struct vigil_path_key {
	__u32 prefixlen; /* in bits */
	__u8 data[VIGIL_PATH_LEN];
};

/* Key of the watched directories, for paths relative to the working
 * directory: the kernel's device number (major << 20 | minor) and inode. */
struct vigil_inode_key {
	__u64 ino;
	__u32 dev;
	__u32 reserved;
};

#endif /* VIGIL_RECORD_H */
