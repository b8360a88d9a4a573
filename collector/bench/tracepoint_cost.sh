#!/usr/bin/env bash
# What syscall tracepoints cost before any program logic runs (as root):
# the DESIGN.md §7 loop over files nobody watches, bare and with empty
# programs attached (tracepoint_cost/empty.bpf.c), alternating, median of
# ROUNDS runs each. Needs clang, libbpf-dev, bpftool (or the committed
# vmlinux.h) and gcc.
#
#   collector/bench/tracepoint_cost.sh      # ITERATIONS=200000 ROUNDS=9
set -euo pipefail
cd "$(dirname "$0")/../.."

ITERATIONS=${ITERATIONS:-200000}
ROUNDS=${ROUNDS:-9}
[[ $(id -u) -eq 0 ]] || { echo "run as root: it loads eBPF programs" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/files"
for i in $(seq 0 63); do head -c 8192 /dev/urandom > "$work/files/file-$i"; done
gcc -O2 -o "$work/loop" collector/bench/open_read_loop.c
gcc -O2 -o "$work/attach" collector/bench/tracepoint_cost/attach.c -lbpf
include=collector-ebpf/include
if bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h" 2> /dev/null; then
  include=$work
fi
sets=(RARE THREE FIVE RAW)
for set in "${sets[@]}"; do
  clang -O2 -g -target bpf -D__TARGET_ARCH_x86 "-DSET_$set" -I "$include" \
    -c collector/bench/tracepoint_cost/empty.bpf.c -o "$work/$set.o"
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
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
)
for set in "${sets[@]}"; do
  t=$(median <<< "${times[$set]}")
  printf '%-58s %8s %8.3f\n' "${label[$set]}" "$t" "$(awk -v t="$t" -v b="$bare" 'BEGIN {print t / b}')"
done
