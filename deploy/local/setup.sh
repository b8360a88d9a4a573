#!/usr/bin/env bash
# Installs what Vigil needs on a Debian host, skipping whatever is already there:
#   - apt packages: the C toolchain and libraries the Rust crates build against
#     (clang/libclang for bindgen, llvm and libbpf-dev/bpftool for the eBPF
#     programs, cmake and zlib for librdkafka and RocksDB, redis-server for
#     the collector's overhead benchmark, systemd's systemd-analyze for
#     the tests of the units in deploy/systemd);
#   - the tansu Kafka-protocol broker 0.6.0 in ~/.cargo/bin (12–25 minutes
#     to build once on 2 cores; reused afterwards).
# Safe to run again: it only installs what is missing. Needs root for apt.
# `--no-tansu` does all but the broker (test.sh builds it beside the tests).
set -euo pipefail

with_tansu=true
case ${1:-} in
  '') ;;
  --no-tansu) with_tansu=false ;;
  *)
    printf 'setup: unknown option %s (the only one is --no-tansu)\n' "$1" >&2
    exit 2
    ;;
esac

TANSU_VERSION=0.6.0
APT_PACKAGES=(build-essential pkg-config cmake clang llvm libclang-dev libbpf-dev bpftool
  zlib1g-dev libssl-dev libsasl2-dev protobuf-compiler curl redis-server systemd)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for package in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing apt packages: ${missing[*]}; run this script as root (or sudo apt-get install them)"
    exit 1
  fi
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "apt packages present"
fi

if ! command -v cargo >/dev/null; then
  if [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH=$HOME/.cargo/bin:$PATH
  else
    log "no Rust toolchain: install rustup with stable Rust 1.95 or newer first"
    exit 1
  fi
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "adding rustup component $component"
    rustup component add "$component"
  fi
done

$with_tansu || exit 0

tansu_bin=$(command -v tansu || true)
[[ -z $tansu_bin && -x $HOME/.cargo/bin/tansu ]] && tansu_bin=$HOME/.cargo/bin/tansu
if [[ -n $tansu_bin ]] && "$tansu_bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "tansu $TANSU_VERSION present at $tansu_bin"
else
  log "building the tansu broker $TANSU_VERSION into ~/.cargo/bin (once; 12–25 minutes on 2 cores)"
  started=$SECONDS
  # In cargo's own temporary directory, not a CARGO_TARGET_DIR shared with
  # a workspace build that would wait for it (or it for the build).
  env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql
  log "tansu built in $((SECONDS - started)) s"
fi
