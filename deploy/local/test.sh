#!/usr/bin/env bash
# Sets up this host (deploy/local/setup.sh) and runs every check Vigil has:
# formatting, clippy with warnings as errors, and all unit and integration
# tests. Integration tests start their own tansu brokers on loopback ports;
# tansu is built, when missing, while the tests are compiled.
#
# Build outputs go to $CARGO_TARGET_DIR (default ~/.cache/vigil/target) so a
# second run, and CI on the same machine, reuse them.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/setup.sh --no-tansu
export PATH=$HOME/.cargo/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*" >&2; }

# The tansu broker (only the tests need it) is set up beside the test
# build: on a fresh machine both are long compilations, and side by side
# they keep the two cores busier than one after the other. When tansu is
# already installed this takes a second.
tansu_log=$CARGO_TARGET_DIR/tansu-setup.log
step "setting up the tansu broker in the background (log: $tansu_log)"
setsid --wait deploy/local/setup.sh >"$tansu_log" 2>&1 &
tansu_setup=$!
# If the script stops early, the broker's build stops with it.
trap 'kill -- -"$tansu_setup" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --all --check

step "cargo test --no-run (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked --no-run

step "waiting for the tansu broker's setup"
if ! wait "$tansu_setup"; then
  cat "$tansu_log" >&2
  printf 'test: setting up the tansu broker failed; its log is above and in %s\n' "$tansu_log" >&2
  exit 1
fi
grep '^setup:' "$tansu_log" >&2 || true

step "cargo test"
cargo test --workspace --locked

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
