#!/usr/bin/env bash
# A local N-node DistKV cluster on loopback, for development.
#   scripts/dev-cluster.sh start [N]   start N nodes (default 3) with fresh data
#   scripts/dev-cluster.sh status      which nodes run, their health, one node's status
#   scripts/dev-cluster.sh test        put, get and delete through every node; check answers
#   scripts/dev-cluster.sh stop        stop every node (SIGTERM, then SIGKILL after 10 s)
# Node i (n1..nN) listens for clients on 127.0.0.1:$((BASE_PORT + i)) (default 7001..)
# and serves /metrics and /health on the client port + 2000 (9001..). Replicas: min(N, 3),
# R = W = a majority of them.
# Environment: DEV_DIR (data, logs and pids; default /tmp/distkv-dev), BASE_PORT (7000),
# BIN (a directory with distkv-server and distkv-client; default: build this checkout's
# debug binaries with cargo, or release ones with PROFILE=release).
# Runs on Linux and macOS (bash); on Windows use WSL.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV_DIR=${DEV_DIR:-/tmp/distkv-dev}
BASE_PORT=${BASE_PORT:-7000}
PROFILE=${PROFILE:-debug}

die() { echo "dev-cluster: $*" >&2; exit 1; }

binaries() {
    if [ -z "${BIN:-}" ]; then
        local flag=()
        [ "$PROFILE" = release ] && flag=(--release)
        cargo build -q "${flag[@]}" -p distkv-node --bins || die "cargo build failed; fix the build first"
        BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
    fi
    [ -x "$BIN/distkv-server" ] && [ -x "$BIN/distkv-client" ] \
        || die "no distkv-server and distkv-client in $BIN (set BIN to the directory that holds them)"
}

# The nodes recorded by `start`: "ID PORT PID" per line.
nodes() { [ -f "$DEV_DIR/nodes" ] && cat "$DEV_DIR/nodes" || true; }
running() { kill -0 "$1" 2>/dev/null; }

client() { "$BIN/distkv-client" --timeout 5s --server "127.0.0.1:$1" "${@:2}"; }

health() { # PORT -> "ready", "not ready: ..." or "no admin answer"
    local admin=$(( $1 + 2000 ))
    if command -v curl >/dev/null; then
        local body code
        body=$(curl -s -m 2 -w '\n%{http_code}' "http://127.0.0.1:$admin/health/ready") || { echo "no admin answer on $admin"; return; }
        code=${body##*$'\n'}
        [ "$code" = 200 ] && echo "ready" || echo "not ready: ${body%$'\n'*}"
    else
        echo "(install curl to see /health/ready on $admin)"
    fi
}

cmd_start() {
    local n=${1:-3}
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be a number from 1 to 99, got '$n'"
    local id port pid
    while read -r id port pid; do
        running "$pid" && die "node $id (pid $pid) is still running: run '$0 stop' first"
    done < <(nodes)
    binaries
    rm -rf "$DEV_DIR" && mkdir -p "$DEV_DIR"
    local replicas=$(( n < 3 ? n : 3 ))
    local quorum=$(( replicas / 2 + 1 )) seeds="" i
    for i in $(seq 1 "$n"); do seeds+="${seeds:+,}n$i=127.0.0.1:$(( BASE_PORT + i + 1000 ))"; done
    for i in $(seq 1 "$n"); do
        port=$(( BASE_PORT + i ))
        "$BIN/distkv-server" --node-id "n$i" --address "127.0.0.1:$port" --data-dir "$DEV_DIR/n$i" \
            --seed-nodes "$seeds" --replicas "$replicas" --read-quorum "$quorum" \
            --write-quorum "$quorum" > "$DEV_DIR/n$i.log" 2>&1 &
        echo "n$i $port $!" >> "$DEV_DIR/nodes"
    done
    # Bounded wait (20 s) for every node to answer.
    while read -r id port pid; do
        local ok=""
        for _ in $(seq 1 200); do
            running "$pid" || die "node $id exited at start-up; its log ($DEV_DIR/$id.log):
$(tail -n 5 "$DEV_DIR/$id.log")"
            if client "$port" status >/dev/null 2>&1; then ok=1; break; fi
            sleep 0.1
        done
        [ -n "$ok" ] || die "node $id did not answer on 127.0.0.1:$port within 20 s; see $DEV_DIR/$id.log"
    done < <(nodes)
    echo "started $n nodes (N=$replicas R=$quorum W=$quorum), data and logs in $DEV_DIR:"
    while read -r id port pid; do
        echo "  $id  client 127.0.0.1:$port  admin http://127.0.0.1:$(( port + 2000 ))/metrics  pid $pid"
    done < <(nodes)
}

cmd_status() {
    [ -n "$(nodes)" ] || die "no dev cluster recorded in $DEV_DIR: run '$0 start'"
    binaries
    local id port pid first="" up=0 total=0
    while read -r id port pid; do
        total=$(( total + 1 ))
        if running "$pid"; then
            up=$(( up + 1 ))
            first=${first:-$port}
            echo "$id  127.0.0.1:$port  pid $pid  running, $(health "$port")"
        else
            echo "$id  127.0.0.1:$port  pid $pid  stopped"
        fi
    done < <(nodes)
    echo "$up of $total nodes running"
    [ -n "$first" ] && client "$first" status
    [ "$up" -eq "$total" ]
}

cmd_test() {
    [ -n "$(nodes)" ] || die "no dev cluster recorded in $DEV_DIR: run '$0 start'"
    binaries
    local ports=() id port pid
    while read -r id port pid; do
        running "$pid" || die "node $id is not running: '$0 status' shows the cluster"
        ports+=("$port")
    done < <(nodes)
    local n=${#ports[@]} checks=0 i p got key value
    for i in $(seq 0 $(( n - 1 ))); do
        key="dev-test-$$-$i" value="value-$i-$RANDOM"
        client "${ports[$i]}" put "$key" "$value" || die "put of $key through 127.0.0.1:${ports[$i]} failed"
        for p in "${ports[@]}"; do
            got=$(client "$p" get "$key") || die "get of $key through 127.0.0.1:$p failed"
            [ "$got" = "$value" ] || die "get of $key through 127.0.0.1:$p answered '$got', expected '$value'"
            checks=$(( checks + 1 ))
        done
        # Delete through the next node; every node then answers "not found" (exit 1).
        local next=${ports[$(( (i + 1) % n ))]}
        client "$next" delete "$key" || die "delete of $key through 127.0.0.1:$next failed"
        for p in "${ports[@]}"; do
            local rc=0
            client "$p" get "$key" >/dev/null 2>&1 || rc=$?
            [ "$rc" = 1 ] || die "get of deleted $key through 127.0.0.1:$p exited $rc, expected 1 (not found)"
            checks=$(( checks + 1 ))
        done
    done
    echo "ok: put, get and delete through each of $n nodes, $checks reads checked"
}

cmd_stop() {
    local id port pid stopped=0
    while read -r id port pid; do
        running "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
        if running "$pid"; then
            echo "node $id did not stop within 10 s of SIGTERM: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        stopped=$(( stopped + 1 ))
    done < <(nodes)
    rm -f "$DEV_DIR/nodes"
    echo "stopped $stopped nodes (data and logs stay in $DEV_DIR)"
}

case "${1:-}" in
    start) cmd_start "${2:-3}" ;;
    status) cmd_status ;;
    test) cmd_test ;;
    stop) cmd_stop ;;
    *) die "usage: $0 start [N] | status | test | stop" ;;
esac
