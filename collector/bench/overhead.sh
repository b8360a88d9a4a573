#!/usr/bin/env bash
# Measures the collector's overhead and capacity on this host, bare and with
# the collector attached, in one run (as root). PARTS picks what runs:
#   loop      the DESIGN.md §7 loop (open, read 8 KiB, close one of 64 files)
#             over watched and non-watched files: median seconds of ROUNDS
#             runs each, bare and attached alternating, so drift hits both.
#             It also runs under three empty programs on the tracepoints the
#             collector needs for it (sys_exit_openat, sys_exit_read,
#             sys_enter_close; see tracepoint_cost.sh): the floor any
#             syscall-tracepoint collector pays.
#   capacity  the same loop over watched files, paced at each rate of
#             CAPACITY_RATES watched events/s (an open and a read roll-up per
#             iteration) for CAPACITY_SECONDS, CAPACITY_ROUNDS times, a fresh
#             collector each time; reports the rate reached and the kernel
#             and queue drops the collector counted, and the highest rate
#             that, with every lower one, kept pace in every round with no
#             kernel drop (and with no drop at all).
#   redis     redis-benchmark GET/SET throughput with the collector's default
#             scope: REDIS_ROUNDS pairs of runs, bare then attached and
#             attached then bare in turn (a started collector gets SETTLE
#             seconds first); the ratio of each pair, and their median and
#             quartiles (one pair's ratio moves by several %).
#
#   collector/bench/overhead.sh                  # all three parts
#   PARTS=redis REDIS_ROUNDS=21 collector/bench/overhead.sh
# Needs: gcc, python3, redis-server and redis-benchmark (deploy/local/setup.sh),
# tansu (deploy/local/setup.sh), and the release collector:
#   cargo build --release -p vigil-collector
set -euo pipefail
cd "$(dirname "$0")/../.."

ITERATIONS=${ITERATIONS:-200000}
ROUNDS=${ROUNDS:-5}
PARTS=${PARTS:-loop capacity redis}
CAPACITY_RATES=${CAPACITY_RATES:-100000 150000 200000 250000 300000}
CAPACITY_SECONDS=${CAPACITY_SECONDS:-10}
CAPACITY_ROUNDS=${CAPACITY_ROUNDS:-2}
REDIS_ROUNDS=${REDIS_ROUNDS:-21}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}
SETTLE=${SETTLE:-1}  # seconds a started collector gets before redis is measured
for part in $PARTS; do
  [[ $part =~ ^(loop|capacity|redis)$ ]] || { echo "unknown part '$part' in PARTS (loop, capacity, redis)" >&2; exit 2; }
done
wants() { [[ " $PARTS " == *" $1 "* ]]; }
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
  stopped=$(grep Stopped "$work/collector.log" | sed 's/\x1b\[[0-9;]*m//g')
  sed 's/.*Stopped/  collector:/' <<< "$stopped" >&2
}
# A counter from the last stop_collector's summary line ("" if absent).
stopped_count() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<< "$stopped"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

quartiles() { sort -n | awk '{a[NR]=$1} END {q = (NR - 1) / 4; printf "%s %s %s\n", a[int(q) + 1], a[int(2 * q + 0.5) + 1], a[int(3 * q + 0.5) + 1]}'; }

if wants loop; then
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
  echo "watched-file events/s offered to the collector, unpaced (open + read roll-up per iteration; drops are on the collector lines above): $(awk -v n="$ITERATIONS" -v t="$phi_with" 'BEGIN {printf "%d", 2 * n / t}')"
fi

if wants capacity; then
  capacity_rows=()
  # The highest rate such that it and every lower rate kept pace (within 2%)
  # with no kernel drop in any round; and the same with no drop of any kind.
  no_kernel_drops=0 no_drops=0 kernel_clean=1 all_clean=1
  for rate in $CAPACITY_RATES; do
    for round in $(seq "$CAPACITY_ROUNDS"); do
      iterations=$((rate / 2 * CAPACITY_SECONDS))
      start_collector "$work/phi"
      took=$("$work/loop" "$work/phi" "$iterations" "$((rate / 2))")
      stop_collector
      kernel=$(stopped_count kernel_drops)
      queue=$(stopped_count queue_drops)
      reached=$(awk -v n="$iterations" -v t="$took" 'BEGIN {printf "%d", 2 * n / t}')
      capacity_rows+=("$(printf '%-12s %6s %12s %12s %12s' "$rate" "$round" "$reached" "${kernel:-?}" "${queue:-?}")")
      if awk -v r="$reached" -v t="$rate" 'BEGIN {exit !(r < 0.98 * t)}' || [[ $kernel != 0 ]]; then
        kernel_clean=0
      fi
      [[ $queue == 0 ]] || all_clean=0
    done
    ((kernel_clean)) && no_kernel_drops=$rate
    ((kernel_clean && all_clean)) && no_drops=$rate
  done
  echo
  echo "capacity: watched loop paced at each rate for $CAPACITY_SECONDS s, $CAPACITY_ROUNDS rounds (events/s):"
  printf '%-12s %6s %12s %12s %12s\n' target round reached kernel_drops queue_drops
  printf '%s\n' "${capacity_rows[@]}"
  echo "highest rate kept, with every lower one, in every round: $no_kernel_drops watched events/s with no kernel drop; $no_drops with no drop at all"
fi

if wants redis; then
  if ! command -v redis-server > /dev/null || ! command -v redis-benchmark > /dev/null; then
    echo "redis part skipped: redis-server and redis-benchmark are not installed (deploy/local/setup.sh installs them)" >&2
  else
    rport=$((port + 1))
    redis-server --port "$rport" --save '' --appendonly no > "$work/redis.log" 2>&1 &
    pids+=($!)
    sleep 1
    bench() { redis-benchmark -p "$rport" -q -n "$REDIS_REQUESTS" -t set,get --csv | tr -d '"' | awk -F, '/^(SET|GET)/ {s += $2} END {print s}'; }
    bares=() withs=() ratios=()
    for round in $(seq "$REDIS_ROUNDS"); do
      if ((round % 2)); then
        bare=$(bench); start_collector; sleep "$SETTLE"; with=$(bench); stop_collector
      else
        start_collector; sleep "$SETTLE"; with=$(bench); stop_collector; bare=$(bench)
      fi
      ratio=$(awk -v w="$with" -v b="$bare" 'BEGIN {printf "%.4f", w / b}')
      echo "  redis round $round: bare $bare, collector $with req/s, ratio $ratio" >&2
      bares+=("$bare") withs+=("$with") ratios+=("$ratio")
    done
    read -r q1 q2 q3 < <(printf '%s\n' "${ratios[@]}" | quartiles)
    echo
    echo "redis-benchmark SET+GET requests/s, $REDIS_REQUESTS requests each, $REDIS_ROUNDS pairs, default scope:"
    printf '%-22s %10s\n' "bare (median)" "$(printf '%s\n' "${bares[@]}" | median)"
    printf '%-22s %10s\n' "collector (median)" "$(printf '%s\n' "${withs[@]}" | median)"
    printf '%-22s %10s   (quartiles %s .. %s; lowest %s, highest %s)\n' "ratio per pair, median" "$q2" "$q1" "$q3" \
      "$(printf '%s\n' "${ratios[@]}" | sort -n | head -1)" "$(printf '%s\n' "${ratios[@]}" | sort -n | tail -1)"
  fi
fi
