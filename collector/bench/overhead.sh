#!/usr/bin/env bash
# Measures the collector's overhead on this host, bare and with the
# collector attached, in one run (as root):
#   1. the DESIGN.md §7 loop (open, read 8 KiB, close one of 64 files) over
#      watched and non-watched files: median seconds of ROUNDS runs each;
#   2. redis-benchmark GET/SET throughput (collector with its default scope).
# Bare and attached runs alternate, so drift hits both. Prints a table.
# The loop also runs under three empty programs on the tracepoints the
# collector needs for it (sys_exit_openat, sys_exit_read, sys_enter_close;
# see tracepoint_cost.sh): the floor any syscall-tracepoint collector pays.
#
#   collector/bench/overhead.sh            # ITERATIONS=200000 ROUNDS=5
# Needs: gcc, python3, redis-server and redis-benchmark (deploy/local/setup.sh),
# tansu (deploy/local/setup.sh), and the release collector:
#   cargo build --release -p vigil-collector
set -euo pipefail
cd "$(dirname "$0")/../.."

ITERATIONS=${ITERATIONS:-200000}
ROUNDS=${ROUNDS:-5}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}
target=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
collector=$target/release/collector
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
[[ -x $collector ]] || { echo "build it first: cargo build --release -p vigil-collector" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "run as root: the collector loads eBPF programs" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/phi" "$work/other"
for i in $(seq 0 63); do
  head -c 8192 /dev/urandom > "$work/phi/file-$i"
  cp "$work/phi/file-$i" "$work/other/file-$i"
done
gcc -O2 -o "$work/loop" collector/bench/open_read_loop.c
floor=
if gcc -O2 -o "$work/attach" collector/bench/tracepoint_cost/attach.c -lbpf 2> /dev/null; then
  include=collector-ebpf/include
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h" 2> /dev/null && include=$work
  clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -DSET_THREE -I "$include" \
    -c collector/bench/tracepoint_cost/empty.bpf.c -o "$work/three.o" && floor=1
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tansu" broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" > "$work/broker.log" 2>&1 &
pids+=($!)
sleep 2
"$tansu" topic create bench.events --partitions 6 --broker "tcp://127.0.0.1:$port" > /dev/null

start_collector() {
  "$collector" --brokers "127.0.0.1:$port" --topic bench.events --watch "${1:-/phi}" \
    > /dev/null 2> "$work/collector.log" &
  collector_pid=$!
  for _ in $(seq 100); do grep -q Collecting "$work/collector.log" && return; sleep 0.1; done
  echo "collector did not start:" >&2; cat "$work/collector.log" >&2; exit 1
}
stop_collector() {
  kill -TERM "$collector_pid"; wait "$collector_pid" || true
  grep Stopped "$work/collector.log" | sed 's/.*Stopped/  collector:/' >&2
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A times
for round in $(seq "$ROUNDS"); do
  for dir in phi other; do times[bare-$dir]+="$("$work/loop" "$work/$dir" "$ITERATIONS") "; done
  if [[ -n $floor ]]; then
    times[floor]+="$("$work/attach" "$work/three.o" "$work/loop" "$work/other" "$ITERATIONS") "
  fi
  for dir in phi other; do
    start_collector "$work/phi"
    times[vigil-$dir]+="$("$work/loop" "$work/$dir" "$ITERATIONS") "
    stop_collector
  done
done

echo
echo "open/read/close loop, $ITERATIONS iterations, median of $ROUNDS (seconds):"
printf '%-22s %8s %8s %8s\n' files bare collector ratio
for dir in phi other; do
  bare=$(tr ' ' '\n' <<< "${times[bare-$dir]}" | grep . | median)
  with=$(tr ' ' '\n' <<< "${times[vigil-$dir]}" | grep . | median)
  label=$([[ $dir == phi ]] && echo "watched" || echo "not watched")
  printf '%-22s %8s %8s %8.3f\n' "$label" "$bare" "$with" "$(awk -v w="$with" -v b="$bare" 'BEGIN {print w / b}')"
done
if [[ -n $floor ]]; then
  bare=$(tr ' ' '\n' <<< "${times[bare-other]}" | grep . | median)
  with=$(tr ' ' '\n' <<< "${times[floor]}" | grep . | median)
  printf '%-22s %8s %8s %8.3f\n' "empty tracepoints" "$bare" "$with" "$(awk -v w="$with" -v b="$bare" 'BEGIN {print w / b}')"
fi
phi_with=$(tr ' ' '\n' <<< "${times[vigil-phi]}" | grep . | median)
echo "watched-file events/s with the collector (open + read roll-up per iteration): $(awk -v n="$ITERATIONS" -v t="$phi_with" 'BEGIN {printf "%d", 2 * n / t}')"

if command -v redis-server > /dev/null && command -v redis-benchmark > /dev/null; then
  rport=$((port + 1))
  redis-server --port "$rport" --save '' --appendonly no > "$work/redis.log" 2>&1 &
  pids+=($!)
  sleep 1
  bench() { redis-benchmark -p "$rport" -q -n "$REDIS_REQUESTS" -t set,get --csv | tr -d '"' | awk -F, '/^(SET|GET)/ {s += $2} END {print s}'; }
  declare -A rps
  for round in $(seq "$ROUNDS"); do
    rps[bare]+="$(bench) "
    start_collector
    rps[vigil]+="$(bench) "
    stop_collector
  done
  bare=$(tr ' ' '\n' <<< "${rps[bare]}" | grep . | median)
  with=$(tr ' ' '\n' <<< "${rps[vigil]}" | grep . | median)
  echo
  echo "redis-benchmark SET+GET requests/s, $REDIS_REQUESTS requests each, median of $ROUNDS:"
  printf '%-22s %10s %10s %8s\n' "" bare collector ratio
  printf '%-22s %10s %10s %8.3f\n' "default scope" "$bare" "$with" "$(awk -v w="$with" -v b="$bare" 'BEGIN {print w / b}')"
fi
