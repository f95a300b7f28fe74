//! The name and meaning of every metric a node exports (docs/operations.md lists them
//! with what to alert on). Names follow Prometheus conventions: `distkv_` prefix, the
//! unit in the name, `_total` on counters.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Client requests by `op`, `consistency` and `outcome`.
pub const CLIENT_REQUESTS: &str = "distkv_client_requests_total";
/// Client request latency by `op` and `consistency`, seconds.
pub const CLIENT_REQUEST_DURATION: &str = "distkv_client_request_duration_seconds";
/// Client requests refused by `limits.max_concurrent_requests`.
pub const CLIENT_REQUESTS_SHED: &str = "distkv_client_requests_shed_total";
/// Coordinator requests that missed their quorum, by `op` and `cause`.
pub const QUORUM_FAILURES: &str = "distkv_quorum_failures_total";
/// Replicas a coordinator request was sent to, by `op`.
pub const COORDINATOR_FANOUT: &str = "distkv_coordinator_fanout_replicas";
/// Read repairs by `outcome`.
pub const READ_REPAIRS: &str = "distkv_read_repairs_total";
/// Stale replicas sent a repair.
pub const READ_REPAIR_REPLICAS: &str = "distkv_read_repair_replicas_total";
/// Writes kept as hints.
pub const HINTS_STORED: &str = "distkv_hints_stored_total";
/// Hints delivered to their target.
pub const HINTS_DELIVERED: &str = "distkv_hints_delivered_total";
/// Writes that could not be kept as hints.
pub const HINTS_DROPPED: &str = "distkv_hints_dropped_total";
/// Hints held for each `peer`.
pub const HINTS_PENDING: &str = "distkv_hints_pending";
/// Calls to peers by `peer`, `call` and `outcome`.
pub const PEER_CALLS: &str = "distkv_peer_calls_total";
/// Latency of calls to peers by `peer` and `call`, seconds.
pub const PEER_CALL_DURATION: &str = "distkv_peer_call_duration_seconds";
/// 1 for the `state` (alive, suspect, dead) each `peer` is in, 0 for the others.
pub const PEER_LIVENESS: &str = "distkv_peer_liveness";
/// Phi accrual suspicion of each `peer`.
pub const PEER_PHI: &str = "distkv_peer_phi";
/// Seconds since each `peer` was last heard from.
pub const PEER_LAST_HEARD: &str = "distkv_peer_last_heard_seconds";
/// Members of the layout.
pub const MEMBERS: &str = "distkv_cluster_members";
/// 1 while the node answers `/health/ready` with 200.
pub const READY: &str = "distkv_node_ready";
/// Seconds since the node started.
pub const UPTIME: &str = "distkv_node_uptime_seconds";
/// Always 1; labels `version`, `node_id`, `engine`.
pub const BUILD_INFO: &str = "distkv_build_info";
/// N, R, W: labels `setting` = replicas, read_quorum, write_quorum.
pub const REPLICATION: &str = "distkv_replication_setting";

/// Engine reads (gets).
pub const ENGINE_READS: &str = "distkv_engine_reads_total";
/// Engine write batches.
pub const ENGINE_WRITES: &str = "distkv_engine_writes_total";
/// Bytes written by `kind`: user, wal, flushed, compacted.
pub const ENGINE_WRITTEN_BYTES: &str = "distkv_engine_written_bytes_total";
/// Bytes of SSTables on disk, all levels.
pub const ENGINE_SSTABLE_BYTES: &str = "distkv_engine_sstable_bytes";
/// SSTables per `level`.
pub const ENGINE_LEVEL_FILES: &str = "distkv_engine_level_files";
/// Bytes of SSTables per `level`.
pub const ENGINE_LEVEL_BYTES: &str = "distkv_engine_level_bytes";
/// Compactions run.
pub const ENGINE_COMPACTIONS: &str = "distkv_engine_compactions_total";
/// Times writers waited because flushes or L0 fell behind.
pub const ENGINE_WRITE_STALLS: &str = "distkv_engine_write_stalls_total";
/// Times writers were slowed down.
pub const ENGINE_WRITE_SLOWDOWNS: &str = "distkv_engine_write_slowdowns_total";
/// Block cache hit ratio, 0 to 1.
pub const ENGINE_CACHE_HIT_RATIO: &str = "distkv_engine_block_cache_hit_ratio";
/// Bytes in the block cache.
pub const ENGINE_CACHE_BYTES: &str = "distkv_engine_block_cache_bytes";
/// Bytes in memtables (active and immutable).
pub const ENGINE_MEMTABLE_BYTES: &str = "distkv_engine_memtable_bytes";
/// Write amplification: (flushed + compacted) / flushed bytes.
pub const ENGINE_WRITE_AMPLIFICATION: &str = "distkv_engine_write_amplification_ratio";
/// Read amplification: SSTable probes per read.
pub const ENGINE_READ_AMPLIFICATION: &str = "distkv_engine_read_amplification_ratio";
/// Space amplification: bytes on disk / bytes of the last level.
pub const ENGINE_SPACE_AMPLIFICATION: &str = "distkv_engine_space_amplification_ratio";

/// Resident memory of the process.
pub const PROCESS_RSS: &str = "distkv_process_resident_memory_bytes";
/// Open file descriptors of the process.
pub const PROCESS_OPEN_FDS: &str = "distkv_process_open_fds";
/// CPU time of the process (user + system), a gauge that only grows (use `rate()`).
pub const PROCESS_CPU: &str = "distkv_process_cpu_seconds";

