// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Vigil's kernel programs: syscall tracepoints filtered in the kernel,
 * writing struct vigil_record (vigil_record.h) into the `events` ring buffer.
 *
 * Layout of this file:
 *   maps and globals    - scope (watched prefixes, directories, uids,
 *                         cgroups), in-flight syscalls, watched descriptors,
 *                         traced connections, drop counters, ring buffer
 *   helpers             - scope checks, record header, emit
 *   process             - sched_process_exec / sched_process_exit
 *   files               - open family, read/write roll-ups, close, rename,
 *                         unlink, truncate, chmod, chown
 *   network             - connect, accept, per-connection byte roll-ups
 *                         (at close and swept periodically)
 *   privilege           - setuid/setgid families, capset
 *
 * Every syscall is handled on its own syscalls:sys_enter_X / sys_exit_X
 * tracepoint (never raw_syscalls), and every record carries success or
 * errno. Each tracepoint hit costs about 200 ns before a program runs (the
 * perf trace buffer the kernel fills for it), so the hot syscalls - the open
 * family, read/write, dup, fcntl - have one program each, on their exit,
 * which reads the arguments from the registers the syscall was entered with.
 * Rarer syscalls (rename, unlink, chmod, connect, setuid...) decide scope at
 * entry, stage a record keyed by thread id, and emit it at exit.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "vigil_record.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define AT_FDCWD -100
#define AT_EMPTY_PATH 0x1000
#define AT_REMOVEDIR 0x200
#define TCP_CLOSE_STATE 7
#define RCV_SHUTDOWN_BIT 1
/* Directory levels a scope walk takes inline; deeper ones go on in a
 * bpf_loop, up to MAX_WALK_DEPTH in all. */
#define MAX_DIR_DEPTH 32
#define MAX_WALK_DEPTH 65536

/* ---- maps and globals -------------------------------------------------- */

/* Set by the collector before loading. */
const volatile __u32 self_tgid = 0;
const volatile __u32 uid_mode = VIGIL_SCOPE_ALL;
const volatile __u32 cgroup_mode = VIGIL_SCOPE_ALL;
const volatile __u32 watch_relative = 1;
const volatile __u64 rollup_interval_ns = 60ull * 1000000000ull;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* When the collector was last woken (bpf_ktime_get_ns), shared by all CPUs;
 * read and written without a lock (a lost update only costs or saves one
 * wakeup). See submit_flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_wakeup SEC(".maps");

/* At most one wakeup per this many nanoseconds below the batch threshold.
 * The collector looks again FOLLOW_UP (collector/src/lib.rs) after every
 * drain that found records, and FOLLOW_UP is longer than this, so a record
 * inside the gap waits for that look, not for the next wakeup. */
#define VIGIL_WAKEUP_GAP_NS 1000000ull

/* Failed ring-buffer reservations, per CPU, indexed by enum vigil_kind;
 * past the kinds, the other losses (enum vigil_loss). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIGIL_DROPS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vigil_path_key);
	__type(value, __u32);
} watched_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct vigil_inode_key);
	__type(value, __u32);
} watched_dirs SEC(".maps");

/* The file systems (kernel s_dev) that hold a watched directory: a file on
 * any other one is out of scope without walking its directories. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} watched_devs SEC(".maps");

/* Directories on a watched file system whose walk up to its root found no
 * watched directory (see dentry_in_scope): a small direct-mapped cache per
 * CPU, a slot per hash of (device, inode), so that looking a directory up
 * and remembering one cost a few loads and stores (an LRU hash map's
 * update cost about 450 ns, more than the walk it saves). An entry holds
 * while no directory has been renamed or removed since it was made
 * (dirs_generation) and for at most OUTSIDE_TTL_NS, which bounds how long
 * a move the programs cannot see (io_uring, a network file system's
 * server) leaves a directory wrongly outside. `check` mixes the other
 * fields: an entry torn by a program preempted while writing it (another
 * run on the same CPU wrote the slot in between) does not match. */
struct outside_dir {
	__u64 ino;
	__u64 dev;
	__u64 generation;
	__u64 ktime_ns;
	__u64 check;
};

#define OUTSIDE_TTL_NS 1000000000ull
#define OUTSIDE_SLOTS 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OUTSIDE_SLOTS);
	__type(key, __u32);
	__type(value, struct outside_dir);
} outside_dirs SEC(".maps");

/* Counts the renames and directory removals seen, on every CPU, in or out
 * of scope: any of them may move a directory into a watched one (or free
 * an inode number a new directory there takes), so each one voids every
 * outside_dirs entry made before it. */
__u64 dirs_generation = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} scope_uids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
} scope_cgroups SEC(".maps");

/* Syscalls between entry and exit, by thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct vigil_tracked);
} inflight SEC(".maps");

/* Descriptors opened on watched paths, by pid << 32 | fd. Walked whole at
 * fork and exit of the processes in files_owners, so kept small. The
 * collector sets the size (--tracked-files); a descriptor that finds it
 * full is counted in drops[VIGIL_LOSS_UNTRACKED]. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct vigil_tracked);
} open_files SEC(".maps");

/* A process's (or thread's) entries in open_files: how many, and which of
 * its descriptors below OWNED_BITS they are. The count goes up only when an
 * entry is inserted and down only when one is deleted, so it never says
 * none while some are left. */
#define OWNED_BITS 128
struct owned {
	__s64 count;
	__u64 low[OWNED_BITS / 64];
};

/* Processes (or threads) that have had an entry in open_files. Only the
 * forks and exits of those that still have some touch open_files: one
 * lookup per descriptor when they are all below OWNED_BITS, otherwise a
 * walk of the whole map (every bucket, about 200 us). Not an LRU: an
 * evicted owner's entries would never be swept. An entry goes at its
 * owner's exit; a descriptor whose owner finds the map full is not tracked
 * (and counted as such). Sized like open_files by the collector. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct owned);
} files_owners SEC(".maps");

/* How many files_owners entries there are per slot of owner ids (the id's
 * low bits): a counting filter in front of open_files. A slot at zero says
 * that no owner in it has an entry, so a read, write or close of such a
 * process is done with one array load instead of a hash lookup - the path
 * of nearly every read and write on the host. The count goes up right
 * after an entry is made and down after one is deleted, so it is never
 * zero while an owner in the slot has one, but for the instant between
 * the two inside the open's own exit program, before the new descriptor
 * reaches the process. */
#define OWNER_SLOTS 4096
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OWNER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} owner_slots SEC(".maps");

/* Connections seen at connect or accept, by socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct vigil_tracked);
} connections SEC(".maps");

/* Absolute paths are built right to left in scratch.path, ending with a NUL
 * at PATH_END; offsets are masked with PATH_MASK and names are shorter than
 * VIGIL_PATH_LEN, so every write provably stays inside the buffer. */
#define PATH_END (2 * VIGIL_PATH_LEN - 1)
#define PATH_MASK (2 * VIGIL_PATH_LEN - 1)

/* Per-CPU scratch space: records and keys are too large for the stack. */
struct scratch {
	struct vigil_tracked slot;
	struct vigil_path_key key;
	char path[4 * VIGIL_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_space SEC(".maps");

/* Tracepoint contexts of syscalls:sys_enter_X and sys_exit_X (see
 * /sys/kernel/tracing/events/syscalls/sys_enter_openat/format). */
struct sys_enter_ctx {
	__u64 common;
	__s64 nr;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s64 nr;
	__s64 ret;
};

/* ---- helpers ----------------------------------------------------------- */

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch_space, &zero);
}

static __always_inline bool in_mode_scope(__u32 mode, void *found)
{
	if (mode == VIGIL_SCOPE_INCLUDE)
		return found != NULL;
	if (mode == VIGIL_SCOPE_EXCLUDE)
		return found == NULL;
	return true;
}

/* The task filters: not the collector itself, uid and cgroup scopes. */
static __always_inline bool task_in_scope(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == self_tgid)
		return false;
	if (uid_mode != VIGIL_SCOPE_ALL) {
		__u32 uid = (__u32)bpf_get_current_uid_gid();
		if (!in_mode_scope(uid_mode, bpf_map_lookup_elem(&scope_uids, &uid)))
			return false;
	}
	if (cgroup_mode != VIGIL_SCOPE_ALL) {
		__u64 cgroup = bpf_get_current_cgroup_id();
		if (!in_mode_scope(cgroup_mode, bpf_map_lookup_elem(&scope_cgroups, &cgroup)))
			return false;
	}
	return true;
}

/* Voids every outside_dirs entry: a directory may have moved. */
static __always_inline void dirs_changed(void)
{
	__sync_fetch_and_add(&dirs_generation, 1);
}

