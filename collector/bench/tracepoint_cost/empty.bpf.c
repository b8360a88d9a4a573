// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Empty programs for tracepoint_cost.sh: what attaching costs before any
 * program logic runs. Each set is one object; attach.c attaches all of an
 * object's programs.
 *
 *   -DSET_RARE   one program on a syscall nobody makes (reboot): the fixed
 *                cost of the syscall-trace flag every task then carries
 *   -DSET_THREE  the collector's shape for open/read/close: sys_exit_openat,
 *                sys_exit_read, sys_enter_close
 *   -DSET_FIVE   the earlier shape: enter and exit of openat and read, and
 *                sys_enter_close
 *   -DSET_RAW    raw_syscalls sys_enter + sys_exit (BTF-less raw
 *                tracepoints): every syscall of every task; for comparison
 *                only, DESIGN.md rules it out for the product
 *   -DSET_FENTRY the same three hooks as THREE as fexit/fentry programs
 *                (BPF trampolines: no syscall-trace flag, no perf trace
 *                buffer), the cheaper attachment a future collector could
 *                use on a kernel that allows it; tracepoint_cost.sh says
 *                whether this one does
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define EMPTY(sec, name) SEC(sec) int name(void *ctx) { return 0; }

#if defined(SET_RARE)
EMPTY("tracepoint/syscalls/sys_enter_reboot", rare)
#elif defined(SET_THREE)
EMPTY("tracepoint/syscalls/sys_exit_openat", exit_openat)
EMPTY("tracepoint/syscalls/sys_exit_read", exit_read)
EMPTY("tracepoint/syscalls/sys_enter_close", enter_close)
#elif defined(SET_FIVE)
EMPTY("tracepoint/syscalls/sys_enter_openat", enter_openat)
EMPTY("tracepoint/syscalls/sys_exit_openat", exit_openat)
EMPTY("tracepoint/syscalls/sys_enter_read", enter_read)
EMPTY("tracepoint/syscalls/sys_exit_read", exit_read)
EMPTY("tracepoint/syscalls/sys_enter_close", enter_close)
#elif defined(SET_RAW)
EMPTY("raw_tp/sys_enter", raw_enter)
EMPTY("raw_tp/sys_exit", raw_exit)
#elif defined(SET_FENTRY)
EMPTY("fexit/do_sys_openat2", exit_openat)
EMPTY("fexit/ksys_read", exit_read)
EMPTY("fentry/close_fd", enter_close)
#endif
