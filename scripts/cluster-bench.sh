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
cargo build --release -q -p distkv-node
BIN=target/release
rm -rf "$OUT" && mkdir -p "$OUT"
PORTS=(7101 7102 7103)
SEEDS="n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2 3; do
    "$BIN/distkv-server" --node-id "n$i" --address "127.0.0.1:${PORTS[$((i-1))]}" --data-dir "$OUT/n$i" \
        --seed-nodes "$SEEDS" --replicas 3 --read-quorum 2 --write-quorum 2 ${SERVER_ARGS:-} \
        > "$OUT/n$i.log" 2>&1 &
    PIDS+=($!)
done
T=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
for _ in $(seq 1 100); do
    "$BIN/distkv-client" --server 127.0.0.1:7103 status >/dev/null 2>&1 && break
    sleep 0.1
done
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
