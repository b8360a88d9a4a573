#!/usr/bin/env bash
# What each of the collector's kernel programs costs per run, on the
# open/read/close loop of overhead.sh (as root). With the kernel's BPF
# statistics on (sysctl kernel.bpf_stats_enabled, put back after), it runs
# the loop once over watched files (phi), once over non-watched files on
# the watched directory's file system (other), the same five directories
# further down (deep), and once over a tmpfs of their own (otherfs), and
# prints for each program that ran: runs, nanoseconds per run, and
# milliseconds in all, from `bpftool prog show` before and after.
#
# The statistics time the program alone (not the tracepoint's own cost,
# which overhead.sh's "empty tracepoints" floor measures) and add about
# 20-40 ns per run themselves, so use the figures to compare programs and
# code paths, not as the overhead.
#
#   collector/bench/program_cost.sh              # ITERATIONS=200000
#   DIRS=otherfs collector/bench/program_cost.sh # only some of phi other deep otherfs
# Needs: gcc, bpftool, python3, tansu (deploy/local/setup.sh), and the
# release collector: cargo build --release -p vigil-collector
set -euo pipefail
cd "$(dirname "$0")/../.."
. collector/bench/common.sh

ITERATIONS=${ITERATIONS:-200000}
DIRS=${DIRS:-phi other deep otherfs}
for dir in $DIRS; do
  [[ $dir =~ ^(phi|other|deep|otherfs)$ ]] || { echo "unknown directory '$dir' in DIRS (phi, other, deep, otherfs)" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
collector=$target/release/collector
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
[[ -x $collector ]] || { echo "build it first: cargo build --release -p vigil-collector" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "run as root: the collector loads eBPF programs" >&2; exit 1; }
command -v bpftool > /dev/null || { echo "bpftool is needed (apt-get install bpftool)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  sysctl -q -w kernel.bpf_stats_enabled="$stats_before" || true
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  umount "$work/otherfs" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/phi" "$work/other" "$work/otherfs" "$work/d1/d2/d3/d4/deep"
ln -s d1/d2/d3/d4/deep "$work/deep"
mount -t tmpfs -o size=4m vigil-bench "$work/otherfs"
make_loop_files "$work/phi" "$work/other" "$work/otherfs" "$work/deep"
gcc -O2 -o "$work/loop" collector/bench/open_read_loop.c

start_bench_broker
"$collector" --brokers "127.0.0.1:$port" --topic bench.events --watch "$work/phi" \
  > /dev/null 2> "$work/collector.log" &
pids+=($!)
for _ in $(seq 100); do grep -q Collecting "$work/collector.log" && break; sleep 0.1; done
grep -q Collecting "$work/collector.log" || { echo "collector did not start:" >&2; cat "$work/collector.log" >&2; exit 1; }

sysctl -q -w kernel.bpf_stats_enabled=1
# name run_cnt run_time_ns, one line per vigil_ program
snapshot() {
  bpftool prog show --json | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p.get("name", "").startswith("vigil_"):
        print(p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0))'
}
for dir in $DIRS; do
  case $dir in
    phi) label="watched files" ;;
    other) label="non-watched files, the watched directory's file system" ;;
    deep) label="the same, five directories further down" ;;
    otherfs) label="non-watched files, a tmpfs of their own" ;;
  esac
  before=$(snapshot)
  seconds=$("$work/loop" "$work/$dir" "$ITERATIONS")
  after=$(snapshot)
  echo
  echo "$label: $ITERATIONS iterations in $seconds s"
  printf '%-28s %10s %10s %10s %12s\n' program runs ns/run ms "ns/iteration"
  join <(sort <<< "$before") <(sort <<< "$after") | awk -v n="$ITERATIONS" '
    { runs = $4 - $2; ns = $5 - $3
      if (runs > 0) printf "%-28s %10d %10.0f %10.1f %12.0f\n", $1, runs, ns / runs, ns / 1e6, ns / n }'
done
