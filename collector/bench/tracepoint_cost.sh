#!/usr/bin/env bash
# What syscall tracepoints cost before any program logic runs (as root),
# with empty programs attached (tracepoint_cost/empty.bpf.c and
# tracepoint_cost/every_tracepoint.sh), median of ROUNDS runs each:
#   1. the DESIGN.md §7 loop over files nobody watches, bare and under each
#      set of empty programs, alternating;
#   2. nanoseconds per system call (syscall_loop.c) for getppid, which no
#      collector program traces, and a 1-byte read, whose exit the collector
#      traces: bare, with one program on a syscall nobody makes (the
#      syscall-trace flag alone), and with empty programs on every
#      tracepoint the collector attaches. Multiplied by a workload's
#      syscalls per request (strace -c), these say what any
#      syscall-tracepoint collector costs that workload (docs/collector.md);
#   3. whether fentry/fexit programs, which avoid both costs, load on this
#      kernel at all.
# Needs clang, libbpf-dev, bpftool (or the committed vmlinux.h) and gcc.
#
#   collector/bench/tracepoint_cost.sh      # ITERATIONS=200000 ROUNDS=9 CALLS=2000000
set -euo pipefail
cd "$(dirname "$0")/../.."

ITERATIONS=${ITERATIONS:-200000}
ROUNDS=${ROUNDS:-9}
CALLS=${CALLS:-2000000}
[[ $(id -u) -eq 0 ]] || { echo "run as root: it loads eBPF programs" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/files"
for i in $(seq 0 63); do head -c 8192 /dev/urandom > "$work/files/file-$i"; done
gcc -O2 -o "$work/loop" collector/bench/open_read_loop.c
gcc -O2 -o "$work/calls" collector/bench/syscall_loop.c
gcc -O2 -o "$work/attach" collector/bench/tracepoint_cost/attach.c -lbpf
include=collector-ebpf/include
if bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h" 2> /dev/null; then
  include=$work
fi
compile() { clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I "$include" -c "$@"; }
sets=(RARE THREE FIVE RAW)
for set in "${sets[@]}" FENTRY; do
  compile "-DSET_$set" collector/bench/tracepoint_cost/empty.bpf.c -o "$work/$set.o"
done
collector/bench/tracepoint_cost/every_tracepoint.sh > "$work/all.bpf.c"
compile "$work/all.bpf.c" -o "$work/ALL.o"

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v t="$1" -v b="$2" 'BEGIN {printf "%.3f", t / b}'; }

declare -A times
for _ in $(seq "$ROUNDS"); do
  times[bare]+="$("$work/loop" "$work/files" "$ITERATIONS") "
  for set in "${sets[@]}"; do
    times[$set]+="$("$work/attach" "$work/$set.o" "$work/loop" "$work/files" "$ITERATIONS") "
  done
done
bare=$(median <<< "${times[bare]}")
echo "open/read/close loop over unwatched files, $ITERATIONS iterations, median of $ROUNDS (s):"
printf '%-58s %8s %8s\n' "attached" seconds ratio
printf '%-58s %8s %8s\n' "nothing" "$bare" 1.000
declare -A label=(
  [RARE]="one empty program on sys_enter_reboot (never hit)"
  [THREE]="empty: sys_exit_openat, sys_exit_read, sys_enter_close"
  [FIVE]="empty: enter+exit openat, enter+exit read, enter close"
  [RAW]="empty: raw_syscalls sys_enter + sys_exit (not used)"
  [ALL]="empty: every tracepoint the collector attaches"
)
for set in "${sets[@]}"; do
  t=$(median <<< "${times[$set]}")
  printf '%-58s %8s %8s\n' "${label[$set]}" "$t" "$(ratio "$t" "$bare")"
done

declare -A getppid read
for _ in $(seq "$ROUNDS"); do
  for set in bare RARE ALL; do
    if [[ $set == bare ]]; then
      line=$("$work/calls" "$CALLS")
    else
      line=$("$work/attach" "$work/$set.o" "$work/calls" "$CALLS")
    fi
    read -r g r <<< "$line"
    getppid[$set]+="$g " read[$set]+="$r "
  done
done
echo
echo "nanoseconds per system call, $CALLS calls, median of $ROUNDS:"
printf '%-58s %10s %10s\n' "attached" getppid "read 1 B"
base_g=$(median <<< "${getppid[bare]}") base_r=$(median <<< "${read[bare]}")
printf '%-58s %10s %10s\n' "nothing" "$base_g" "$base_r"
for set in RARE ALL; do
  g=$(median <<< "${getppid[$set]}") r=$(median <<< "${read[$set]}")
  printf '%-58s %10s %10s   (+%s, +%s ns)\n' "${label[$set]}" "$g" "$r" \
    "$(awk -v a="$g" -v b="$base_g" 'BEGIN {printf "%.1f", a - b}')" \
    "$(awk -v a="$r" -v b="$base_r" 'BEGIN {printf "%.1f", a - b}')"
done

echo
if "$work/attach" "$work/FENTRY.o" true 2> "$work/fentry.log"; then
  echo "fentry/fexit programs load and attach on this kernel: a cheaper collector is possible here"
else
  echo "fentry/fexit programs do not load on this kernel ($(uname -r)); libbpf said:"
  grep -m 2 -E "failed|error" "$work/fentry.log" | sed 's/^/  /'
fi
