#!/usr/bin/env bash
# The local Kafka-protocol broker (tansu) for development and single-host runs.
#
#   broker.sh start [--memory]   start on 127.0.0.1:$VIGIL_BROKER_PORT (default 9092),
#                                wait until it answers, create Vigil's topics
#   broker.sh stop               stop it
#   broker.sh status             say whether it runs and list its topics
#
# Storage is durable SQLite at $VIGIL_STATE_DIR/tansu.db (default
# ~/.local/state/vigil) unless --memory is given. The broker is installed by
# deploy/local/setup.sh when missing. Its log is $VIGIL_STATE_DIR/broker.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT=${VIGIL_BROKER_PORT:-9092}
STATE_DIR=${VIGIL_STATE_DIR:-$HOME/.local/state/vigil}
PID_FILE=$STATE_DIR/broker.pid
LOG_FILE=$STATE_DIR/broker.log
URL=tcp://127.0.0.1:$PORT

# Vigil's topics and partition counts; schemas/src/topics.rs holds the same
# list and a test checks that the two agree.
TOPICS=(
  vigil.events.v1:6
  vigil.alerts.v1:3
  vigil.audit.v1:6
  vigil.review.v1:1
  vigil.dlq.v1:1
)

log() { printf 'broker: %s\n' "$*" >&2; }

tansu_bin() {
  if [[ -n ${VIGIL_TANSU:-} ]]; then echo "$VIGIL_TANSU"; return; fi
  if command -v tansu >/dev/null; then command -v tansu; return; fi
  if [[ -x $HOME/.cargo/bin/tansu ]]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  log "tansu is not installed; run deploy/local/setup.sh"
  exit 1
}

running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# Topic names, one a line (tansu prints the metadata as JSON).
existing_topics() {
  "$(tansu_bin)" topic list --broker "$URL" 2>/dev/null | grep -o '"name":"[^"]*"' | cut -d'"' -f4 || true
}

create_topics() {
  local listed spec name partitions
  listed=$(existing_topics)
  for spec in "${TOPICS[@]}"; do
    name=${spec%%:*}
    partitions=${spec##*:}
    if grep -qxF -- "$name" <<<"$listed"; then
      log "topic $name exists"
      continue
    fi
    "$(tansu_bin)" topic create "$name" --partitions "$partitions" --broker "$URL" >/dev/null
    log "created topic $name with $partitions partitions"
  done
}

start() {
  # tansu resolves a sqlite:// path against its working directory, so the
  # broker runs in the state directory with a relative path.
  local storage="sqlite://tansu.db"
  [[ ${1:-} == --memory ]] && storage="memory://tansu/"
  mkdir -p "$STATE_DIR"
  if pid=$(running_pid); then
    log "already running (pid $pid) on $URL"
  else
    if port_open; then
      log "port $PORT is taken by another program; set VIGIL_BROKER_PORT to another port"
      exit 1
    fi
    log "starting tansu on $URL with storage $storage in $STATE_DIR (log: $LOG_FILE)"
    local tansu
    tansu=$(tansu_bin)
    (cd "$STATE_DIR" && exec nohup "$tansu" broker \
      --storage-engine "$storage" \
      --listener-url "$URL" \
      --advertised-listener-url "$URL" \
      >>"$LOG_FILE" 2>&1 </dev/null) &
    echo $! >"$PID_FILE"
    local waited=0
    until port_open; do
      if ! running_pid >/dev/null; then
        log "tansu exited during startup; last lines of $LOG_FILE:"
        tail -n 20 "$LOG_FILE" >&2
        exit 1
      fi
      if ((waited >= 300)); then
        log "tansu did not listen on $URL within 30 s; see $LOG_FILE"
        exit 1
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  fi
  create_topics
  log "ready on $URL; stop it with: deploy/local/broker.sh stop"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  # The pid file goes first, so a run.sh watching the services takes the
  # broker as stopped on purpose.
  rm -f "$PID_FILE"
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

status() {
  local pid
  if pid=$(running_pid); then
    log "running (pid $pid) on $URL; topics:"
    existing_topics | sed 's/^/  /' >&2
  else
    log "not running"
    return 3
  fi
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