static __always_inline __u64 outside_check(__u64 ino, __u64 dev, __u64 generation, __u64 ktime)
{
	__u64 h = (ino ^ (dev << 40)) * 0x9e3779b97f4a7c15ull;
	h = (h ^ generation ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull;
	return h ^ ktime ^ (h >> 32);
}

/* The outside_dirs slot of a directory. */
static __always_inline struct outside_dir *outside_slot(const struct vigil_inode_key *key)
{
	__u32 slot = (__u32)(((key->ino ^ ((__u64)key->dev << 40)) * 0x9e3779b97f4a7c15ull) >> 54) &
		     (OUTSIDE_SLOTS - 1);
	return bpf_map_lookup_elem(&outside_dirs, &slot);
}

/* True when `key` is a directory known to be outside every watched one. */
static __always_inline bool known_outside(const struct vigil_inode_key *key, __u64 generation,
					  __u64 now)
{
	struct outside_dir *entry = outside_slot(key);
	if (!entry || entry->ino != key->ino || entry->dev != key->dev ||
	    entry->generation != generation || now - entry->ktime_ns >= OUTSIDE_TTL_NS)
		return false;
	return entry->check ==
	       outside_check(entry->ino, entry->dev, entry->generation, entry->ktime_ns);
}

static __always_inline void remember_outside(const struct vigil_inode_key *key, __u64 generation,
					     __u64 now)
{
	struct outside_dir *entry = outside_slot(key);
	if (!entry)
		return;
	entry->ino = key->ino;
	entry->dev = key->dev;
	entry->generation = generation;
	entry->ktime_ns = now;
	entry->check = outside_check(key->ino, key->dev, generation, now);
}

/* A walk from a dentry up its directories (dentry_in_scope). */
struct dir_walk {
	struct dentry *dentry; /* the next directory to look at */
	struct vigil_inode_key key;
	struct vigil_inode_key parent_key; /* the first directory above the start */
	__u64 generation;
	__u64 now;
	int found; /* WALK_ON, or what the walk decided */
};

enum { WALK_OUTSIDE = 0, WALK_IN_SCOPE = 1, WALK_ON = -1 };

/* One level of a walk: decides, or moves the walk to the parent. */
static __always_inline int walk_step(struct dir_walk *w, __u32 depth)
{
	struct dentry *dentry = w->dentry;
	if (!dentry)
		return WALK_OUTSIDE;
	w->key.ino = BPF_CORE_READ(dentry, d_inode, i_ino);
	/* never a watched directory itself: its walk found none; nor is
	 * anything below it that the walk found unwatched so far */
	if (known_outside(&w->key, w->generation, w->now)) {
		if (depth >= 2)
			remember_outside(&w->parent_key, w->generation, w->now);
		return WALK_OUTSIDE;
	}
	if (bpf_map_lookup_elem(&watched_dirs, &w->key))
		return WALK_IN_SCOPE;
	if (depth == 1)
		w->parent_key = w->key;
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (parent == dentry) {
		if (depth >= 1)
			remember_outside(&w->parent_key, w->generation, w->now);
		return WALK_OUTSIDE;
	}
	w->dentry = parent;
	return WALK_ON;
}

/* bpf_loop callback: the levels below the first MAX_DIR_DEPTH. */
static long deep_walk_step(__u64 index, struct dir_walk *w)
{
	w->found = walk_step(w, MAX_DIR_DEPTH + (__u32)index);
	return w->found == WALK_ON ? 0 : 1;
}

/* True when a dentry is, or is below, a watched directory: its ancestors are
 * looked up by (device, inode) in watched_dirs. The walk stays inside one
 * file system (a mount's root is its own parent); the collector adds the
 * roots of mounts below a watched directory to watched_dirs. A dentry on a
 * file system without a watched directory (/proc, /sys, /run, a root file
 * system when the PHI has a volume of its own) costs one lookup, no walk.
 * The dentry's parent directory, when a walk from it reached the root
 * without a watched directory, goes into outside_dirs, and a later walk
 * stops at any directory found there: the files of one directory are
 * walked up once, not once per open, and its subdirectories' stop at it.
 * The generation is read before the walk, so a rename during it voids
 * what it finds. The first MAX_DIR_DEPTH levels are walked inline; a
 * deeper file goes on in a bpf_loop, so nesting a watched file deeper
 * does not hide it. A walk still undecided after MAX_WALK_DEPTH levels
 * counts as in scope: reported rather than missed. */
static __always_inline bool dentry_in_scope(struct dentry *dentry)
{
	struct dir_walk walk = {.dentry = dentry, .found = WALK_ON};
	walk.key.dev = BPF_CORE_READ(dentry, d_sb, s_dev);
	if (!bpf_map_lookup_elem(&watched_devs, &walk.key.dev))
		return false;
	walk.generation = *(volatile __u64 *)&dirs_generation;
	walk.now = bpf_ktime_get_ns();
	for (int depth = 0; depth < MAX_DIR_DEPTH; depth++) {
		int found = walk_step(&walk, depth);
		if (found != WALK_ON)
			return found == WALK_IN_SCOPE;
	}
	bpf_loop(MAX_WALK_DEPTH - MAX_DIR_DEPTH, deep_walk_step, &walk, 0);
	return walk.found != WALK_OUTSIDE;
}

/* The file behind a descriptor of the current task, or NULL. The task's
 * BTF pointer lets the verifier turn the walk to the descriptor table into
 * plain loads; the table's slots need a probe read. */
static __always_inline struct file *file_of_fd(__u64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd & 0xfffff]))
		return NULL;
	return file;
}

/* True when the file open on a descriptor is in a watched directory. */
static __always_inline bool fd_in_scope(__u64 fd)
{
	struct file *file = file_of_fd(fd);
	return file && dentry_in_scope(BPF_CORE_READ(file, f_path.dentry));
}

/* True when the directory a relative path starts from - the working
 * directory for AT_FDCWD, otherwise the directory descriptor - is, or is
 * below, a watched directory. */
static __always_inline bool dir_in_scope(long dfd)
{
	int fd = (int)dfd;
	if (fd == AT_FDCWD) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		return dentry_in_scope(BPF_CORE_READ(task, fs, pwd.dentry));
	}
	return fd >= 0 && fd_in_scope(fd);
}

/* The calling thread's user registers as it entered the syscall: where an
 * exit program finds the arguments (sys_exit_X carries only the return
 * value). Saves an enter program, whose tracepoint hit costs as much as the
 * whole check. */
static __always_inline struct pt_regs *syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

static __always_inline __u64 *owner_slot(__u32 owner)
{
	__u32 slot = owner & (OWNER_SLOTS - 1);
	return bpf_map_lookup_elem(&owner_slots, &slot);
}

/* False when `owner` surely has no entry in open_files. */
static __always_inline bool may_own_files(__u32 owner)
{
	__u64 *count = owner_slot(owner);
	return !count || *count != 0;
}

