#!/usr/bin/env bash
# The demo: while deploy/local/run.sh runs in another terminal, this reads
# every fake patient file of the demo PHI directory once — 300 opens within
# a second, where the rule sql/rules/phi-bulk-read.sql fires on more than 200
# in 15 minutes — and waits for the detector's finding, so you see a
# kernel-observed alert appear in run.sh's terminal (and here) within
# seconds. On a new host it is a REVIEW item: every principal's baseline is
# still learning for its first 7 days.
#
#   demo.sh [DIR]     read DIR's files instead (at least 201 regular files)
#
# The rule raises one alert per user per 15-minute window of the clock
# (:00, :15, :30, :45); a second run within the same window is de-duplicated
# by the detector, and this script says when the next window starts.
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE_DIR=${VIGIL_STATE_DIR:-$HOME/.local/state/vigil}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
BROKERS=127.0.0.1:${VIGIL_BROKER_PORT:-9092}
detector=$CARGO_TARGET_DIR/release/detector
dir=${1:-$STATE_DIR/phi-demo}
WAIT_SECONDS=${VIGIL_DEMO_WAIT:-30}

log() { printf 'demo: %s\n' "$*" >&2; }

for name in collector detector; do
  if ! { [[ -f $STATE_DIR/$name.pid ]] && kill -0 "$(<"$STATE_DIR/$name.pid")" 2>/dev/null; }; then
    log "the $name is not running; start Vigil first with deploy/local/run.sh (in another terminal)"
    exit 1
  fi
done
shopt -s nullglob
files=("$dir"/*)
regular=()
for file in "${files[@]}"; do [[ -f $file ]] && regular+=("$file"); done
if ((${#regular[@]} <= 200)); then
  log "$dir has ${#regular[@]} files; the bulk-read rule needs more than 200 opens (run.sh creates $STATE_DIR/phi-demo when VIGIL_PHI_DIR is unset)"
  exit 1
fi

# Listen before reading, so the finding cannot slip past.
found=$(mktemp)
trap 'rm -f "$found"' EXIT
"$detector" alerts --brokers "$BROKERS" --rule phi-bulk-read --count 1 --idle-timeout "$WAIT_SECONDS" --color never >"$found" &
listener=$!
sleep 1

log "reading ${#regular[@]} files of $dir as $(id -un) (pid $$)"
start_ns=$(date +%s%N)
cat "${regular[@]}" >/dev/null
read_ms=$((($(date +%s%N) - start_ns) / 1000000))
log "read them in $read_ms ms; waiting up to $WAIT_SECONDS s for the finding"

wait "$listener" || true
if [[ -s $found ]]; then
  elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
  log "the detector's finding arrived $elapsed_ms ms after the bulk read started (run.sh shows it too):"
  cat "$found"
else
  now=$(date +%s)
  next=$(date -d "@$(((now / 900 + 1) * 900))" +%H:%M)
  log "no finding within $WAIT_SECONDS s. If the demo already ran in this 15-minute window,"
  log "the detector de-duplicated it: run it again after $next. Otherwise see $STATE_DIR/collector.log and detector.log."
  exit 1
fi
