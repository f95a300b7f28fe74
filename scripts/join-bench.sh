#!/usr/bin/env bash
# What a join costs: the joining node's streaming throughput, and client throughput and
# p99 on the same cluster in steady state and while a 4th node joins (one session, same
# workload). Starts three release nodes on 127.0.0.1:7201.. (N=3 R=2 W=2), preloads KEYS
# keys of 100 B, runs workload A (uniform) for DURATION, then starts n4 (seeded with n1)
# and runs the same workload for DURATION from its start; prints both lines and the
# join's ranges, bytes, stream time and MB/s. Stops every process it started.
#   scripts/join-bench.sh [KEYS] [CLIENTS] [DURATION]     defaults: 200000 16 20s
# Extra server flags (e.g. --rebalance-max-bytes-per-sec): $SERVER_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-200000}
CLIENTS=${2:-16}
DURATION=${3:-20s}
OUT=${OUT:-/tmp/distkv-join-bench}
source scripts/cluster-lib.sh
start_cluster 3 720
"$BIN/distkv-bench" --targets "$TARGETS" --clients 64 --workload insert --keys "$KEYS" \
    --preload --ops 1 --value-size 100 >/dev/null 2>&1
phase() {
    "$BIN/distkv-bench" --targets "$TARGETS" --clients "$CLIENTS" --workload a \
        --distribution uniform --keys "$KEYS" --value-size 100 --duration "$DURATION" 2>/dev/null |
        awk -v n="$1" '/^(read|update) / { rate += $4; if ($7 > p99) p99 = $7 }
            END { printf "%-7s %8.0f ops/s  p99 %6s us\n", n, rate, p99 }'
}
phase steady
"$BIN/distkv-server" --node-id n4 --address 127.0.0.1:7204 --data-dir "$OUT/n4" \
    --seed-nodes "n1=127.0.0.1:8201" --replicas 3 --read-quorum 2 --write-quorum 2 \
    ${SERVER_ARGS:-} > "$OUT/n4.log" 2>&1 &
PIDS+=($!)
phase joining
# Bounded wait (120 s) for the join to end if it outlasted the phase.
for _ in $(seq 1 1200); do
    grep -q "joined the cluster" "$OUT/n4.log" && break
    sleep 0.1
done
line=$(grep "joined the cluster" "$OUT/n4.log" | sed 's/\x1b\[[0-9;]*m//g' || true)
if [ -z "$line" ]; then
    echo "n4 did not join within the wait; its log: $OUT/n4.log" >&2
    exit 1
fi
echo "$line" | awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "join    %s ranges, %s records, %.1f MB in %.2f s of streaming: %.1f MB/s\n",
        v["ranges"], v["records"], v["bytes"] / 1e6, v["stream_ms"] / 1000,
        v["bytes"] / 1e6 / (v["stream_ms"] / 1000 + 1e-9) }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
