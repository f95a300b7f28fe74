# Sourced by the cluster scripts: builds the release binaries and starts NODES
# distkv-server processes on 127.0.0.1:${BASE_PORT}1.. (N=NODES, R=W=majority), with
# their data and logs under $OUT; stops them all on exit. Sets BIN, PIDS and TARGETS.
#   start_cluster NODES BASE_PORT      e.g. start_cluster 3 710 -> ports 7101..7103
# NODE_WORKERS=K starts each node with K Tokio worker threads (TOKIO_WORKER_THREADS; the
# default is one per core). Extra server flags: $SERVER_ARGS; extra distkv-client flags (TLS): $CLIENT_ARGS. BIN=DIR runs the binaries in DIR instead of building
# this checkout's (for A/B runs against another build).
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p distkv-node --bins -p distkv-benches --bin distkv-bench
    BIN=${CARGO_TARGET_DIR:-target}/release
fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start_cluster() {
    local nodes=$1 base=$2 seeds="" i
    TARGETS=""
    rm -rf "$OUT" && mkdir -p "$OUT"
    for i in $(seq 1 "$nodes"); do
        # Seeds name peer ports: the client port + 1000 by default.
        seeds+="${seeds:+,}n$i=127.0.0.1:$(( $base$i + 1000 ))"
        TARGETS+="${TARGETS:+,}127.0.0.1:$base$i"
    done
    local q=$(( nodes / 2 + 1 ))
    for i in $(seq 1 "$nodes"); do
        env ${NODE_WORKERS:+TOKIO_WORKER_THREADS=$NODE_WORKERS} "$BIN/distkv-server" --node-id "n$i" --address "127.0.0.1:$base$i" --data-dir "$OUT/n$i" \
            --seed-nodes "$seeds" --replicas "$nodes" --read-quorum "$q" --write-quorum "$q" \
            ${SERVER_ARGS:-} > "$OUT/n$i.log" 2>&1 &
        PIDS+=($!)
    done
    # Bounded wait (10 s) for the last node to answer.
    for _ in $(seq 1 100); do
        "$BIN/distkv-client" ${CLIENT_ARGS:-} --server "127.0.0.1:$base$nodes" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}

# CPU seconds (user + system) of the given processes, summed.
cpu() { for p in "$@"; do cut -d' ' -f14,15 "/proc/$p/stat"; done | awk '{s += $1 + $2} END {print s / 100}'; }
