#!/usr/bin/env bash
# Stops what deploy/local/run.sh started, in the order that loses nothing:
# the collector (SIGTERM: it drains the kernel ring buffer and flushes its
# producer), then the detector (it finishes the batch in hand and writes its
# state and offsets), then the broker. A run.sh still showing alerts in
# another terminal is asked to do this itself (and exits).
#
#   stop.sh                  stop everything
#   stop.sh --only NAME      stop only the collector or the detector
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE_DIR=${VIGIL_STATE_DIR:-$HOME/.local/state/vigil}

log() { printf 'stop: %s\n' "$*" >&2; }

stop_service() {
  local name=$1 pid_file=$STATE_DIR/$1.pid pid
  if [[ -f $pid_file ]] && pid=$(<"$pid_file") && kill -0 "$pid" 2>/dev/null; then
    # The pid file goes first: a run.sh watching the services takes a
    # service without one as stopped on purpose, not as one to restart.
    rm -f "$pid_file"
    kill -TERM "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name $pid did not stop within 30 s of SIGTERM; killing it"
      kill -9 "$pid"
    fi
    log "$name stopped (pid $pid; log $STATE_DIR/$name.log)"
  else
    log "$name not running"
  fi
  rm -f "$pid_file"
}

case ${1:-} in
  --only)
    case ${2:-} in
      collector | detector) stop_service "$2" ;;
      *) log "--only takes collector or detector"; exit 2 ;;
    esac
    exit 0
    ;;
  "") ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

# A run.sh still in the foreground somewhere stops everything itself (and
# its alert viewer first); let it, then stop whatever is left.
run_pid_file=$STATE_DIR/run.pid
if [[ -f $run_pid_file ]] && pid=$(<"$run_pid_file") && [[ $pid != "$PPID" ]] \
  && kill -0 "$pid" 2>/dev/null && grep -q run.sh "/proc/$pid/cmdline" 2>/dev/null; then
  log "asking run.sh (pid $pid) to stop Vigil"
  kill -TERM "$pid"
  for _ in $(seq 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi

stop_service collector
stop_service detector
deploy/local/broker.sh stop
