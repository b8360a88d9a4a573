#!/usr/bin/env bash
# Stops what deploy/local/run.sh started: the detector (gracefully: it
# finishes its batch and writes its state), then the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE_DIR=${VIGIL_STATE_DIR:-$HOME/.local/state/vigil}
pid_file=$STATE_DIR/detector.pid
if [[ -f $pid_file ]] && kill -0 "$(<"$pid_file")" 2>/dev/null; then
  pid=$(<"$pid_file")
  kill -TERM "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "stop: detector $pid did not stop in 30 s; killing it" >&2; kill -9 "$pid"; }
  echo "stop: detector stopped" >&2
else
  echo "stop: detector not running" >&2
fi
rm -f "$pid_file"
deploy/local/broker.sh stop
