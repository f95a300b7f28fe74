#!/usr/bin/env bash
# DistKV side by side with etcd and Redis (issue 15): each system alone on 127.0.0.1 with
# fresh data, driven by the same distkv-bench workloads (one connection per worker,
# uniform keys), then stopped; prints one markdown table.
#   scripts/compare-peers.sh [PHASE] [WORKERS...]     e.g. scripts/compare-peers.sh 10s 16 64
# Per system and worker count: start it fresh; `insert` of new keys for PHASE; preload of
# the KEYS keys (unmeasured); workload A (50% read, 50% read-then-write) for PHASE;
# workload C (100% read) for PHASE; stop it. Each phase is also bounded by MAX_OPS.
#   DistKV: 3 nodes, N=3 R=2 W=2 (scripts/cluster-lib.sh), WAL fsync before every ack.
#   etcd:   3 members (Debian's etcd-server), linearizable reads, WAL fsync before commit.
#   Redis:  1 redis-server, no replication, appendonly yes + appendfsync $REDIS_APPENDFSYNC
#           (default always: fsync before the reply, as DistKV and etcd do), no RDB saves.
# Environment: BIN=DIR runs the binaries in DIR (distkv-server, distkv-client, and a
# distkv-bench built with --features peers) instead of building them; SYSTEMS="distkv
# etcd redis"; KEYS=100000; VALUE_SIZE=100; MAX_OPS=2000000; REDIS_APPENDFSYNC=always;
# OUT=/tmp/distkv-compare-peers (data, logs and JSON reports, replaced on each run).
# Redis and etcd are installed with apt-get when missing and this runs as root; otherwise
# that system is skipped with a note. All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-10s}
shift || true
WORKERS=("$@")
[ ${#WORKERS[@]} -gt 0 ] || WORKERS=(16 64)
SYSTEMS=${SYSTEMS:-distkv etcd redis}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
MAX_OPS=${MAX_OPS:-2000000}
REDIS_APPENDFSYNC=${REDIS_APPENDFSYNC:-always}
ROOT_OUT=${OUT:-/tmp/distkv-compare-peers}
rm -rf "$ROOT_OUT" && mkdir -p "$ROOT_OUT"
RESULTS=$ROOT_OUT/results.tsv
: > "$RESULTS"
NOTES=()

if [ -z "${BIN:-}" ]; then
    echo "== building release binaries (distkv-bench with --features peers)" >&2
    cargo build --release -q -p distkv-node --bins -p distkv-benches --features distkv-benches/peers --bin distkv-bench
    BIN=${CARGO_TARGET_DIR:-target}/release
fi
for b in distkv-server distkv-client distkv-bench; do
    [ -x "$BIN/$b" ] || { echo "compare-peers: $BIN/$b is missing; build it or unset BIN" >&2; exit 2; }
done

# Installs a Debian package for a missing command when root; returns 1 (with a note) if
# the command is still missing.
need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $pkg (apt-get)" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"; } >"$ROOT_OUT/apt-$pkg.log" 2>&1; then
            echo "compare-peers: apt-get install $pkg failed (see $ROOT_OUT/apt-$pkg.log)" >&2
        fi
    fi
    command -v "$cmd" >/dev/null 2>&1 && return 0
    NOTES+=("$pkg is not installed and could not be installed here (run as root, or apt-get install $pkg): skipped")
    return 1
}

# Processes of the system under test; stopped (TERM, then KILL after 10 s) between
# systems and on any exit.
PIDS=()
stop_all() {
    local p _
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# The DistKV cluster comes from cluster-lib.sh (BIN is set, so it builds nothing; its own
# EXIT trap is replaced by stop_all below, which stops the same PIDS).
source scripts/cluster-lib.sh
trap stop_all EXIT

bench() { "$BIN/distkv-bench" "$@"; }

# Waits (30 s at most) until STORE at TARGETS answers distkv-bench's connection check.
wait_ready() {
    local store=$1 targets=$2 _
    for _ in $(seq 1 150); do
        bench --store "$store" --targets "$targets" --workload c --keys 1 --ops 1 --timeout 2s >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "compare-peers: $store at $targets did not answer within 30 s (logs in $ROOT_OUT)" >&2
    return 1
}

start_distkv() {
    OUT=$ROOT_OUT/distkv
    start_cluster 3 710
    STORE_TARGETS=$TARGETS
}

start_etcd() {
    local dir=$ROOT_OUT/etcd i cluster=""
    rm -rf "$dir" && mkdir -p "$dir"
    for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:2380$i"; done
    STORE_TARGETS=""
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$dir/e$i" --logger zap \
            --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-token compare-peers --initial-cluster-state new \
            > "$dir/e$i.log" 2>&1 &
        PIDS+=($!)
        STORE_TARGETS+="${STORE_TARGETS:+,}127.0.0.1:2379$i"
    done
}

start_redis() {
    local dir=$ROOT_OUT/redis
    rm -rf "$dir" && mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port 6390 --dir "$dir" --save "" \
        --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" > "$dir/redis.log" 2>&1 &
    PIDS+=($!)
    STORE_TARGETS=127.0.0.1:6390
}

label() {
    case $1 in
        distkv) echo "DistKV, 3 nodes N=3 R=2 W=2 (fsync per ack)" ;;
        etcd) echo "etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'), 3 members (linearizable reads, fsync per commit)" ;;
        redis) echo "Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), 1 node, no replication (appendfsync $REDIS_APPENDFSYNC)" ;;
    esac
}

