//! The node's public types: consistency levels, read results, batch entries, and
//! [`NodeSettings`], the one place where the defaults of every replication and limit
//! setting are written (the configuration's defaults are read from here).

use std::time::Duration;

use crate::version::{ConflictPolicy, VersionVector};

/// How many replicas must answer, per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The configured R (reads) or W (writes).
    Default,
    /// One replica.
    One,
    /// A majority of N.
    Quorum,
    /// All N replicas.
    All,
}

/// When read repair runs (`replication.read_repair`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadRepair {
    /// After answering the client.
    Background,
    /// Before answering, for the replicas that answered.
    Blocking,
    /// Never.
    Off,
}

/// The settings the node's subsystems work with. [`NodeSettings::default`] holds the
/// built-in defaults of the whole product; `config` reads its defaults from it.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// N.
    pub replicas: usize,
    /// R.
    pub read_quorum: usize,
    /// W.
    pub write_quorum: usize,
    /// Tokens per node on the hash ring.
    pub virtual_nodes: u32,
    /// Deadline of a request inside the cluster.
    pub request_timeout: Duration,
    /// Siblings or last-write-wins.
    pub conflict: ConflictPolicy,
    /// When stale replicas are repaired.
    pub read_repair: ReadRepair,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Most entries in one batch.
    pub max_batch_entries: usize,
    /// Keep a hint for a replica that did not acknowledge a write.
    pub hinted_handoff: bool,
    /// A stored hint counts as an acknowledgement toward W (sloppy quorum).
    pub hints_count_toward_w: bool,
    /// How often hints are offered to their targets.
    pub hint_replay_interval: Duration,
    /// Most hints sent to one target per replay round (the replay throttle).
    pub hint_replay_batch: usize,
    /// Throttle of range streaming when joining, in bytes per second (0: none).
    pub rebalance_max_bytes_per_sec: u64,
    /// Where the node keeps its small state files (a join's or decommission's stream
    /// progress): the data directory. `None` keeps them in memory only (tests).
    pub state_dir: Option<std::path::PathBuf>,
    /// For in-process tests on tokio's paused clock only: tasks wait for the storage
    /// writer thread from tokio's blocking pool, which keeps virtual time from running on
    /// (and timeouts from firing) while the writer works. Off in a server: it costs a
    /// thread hand-off per write.
    pub storage_wait_on_blocking_pool: bool,
    /// Most siblings a client write may grow a key to; a blind write past it is refused
    /// (FAILED_PRECONDITION) until a write with the key's context resolves them. Repairs
    /// and hints are never refused for it.
    pub max_siblings: usize,
    /// Most actors kept in a write's causal context (oldest dropped beyond).
    pub max_vector_entries: usize,
    /// Largest causal context a client may send, encoded.
    pub max_context_bytes: usize,
    /// How far ahead of this node's clock a context's counters may be (the clock skew
    /// tolerated between nodes); a counter further ahead was issued by no node.
    pub max_clock_skew: Duration,
    /// Most writes waiting in one replica's queue; a write that finds the queue full is
    /// not queued (a remote replica's becomes a hint, the local one fails its ack).
    pub replica_queue_depth: usize,
    /// Most read-repair tasks running at once; a repair beyond it is skipped (the next
    /// read of the key finds the replica stale again).
    pub max_background_repairs: usize,
    /// How often every member is pinged to feed the failure detector.
    pub probe_interval: Duration,
    /// Most connections open at once on the listener; one beyond is closed at once.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (live ones answer the
    /// server's HTTP/2 pings, sent at a third of it).
    pub idle_timeout: Duration,
    /// Most HTTP/2 streams (requests) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Most client requests in flight; one beyond is answered RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Anti-entropy (`[antientropy]`).
    pub antientropy: crate::antientropy::AntiEntropySettings,
    /// Tombstone GC (`[gc]`).
    pub gc: crate::antientropy::GcSettings,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            replicas: 1,
            read_quorum: 1,
            write_quorum: 1,
            virtual_nodes: 150,
            request_timeout: Duration::from_secs(5),
            conflict: ConflictPolicy::Siblings,
            read_repair: ReadRepair::Background,
            max_key_bytes: 64 * 1024,
            max_value_bytes: 16 * 1024 * 1024,
            max_batch_entries: 10_000,
            hinted_handoff: true,
            hints_count_toward_w: false,
            hint_replay_interval: Duration::from_secs(1),
            hint_replay_batch: 512,
            rebalance_max_bytes_per_sec: 32 * 1024 * 1024,
            state_dir: None,
            storage_wait_on_blocking_pool: false,
            max_siblings: 64,
            max_vector_entries: 64,
            max_context_bytes: 64 * 1024,
            max_clock_skew: Duration::from_secs(3600),
            replica_queue_depth: 4096,
            max_background_repairs: 1024,
            probe_interval: Duration::from_secs(1),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 1024,
            max_concurrent_requests: 8192,
            antientropy: crate::antientropy::AntiEntropySettings::default(),
            gc: crate::antientropy::GcSettings::default(),
        }
    }
}

impl NodeSettings {
    /// The defaults with `replicas`/`read_quorum`/`write_quorum` set.
    pub fn new(replicas: usize, read_quorum: usize, write_quorum: usize) -> Self {
        NodeSettings {
            replicas,
            read_quorum,
            write_quorum,
            ..NodeSettings::default()
        }
    }
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// Live sibling values (empty when absent or deleted).
    pub values: Vec<Vec<u8>>,
    /// Causal context to hand back on the next write of the key.
    pub context: VersionVector,
}

/// One entry of a batch write.
#[derive(Clone, Debug)]
pub struct BatchEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value (`None` deletes).
    pub value: Option<Vec<u8>>,
    /// Causal context bytes from an earlier read (may be empty).
    pub context: Vec<u8>,
}
