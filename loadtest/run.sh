#!/usr/bin/env bash
# The load-test job: builds the release detector and load generator, starts
# a private in-memory tansu broker on 127.0.0.1:$LOADTEST_BROKER_PORT
# (default 9192, so a running deploy/local broker is left alone), runs
# `loadtest` and stops the broker again.
#
#   loadtest/run.sh                      # full run, exits 1 if p50 > 100 ms
#   loadtest/run.sh --history-days 30 --live-seconds 20 --assert-p50-ms 10
#
# Arguments go to `loadtest` (see `loadtest --help`); without any, the
# default full-size run asserts a median event-to-alert latency of 100 ms.
# The report (report.json, report.txt, latency.svg) goes to
# $LOADTEST_OUT (default ./loadtest-report).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/local/setup.sh
export PATH=$HOME/.cargo/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
printf 'loadtest: building release binaries into %s\n' "$CARGO_TARGET_DIR" >&2
# The collector too, though the load test does not run it: it turns on
# features of shared dependencies (libc's `extra_traits`, through nix), and
# with the same package set as deploy/local/run.sh both scripts share one
# release build of the whole dependency stack instead of compiling
# DataFusion and RocksDB twice.
cargo build --release --locked -p vigil-detector -p vigil-collector -p vigil-loadtest

export VIGIL_BROKER_PORT=${LOADTEST_BROKER_PORT:-9192}
export VIGIL_STATE_DIR=${LOADTEST_STATE_DIR:-$HOME/.local/state/vigil-loadtest}
deploy/local/broker.sh start --memory
trap 'deploy/local/broker.sh stop' EXIT

if [[ $# -eq 0 ]]; then
  set -- --assert-p50-ms 100
fi
export VIGIL_BROKERS=127.0.0.1:$VIGIL_BROKER_PORT
"$CARGO_TARGET_DIR/release/loadtest" "$@"