# One measured phase; appends "system workers phase ops/s read_p50_us read_p99_us errors".
phase() {
    local system=$1 workers=$2 name=$3; shift 3
    local json=$ROOT_OUT/$system-$workers-$name.json
    echo "== $system, $workers workers: $name ($PHASE)" >&2
    bench --store "$system" --targets "$STORE_TARGETS" --clients "$workers" --connection-per-client \
        --distribution uniform --keys "$KEYS" --value-size "$VALUE_SIZE" --duration "$PHASE" --ops "$MAX_OPS" \
        --output json "$json" "$@" 2>"$ROOT_OUT/$system-$workers-$name.log" | sed 's/^/    /' >&2
    python3 - "$json" "$system" "$workers" "$name" >> "$RESULTS" <<'EOF'
import json, sys
path, system, workers, name = sys.argv[1:5]
r = json.load(open(path))
ops = r["operations"]
ok = sum(v["count"] for v in ops.values()) / r["elapsed_s"]
read = ops.get("read", {}).get("latency_us", {})
print("\t".join(map(str, [system, workers, name, round(ok), read.get("p50", "-"), read.get("p99", "-"), r["errors_total"]])))
EOF
}

command -v python3 >/dev/null 2>&1 || { echo "compare-peers: python3 is needed to read the JSON reports" >&2; exit 2; }
LOADS=()
for system in $SYSTEMS; do
    case $system in
        distkv) ;;
        etcd) need etcd etcd-server || continue ;;
        redis) need redis-server redis-server || continue ;;
        *) echo "compare-peers: unknown system $system (distkv, etcd, redis)" >&2; exit 2 ;;
    esac
    for w in "${WORKERS[@]}"; do
        "start_$system"
        wait_ready "$system" "$STORE_TARGETS" || { stop_all; NOTES+=("$system did not start: skipped"); continue 2; }
        phase "$system" "$w" insert --workload insert
        echo "== $system: preloading $KEYS keys" >&2
        bench --store "$system" --targets "$STORE_TARGETS" --clients 16 --keys "$KEYS" --value-size "$VALUE_SIZE" \
            --preload --workload c --ops 1 --timeout 30s > /dev/null 2>"$ROOT_OUT/$system-$w-preload.log" \
            || { echo "compare-peers: preload of $system failed (see $ROOT_OUT/$system-$w-preload.log)" >&2; exit 3; }
        phase "$system" "$w" a --workload a
        phase "$system" "$w" c --workload c
        LOADS+=("$system $w: $(cut -d' ' -f1-3 /proc/loadavg)")
        stop_all
    done
done

# The table: one row per system and worker count.
python3 - "$RESULTS" "$SYSTEMS" "$(for s in $SYSTEMS; do printf '%s=%s\n' "$s" "$(label "$s")"; done)" <<'EOF'
import sys
path, systems, labels = sys.argv[1], sys.argv[2].split(), dict(l.split("=", 1) for l in sys.argv[3].splitlines() if "=" in l)
rows = {}
for line in open(path):
    s, w, phase, ops, p50, p99, errors = line.rstrip("\n").split("\t")
    rows.setdefault((s, int(w)), {})[phase] = (int(ops), p50, p99, int(errors))
def ms(us):
    return "-" if us == "-" else f"{int(us) / 1000:.2f}"
print("| system | workers | insert ops/s | A ops/s (read p50/p99 ms) | C ops/s (read p50/p99 ms) | errors |")
print("|---|---:|---:|---:|---:|---:|")
for w in sorted({w for _, w in rows}):
    for s in systems:
        r = rows.get((s, w))
        if not r:
            continue
        cell = lambda p: f"{r[p][0]:,}" if p in r else "-"
        lat = lambda p: f" ({ms(r[p][1])} / {ms(r[p][2])})" if p in r else ""
        errors = sum(v[3] for v in r.values())
        print(f"| {labels.get(s, s)} | {w} | {cell('insert')} | {cell('a')}{lat('a')} | {cell('c')}{lat('c')} | {errors} |")
if any(s == "distkv" for s, _ in rows):
    print()
    print("| DistKV / peer | workers | insert | A | C |")
    print("|---|---:|---:|---:|---:|")
    for w in sorted({w for _, w in rows}):
        d = rows.get(("distkv", w))
        for s in systems:
            r = rows.get((s, w))
            if s == "distkv" or not r or not d:
                continue
            ratio = lambda p: f"{d[p][0] / r[p][0]:.2f}x" if p in d and p in r and r[p][0] else "-"
            print(f"| DistKV / {s} | {w} | {ratio('insert')} | {ratio('a')} | {ratio('c')} |")
EOF
echo
for l in "${LOADS[@]}"; do echo "load average after $l"; done
for n in "${NOTES[@]}"; do echo "note: $n"; done
echo "phases of $PHASE (at most $MAX_OPS ops each), $KEYS uniform keys, $VALUE_SIZE B values, one connection per worker; reports in $ROOT_OUT"