/* The running process's id, the owner of its entries in open_files. */
static __always_inline __u32 current_owner(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* Counts an entry of open_files (key: owner << 32 | fd) in or out; false
 * when an entry in cannot be counted because files_owners is full. */
static __always_inline bool count_owned(__u64 key, __s64 delta)
{
	__u32 owner = key >> 32;
	__u32 fd = (__u32)key;
	struct owned *owned = bpf_map_lookup_elem(&files_owners, &owner);
	if (!owned) {
		if (delta < 0)
			return true;
		struct owned fresh = {};
		if (bpf_map_update_elem(&files_owners, &owner, &fresh, BPF_NOEXIST) == 0) {
			__u64 *slot = owner_slot(owner);
			if (slot)
				__sync_fetch_and_add(slot, 1);
		}
		owned = bpf_map_lookup_elem(&files_owners, &owner);
		if (!owned)
			return false;
	}
	__sync_fetch_and_add(&owned->count, delta);
	if (fd < OWNED_BITS) {
		__u64 bit = 1ull << (fd & 63);
		if (delta > 0)
			__sync_fetch_and_or(&owned->low[(fd >> 6) & 1], bit);
		else
			__sync_fetch_and_and(&owned->low[(fd >> 6) & 1], ~bit);
	}
	return true;
}

/* A process's (or thread's) entries, when it has some. */
static __always_inline struct owned *owned_files(__u32 owner)
{
	struct owned *owned = bpf_map_lookup_elem(&files_owners, &owner);
	return owned && owned->count > 0 ? owned : NULL;
}

/* True when every entry of an owner is in its bitmap. */
static __always_inline bool all_in_bitmap(const struct owned *owned)
{
	return owned->count ==
	       __builtin_popcountll(owned->low[0]) + __builtin_popcountll(owned->low[1]);
}

/* Puts "/name" in front of the path being built at pos; the new start, or
 * -1 when it does not fit in a record's path. */
static __always_inline long prepend(char *buf, long pos, const void *name, __u32 len)
{
	if (pos < 0 || len >= VIGIL_PATH_LEN || (long)len + 1 > pos ||
	    PATH_END - pos + len + 1 >= VIGIL_PATH_LEN)
		return -1;
	pos -= len;
	bpf_probe_read_kernel(buf + (pos & PATH_MASK), len & (VIGIL_PATH_LEN - 1), name);
	pos -= 1;
	buf[pos & PATH_MASK] = '/';
	return pos;
}

/* A walk building a path (prepend_path). */
struct path_walk {
	struct dentry *dentry;  /* the next name to put in front */
	struct dentry *mnt_root; /* the root of the mount it is in */
	struct mount *mnt;
	long pos;  /* where the path built so far starts, -1 when it did not fit */
	bool whole; /* the root of the mount namespace was reached */
};

/* One level of a path walk: the dentry's name in front of the path, or
 * from a mount's root to its mount point in the parent mount. True when
 * the walk is over (whole, or too long). */
static __always_inline bool path_step(char *buf, struct path_walk *w)
{
	/* kernel pointers in locals: a CO-RE read through w would relocate
	 * w's own fields too, and the kernel has no struct path_walk */
	struct dentry *dentry = w->dentry;
	struct mount *mnt = w->mnt;
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == w->mnt_root || dentry == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
		if (!up || up == mnt) {
			w->whole = true;
			return true;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->mnt_root = BPF_CORE_READ(up, mnt.mnt_root);
		return false;
	}
	struct qstr name = {};
	bpf_core_read(&name, sizeof(name), &dentry->d_name);
	w->pos = prepend(buf, w->pos, name.name, name.len);
	w->dentry = parent;
	return w->pos < 0;
}

/* bpf_loop callback: the levels of a path past the first 2 * MAX_DIR_DEPTH,
 * in the per-CPU scratch path (a callback gets no map pointer from its
 * caller; prepend_path builds in the same one). */
static long deep_path_step(__u64 index, struct path_walk *w)
{
	struct scratch *s = get_scratch();
	if (!s) {
		w->pos = -1;
		return 1;
	}
	return path_step(s->path, w);
}

/* Puts the absolute path of a (mount, dentry) pair in front of pos in the
 * scratch path s->path, as d_path does: names up to the mount's root, then on from
 * the mount point in the parent mount, up to the root of the mount
 * namespace. -1 when it does not fit in a record's path. The first levels
 * are walked inline, the rest in a bpf_loop: a path of one-letter
 * directories that fits has up to VIGIL_PATH_LEN / 2 of them. */
static __always_inline long prepend_path(struct scratch *s, long pos, const struct path *where)
{
	char *buf = s->path;
	if (pos < 0)
		return -1;
	struct vfsmount *vfsmnt = BPF_CORE_READ(where, mnt);
	struct path_walk walk = {
		.dentry = BPF_CORE_READ(where, dentry),
		.mnt_root = BPF_CORE_READ(vfsmnt, mnt_root),
		.mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt),
		.pos = pos,
	};
	bool over = false;
	for (int depth = 0; depth < MAX_DIR_DEPTH * 2 && !over; depth++)
		over = path_step(buf, &walk);
	if (!over)
		bpf_loop(VIGIL_PATH_LEN, deep_path_step, &walk, 0);
	/* a path missing its upper directories would read as another one */
	if (!walk.whole || walk.pos < 0)
		return -1;
	if (walk.pos == PATH_END)
		buf[--walk.pos & PATH_MASK] = '/';
	return walk.pos;
}

/* The path a relative name starts from: the working directory or the
 * directory descriptor dfd. */
static __always_inline const struct path *dir_path(long dfd)
{
	int fd = (int)dfd;
	if (fd == AT_FDCWD) {
		struct task_struct *task = bpf_get_current_task_btf();
		return &task->fs->pwd;
	}
	struct file *file = fd >= 0 ? file_of_fd(fd) : NULL;
	return file ? &file->f_path : NULL;
}

/* Writes the absolute path of a relative name (in s->key.data, len bytes
 * with its NUL) into dst: the opened file's own path when there is one,
 * otherwise the starting directory's path and the name. Leaves dst alone
 * (the name as given) when the path does not fit. */
static __always_inline void absolute_path(struct scratch *s, char *dst, long len, long dfd,
					  __s64 opened)
{
	char *buf = s->path;
	long pos = PATH_END;
	buf[PATH_END] = 0;
	if (opened >= 0) {
		struct file *file = file_of_fd(opened);
		if (!file)
			return;
		pos = prepend_path(s, pos, &file->f_path);
	} else {
		const struct path *dir = dir_path(dfd);
		if (!dir)
			return;
		pos = prepend(buf, pos, s->key.data, (len - 1) & (VIGIL_PATH_LEN - 1));
		pos = prepend_path(s, pos, dir);
	}
	if (pos < 0)
		return;
	bpf_probe_read_kernel(dst, VIGIL_PATH_LEN, buf + (pos & PATH_MASK));
}

/* True when a path (len bytes with its NUL) has a ".." component, which
 * makes its text say nothing about where it leads: "/phi/../etc/shadow"
 * starts with a watched prefix and is not under it. */
static __always_inline bool has_dotdot(const char *path, long len)
{
	for (int i = 0; i + 3 < VIGIL_PATH_LEN; i++) {
		if (i + 3 >= len)
			break;
		if (path[i] == '/' && path[i + 1] == '.' && path[i + 2] == '.' &&
		    (path[i + 3] == '/' || path[i + 3] == 0))
			return true;
	}
	return false;
}

/* Says whether a user path is in the watched scope and, when it is, writes
 * it into dst, absolute. An absolute path is matched against the watched
 * prefixes first (one string copy and one trie lookup). A path the prefixes
 * miss, and every relative one, is matched by its directories: for a
 * successful open, those of the file it opened (`opened`, the new
 * descriptor), so a watched file reached through a symbolic link, a bind
 * mount or another mount of its filesystem is still in scope and reported
 * by its own path; otherwise (a failed open, or an operation without a
 * descriptor) a relative path is matched by its starting directory (the
 * working directory, or the directory descriptor dfd). A successful open
 * of an absolute path with a ".." component is matched by the file it
 * opened even when the prefixes match, and reported by that file's path;
 * other operations on such a path go by its text. */
static __always_inline bool path_in_scope(struct scratch *s, char *dst, const char *upath,
					  long dfd, __s64 opened)
{
	struct vigil_path_key *key = &s->key;
	long len = bpf_probe_read_user_str(key->data, sizeof(key->data), upath);
	if (len <= 1)
		return false;
	if (key->data[0] == '/') {
		/* with the NUL: "/phi\0" matches the watched directory itself */
		key->prefixlen = len * 8;
		if (bpf_map_lookup_elem(&watched_prefixes, key) &&
		    (opened < 0 || !watch_relative || !has_dotdot(key->data, len))) {
			__builtin_memcpy(dst, key->data, VIGIL_PATH_LEN);
			return true;
		}
		if (!watch_relative || opened < 0 || !fd_in_scope(opened))
			return false;
		__builtin_memcpy(dst, key->data, VIGIL_PATH_LEN);
		absolute_path(s, dst, len, dfd, opened);
		return true;
	}
	if (!watch_relative)
		return false;
	if (opened >= 0 ? !fd_in_scope(opened) : !dir_in_scope(dfd))
		return false;
	__builtin_memcpy(dst, key->data, VIGIL_PATH_LEN);
	absolute_path(s, dst, len, dfd, opened);
	return true;
}

static __always_inline bool read_path(struct scratch *s, char *dst, const char *upath, long dfd)
{
	return path_in_scope(s, dst, upath, dfd, -1);
}

/* Fills the fields every record carries, from the current task (through
 * its BTF pointer: plain loads, no probe reads). */
/* Who is doing it: the running task's ids, credentials, cgroup and comm. */
static __always_inline void fill_identity(struct vigil_record *rec)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->pid = pid_tgid >> 32;
	rec->tid = (__u32)pid_tgid;
	rec->ppid = task->real_parent->tgid;
	rec->uid = (__u32)uid_gid;
	rec->gid = uid_gid >> 32;
	rec->euid = task->cred->euid.val;
	rec->auid = VIGIL_AUID_UNSET;
	if (bpf_core_field_exists(task->loginuid))
		rec->auid = task->loginuid.val;
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
}

static __always_inline void fill_header(struct vigil_record *rec, __u32 kind)
{
	fill_identity(rec);
	rec->ktime_ns = bpf_ktime_get_ns();
	rec->bytes = 0;
	rec->target = -1;
	rec->kind = kind;
	rec->err = 0;
	rec->flags = 0;
	rec->mode = 0;
	rec->args_len = 0;
	rec->dirfd = AT_FDCWD;
	rec->dirfd2 = AT_FDCWD;
	rec->family = 0;
	rec->sport = 0;
	rec->dport = 0;
	rec->loss_mark = 0;
	__builtin_memset(rec->saddr, 0, sizeof(rec->saddr));
	__builtin_memset(rec->daddr, 0, sizeof(rec->daddr));
}

