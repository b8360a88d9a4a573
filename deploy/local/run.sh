#!/usr/bin/env bash
# Sets up this host (deploy/local/setup.sh), builds Vigil and runs it here:
# a durable local broker with Vigil's topics, then the detector service in
# the background (state, logs and pid under $VIGIL_STATE_DIR, default
# ~/.local/state/vigil). Running it again restarts the detector on the same
# state. deploy/local/stop.sh stops everything.
#
# The collector is built too but not started by this script yet (it needs a
# PHI directory to watch); the README shows how to start it.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/setup.sh
export PATH=$HOME/.cargo/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
STATE_DIR=${VIGIL_STATE_DIR:-$HOME/.local/state/vigil}
BROKERS=127.0.0.1:${VIGIL_BROKER_PORT:-9092}

printf 'run: building Vigil (release) into %s\n' "$CARGO_TARGET_DIR" >&2
cargo build --release --locked -p vigil-detector -p vigil-collector

deploy/local/broker.sh start

detector=$CARGO_TARGET_DIR/release/detector
pid_file=$STATE_DIR/detector.pid
log_file=$STATE_DIR/detector.log
if [[ -f $pid_file ]] && kill -0 "$(<"$pid_file")" 2>/dev/null; then
  printf 'run: restarting the detector (pid %s)\n' "$(<"$pid_file")" >&2
  kill "$(<"$pid_file")"
  while kill -0 "$(<"$pid_file")" 2>/dev/null; do sleep 0.1; done
fi
VIGIL_LOG=${VIGIL_LOG:-info} nohup "$detector" run \
  --brokers "$BROKERS" \
  --state-dir "$STATE_DIR/detector" \
  --rules-dir "$PWD/sql/rules" \
  --instance-id "detector-$(hostname)" \
  >>"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"
sleep 2
if ! kill -0 "$(<"$pid_file")" 2>/dev/null; then
  printf 'run: the detector exited at start; last lines of %s:\n' "$log_file" >&2
  tail -n 20 "$log_file" >&2
  exit 1
fi

cat <<MSG

Vigil on this host:
  broker     running on $BROKERS with topics vigil.events.v1, vigil.alerts.v1,
             vigil.audit.v1, vigil.review.v1, vigil.dlq.v1
  detector   running (pid $(<"$pid_file")), rules from sql/rules, log $log_file
  collector  built, not started: sudo $CARGO_TARGET_DIR/release/collector --watch /srv/phi --brokers $BROKERS

Watch alerts:    $detector tail --topic vigil.alerts.v1
Watch events:    $detector tail --topic vigil.events.v1 --from-beginning
Verify audit:    $detector audit verify
Stop:            deploy/local/stop.sh
MSG
