#!/usr/bin/env bash
# Quorum-read latency at low concurrency (issue 15, point 5). Starts NODES release nodes
# on 127.0.0.1:7401.. (3: N=3 R=2 W=2; 1: N=1), preloads KEYS keys, then runs workload C
# (uniform keys, one connection per client) for PHASE with each client count in CLIENTS,
# and prints one line per run: ops/s, p50/p99 as the generator saw them, and the mean
# times the first node's /metrics recorded over the run (client request handled on the
# coordinator; peer call from send to answer), then stops every node it started.
#   scripts/latency-bench.sh [NODES] [PHASE]     e.g. scripts/latency-bench.sh 3 10s
# CLIENTS="1 16" (default), KEYS=100000, BIN=DIR (skip the build), OUT=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-3}
PHASE=${2:-10s}
KEYS=${KEYS:-100000}
OUT=${OUT:-/tmp/distkv-latency-bench}
source scripts/cluster-lib.sh
start_cluster "$NODES" 740
METRICS=http://127.0.0.1:9401/metrics
# sum and count of a histogram's series matching NAME and FILTER, from /metrics.
scrape() {
    curl -s --max-time 5 "$METRICS" | awk -v n="$1" -v f="$2" '
        index($1, n "_sum") == 1 && index($1, f) { s += $2 }
        index($1, n "_count") == 1 && index($1, f) { c += $2 }
        END { printf "%.9f %d\n", s, c }'
}
mean_us() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    c = y[2] - x[2]; if (c > 0) printf "%.0f", (y[1] - x[1]) / c * 1e6; else printf "-" }'; }
"$BIN/distkv-bench" --targets "$TARGETS" --clients 16 --workload insert --keys "$KEYS" \
    --preload --ops 1 --value-size 100 >/dev/null
for c in ${CLIENTS:-1 16}; do
    req0=$(scrape distkv_client_request_duration_seconds 'op="get"')
    peer0=$(scrape distkv_peer_call_duration_seconds 'call="read"')
    report=$("$BIN/distkv-bench" --targets "$TARGETS" --clients "$c" --connection-per-client \
        --workload c --distribution uniform --keys "$KEYS" --duration "$PHASE" --warmup 2s)
    req1=$(scrape distkv_client_request_duration_seconds 'op="get"')
    peer1=$(scrape distkv_peer_call_duration_seconds 'call="read"')
    echo "$report" | awk -v n="$NODES" -v c="$c" -v rq="$(mean_us "$req0" "$req1")" \
        -v pc="$(mean_us "$peer0" "$peer1")" -v load="$(cut -d' ' -f1 /proc/loadavg)" '
        /^read / { printf "%d node(s) %2d clients: %8s ops/s  p50 %6s us  p99 %6s us  | node1 mean: request %s us, peer read call %s us | load %s\n",
                   n, c, $4, $5, $7, rq, pc, load }'
done