/* Every loss counted in `drops`, on all CPUs together. Each record carries
 * its low 16 bits (loss_mark), so the collector sees between which two
 * records a loss happened and reports it there, not at its next read of
 * `drops`. */
__u64 losses = 0;

static __always_inline void count_drop(__u32 kind)
{
	__u64 *count = bpf_map_lookup_elem(&drops, &kind);
	if (count)
		__sync_fetch_and_add(count, 1);
	__sync_fetch_and_add(&losses, 1);
}

/* Wakes the collector at once for a record on a quiet host, and otherwise
 * only when a batch has built up:
 * - below the batch threshold (an eighth of the ring buffer, at most
 *   64 KiB of unread data), if no wakeup was sent in the last
 *   VIGIL_WAKEUP_GAP_NS; records inside that gap are picked up by the
 *   collector's follow-up look after the drain the last wakeup caused;
 * - when this record (`size` bytes) takes the unread data across the
 *   threshold.
 * Past the threshold the reader is awake or about to be; waking it again
 * would cost a self-interrupt (irq_work) per record. A crossing that two
 * CPUs race past is caught by the next record's wakeup or the reader's
 * slow safety timer. */
static __always_inline __u64 submit_flags(__u64 size)
{
	__u64 threshold = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 8;
	if (threshold > 65536)
		threshold = 65536;
	/* reserved space includes an 8-byte header, rounded up to 8 */
	__u64 used = ((size + 7) & ~7ull) + 8;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= threshold)
		return avail < threshold + used ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(&last_wakeup, &zero);
	if (!last)
		return BPF_RB_NO_WAKEUP;
	__u64 now = bpf_ktime_get_ns();
	if (now - *last < VIGIL_WAKEUP_GAP_NS)
		return BPF_RB_NO_WAKEUP;
	*last = now;
	return BPF_RB_FORCE_WAKEUP;
}

/* A record whose path2 is empty (every kind but exec and rename) goes into
 * the ring buffer without it: VIGIL_RECORD_SHORT bytes instead of the whole
 * struct, less to copy here and to read in user space, which zero-fills the
 * rest. */
#define VIGIL_RECORD_SHORT __builtin_offsetof(struct vigil_record, path2)

static __always_inline bool has_path2(const struct vigil_record *src)
{
	return src->path2[0] != 0 || src->args_len != 0;
}

/* Copies a record into the ring buffer, as `kind` and with `bytes` when
 * kind is not 0 (a roll-up of a tracked record), or counts the loss. */
static __always_inline void emit_as(const struct vigil_record *src, __u32 kind, __u64 bytes,
				    bool by_current_task)
{
	struct vigil_record *rec;
	__u64 size = has_path2(src) ? sizeof(*rec) : VIGIL_RECORD_SHORT;
	if (has_path2(src)) {
		rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
		if (rec)
			__builtin_memcpy(rec, src, sizeof(*rec));
	} else {
		rec = bpf_ringbuf_reserve(&events, VIGIL_RECORD_SHORT, 0);
		if (rec)
			__builtin_memcpy(rec, src, VIGIL_RECORD_SHORT);
	}
	if (!rec) {
		count_drop(kind ? kind : src->kind);
		return;
	}
	rec->loss_mark = (__u16)*(volatile __u64 *)&losses;
	if (by_current_task)
		fill_identity(rec);
	if (kind) {
		rec->kind = kind;
		rec->bytes = bytes;
		rec->ktime_ns = bpf_ktime_get_ns();
	}
	bpf_ringbuf_submit(rec, submit_flags(size));
}

/* Copies a finished record into the ring buffer, or counts the loss. */
static __always_inline void emit(const struct vigil_record *src)
{
	emit_as(src, 0, 0, false);
}

/* Emits a copy of a tracked record with another kind and a byte count. */
static __always_inline void emit_rollup(const struct vigil_record *src, __u32 kind, __u64 bytes)
{
	emit_as(src, kind, bytes, false);
}

/* The read and write roll-ups of a watched descriptor so far, as the
 * running task's: every file roll-up is emitted by the process its entry is
 * keyed by, which moved the bytes and need not be the one that opened the
 * file (a forked child, or the program an exec started). Connection
 * roll-ups keep the opener's: a socket's last state change can come in
 * softirq context, under whatever task it interrupted. The counts are
 * taken and zeroed in one exchange each, so two reports racing on one entry
 * (a close and another thread's periodic report) never count the same
 * bytes twice. */
static __always_inline void emit_file_rollups(struct vigil_tracked *file)
{
	__u64 read = __sync_lock_test_and_set(&file->read_bytes, 0);
	__u64 written = __sync_lock_test_and_set(&file->write_bytes, 0);
	if (read)
		emit_as(&file->rec, VIGIL_KIND_READ, read, true);
	if (written)
		emit_as(&file->rec, VIGIL_KIND_WRITE, written, true);
}

/* Inserts a new entry of open_files and counts it for its owner; false
 * when it is already there. When either map is full the descriptor is not
 * tracked, and the loss of its roll-ups is counted. */
static __always_inline bool insert_file(__u64 key, struct vigil_tracked *file)
{
	if (bpf_map_update_elem(&open_files, &key, file, BPF_NOEXIST) != 0) {
		if (bpf_map_lookup_elem(&open_files, &key))
			return false;
		count_drop(VIGIL_LOSS_UNTRACKED);
		return true;
	}
	if (!count_owned(key, 1)) {
		/* an entry its owner's exit would never sweep */
		bpf_map_delete_elem(&open_files, &key);
		count_drop(VIGIL_LOSS_UNTRACKED);
	}
	return true;
}

/* Adds a watched descriptor. An entry already there is one whose close was
 * not seen (the descriptor number was reused): its bytes are reported
 * before it is replaced. */
static __always_inline void track_file(__u64 key, struct vigil_tracked *file)
{
	if (insert_file(key, file))
		return;
	struct vigil_tracked *stale = bpf_map_lookup_elem(&open_files, &key);
	if (stale)
		emit_file_rollups(stale);
	bpf_map_update_elem(&open_files, &key, file, BPF_ANY);
}

/* Drops a watched descriptor and uncounts it. */
static __always_inline void untrack_file(__u64 key)
{
	if (bpf_map_delete_elem(&open_files, &key) == 0)
		count_owned(key, -1);
}

/* A closed descriptor - by close(2), or in a way no program saw (dup2 onto
 * it, a reused number): its bytes are reported and its entry dropped, if it
 * has one. */
static __always_inline void forget_file(__u64 key)
{
	if (!may_own_files(key >> 32))
		return;
	struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &key);
	if (!file)
		return;
	emit_file_rollups(file);
	untrack_file(key);
}

/* The number of the syscall the current thread is in, from its user
 * registers; NR_UNKNOWN on an architecture this file does not know. */
#define NR_UNKNOWN ((__u64)-1)
static __always_inline __u64 current_syscall_nr(void)
{
#if defined(__TARGET_ARCH_x86)
	return syscall_regs()->orig_ax;
#elif defined(__TARGET_ARCH_arm64)
	return syscall_regs()->syscallno;
#else
	return NR_UNKNOWN;
#endif
}

/* Stages the scratch record for this thread's syscall exit. While staged,
 * read_bytes holds the syscall's number, so that an exit of another
 * syscall does not take it (see finish). */
static __always_inline int stage(struct scratch *s)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	s->slot.read_bytes = current_syscall_nr();
	s->slot.write_bytes = 0;
	bpf_map_update_elem(&inflight, &tid, &s->slot, BPF_ANY);
	return 0;
}

/* Prepares a record for a syscall on one or two user paths, when the task
 * and either path are in scope; NULL otherwise. */
static __always_inline struct scratch *prepare_paths(__u32 kind, long dfd, const char *upath,
						     long dfd2, const char *upath2)
{
	if (!task_in_scope())
		return NULL;
	struct scratch *s = get_scratch();
	if (!s)
		return NULL;
	bool first = read_path(s, s->slot.rec.path, upath, dfd);
	bool second = upath2 && read_path(s, s->slot.rec.path2, upath2, dfd2);
	if (!first && !second)
		return NULL;
	/* a rename into or out of scope: the other side's path too */
	if (!first)
		bpf_probe_read_user_str(s->slot.rec.path, VIGIL_PATH_LEN, upath);
	if (!upath2)
		s->slot.rec.path2[0] = 0;
	else if (!second)
		bpf_probe_read_user_str(s->slot.rec.path2, VIGIL_PATH_LEN, upath2);
	fill_header(&s->slot.rec, kind);
	s->slot.rec.dirfd = (__s32)dfd;
	if (upath2)
		s->slot.rec.dirfd2 = (__s32)dfd2;
	return s;
}

