#!/usr/bin/env bash
# Sets up this host (deploy/local/setup.sh) and runs every check Vigil has:
# formatting, clippy with warnings as errors, and all unit and integration
# tests. Integration tests start their own tansu brokers on loopback ports.
#
# Build outputs go to $CARGO_TARGET_DIR (default ~/.cache/vigil/target) so a
# second run, and CI on the same machine, reuse them.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/setup.sh
export PATH=$HOME/.cargo/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
