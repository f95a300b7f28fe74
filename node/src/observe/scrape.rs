//! What `/metrics` reads at scrape time: the event counters, and the state of the node
//! (engine, hints, peers, process), copied into the recorder just before it renders.

use std::sync::Arc;
use std::time::Duration;

use distkv_engine::{EngineStats, StatValue, StorageEngine};
use distkv_network::{Liveness, LivenessView, Member, Membership, Transport};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use super::names::*;
use super::{
    counters, CONSISTENCIES, COORDINATOR_OPS, OPS, OUTCOMES, QUORUM_CAUSES, REPAIR_OUTCOMES,
};
use crate::coordinator::Node;
use crate::placement::Partitioner;

/// What the admin port asks of a running node, whatever its implementations.
pub trait NodeProbe: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> String;
    /// N, R and W in force.
    fn quorums(&self) -> (usize, usize, usize);
    /// Time since the node started.
    fn uptime(&self) -> Duration;
    /// The storage engine's figures (and the pending hints in total).
    fn storage_stats(&self) -> EngineStats;
    /// Hints held per target node id.
    fn pending_hints(&self) -> Vec<(String, u64)>;
    /// The layout's members (this node included) with their liveness.
    fn members(&self) -> Vec<(Member, LivenessView)>;
}

/// A [`NodeProbe`] over a running coordinator.
pub struct NodeView<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport>(
    pub Arc<Node<S, M, P, T>>,
);

impl<S, M, P, T> NodeProbe for NodeView<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    fn node_id(&self) -> String {
        self.0.local().id.clone()
    }
    fn quorums(&self) -> (usize, usize, usize) {
        let s = self.0.settings();
        (s.replicas, s.read_quorum, s.write_quorum)
    }
    fn uptime(&self) -> Duration {
        self.0.uptime()
    }
    fn storage_stats(&self) -> EngineStats {
        self.0.storage_stats()
    }
    fn pending_hints(&self) -> Vec<(String, u64)> {
        self.0.pending_hints()
    }
    fn members(&self) -> Vec<(Member, LivenessView)> {
        self.0.members()
    }
}

fn number(v: &StatValue) -> Option<f64> {
    match v {
        StatValue::U64(n) => Some(*n as f64),
        StatValue::F64(x) => Some(*x),
        StatValue::Text(_) => None,
    }
}

/// The Prometheus text of every metric: the counters and the node's state as of now.
/// `node` is absent while the node starts (then only process figures are fresh).
pub fn render(handle: &PrometheusHandle, node: Option<&dyn NodeProbe>, ready: bool) -> String {
    export_counters();
    super::peers::export();
    export_process();
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    if let Some(node) = node {
        export_node(node);
    }
    handle.render()
}

fn export_counters() {
    let c = counters();
    for (op, op_name) in OPS.iter().enumerate() {
        for (ci, cons) in CONSISTENCIES.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                counter!(CLIENT_REQUESTS, "op" => *op_name, "consistency" => *cons, "outcome" => *outcome)
                    .absolute(c.request_count(op, ci, o));
            }
        }
    }
    let totals = c.totals();
    counter!(CLIENT_REQUESTS_SHED).absolute(totals.shed);
    for (op, op_name) in COORDINATOR_OPS.iter().enumerate() {
        for (cause, cause_name) in QUORUM_CAUSES.iter().enumerate() {
            counter!(QUORUM_FAILURES, "op" => *op_name, "cause" => *cause_name)
                .absolute(c.quorum_failure_count(op, cause));
        }
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    for (i, outcome) in REPAIR_OUTCOMES.iter().enumerate() {
        counter!(READ_REPAIRS, "outcome" => *outcome).absolute(load(&c.read_repairs[i]));
    }
    counter!(READ_REPAIR_REPLICAS).absolute(load(&c.read_repair_replicas));
    counter!(HINTS_STORED).absolute(load(&c.hints_stored));
    counter!(HINTS_DELIVERED).absolute(load(&c.hints_delivered));
    counter!(HINTS_DROPPED).absolute(load(&c.hints_dropped));
}

