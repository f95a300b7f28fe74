#!/usr/bin/env bash
# Cost of the metrics exporter: quorum writes per second and node CPU microseconds per
# write on a three-node release cluster (N=3 R=2 W=2), with the admin port on (the
# Prometheus recorder installed, every node scraped once a second) and off
# (--admin-address ""), alternating the two ROUNDS times in one session so that both
# see the same machine.
#   scripts/metrics-ab.sh [ROUNDS] [OPS]      defaults: 3 rounds of 100000 inserts
# Prints one line per run and the medians. BIN=DIR uses binaries already built. SCRAPE=0
# leaves the "on" arm unscraped (the recording cost alone); SCRAPE_EVERY=SECONDS sets the
# scrape interval (default 1 s, a stress case: Prometheus' usual is 15 s or more).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OPS=${2:-100000}
OUT=${OUT:-/tmp/distkv-metrics-ab}
source scripts/cluster-lib.sh
RESULTS=$(mktemp)
SCRAPER=""
stop_arm() {
    if [ -n "$SCRAPER" ]; then
        kill "$SCRAPER" 2>/dev/null || true
        wait "$SCRAPER" 2>/dev/null || true
    fi
    SCRAPER=""
    cleanup
    PIDS=()
}
run_arm() {
    local arm=$1 before after report
    if [ "$arm" = on ]; then SERVER_ARGS=""; else SERVER_ARGS='--admin-address='; fi
    start_cluster 3 731
    if [ "$arm" = on ] && [ "${SCRAPE:-1}" = 1 ]; then
        ( while :; do for i in 1 2 3; do curl -s -m 1 "http://127.0.0.1:$((7310 + i + 2000))/metrics" >/dev/null || true; done; sleep "${SCRAPE_EVERY:-1}"; done ) &
        SCRAPER=$!
    fi
    before=$(cpu "${PIDS[@]}")
    report=$("$BIN/distkv-bench" --targets "$TARGETS" --clients 64 --ops "$OPS" \
        --keys 10000 --value-size 100 --workload insert 2>&1)
    after=$(cpu "${PIDS[@]}")
    echo "$report" | awk -v arm="$arm" -v a="$before" -v b="$after" -v ops="$OPS" '
        /^insert / { rate = $4; p99 = $7 }
        END { printf "%-4s %8.0f writes/s  p99 %6s us  nodes %6.1f us/op\n", arm, rate, p99, (b - a) / ops * 1e6 }' \
        | tee -a "$RESULTS"
    stop_arm
}
for r in $(seq 1 "$ROUNDS"); do
    # Alternate which arm goes first, so neither always runs on a warmer machine.
    if [ $(( r % 2 )) = 1 ]; then run_arm on; run_arm off; else run_arm off; run_arm on; fi
done
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for arm in on off; do
    w=$(awk -v a="$arm" '$1 == a {print $2}' "$RESULTS" | median)
    c=$(awk -v a="$arm" '$1 == a {print $8}' "$RESULTS" | median)
    echo "median $arm: $w writes/s, $c us/op of node CPU"
    eval "W_$arm=$w C_$arm=$c"
done
awk -v won="$W_on" -v woff="$W_off" -v con="$C_on" -v coff="$C_off" 'BEGIN {
    printf "exporter on / off: throughput %.3f, node CPU per write %.3f\n", won / woff, con / coff }'
rm -f "$RESULTS"