static __always_inline int stage_paths(__u32 kind, long dfd, const char *upath, long dfd2,
				       const char *upath2)
{
	struct scratch *s = prepare_paths(kind, dfd, upath, dfd2, upath2);
	return s ? stage(s) : 0;
}

static __always_inline __u64 fd_key(__u64 fd)
{
	return (bpf_get_current_pid_tgid() & 0xffffffff00000000ull) | (fd & 0xffffffffull);
}

/* Stages a syscall on a descriptor if it is a watched one. */
static __always_inline struct scratch *stage_fd(__u32 kind, __u64 fd)
{
	__u64 key = fd_key(fd);
	struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &key);
	if (!file)
		return NULL;
	struct scratch *s = get_scratch();
	if (!s)
		return NULL;
	__builtin_memcpy(s->slot.rec.path, file->rec.path, VIGIL_PATH_LEN);
	s->slot.rec.path2[0] = 0;
	fill_header(&s->slot.rec, kind);
	return s;
}

/* The socket behind a descriptor of the current task. */
static __always_inline struct sock *sock_of_fd(__u64 fd)
{
	struct file *file = file_of_fd(fd);
	if (!file)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* Local address and port of a socket and, for accepted ones, the remote
 * side (a connect keeps the destination the caller asked for). */
static __always_inline void fill_sock(struct vigil_record *rec, struct sock *sk, bool remote)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	rec->family = family;
	rec->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (family == AF_INET)
		bpf_core_read(rec->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
	else if (family == AF_INET6)
		bpf_core_read(rec->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	if (!remote)
		return;
	rec->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET)
		bpf_core_read(rec->daddr, 4, &sk->__sk_common.skc_daddr);
	else if (family == AF_INET6)
		bpf_core_read(rec->daddr, 16, &sk->__sk_common.skc_v6_daddr);
}

/* Finishes this thread's staged syscall with its return value. */
static __always_inline int finish(__s64 nr, __s64 ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct vigil_tracked *slot = bpf_map_lookup_elem(&inflight, &tid);
	if (!slot)
		return 0;
	/* Staged by another syscall, whose exit was not seen (it was under way
	 * as the programs were attached): stale, and not this one's. */
	if (slot->read_bytes != NR_UNKNOWN && slot->read_bytes != (__u64)nr) {
		bpf_map_delete_elem(&inflight, &tid);
		return 0;
	}
	slot->read_bytes = 0;
	struct vigil_record *rec = &slot->rec;
	rec->err = ret < 0 ? (__s32)-ret : 0;

	if (rec->kind == VIGIL_KIND_CONNECT || rec->kind == VIGIL_KIND_ACCEPT) {
		/* connect: the socket is the staged descriptor; accept: the new one */
		__u64 fd = rec->kind == VIGIL_KIND_CONNECT ? (__u64)rec->bytes : (__u64)ret;
		rec->bytes = 0;
		struct sock *sk = (rec->kind == VIGIL_KIND_ACCEPT && ret < 0) ? NULL : sock_of_fd(fd);
		if (sk)
			fill_sock(rec, sk, rec->kind == VIGIL_KIND_ACCEPT);
		if (rec->family != AF_INET && rec->family != AF_INET6) {
			bpf_map_delete_elem(&inflight, &tid);
			return 0;
		}
		/* 115 = EINPROGRESS: a non-blocking connect under way. Only TCP
		 * sockets: the byte totals come at their close
		 * (inet_sock_set_state), which a UDP socket never reaches, so
		 * its entry would only push real connections out. */
		if (sk && (rec->err == 0 || rec->err == 115) &&
		    BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP) {
			__u64 key = (__u64)sk;
			bpf_map_update_elem(&connections, &key, slot, BPF_ANY);
		}
	}
	emit(rec);
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

/* ---- process ----------------------------------------------------------- */

struct sweep_ctx {
	__u32 tgid;
	bool only_closed;
	__u64 low[OWNED_BITS / 64]; /* the owner's bitmap, for sweep_bit */
};

/* One entry of a sweep: its roll-ups, and the entry gone - unless only
 * closed descriptors are swept and the running process still has this one
 * open. An exiting owner's entries are just deleted: its files_owners entry
 * goes right after. */
static __always_inline void sweep_entry(__u64 key, struct vigil_tracked *file,
					struct sweep_ctx *ctx)
{
	if (ctx->only_closed && file_of_fd((__u32)key))
		return;
	emit_file_rollups(file);
	if (ctx->only_closed)
		untrack_file(key);
	else
		bpf_map_delete_elem(&open_files, &key);
}

/* bpf_for_each_map_elem callback: sweep_entry for each entry of the owner. */
static long sweep_descriptor(void *map, __u64 *key, struct vigil_tracked *file,
			     struct sweep_ctx *ctx)
{
	if ((*key >> 32) == ctx->tgid)
		sweep_entry(*key, file, ctx);
	return 0;
}

/* The child's copy of one of its parent's entries, descriptor `fd`, with
 * counters of its own (built in the scratch slot). */
static __always_inline void inherit_entry(struct scratch *s, const struct vigil_tracked *file,
					  __u32 child, __u32 fd)
{
	__builtin_memcpy(&s->slot, file, sizeof(s->slot));
	s->slot.read_bytes = 0;
	s->slot.write_bytes = 0;
	__u64 child_key = ((__u64)child << 32) | fd;
	insert_file(child_key, &s->slot);
}

struct inherit_ctx {
	__u32 parent;
	__u32 child;
};

/* bpf_for_each_map_elem callback: a new task inherits a copy of each of
 * its parent's watched descriptors (with its own counters). */
static long inherit_descriptor(void *map, __u64 *key, struct vigil_tracked *file,
			       struct inherit_ctx *ctx)
{
	if ((*key >> 32) != ctx->parent)
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 1;
	inherit_entry(s, file, ctx->child, (__u32)*key);
	return 0;
}

/* bpf_loop callback: sweep_entry for descriptor `fd` when the owner's
 * bitmap has it. */
static long sweep_bit(__u64 fd, struct sweep_ctx *ctx)
{
	if (fd >= OWNED_BITS || !((ctx->low[(fd >> 6) & 1] >> (fd & 63)) & 1))
		return 0;
	__u64 key = ((__u64)ctx->tgid << 32) | fd;
	struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &key);
	if (file)
		sweep_entry(key, file, ctx);
	return 0;
}

/* The roll-ups of an owner's descriptors, and their entries gone: all of
 * them for an exiting owner, or with only_closed those the running process
 * no longer has open (closed by exec's close-on-exec or by close_range).
 * By its bitmap when it covers them all, otherwise by a walk. */
static __always_inline void sweep_owner(__u32 owner, bool only_closed)
{
	struct owned *owned = owned_files(owner);
	if (!owned)
		return;
	struct sweep_ctx sweep = {
		.tgid = owner,
		.only_closed = only_closed,
		.low = {owned->low[0], owned->low[1]},
	};
	if (!all_in_bitmap(owned)) {
		bpf_for_each_map_elem(&open_files, sweep_descriptor, &sweep, 0);
		return;
	}
	/* bpf_loop, not an unrolled loop: the verifier checks the callback
	 * once instead of once per descriptor and per call site, which took
	 * seconds at load */
	bpf_loop(OWNED_BITS, sweep_bit, &sweep, 0);
}

/* A new task's copies of its parent's descriptors: by the parent's bitmap
 * when it covers them all, otherwise by a walk. */
static __always_inline void inherit_owner(__u32 parent, __u32 child)
{
	struct owned *owned = owned_files(parent);
	if (!owned)
		return;
	if (!all_in_bitmap(owned)) {
		struct inherit_ctx inherit = {.parent = parent, .child = child};
		bpf_for_each_map_elem(&open_files, inherit_descriptor, &inherit, 0);
		return;
	}
	struct scratch *s = get_scratch();
	if (!s)
		return;
	__u64 low[2] = {owned->low[0], owned->low[1]};
	for (__u32 fd = 0; fd < OWNED_BITS; fd++) {
		if (!((low[(fd >> 6) & 1] >> (fd & 63)) & 1))
			continue;
		__u64 key = ((__u64)parent << 32) | fd;
		struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &key);
		if (file)
			inherit_entry(s, file, child, fd);
	}
}