fn export_process() {
    if let Some(rss) = super::resident_memory_bytes() {
        gauge!(PROCESS_RSS).set(rss as f64);
    }
    if let Some(fds) = super::open_fds() {
        gauge!(PROCESS_OPEN_FDS).set(fds as f64);
    }
    if let Some(cpu) = super::process::cpu_seconds() {
        // A gauge: the recorder's counters are integers, and this is fractional seconds.
        gauge!(PROCESS_CPU).set(cpu);
    }
}

fn export_node(node: &dyn NodeProbe) {
    let (n, r, w) = node.quorums();
    for (setting, v) in [("replicas", n), ("read_quorum", r), ("write_quorum", w)] {
        gauge!(REPLICATION, "setting" => setting).set(v as f64);
    }
    gauge!(UPTIME).set(node.uptime().as_secs_f64());
    let stats = node.storage_stats();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "node_id" => node.node_id(), "engine" => stats.engine.clone())
        .set(1.0);
    export_engine(&stats);
    let members = node.members();
    gauge!(MEMBERS).set(members.len() as f64);
    let pending = node.pending_hints();
    let local = node.node_id();
    for (m, view) in &members {
        let held = pending
            .iter()
            .find(|(id, _)| *id == m.id)
            .map_or(0, |(_, n)| *n);
        gauge!(HINTS_PENDING, "peer" => m.id.clone()).set(held as f64);
        if m.id == local {
            continue;
        }
        for state in [Liveness::Alive, Liveness::Suspect, Liveness::Dead] {
            let on = view.liveness == state;
            gauge!(PEER_LIVENESS, "peer" => m.id.clone(), "state" => state.to_string())
                .set(if on { 1.0 } else { 0.0 });
        }
        gauge!(PEER_PHI, "peer" => m.id.clone()).set(view.phi);
        if let Some(heard) = view.last_heard {
            gauge!(PEER_LAST_HEARD, "peer" => m.id.clone()).set(heard.as_secs_f64());
        }
    }
}

/// Engine figures under their metric names. Engines other than the LSM tree report
/// fewer figures; what they lack is left out.
fn export_engine(stats: &EngineStats) {
    let get = |name: &str| stats.get(name).and_then(number);
    let counters = [
        (ENGINE_READS, "reads"),
        (ENGINE_WRITES, "writes"),
        (ENGINE_COMPACTIONS, "compactions"),
        (ENGINE_WRITE_STALLS, "write_stalls"),
        (ENGINE_WRITE_SLOWDOWNS, "write_slowdowns"),
    ];
    for (metric, stat) in counters {
        if let Some(v) = get(stat) {
            counter!(metric).absolute(v as u64);
        }
    }
    for (kind, stat) in [
        ("user", "bytes.user_written"),
        ("wal", "bytes.wal_written"),
        ("flushed", "bytes.flushed"),
        ("compacted", "bytes.compacted"),
    ] {
        if let Some(v) = get(stat) {
            counter!(ENGINE_WRITTEN_BYTES, "kind" => kind).absolute(v as u64);
        }
    }
    let gauges = [
        (ENGINE_SSTABLE_BYTES, "bytes.sstables"),
        (ENGINE_CACHE_HIT_RATIO, "block_cache.hit_rate"),
        (ENGINE_CACHE_BYTES, "block_cache.bytes"),
        (ENGINE_MEMTABLE_BYTES, "memtable.bytes"),
        (ENGINE_WRITE_AMPLIFICATION, "write_amplification"),
        (ENGINE_READ_AMPLIFICATION, "read_amplification"),
        (ENGINE_SPACE_AMPLIFICATION, "space_amplification"),
    ];
    for (metric, stat) in gauges {
        if let Some(v) = get(stat) {
            gauge!(metric).set(v);
        }
    }
    for (name, value) in &stats.values {
        let Some(rest) = name.strip_prefix("level.") else {
            continue;
        };
        let Some((level, what)) = rest.split_once('.') else {
            continue;
        };
        let (Some(v), metric) = (
            number(value),
            match what {
                "files" => ENGINE_LEVEL_FILES,
                "bytes" => ENGINE_LEVEL_BYTES,
                _ => continue,
            },
        ) else {
            continue;
        };
        gauge!(metric, "level" => level.to_string()).set(v);
    }
}
