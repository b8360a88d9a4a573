#!/usr/bin/env bash
# Prints the C source of one empty program on each tracepoint the
# collector's object (collector-ebpf/src/vigil.bpf.c) attaches: what the
# kernel charges for those tracepoints before any of the collector's logic
# runs. Compile it like empty.bpf.c and attach it with attach.c.
set -euo pipefail
cd "$(dirname "$0")/../../.."
echo '#include "vmlinux.h"'
echo '#include <bpf/bpf_helpers.h>'
echo 'char LICENSE[] SEC("license") = "Dual BSD/GPL";'
grep -o 'SEC("tracepoint/[^"]*")' collector-ebpf/src/vigil.bpf.c | sort -u |
  awk '{printf "%s int empty_%d(void *ctx) { return 0; }\n", $0, NR}'