SEC("tracepoint/sched/sched_process_exec")
int vigil_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	/* exec has closed the close-on-exec descriptors without a close(2);
	 * the new program must not inherit their entries */
	sweep_owner(bpf_get_current_pid_tgid() >> 32, true);
	if (!task_in_scope())
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct vigil_record *rec = &s->slot.rec;
	fill_header(rec, VIGIL_KIND_EXEC);
	__u32 offset = ctx->__data_loc_filename & 0xffff;
	bpf_probe_read_kernel_str(rec->path, sizeof(rec->path), (void *)ctx + offset);

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 start = BPF_CORE_READ(task, mm, arg_start);
	__u64 end = BPF_CORE_READ(task, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	if (len > VIGIL_PATH_LEN)
		len = VIGIL_PATH_LEN;
	rec->args_len = 0;
	if (len > 0 && bpf_probe_read_user(rec->path2, len, (void *)start) == 0)
		rec->args_len = len;
	emit(rec);
	return 0;
}

#define CLONE_THREAD 0x00010000
#define NR_CLONE 56 /* x86-64 */
#define NR_CLONE3 435

/* True when the fork under way makes a thread of the running process
 * (clone or clone3 with CLONE_THREAD). The tracepoint does not say, so the
 * flags are read from the syscall's arguments. */
static __always_inline bool forking_a_thread(void)
{
#if defined(__TARGET_ARCH_x86)
	struct pt_regs *regs = syscall_regs();
	long nr = regs->orig_ax;
	/* read once: two reads on two paths get merged into one load that the
	 * verifier refuses */
	__u64 first = PT_REGS_PARM1_SYSCALL(regs);
	__u64 flags = 0;
	if (nr == NR_CLONE)
		flags = first; /* clone(flags, ...) */
	else if (nr == NR_CLONE3)
		bpf_probe_read_user(&flags, sizeof(flags), (void *)first); /* clone_args.flags */
	return flags & CLONE_THREAD;
#else
	return false;
#endif
}

/* fork: the child's reads of an inherited watched descriptor (a shell's
 * `cat < /phi/x`) are counted under the child's pid. A new thread shares
 * the process's descriptors and entries, so it gets no copies: a process
 * with many threads would otherwise fill open_files with copies nobody
 * reads. (Older collectors made them; a thread's exit still drops any.) */
SEC("tracepoint/sched/sched_process_fork")
int vigil_fork(struct trace_event_raw_sched_process_fork *ctx)
{
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!owned_files(parent) || forking_a_thread())
		return 0;
	inherit_owner(parent, ctx->child_pid);
	return 0;
}

/* An owner that is gone: reports and drops its entries, then itself. */
static __always_inline void release_owner(__u32 owner)
{
	if (!bpf_map_lookup_elem(&files_owners, &owner))
		return;
	sweep_owner(owner, false);
	if (bpf_map_delete_elem(&files_owners, &owner) == 0) {
		__u64 *slot = owner_slot(owner);
		if (slot)
			__sync_fetch_and_add(slot, -1);
	}
}

SEC("tracepoint/sched/sched_process_exit")
int vigil_exit(struct trace_event_raw_sched_process_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	bool last_thread;
	if (bpf_core_field_exists(ctx->group_dead))
		last_thread = BPF_CORE_READ(ctx, group_dead);
	else
		last_thread = (__u32)pid_tgid == (pid_tgid >> 32);
	__u32 tid = (__u32)pid_tgid;
	/* a thread: drop the copies fork made under its thread id */
	if (tid != (pid_tgid >> 32))
		release_owner(tid);
	if (!last_thread)
		return 0;
	release_owner(pid_tgid >> 32);

	if (!task_in_scope())
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct vigil_record *rec = &s->slot.rec;
	fill_header(rec, VIGIL_KIND_EXIT);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	rec->target = BPF_CORE_READ(task, exit_code);
	rec->path[0] = 0;
	rec->path2[0] = 0;
	emit(rec);
	return 0;
}

/* ---- files ------------------------------------------------------------- */

/* The open family, at exit: in scope when its path is (path_in_scope, which
 * copies the path only then); the record is emitted, and a new descriptor
 * is tracked for its read and write roll-ups. */
