#!/usr/bin/env bash
# Measures the collector's overhead and capacity on this host, bare and with
# the collector attached, in one run (as root). PARTS picks what runs:
#   loop      the DESIGN.md §7 loop (open, read 8 KiB, close one of 64 files)
#             over watched and non-watched files (the latter on the watched
#             directory's file system and on a tmpfs of their own, whose
#             files the kernel rules out without walking their
#             directories): median seconds of ROUNDS
#             runs each, bare and attached alternating, so drift hits both.
#             It also runs under three empty programs on the tracepoints the
#             collector needs for it (sys_exit_openat, sys_exit_read,
#             sys_enter_close; see tracepoint_cost.sh): the floor any
#             syscall-tracepoint collector pays. When auditd and auditctl are
#             installed (apt-get install auditd), it also runs under the
#             incumbent: auditd with one watch rule on the watched directory
#             (`auditctl -w DIR -p rwa`), logging to a temporary directory.
#   capacity  the same loop over watched files, paced at each rate of
#             CAPACITY_RATES watched events/s (an open and a read roll-up per
#             iteration) for CAPACITY_SECONDS, CAPACITY_ROUNDS times, a fresh
#             collector each time; reports the rate reached and the kernel
#             and queue drops the collector counted, and the highest rate
#             that, with every lower one, kept pace in every round with no
#             kernel drop (and with no drop at all).
#   redis     redis-benchmark GET/SET throughput with the collector's default
#             scope, REDIS_ROUNDS rounds of three runs: bare, with the
#             collector (started SETTLE seconds before), and under empty
#             programs on every tracepoint the collector attaches (taken from
#             vigil.bpf.c: what the kernel charges before any of the
#             collector's logic). The order rotates so each run takes each
#             place equally often; reports each round's ratios to its bare
#             run (and the collector's to the empty programs' run), their
#             geometric mean with a 95% interval, and their
#             median and quartiles. One round's ratio moves by ±15% on a
#             2-core VM, so a 3% question takes about a hundred rounds.
#
#   collector/bench/overhead.sh                  # all three parts
#   PARTS=redis REDIS_ROUNDS=100 collector/bench/overhead.sh
# Needs: gcc, python3, redis-server and redis-benchmark (deploy/local/setup.sh),
# tansu (deploy/local/setup.sh), and the release collector:
#   cargo build --release -p vigil-collector
# Optional: auditd (apt-get install auditd) for the loop part's comparison;
# clang and libbpf-dev for the empty-program floors.
set -euo pipefail
cd "$(dirname "$0")/../.."
. collector/bench/common.sh

ITERATIONS=${ITERATIONS:-200000}
ROUNDS=${ROUNDS:-5}
PARTS=${PARTS:-loop capacity redis}
CAPACITY_RATES=${CAPACITY_RATES:-100000 150000 200000 250000 300000}
CAPACITY_SECONDS=${CAPACITY_SECONDS:-10}
CAPACITY_ROUNDS=${CAPACITY_ROUNDS:-2}
REDIS_ROUNDS=${REDIS_ROUNDS:-100}
REDIS_REQUESTS=${REDIS_REQUESTS:-50000}
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
  stop_auditd 2> /dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$work/otherfs" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/phi" "$work/other" "$work/otherfs"
if wants loop; then mount -t tmpfs -o size=4m vigil-bench "$work/otherfs"; fi
make_loop_files "$work/phi" "$work/other" "$work/otherfs"
gcc -O2 -o "$work/loop" collector/bench/open_read_loop.c
floor= all_floor=
if gcc -O2 -o "$work/attach" collector/bench/tracepoint_cost/attach.c -lbpf 2> /dev/null; then
  include=collector-ebpf/include
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h" 2> /dev/null && include=$work
  clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -DSET_THREE -I "$include" \
    -c collector/bench/tracepoint_cost/empty.bpf.c -o "$work/three.o" && floor=1
  collector/bench/tracepoint_cost/every_tracepoint.sh > "$work/all.bpf.c"
  clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I "$include" -c "$work/all.bpf.c" -o "$work/all.o" && all_floor=1
