#!/usr/bin/env bash
# Starts a three-node release cluster on 127.0.0.1 (N=3 R=2 W=2), runs distkv-bench
# workloads against it, prints the summaries and stops every node it started.
#   scripts/cluster-bench.sh [DURATION] [CLIENTS]      e.g. scripts/cluster-bench.sh 20s 64
# Results (JSON per workload) go to ${OUT:-/tmp/distkv-cluster-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
CLIENTS=${2:-64}
OUT=${OUT:-/tmp/distkv-cluster-bench}
source scripts/cluster-lib.sh
start_cluster 3 710
T=$TARGETS
run() {
    local name=$1; shift
    echo "== $name ($DURATION, $CLIENTS clients)"
    "$BIN/distkv-bench" --targets "$T" --clients "$CLIENTS" --duration "$DURATION" --output json "$OUT/$name.json" "$@" 2>/dev/null | tail -n 12
}
run insert --workload insert --value-size 100
run load --workload insert --keys 10000 --preload --ops 1 --value-size 100 >/dev/null
run c --workload c --keys 10000 --value-size 100
run a --workload a --keys 10000 --value-size 100
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