static __always_inline int open_exit(__s64 ret, long dfd, const char *upath, __s32 flags,
				     __u32 mode)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct vigil_record *rec = &s->slot.rec;
	if (!path_in_scope(s, rec->path, upath, dfd, ret)) {
		/* a new descriptor on a number still tracked: the watched file
		 * there was closed in a way we did not see */
		if (ret >= 0)
			forget_file(fd_key(ret));
		return 0;
	}
	rec->path2[0] = 0;
	fill_header(rec, VIGIL_KIND_OPEN);
	rec->dirfd = (__s32)dfd;
	rec->flags = flags;
	rec->mode = mode;
	rec->err = ret < 0 ? (__s32)-ret : 0;
	emit(rec);
	if (ret >= 0) {
		s->slot.read_bytes = 0;
		s->slot.write_bytes = 0;
		track_file(fd_key(ret), &s->slot);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int vigil_exit_openat(struct sys_exit_ctx *ctx)
{
	struct pt_regs *regs = syscall_regs();
	return open_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(regs),
			 (const char *)PT_REGS_PARM2_SYSCALL(regs), PT_REGS_PARM3_SYSCALL(regs),
			 PT_REGS_PARM4_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_open")
int vigil_exit_open(struct sys_exit_ctx *ctx)
{
	struct pt_regs *regs = syscall_regs();
	return open_exit(ctx->ret, AT_FDCWD, (const char *)PT_REGS_PARM1_SYSCALL(regs),
			 PT_REGS_PARM2_SYSCALL(regs), PT_REGS_PARM3_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_creat")
int vigil_exit_creat(struct sys_exit_ctx *ctx)
{
	/* creat(path, mode) == open(path, O_CREAT | O_WRONLY | O_TRUNC, mode) */
	struct pt_regs *regs = syscall_regs();
	return open_exit(ctx->ret, AT_FDCWD, (const char *)PT_REGS_PARM1_SYSCALL(regs), 01101,
			 PT_REGS_PARM2_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int vigil_exit_openat2(struct sys_exit_ctx *ctx)
{
	struct pt_regs *regs = syscall_regs();
	struct open_how how = {};
	bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_SYSCALL(regs));
	return open_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(regs),
			 (const char *)PT_REGS_PARM2_SYSCALL(regs), how.flags, how.mode);
}

/* True when a byte-moving syscall's exit has nothing to add: it moved no
 * bytes, or the process has no watched descriptor. Checked before the
 * syscall's registers are read. */
static __always_inline bool moved_nothing_watched(__s64 ret)
{
	return ret <= 0 || !may_own_files(current_owner());
}

/* read/write family, at exit: the bytes moved on a watched descriptor (the
 * first argument) are added to its roll-up. Other descriptors cost one
 * lookup. */
static __always_inline int io_exit(__s64 ret, __u64 fd, bool is_write)
{
	if (ret <= 0)
		return 0;
	__u64 key = fd_key(fd);
	struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &key);
	if (!file)
		return 0;
	if (is_write)
		__sync_fetch_and_add(&file->write_bytes, ret);
	else
		__sync_fetch_and_add(&file->read_bytes, ret);
	/* long-lived descriptors report periodically, not only at close; the
	 * tracked record's timestamp is the last report. emit_file_rollups
	 * takes the counts in one exchange each, so bytes another thread adds
	 * meanwhile go into the next report, and when two threads report at
	 * once the second takes only what the first left. */
	__u64 now = bpf_ktime_get_ns();
	if (rollup_interval_ns && now - file->rec.ktime_ns >= rollup_interval_ns) {
		file->rec.ktime_ns = now;
		emit_file_rollups(file);
	}
	return 0;
}

/* Syscalls that move bytes through one descriptor, their first argument.
 * A process without watched descriptors is let go before its registers are
 * read. */
#define IO_EXIT(name, is_write)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #name)                               \
	int vigil_exit_##name(struct sys_exit_ctx *ctx)                          \
	{                                                                        \
		if (moved_nothing_watched(ctx->ret))                             \
			return 0;                                                \
		return io_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(syscall_regs()), is_write); \
	}
IO_EXIT(read, false)
IO_EXIT(pread64, false)
IO_EXIT(readv, false)
IO_EXIT(preadv, false)
IO_EXIT(preadv2, false)
IO_EXIT(write, true)
IO_EXIT(pwrite64, true)
IO_EXIT(writev, true)
IO_EXIT(pwritev, true)
IO_EXIT(pwritev2, true)

/* Syscalls that move bytes from one descriptor to another inside the
 * kernel - how cp (copy_file_range) and Python's shutil (sendfile) copy a
 * file: the bytes count as read on the source and written on the
 * destination. */
static __always_inline int copy_exit(__s64 ret, __u64 from, __u64 to)
{
	io_exit(ret, from, false);
	io_exit(ret, to, true);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int vigil_exit_sendfile64(struct sys_exit_ctx *ctx)
{
	if (moved_nothing_watched(ctx->ret))
		return 0;
	/* sendfile(out_fd, in_fd, offset, count) */
	struct pt_regs *regs = syscall_regs();
	return copy_exit(ctx->ret, PT_REGS_PARM2_SYSCALL(regs), PT_REGS_PARM1_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_copy_file_range")
int vigil_exit_copy_file_range(struct sys_exit_ctx *ctx)
{
	if (moved_nothing_watched(ctx->ret))
		return 0;
	/* copy_file_range(fd_in, off_in, fd_out, off_out, len, flags) */
	struct pt_regs *regs = syscall_regs();
	return copy_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(regs), PT_REGS_PARM3_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_splice")
int vigil_exit_splice(struct sys_exit_ctx *ctx)
{
	if (moved_nothing_watched(ctx->ret))
		return 0;
	/* splice(fd_in, off_in, fd_out, off_out, len, flags) */
	struct pt_regs *regs = syscall_regs();
	return copy_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(regs), PT_REGS_PARM3_SYSCALL(regs));
}

/* dup family, at exit: a copy of a watched descriptor is watched too (shells
 * redirect with dup2, so `cat < /phi/x` reads from a duplicate). */
static __always_inline int dup_exit(__s64 ret, __u64 oldfd)
{
	if (ret < 0)
		return 0;
	__u64 old_key = fd_key(oldfd);
	__u64 new_key = fd_key(ret);
	if (new_key == old_key)
		return 0;
	/* dup2 onto a watched descriptor closes it implicitly */
	forget_file(new_key);
	struct vigil_tracked *file = bpf_map_lookup_elem(&open_files, &old_key);
	if (!file)
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	__builtin_memcpy(&s->slot, file, sizeof(s->slot));
	s->slot.read_bytes = 0;
	s->slot.write_bytes = 0;
	track_file(new_key, &s->slot);
	return 0;
}

#define F_DUPFD 0
#define F_DUPFD_CLOEXEC 1030

SEC("tracepoint/syscalls/sys_exit_dup")
int vigil_exit_dup(struct sys_exit_ctx *ctx)
{
	return dup_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(syscall_regs()));
}
SEC("tracepoint/syscalls/sys_exit_dup2")
int vigil_exit_dup2(struct sys_exit_ctx *ctx)
{
	return dup_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(syscall_regs()));
}
SEC("tracepoint/syscalls/sys_exit_dup3")
int vigil_exit_dup3(struct sys_exit_ctx *ctx)
{
	return dup_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(syscall_regs()));
}

SEC("tracepoint/syscalls/sys_exit_fcntl")
int vigil_exit_fcntl(struct sys_exit_ctx *ctx)
{
	struct pt_regs *regs = syscall_regs();
	__u64 cmd = (__u32)PT_REGS_PARM2_SYSCALL(regs);
	if (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)
		return 0;
	return dup_exit(ctx->ret, PT_REGS_PARM1_SYSCALL(regs));
}

/* close of a watched descriptor: emit its read and write roll-ups. */
SEC("tracepoint/syscalls/sys_enter_close")
int vigil_enter_close(struct sys_enter_ctx *ctx)
{
	forget_file(fd_key(ctx->args[0]));
	return 0;
}

/* close_range closes descriptors without a close(2) each: their roll-ups
 * are reported once it returns. */
SEC("tracepoint/syscalls/sys_exit_close_range")
int vigil_exit_close_range(struct sys_exit_ctx *ctx)
{
	if (ctx->ret == 0)
		sweep_owner(bpf_get_current_pid_tgid() >> 32, true);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_rename")
int vigil_enter_rename(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_RENAME, AT_FDCWD, (const char *)ctx->args[0], AT_FDCWD,
			   (const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_renameat")
int vigil_enter_renameat(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_RENAME, ctx->args[0], (const char *)ctx->args[1],
			   ctx->args[2], (const char *)ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int vigil_enter_renameat2(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_RENAME, ctx->args[0], (const char *)ctx->args[1],
			   ctx->args[2], (const char *)ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_unlink")
int vigil_enter_unlink(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_UNLINK, AT_FDCWD, (const char *)ctx->args[0], 0, NULL);
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int vigil_enter_unlinkat(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_UNLINK, ctx->args[0], (const char *)ctx->args[1], 0, NULL);
}

SEC("tracepoint/syscalls/sys_enter_truncate")
int vigil_enter_truncate(struct sys_enter_ctx *ctx)
{
	return stage_paths(VIGIL_KIND_TRUNCATE, AT_FDCWD, (const char *)ctx->args[0], 0, NULL);
}

SEC("tracepoint/syscalls/sys_enter_ftruncate")
int vigil_enter_ftruncate(struct sys_enter_ctx *ctx)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = stage_fd(VIGIL_KIND_TRUNCATE, ctx->args[0]);
	return s ? stage(s) : 0;
}

/* True for an *at call that acts on the descriptor dfd itself: the flag
 * AT_EMPTY_PATH with an empty path, as fchownat(fd, "", ...) and
 * fchmodat2(fd, "", ...) do instead of fchown(fd) and fchmod(fd). */
static __always_inline bool on_dirfd_itself(const char *upath, long flags)
{
	char first = 1;
	return (flags & AT_EMPTY_PATH) && !bpf_probe_read_user(&first, 1, upath) && first == 0;
}

static __always_inline int stage_fchmod(__u64 fd, __u32 mode)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = stage_fd(VIGIL_KIND_CHMOD, fd);
	if (!s)
		return 0;
	s->slot.rec.mode = mode;
	return stage(s);
}

static __always_inline int stage_chmod(long dfd, const char *upath, __u32 mode, long flags)
{
	if (on_dirfd_itself(upath, flags))
		return stage_fchmod(dfd, mode);
	struct scratch *s = prepare_paths(VIGIL_KIND_CHMOD, dfd, upath, 0, NULL);
	if (!s)
		return 0;
	s->slot.rec.mode = mode;
	return stage(s);
}

SEC("tracepoint/syscalls/sys_enter_chmod")
int vigil_enter_chmod(struct sys_enter_ctx *ctx)
{
	return stage_chmod(AT_FDCWD, (const char *)ctx->args[0], ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat")
int vigil_enter_fchmodat(struct sys_enter_ctx *ctx)
{
	return stage_chmod(ctx->args[0], (const char *)ctx->args[1], ctx->args[2], 0);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat2")
int vigil_enter_fchmodat2(struct sys_enter_ctx *ctx)
{
	return stage_chmod(ctx->args[0], (const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_fchmod")
int vigil_enter_fchmod(struct sys_enter_ctx *ctx)
{
	return stage_fchmod(ctx->args[0], ctx->args[1]);
}

static __always_inline int stage_fchown(__u64 fd, __s64 uid, __s64 gid)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = stage_fd(VIGIL_KIND_CHOWN, fd);
	if (!s)
		return 0;
	s->slot.rec.target = (__s32)uid;
	s->slot.rec.mode = (__u32)gid;
	return stage(s);
}

static __always_inline int stage_chown(long dfd, const char *upath, __s64 uid, __s64 gid,
				       long flags)
{
	if (on_dirfd_itself(upath, flags))
		return stage_fchown(dfd, uid, gid);
	struct scratch *s = prepare_paths(VIGIL_KIND_CHOWN, dfd, upath, 0, NULL);
	if (!s)
		return 0;
	/* target: the new owner uid; mode carries the new group (-1: unchanged) */
	s->slot.rec.target = (__s32)uid;
	s->slot.rec.mode = (__u32)gid;
	return stage(s);
}

SEC("tracepoint/syscalls/sys_enter_chown")
int vigil_enter_chown(struct sys_enter_ctx *ctx)
{
	return stage_chown(AT_FDCWD, (const char *)ctx->args[0], ctx->args[1], ctx->args[2], 0);
}

SEC("tracepoint/syscalls/sys_enter_lchown")
int vigil_enter_lchown(struct sys_enter_ctx *ctx)
{
	return stage_chown(AT_FDCWD, (const char *)ctx->args[0], ctx->args[1], ctx->args[2], 0);
}

SEC("tracepoint/syscalls/sys_enter_fchownat")
int vigil_enter_fchownat(struct sys_enter_ctx *ctx)
{
	return stage_chown(ctx->args[0], (const char *)ctx->args[1], ctx->args[2], ctx->args[3],
			   ctx->args[4]);
}

SEC("tracepoint/syscalls/sys_enter_fchown")
int vigil_enter_fchown(struct sys_enter_ctx *ctx)
{
	return stage_fchown(ctx->args[0], ctx->args[1], ctx->args[2]);
}

/* One exit handler per syscall above that stages a record. */
#define FINISH(name)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #name)                     \
	int vigil_exit_##name(struct sys_exit_ctx *ctx) { return finish(ctx->nr, ctx->ret); }

/* The same for a syscall that may move or remove a directory: a success
 * voids the outside_dirs entries first, whoever made it. */
#define FINISH_DIRS_CHANGED(name, condition)                           \
	SEC("tracepoint/syscalls/sys_exit_" #name)                     \
	int vigil_exit_##name(struct sys_exit_ctx *ctx)                \
	{                                                              \
		if (ctx->ret == 0 && (condition))                      \
			dirs_changed();                                \
		return finish(ctx->nr, ctx->ret);                      \
	}

FINISH_DIRS_CHANGED(rename, true)
FINISH_DIRS_CHANGED(renameat, true)
FINISH_DIRS_CHANGED(renameat2, true)
FINISH(unlink)
FINISH_DIRS_CHANGED(unlinkat, PT_REGS_PARM3_SYSCALL(syscall_regs()) & AT_REMOVEDIR)

SEC("tracepoint/syscalls/sys_exit_rmdir")
int vigil_exit_rmdir(struct sys_exit_ctx *ctx)
{
	if (ctx->ret == 0)
		dirs_changed();
	return 0;
}
FINISH(truncate)
FINISH(ftruncate)
FINISH(chmod)
FINISH(fchmodat)
FINISH(fchmodat2)
FINISH(fchmod)
FINISH(chown)
FINISH(lchown)
FINISH(fchownat)
FINISH(fchown)

/* ---- network ----------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_connect")
int vigil_enter_connect(struct sys_enter_ctx *ctx)
{
	if (!task_in_scope())
		return 0;
	const void *uaddr = (const void *)ctx->args[1];
	__u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr))
		return 0;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	struct vigil_record *rec = &s->slot.rec;
	fill_header(rec, VIGIL_KIND_CONNECT);
	rec->path[0] = 0;
	rec->path2[0] = 0;
	rec->family = family;
	rec->bytes = ctx->args[0]; /* the socket's descriptor, until exit */
	__u16 port = 0;
	if (family == AF_INET) {
		struct sockaddr_in sin = {};
		bpf_probe_read_user(&sin, sizeof(sin), uaddr);
		port = sin.sin_port;
		__builtin_memcpy(rec->daddr, &sin.sin_addr, 4);
	} else {
		struct sockaddr_in6 sin6 = {};
		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		port = sin6.sin6_port;
		__builtin_memcpy(rec->daddr, &sin6.sin6_addr, 16);
	}
	rec->dport = __builtin_bswap16(port);
	return stage(s);
}

static __always_inline int stage_accept(void)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	fill_header(&s->slot.rec, VIGIL_KIND_ACCEPT);
	s->slot.rec.path[0] = 0;
	s->slot.rec.path2[0] = 0;
	return stage(s);
}

SEC("tracepoint/syscalls/sys_enter_accept")
int vigil_enter_accept(void *ctx) { return stage_accept(); }
SEC("tracepoint/syscalls/sys_enter_accept4")
int vigil_enter_accept4(void *ctx) { return stage_accept(); }

FINISH(connect)
FINISH(accept)
FINISH(accept4)

/* Reports the bytes a traced connection moved since its last report, read
 * from the socket's own counters rather than counted per send() or recv().
 * bytes_sent counts every retransmission again: bytes_retrans is taken off
 * (read first, so a retransmission between the two reads makes the result
 * at most one segment high for a moment, never low, which a later report
 * would count again). bytes_received counts the peer's FIN as one byte
 * (rcv_nxt moves past it): it is taken off once one was received
 * (RCV_SHUTDOWN). The totals are
 * exchanged into the entry (write_bytes: sent, read_bytes: received), so a
 * sweep and the close racing on one entry never report the same bytes
 * twice: whichever exchanges second reports only what the first did not. */
static __always_inline void emit_connection_rollups(struct vigil_tracked *conn,
						    struct tcp_sock *tp)
{
	__u64 retransmitted = BPF_CORE_READ(tp, bytes_retrans);
	__u64 sent = BPF_CORE_READ(tp, bytes_sent);
	sent = sent > retransmitted ? sent - retransmitted : 0;
	__u64 received = BPF_CORE_READ(tp, bytes_received);
	__u8 shutdown = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_shutdown);
	if ((shutdown & RCV_SHUTDOWN_BIT) && received)
		received -= 1;
	__u64 sent_before = __sync_lock_test_and_set(&conn->write_bytes, sent);
	__u64 received_before = __sync_lock_test_and_set(&conn->read_bytes, received);
	if (sent > sent_before)
		emit_rollup(&conn->rec, VIGIL_KIND_SEND, sent - sent_before);
	if (received > received_before)
		emit_rollup(&conn->rec, VIGIL_KIND_RECV, received - received_before);
}

/* A traced connection closes: its bytes since the last sweep, and the
 * entry gone. */
SEC("tracepoint/sock/inet_sock_set_state")
int vigil_sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->newstate != TCP_CLOSE_STATE)
		return 0;
	__u64 key = (__u64)ctx->skaddr;
	struct vigil_tracked *conn = bpf_map_lookup_elem(&connections, &key);
	if (!conn)
		return 0;
	emit_connection_rollups(conn, (struct tcp_sock *)ctx->skaddr);
	bpf_map_delete_elem(&connections, &key);
	return 0;
}

static long sweep_connection(struct bpf_map *map, __u64 *key, struct vigil_tracked *conn,
			     void *ctx)
{
	struct sock *sk = (struct sock *)*key;
	/* Closing (its close reports), or not a socket any more: an entry
	 * whose close was missed, whose memory another object may hold now. */
	if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_CLOSE_STATE ||
	    BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	/* The ring buffer half full (thousands of busy connections, and the
	 * reader cannot drain it while this runs): stop here. The bytes not
	 * reported stay in the sockets' counters for the next sweep or the
	 * close, where a full ring buffer would drop records. */
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) * 2 >
	    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE))
		return 1;
	emit_connection_rollups(conn, (struct tcp_sock *)sk);
	return 0;
}

/* Every rollup_interval_ns, on one CPU's clock (a perf event the collector
 * opens): each traced connection still open reports its bytes since its
 * last report, so a long transfer is seen while it lasts, not only when it
 * ends. The collector also runs it once at shutdown. */
SEC("perf_event")
int vigil_sweep_connections(void *ctx)
{
	bpf_for_each_map_elem(&connections, sweep_connection, NULL, 0);
	return 0;
}

/* ---- privilege --------------------------------------------------------- */

static __always_inline int stage_id_change(__u32 kind, __s64 target)
{
	if (!task_in_scope())
		return 0;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	fill_header(&s->slot.rec, kind);
	s->slot.rec.path[0] = 0;
	s->slot.rec.path2[0] = 0;
	s->slot.rec.target = target;
	return stage(s);
}

/* setre*id / setres*id: the new effective id, or the real one when the
 * effective is left unchanged (-1). */
static __always_inline __s64 effective_or_real(__u64 real, __u64 effective)
{
	return (__s32)effective != -1 ? (__s32)effective : (__s32)real;
}

SEC("tracepoint/syscalls/sys_enter_setuid")
int vigil_enter_setuid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETUID, (__s32)ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_setreuid")
int vigil_enter_setreuid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETUID, effective_or_real(ctx->args[0], ctx->args[1]));
}