fi
[[ -n $floor && -n $all_floor ]] || echo "empty-program floors skipped: building tracepoint_cost needs gcc, clang and libbpf-dev (deploy/local/setup.sh)" >&2

start_bench_broker

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

# auditd, the incumbent, for the loop part: started on a configuration of its
# own that logs under $work; the kernel's audit settings are put back after.
auditd_pid= audit_enabled=
start_auditd() {
  if ! command -v auditd > /dev/null || ! command -v auditctl > /dev/null; then
    echo "auditd comparison skipped: auditd is not installed (apt-get install auditd)" >&2
    return
  fi
  if pgrep -x auditd > /dev/null; then
    echo "auditd comparison skipped: an auditd is already running, and its rules are not this bench's to change" >&2
    return
  fi
  audit_enabled=$(auditctl -s | awk '$1 == "enabled" {print $2}')
  mkdir -p "$work/audit"
  sed "s|^log_file *=.*|log_file = $work/audit/audit.log|" /etc/audit/auditd.conf > "$work/audit/auditd.conf"
  auditd -n -c "$work/audit" 2> "$work/audit/auditd.err" &
  auditd_pid=$!
  pids+=("$auditd_pid")
  for _ in $(seq 50); do auditctl -s | grep -q "^pid $auditd_pid" && break; sleep 0.1; done
  if ! auditctl -s | grep -q "^pid $auditd_pid"; then
    echo "auditd comparison skipped: auditd did not register with the kernel:" >&2
    cat "$work/audit/auditd.err" >&2
    kill "$auditd_pid" 2> /dev/null || true
    auditd_pid=
    return
  fi
  echo "auditd running (kernel backlog limit $(auditctl -s | awk '$1 == "backlog_limit" {print $2}'))" >&2
}
stop_auditd() {
  [[ -n $auditd_pid ]] || return 0
  auditctl -W "$work/phi" -p rwa -k vigil-bench > /dev/null 2>&1 || true
  kill -TERM "$auditd_pid" 2> /dev/null || true
  wait "$auditd_pid" 2> /dev/null || true
  [[ -z $audit_enabled ]] || auditctl -e "$audit_enabled" > /dev/null
  echo "auditd wrote $(du -sh "$work/audit" | cut -f1) of logs" >&2
  auditd_pid=
}

