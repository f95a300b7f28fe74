#!/usr/bin/env bash
# Cost of TLS: quorum writes and reads per second, and node CPU microseconds per
# operation, on a three-node release cluster (N=3 R=2 W=2) with TLS off and on (TLS on the
# client port, mutual TLS between the nodes), alternating the two ROUNDS times in one
# session so both see the same machine; then the cost of a full TLS handshake (openssl
# s_time, new connections per second against one node's client port).
#   scripts/tls-ab.sh [ROUNDS] [OPS]      defaults: 2 rounds of 100000 operations
# BIN=DIR uses binaries already built. Certificates are made in $OUT/certs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
OPS=${2:-100000}
OUT=${OUT:-/tmp/distkv-tls-ab}
CERTS=${OUT}-certs
source scripts/cluster-lib.sh
rm -rf "$CERTS"
"$BIN/distkv-server" cert create-ca --certs-dir "$CERTS" >/dev/null 2>&1
"$BIN/distkv-server" cert create-node --certs-dir "$CERTS" 127.0.0.1 localhost >/dev/null 2>&1
NODE_TLS="--tls-enabled --tls-cert-file $CERTS/node.crt --tls-key-file $CERTS/node.key --tls-ca-file $CERTS/ca.crt"
CLIENT_TLS="--tls-enabled --tls-ca-file $CERTS/ca.crt"
RESULTS=$(mktemp)
run() {
    local arm=$1 workload=$2 tls=$3 before after report
    before=$(cpu "${PIDS[@]}")
    # shellcheck disable=SC2086
    report=$("$BIN/distkv-bench" $tls --targets "$TARGETS" --clients 64 --ops "$OPS" \
        --keys 10000 --value-size 100 --workload "$workload" 2>&1)
    after=$(cpu "${PIDS[@]}")
    echo "$report" | awk -v arm="$arm" -v w="$workload" -v a="$before" -v b="$after" -v ops="$OPS" '
        /^(insert|read) / { rate += $4; if ($7 > p99) p99 = $7 }
        END { printf "%-5s %-6s %8.0f ops/s  p99 %6s us  nodes %6.1f us/op\n", arm, w, rate, p99, (b - a) / ops * 1e6 }' \
        | tee -a "$RESULTS"
}
run_arm() {
    local arm=$1 tls=""
    if [ "$arm" = tls ]; then SERVER_ARGS=$NODE_TLS; CLIENT_ARGS=$CLIENT_TLS; tls=$CLIENT_TLS
    else SERVER_ARGS=""; CLIENT_ARGS=""; fi
    start_cluster 3 732
    run "$arm" insert "$tls"
    run "$arm" c "$tls"
    cleanup
    PIDS=()
}
for r in $(seq 1 "$ROUNDS"); do
    if [ $(( r % 2 )) = 1 ]; then run_arm plain; run_arm tls; else run_arm tls; run_arm plain; fi
done
echo "medians:"
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for w in insert c; do
    for arm in plain tls; do
        rate=$(awk -v a="$arm" -v w="$w" '$1 == a && $2 == w {print $3}' "$RESULTS" | median)
        us=$(awk -v a="$arm" -v w="$w" '$1 == a && $2 == w {print $(NF-1)}' "$RESULTS" | median)
        echo "$arm $w $rate ops/s $us us/op"
    done
done
if command -v openssl >/dev/null; then
    SERVER_ARGS=$NODE_TLS; CLIENT_ARGS=$CLIENT_TLS
    start_cluster 1 733
    echo "handshakes (openssl s_time, full handshakes, 5 s):"
    openssl s_time -connect 127.0.0.1:7331 -new -time 5 2>/dev/null | grep -E "connections/user sec|connections in" || true
    cleanup
fi