/// Gives every metric its HELP text and unit.
pub(super) fn describe_all() {
    use Unit::{Bytes, Count, Seconds};
    describe_counter!(CLIENT_REQUESTS, Count, "Client requests by operation, consistency and outcome (ok, invalid_argument, quorum_not_reached, not_enough_replicas, storage_error, unavailable).");
    describe_histogram!(
        CLIENT_REQUEST_DURATION,
        Seconds,
        "Latency of client requests, from arrival at the service to the answer."
    );
    describe_counter!(CLIENT_REQUESTS_SHED, Count, "Client requests answered RESOURCE_EXHAUSTED because limits.max_concurrent_requests were in flight.");
    describe_counter!(QUORUM_FAILURES, Count, "Coordinator reads and writes that missed their quorum; cause timeout: replicas were silent until the deadline; replica_errors: too many replicas failed.");
    describe_histogram!(
        COORDINATOR_FANOUT,
        Count,
        "Replicas each coordinator read or write was sent to."
    );
    describe_counter!(READ_REPAIRS, Count, "Read repairs: repaired (every stale replica applied it), failed, skipped (too many running).");
    describe_counter!(
        READ_REPAIR_REPLICAS,
        Count,
        "Stale replicas sent a read repair."
    );
    describe_counter!(
        HINTS_STORED,
        Count,
        "Writes kept as durable hints for a replica that did not acknowledge."
    );
    describe_counter!(
        HINTS_DELIVERED,
        Count,
        "Hints delivered to their target and removed."
    );
    describe_counter!(HINTS_DROPPED, Count, "Writes that should have become hints but could not be stored (the replica misses them until read repair).");
    describe_gauge!(
        HINTS_PENDING,
        Count,
        "Hints held on this node, per target peer."
    );
    describe_counter!(PEER_CALLS, Count, "Calls to peers by peer, call (replicate, read, ping, range_pull) and outcome (ok, unreachable, timeout, refused, too_large, failed).");
    describe_histogram!(PEER_CALL_DURATION, Seconds, "Latency of calls to peers.");
    describe_gauge!(PEER_LIVENESS, Count, "1 for the failure detector's state of each peer (alive, suspect, dead), 0 for the other states.");
    describe_gauge!(
        PEER_PHI,
        Count,
        "Phi accrual suspicion level of each peer (0 = just heard; dead at 8)."
    );
    describe_gauge!(
        PEER_LAST_HEARD,
        Seconds,
        "Seconds since each peer was last heard from (absent if never)."
    );
    describe_gauge!(MEMBERS, Count, "Members of the cluster layout.");
    describe_gauge!(READY, Count, "1 while /health/ready answers 200.");
    describe_gauge!(UPTIME, Seconds, "Seconds since the node started.");
    describe_gauge!(
        BUILD_INFO,
        Count,
        "Always 1; the labels name the version, node id and storage engine."
    );
    describe_gauge!(
        REPLICATION,
        Count,
        "Replication settings in force: replicas (N), read_quorum (R), write_quorum (W)."
    );
    describe_counter!(ENGINE_READS, Count, "Reads served by the storage engine.");
    describe_counter!(
        ENGINE_WRITES,
        Count,
        "Write batches applied by the storage engine."
    );
    describe_counter!(
        ENGINE_WRITTEN_BYTES,
        Bytes,
        "Bytes written by the storage engine, by kind: user, wal, flushed, compacted."
    );
    describe_gauge!(ENGINE_SSTABLE_BYTES, Bytes, "Bytes of SSTables on disk.");
    describe_gauge!(ENGINE_LEVEL_FILES, Count, "SSTables per LSM level.");
    describe_gauge!(
        ENGINE_LEVEL_BYTES,
        Bytes,
        "Bytes of SSTables per LSM level."
    );
    describe_counter!(
        ENGINE_COMPACTIONS,
        Count,
        "Compactions run by the storage engine."
    );
    describe_counter!(ENGINE_WRITE_STALLS, Count, "Times writers stopped because flushes or L0 fell behind (l0_stop_files, max_immutable_memtables).");
    describe_counter!(
        ENGINE_WRITE_SLOWDOWNS,
        Count,
        "Times writers were slowed down (l0_slowdown_files)."
    );
    describe_gauge!(
        ENGINE_CACHE_HIT_RATIO,
        Count,
        "Block cache hit ratio since start, 0 to 1."
    );
    describe_gauge!(ENGINE_CACHE_BYTES, Bytes, "Bytes held by the block cache.");
    describe_gauge!(
        ENGINE_MEMTABLE_BYTES,
        Bytes,
        "Bytes in the active and immutable memtables."
    );
    describe_gauge!(
        ENGINE_WRITE_AMPLIFICATION,
        Count,
        "Write amplification: (flushed + compacted bytes) / flushed bytes."
    );
    describe_gauge!(
        ENGINE_READ_AMPLIFICATION,
        Count,
        "Read amplification: SSTables probed per read."
    );
    describe_gauge!(
        ENGINE_SPACE_AMPLIFICATION,
        Count,
        "Space amplification: bytes on disk / bytes of the deepest level."
    );
    describe_gauge!(
        PROCESS_RSS,
        Bytes,
        "Resident memory of the distkv-server process."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        Count,
        "Open file descriptors of the distkv-server process."
    );
    describe_gauge!(PROCESS_CPU, Seconds, "CPU time of the distkv-server process since it started, user plus system (only grows: use rate()).");
}