if wants loop; then
  declare -A times
  start_auditd
  for round in $(seq "$ROUNDS"); do
    for dir in phi other otherfs; do times[bare-$dir]+="$("$work/loop" "$work/$dir" "$ITERATIONS") "; done
    if [[ -n $floor ]]; then
      times[floor]+="$("$work/attach" "$work/three.o" "$work/loop" "$work/other" "$ITERATIONS") "
    fi
    if [[ -n $auditd_pid ]]; then
      auditctl -w "$work/phi" -p rwa -k vigil-bench > /dev/null
      for dir in phi other otherfs; do times[auditd-$dir]+="$("$work/loop" "$work/$dir" "$ITERATIONS") "; done
      auditctl -W "$work/phi" -p rwa -k vigil-bench > /dev/null
    fi
    for dir in phi other otherfs; do
      start_collector "$work/phi"
      times[vigil-$dir]+="$("$work/loop" "$work/$dir" "$ITERATIONS") "
      stop_collector
    done
  done
  stop_auditd

  median_of() { tr ' ' '\n' <<< "${times[$1]}" | grep . | median; }
  row() { printf '%-38s %8s %8s %8.3f\n' "$1" "$2" "$3" "$(awk -v w="$3" -v b="$2" 'BEGIN {print w / b}')"; }
  echo
  echo "open/read/close loop, $ITERATIONS iterations, median of $ROUNDS (seconds):"
  printf '%-38s %8s %8s %8s\n' files bare attached ratio
  for dir in phi other otherfs; do
    case $dir in
      phi) label="watched" ;;
      other) label="not watched" ;;
      otherfs) label="not watched, other tmpfs" ;;
    esac
    row "$label, collector" "$(median_of "bare-$dir")" "$(median_of "vigil-$dir")"
    [[ -z ${times[auditd-$dir]:-} ]] || row "$label, auditd" "$(median_of "bare-$dir")" "$(median_of "auditd-$dir")"
  done
  [[ -z $floor ]] || row "not watched, empty tracepoints" "$(median_of bare-other)" "$(median_of floor)"
  echo "watched-file events/s offered to the collector, unpaced (open + read roll-up per iteration; drops are on the collector lines above): $(awk -v n="$ITERATIONS" -v t="$(median_of vigil-phi)" 'BEGIN {printf "%d", 2 * n / t}')"
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
    # bench [PREFIX...]: SET+GET requests/s, redis-benchmark run under PREFIX.
    bench() { "$@" redis-benchmark -p "$rport" -q -n "$REDIS_REQUESTS" -t set,get --csv | tr -d '"' | awk -F, '/^(SET|GET)/ {s += $2} END {print s}'; }
    arms=(bare collector)
    [[ -z $all_floor ]] || arms+=(floor)
    declare -A rps
    ratios=() floor_ratios=() over_floor=()
    for round in $(seq "$REDIS_ROUNDS"); do
      # Each arm takes each place in the order equally often over the rounds.
      order=("${arms[@]:round % ${#arms[@]}}" "${arms[@]:0:round % ${#arms[@]}}")
      for arm in "${order[@]}"; do
        case $arm in
          bare) rps[bare]=$(bench) ;;
          floor) rps[floor]=$(bench "$work/attach" "$work/all.o") ;;
          collector) start_collector; sleep "$SETTLE"; rps[collector]=$(bench); stop_collector ;;
        esac
      done
      ratio=$(awk -v w="${rps[collector]}" -v b="${rps[bare]}" 'BEGIN {printf "%.4f", w / b}')
      ratios+=("$ratio")
      line="  redis round $round (${order[*]}): bare ${rps[bare]}, collector ${rps[collector]} req/s, ratio $ratio"
      if [[ -n $all_floor ]]; then
        floor_ratios+=("$(awk -v w="${rps[floor]}" -v b="${rps[bare]}" 'BEGIN {printf "%.4f", w / b}')")
        over_floor+=("$(awk -v w="${rps[collector]}" -v f="${rps[floor]}" 'BEGIN {printf "%.4f", w / f}')")
        line+="; empty programs ${rps[floor]} req/s, ratio ${floor_ratios[-1]}"
      fi
      echo "$line" >&2
      for arm in "${arms[@]}"; do rps[all-$arm]+="${rps[$arm]} "; done
    done
    # summary LABEL RATIO...: the geometric mean of the ratios with its 95%
    # confidence interval (normal approximation on the logs, fine for tens
    # of rounds), then the median, quartiles and extremes.
    summary() {
      local q1 q2 q3
      read -r q1 q2 q3 < <(printf '%s\n' "${@:2}" | quartiles)
      printf '%s\n' "${@:2}" | awk -v label="$1" '
        { l = log($1); n++; s += l; ss += l * l }
        END {
          m = s / n; sd = n > 1 ? sqrt((ss - n * m * m) / (n - 1)) : 0; e = 1.96 * sd / sqrt(n)
          printf "%-34s %10.4f   (95%% interval %.4f .. %.4f)\n", label ", mean", exp(m), exp(m - e), exp(m + e)
        }'
      printf '%-34s %10s   (quartiles %s .. %s; lowest %s, highest %s)\n' "$1, median" "$q2" "$q1" "$q3" \
        "$(printf '%s\n' "${@:2}" | sort -n | head -1)" "$(printf '%s\n' "${@:2}" | sort -n | tail -1)"
    }
    echo
    echo "redis-benchmark SET+GET requests/s, $REDIS_REQUESTS requests each, $REDIS_ROUNDS rounds, default scope:"
    declare -A arm_label=([bare]=bare [collector]=collector [floor]="empty programs")
    for arm in "${arms[@]}"; do
      printf '%-34s %10s\n' "${arm_label[$arm]} (median)" "$(tr ' ' '\n' <<< "${rps[all-$arm]}" | grep . | median)"
    done
    summary "collector / bare" "${ratios[@]}"
    if [[ -n $all_floor ]]; then
      summary "empty programs / bare" "${floor_ratios[@]}"
      summary "collector / empty programs" "${over_floor[@]}"
    fi
  fi
fi
