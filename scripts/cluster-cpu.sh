#!/usr/bin/env bash
# CPU cost per operation: how many microseconds of CPU the nodes (all of them together)
# and the load generator spend on one operation, from /proc/PID/stat before and after a
# fixed number of operations. Throughput on a shared 2-core machine moves by 10-20%
# from run to run; CPU per operation moves far less, so compare changes with this.
#   scripts/cluster-cpu.sh [NODES] [OPS]     NODES: 3 (N=3 R=2 W=2, default) or 1 (N=1)
# CONNS=shared (default): the 64 clients share one gRPC channel per node;
# CONNS=per-client: each client has its own connection (--connection-per-client);
# CONNS=both: each workload runs both ways, one after the other, a line for each.
# Starts release nodes on 127.0.0.1:7301.., runs insert, then C (reads of 10,000
# preloaded keys), then A with uniform keys, prints one line per workload and stops every
# node it started.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-3}
OPS=${2:-200000}
OUT=${OUT:-/tmp/distkv-cluster-cpu}
case "${CONNS:=shared}" in
    shared) MODES=(shared) ;;
    per-client) MODES=(per-client) ;;
    both) MODES=(shared per-client) ;;
    *) echo "CONNS must be shared, per-client or both" >&2; exit 2 ;;
esac
source scripts/cluster-lib.sh
start_cluster "$NODES" 730
measure() {
    local name=$1; shift
    local before after report mode flag
    for mode in "${MODES[@]}"; do
        flag=(); [ "$mode" = per-client ] && flag=(--connection-per-client)
        before=$(cpu "${PIDS[@]}")
        report=$( { TIMEFORMAT="GENCPU %U %S"; time "$BIN/distkv-bench" --targets "$TARGETS" \
            --clients 64 --ops "$OPS" --keys 10000 --value-size 100 "${flag[@]}" "$@"; } 2>&1 )
        after=$(cpu "${PIDS[@]}")
        echo "$report" | awk -v n="$name" -v m="$mode" -v a="$before" -v b="$after" -v ops="$OPS" -v nodes="$NODES" '
            /^GENCPU/ { gen = $2 + $3 }
            /^(read|insert|update) / { rate += $4; if ($7 > p99) p99 = $7 }
            END { printf "%-7s %-10s %d node(s): %8s ops/s  p99 %6s us  nodes %5.1f us/op  generator %5.1f us/op\n",
                  n, m, nodes, rate, p99, (b - a) / ops * 1e6, gen / ops * 1e6 }'
    done
}
measure insert --workload insert
"$BIN/distkv-bench" --targets "$TARGETS" --clients 64 --workload insert --keys 10000 \
    --preload --ops 1 --value-size 100 >/dev/null 2>&1
measure read --workload c
# Half reads, half updates of existing keys, spread evenly over the key space (a hash-
# partitioned store's common case; insert above writes run-sequential key names).
measure a-unif --workload a --distribution uniform
