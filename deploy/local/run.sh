#!/usr/bin/env bash
# Sets up this host (deploy/local/setup.sh), builds Vigil and runs it here:
# a durable local broker with Vigil's topics, then the pipeline's services.
#
# Today that is the broker and the `detector tail` tool; the collector and the
# detector service are not built yet and this script says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/setup.sh
export PATH=$HOME/.cargo/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}

printf 'run: building Vigil (release) into %s\n' "$CARGO_TARGET_DIR" >&2
cargo build --release --locked -p vigil-detector

deploy/local/broker.sh start

detector=$CARGO_TARGET_DIR/release/detector
cat <<MSG

Vigil on this host:
  broker     running on 127.0.0.1:${VIGIL_BROKER_PORT:-9092} with topics vigil.events.v1,
             vigil.alerts.v1, vigil.audit.v1, vigil.review.v1, vigil.dlq.v1
  collector  not built yet: no kernel events are published
  detector   not built yet: no alerts or audit records are produced

Watch a topic:   $detector tail --topic vigil.events.v1 --from-beginning
Broker status:   deploy/local/broker.sh status
Stop:            deploy/local/broker.sh stop
MSG