SEC("tracepoint/syscalls/sys_enter_setresuid")
int vigil_enter_setresuid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETUID, effective_or_real(ctx->args[0], ctx->args[1]));
}

SEC("tracepoint/syscalls/sys_enter_setgid")
int vigil_enter_setgid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETGID, (__s32)ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_setregid")
int vigil_enter_setregid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETGID, effective_or_real(ctx->args[0], ctx->args[1]));
}

SEC("tracepoint/syscalls/sys_enter_setresgid")
int vigil_enter_setresgid(struct sys_enter_ctx *ctx)
{
	return stage_id_change(VIGIL_KIND_SETGID, effective_or_real(ctx->args[0], ctx->args[1]));
}

SEC("tracepoint/syscalls/sys_enter_capset")
int vigil_enter_capset(struct sys_enter_ctx *ctx)
{
	/* struct __user_cap_data_struct[2]: effective, permitted, inheritable */
	__u32 data[6] = {};
	bpf_probe_read_user(data, sizeof(data), (void *)ctx->args[1]);
	__s64 effective = (__s64)(((__u64)data[3] << 32) | data[0]);
	return stage_id_change(VIGIL_KIND_CAPSET, effective);
}

FINISH(setuid)
FINISH(setreuid)
FINISH(setresuid)
FINISH(setgid)
FINISH(setregid)
FINISH(setresgid)
FINISH(capset)
