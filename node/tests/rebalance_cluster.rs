//! Joins, decommissions and removals in one process: gossip membership over the
//! in-memory transport, a concurrent write load, injected faults (dropped calls), and a
//! node restarted in the middle of its stream. Every acknowledged write must stay
//! readable at QUORUM throughout, and the restarted joiner must resume where its stream
//! stood.
//!
//! No wall clock: each test runs on one thread with tokio's clock paused, so gossip
//! rounds, failure detection, timeouts, throttles and the tests' own waits follow
//! virtual time (it moves on only when every task waits on a timer), and gossip peers
//! are chosen by seeded generators. A dropped call costs its timeout in virtual time,
//! not in real time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use distkv_backends::MemoryEngine;
use distkv_network::{
    plan_removal, DetectorSettings, GossipMembership, GossipOptions, GossipSettings,
    InMemoryNetwork, InMemoryTransport, Layout, Liveness, Member, MemberState, Membership,
    NodeInfo, ReplicationFingerprint,
};
use distkv_node::assembly::{assemble, Assembled};
use distkv_node::operator::Operations;
use distkv_node::placement::HashRing;
use distkv_node::rebalance::StreamProgress;
use distkv_node::supervisor::Supervisor;
use distkv_node::{Consistency, NodeSettings, ReadRepair};
use parking_lot::Mutex;

type Parts = Assembled<MemoryEngine, GossipMembership, HashRing, InMemoryTransport>;

const VNODES: u32 = 16;

struct Running {
    parts: Parts,
    supervisor: Supervisor,
}

struct Cluster {
    net: Arc<InMemoryNetwork>,
    nodes: Mutex<BTreeMap<String, Arc<Running>>>,
    generation: AtomicU64,
}

fn settings(state_dir: Option<PathBuf>, max_bytes_per_sec: u64) -> NodeSettings {
    let mut s = NodeSettings::new(3, 2, 2);
    s.virtual_nodes = VNODES;
    s.request_timeout = Duration::from_secs(2);
    s.probe_interval = Duration::from_millis(50);
    // No hints, no read repair, no background anti-entropy: what the joiner holds, it
    // streamed; what a removal re-replicates, the explicit passes did.
    s.hinted_handoff = false;
    s.read_repair = ReadRepair::Off;
    s.antientropy.enabled = false;
    s.rebalance_max_bytes_per_sec = max_bytes_per_sec;
    s.state_dir = state_dir;
    // The tests run on tokio's paused clock: waits for the storage writer thread must
    // hold virtual time still.
    s.storage_wait_on_blocking_pool = true;
    s
}

fn first_layout(ids: &[&str]) -> Layout {
    let members = ids
        .iter()
        .map(|id| Member {
            id: id.to_string(),
            address: id.to_string(),
            state: MemberState::Normal,
        })
        .collect();
    Layout::new(1, VNODES, members).expect("layout")
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            net: InMemoryNetwork::new(),
            nodes: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(1),
        }
    }

    /// Starts node `id` holding `layout`, gossiping with `seeds`, over `engine` (kept
    /// across a restart: it stands for the node's disk).
    fn start(
        &self,
        id: &str,
        layout: Layout,
        seeds: &[&str],
        engine: Arc<MemoryEngine>,
        settings: NodeSettings,
    ) -> Arc<Running> {
        let local = NodeInfo {
            id: id.into(),
            address: id.into(),
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let options = GossipOptions {
            cluster_name: "test".into(),
            generation,
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            replication: ReplicationFingerprint {
                replicas: 3,
                partitioner: "hash-ring-xxh3".into(),
                virtual_nodes: VNODES,
                ring: 1,
            },
            build: "test".into(),
            settings: GossipSettings {
                detector: DetectorSettings {
                    min_std_dev: Duration::from_millis(25),
                    first_interval: Duration::from_millis(50),
                    ..DetectorSettings::default()
                },
                ..GossipSettings::default()
            },
            never_heard_grace: Duration::from_secs(10),
            rng_seed: generation,
        };
        let membership = Arc::new(GossipMembership::new(
            local.clone(),
            layout,
            options,
            distkv_network::now(),
        ));
        let parts: Parts = assemble(
            engine,
            membership,
            Arc::new(self.net.transport(id)),
            None,
            settings,
        );
        self.net.register(id, parts.peer.clone());
        self.net.set_down(id, false);
        let supervisor = Supervisor::new();
        parts.start_background(&supervisor);
        let running = Arc::new(Running { parts, supervisor });
        self.nodes.lock().insert(id.to_string(), running.clone());
        running
    }

    fn node(&self, id: &str) -> Arc<Running> {
        self.nodes.lock()[id].clone()
    }

    /// Stops node `id` at once, as a crash would (its tasks end at their next await).
    async fn kill(&self, id: &str) -> Arc<Running> {
        self.net.set_down(id, true);
        let gone = self.nodes.lock().remove(id).expect("running");
        gone.supervisor.shutdown(Duration::from_millis(100)).await;
        gone
    }

    /// Waits (bounded) until every running node's layout has `id` in `state`.
    async fn wait_for_state(&self, id: &str, state: MemberState, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let nodes: Vec<Arc<Running>> = self.nodes.lock().values().cloned().collect();
            let all = nodes.iter().all(|n| {
                n.parts
                    .membership
                    .layout()
                    .member(id)
                    .is_some_and(|m| m.state == state)
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is not {state} on every node within {within:?}: {:?}",
                nodes
                    .iter()
                    .map(|n| (
                        n.parts.membership.local().id.clone(),
                        n.parts.membership.layout().version(),
                        n.parts.membership.layout().member(id).map(|m| m.state)
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// Writes keys `from..` through `via` at QUORUM until `stop` (or `max` writes), recording
/// the acknowledged ones; returns them.
fn write_load(
    cluster: &Arc<Cluster>,
    via: &'static str,
    from: u64,
    max: u64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in from..from + max {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let node = cluster.node(via).parts.node.clone();
            let value = format!("v{i}").into_bytes();
            if node
                .put(key(i), Some(value), b"", Consistency::Quorum)
                .await
                .is_ok()
            {
                acked.push(i);
                count.fetch_add(1, Ordering::SeqCst);
            }
            // A client's pace: virtual time moves on only while every task waits on a
            // timer, so a load that never waited would stop the cluster's clock.
            if i.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        acked
    })
}

/// Reads keys acknowledged earlier (0..`upto`) at QUORUM through `via` until `stop`;
/// returns (reads answered, "not found" answers with the keys).
fn read_load(
    cluster: &Arc<Cluster>,
    via: &'static str,
    upto: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<u64>)> {
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let (mut answered, mut missing) = (0, Vec::new());
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) && answered < 200_000 {
            let k = (i * 7919) % upto;
            i += 1;
            let node = cluster.node(via).parts.node.clone();
            if let Ok(r) = node.get(key(k), Consistency::Quorum).await {
                answered += 1;
                if r.values.is_empty() {
                    missing.push(k);
                }
            }
            // A client's pace: virtual time moves on only while every task waits on a
            // timer, so a load that never waited would stop the cluster's clock.
            if i.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (answered, missing)
    })
}

/// Writes through n0 and QUORUM reads of the first `preload` keys through n2, running
/// until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    writes: tokio::task::JoinHandle<Vec<u64>>,
    reads: tokio::task::JoinHandle<(u64, Vec<u64>)>,
}

impl Load {
    fn start(cluster: &Arc<Cluster>, preload: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        Load {
            writes: write_load(cluster, "n0", preload, 20_000, stop.clone(), count.clone()),
            reads: read_load(cluster, "n2", preload, stop.clone()),
            stop,
            count,
        }
    }

    /// Waits (bounded) until `n` more writes are acknowledged.
    async fn more_writes(&self, n: u64) {
        let target = self.count.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the write load stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops both; checks that each did enough and that no QUORUM read of an earlier key
    /// said "not found" during `what`; returns the acknowledged keys and reads answered.
    async fn finish(self, what: &str) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let acked = self.writes.await.expect("writer");
        let (answered, not_found) = self.reads.await.expect("reader");
        assert!(
            acked.len() > 100,
            "the load wrote too little: {}",
            acked.len()
        );
        assert!(answered > 100, "the reader answered too little: {answered}");
        assert!(
            not_found.is_empty(),
            "{} QUORUM reads of earlier keys said not found during the {what}: {:?}",
            not_found.len(),
            &not_found[..not_found.len().min(10)]
        );
        (acked, answered)
    }
}

/// Every key of `keys` reads back its value at QUORUM through `via`.
async fn assert_all_readable(cluster: &Cluster, via: &str, keys: &[u64]) {
    let node = cluster.node(via).parts.node.clone();
    let mut missing = Vec::new();
    for &i in keys {
        let r = node
            .get(key(i), Consistency::Quorum)
            .await
            .unwrap_or_else(|e| panic!("read of key {i} through {via}: {e}"));
        if !r.values.contains(&format!("v{i}").into_bytes()) {
            missing.push(i);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys are not read back through {via}: first {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(10)]
    );
}

/// How many of `keys` node `id` holds in its own store.
fn held_locally(cluster: &Cluster, id: &str, keys: &[u64]) -> usize {
    let node = cluster.node(id).parts.node.clone();
    keys.iter()
        .filter(|&&i| node.local_record(&key(i)).ok().flatten().is_some())
        .count()
}

/// Normal members `ids` (n0 first) and their first `preload` keys written at ALL.
async fn members(ids: &[&str], preload: u64) -> Arc<Cluster> {
    members_throttled(ids, preload, 0).await
}

/// As [`members`], with streams throttled to `max_bytes_per_sec` (0: unthrottled).
async fn members_throttled(ids: &[&str], preload: u64, max_bytes_per_sec: u64) -> Arc<Cluster> {
    members_with(ids, preload, settings(None, max_bytes_per_sec)).await
}

/// As [`members`], every node with `settings`.
async fn members_with(ids: &[&str], preload: u64, settings: NodeSettings) -> Arc<Cluster> {
    let cluster = Arc::new(Cluster::new());
    let layout = first_layout(ids);
    for id in ids {
        cluster.start(
            id,
            layout.clone(),
            &["n0"],
            Arc::new(MemoryEngine::ephemeral()),
            settings.clone(),
        );
    }
    let node = cluster.node("n0").parts.node.clone();
    for i in 0..preload {
        node.put(
            key(i),
            Some(format!("v{i}").into_bytes()),
            b"",
            Consistency::All,
        )
        .await
        .expect("preload write");
    }
    cluster
}

/// Three normal members n0..n2 (and their first `preload` keys written at ALL).
async fn three_nodes(preload: u64) -> Arc<Cluster> {
    members(&["n0", "n1", "n2"], preload).await
}

#[tokio::test(start_paused = true)]
async fn a_node_joins_under_writes_and_dropped_calls_and_no_acknowledged_key_goes_missing() {
    const PRELOAD: u64 = 1_500;
    let cluster = three_nodes(PRELOAD).await;
    // One call in 40 to n1 is lost: writes that miss W fail (not acknowledged), the
    // joiner's pulls from n1 retry their page.
    cluster.net.set_drop_every("n1", 40);
    let load = Load::start(&cluster, PRELOAD);

    let layout = (*cluster.node("n0").parts.membership.layout()).clone();
    cluster.start(
        "n3",
        layout,
        &["n1"],
        Arc::new(MemoryEngine::ephemeral()),
        settings(None, 0),
    );
    cluster
        .wait_for_state("n3", MemberState::Normal, Duration::from_secs(60))
        .await;
    // Some writes after the join ended too.
    load.more_writes(50).await;
    let (acked, answered) = load.finish("join").await;
    cluster.net.set_drop_every("n1", 0);

    let progress = cluster
        .node("n3")
        .parts
        .rebalance
        .progress()
        .expect("the joiner reports its stream");
    assert_eq!(progress.kind, "join");
    assert_eq!(progress.ranges_done, progress.ranges_total);
    assert!(progress.records > 0 && progress.bytes > 0, "{progress:?}");
    // The totals were estimated before the stream from the sources' anti-entropy trees;
    // the stream moved about that (more: writes went on meanwhile; less: a page lost).
    let expected = progress
        .records_expected
        .expect("records estimated by the sources");
    assert!(
        progress.records >= expected / 2 && progress.records <= expected * 2,
        "moved {} records, {expected} estimated",
        progress.records
    );
    assert!(progress.bytes_expected.is_some(), "{progress:?}");

    let all: Vec<u64> = (0..PRELOAD).chain(acked.iter().copied()).collect();
    for via in ["n3", "n1"] {
        assert_all_readable(&cluster, via, &all).await;
    }
    // n3 replicates about 3/4 of the keys (N=3 of 4 nodes); it holds them itself.
    let held = held_locally(&cluster, "n3", &(0..PRELOAD).collect::<Vec<_>>());
    assert!(
        held as u64 > PRELOAD / 2,
        "the joined node holds only {held} of {PRELOAD} earlier keys"
    );
    println!(
        "join: {} writes acknowledged during it, {answered} QUORUM reads, n3 holds {held}/{PRELOAD} \
         earlier keys, streamed {} records / {} bytes over {} ranges",
        acked.len(),
        progress.records,
        progress.bytes,
        progress.ranges_total
    );

    // Cleanup: the old owners drop what moved to n3 (asked of n0, which forwards it to
    // the others); afterwards no node holds a key it does not replicate, and every key
    // still reads back.
    let nodes = ["n0", "n1", "n2", "n3"];
    let misplaced = |cluster: &Cluster| -> usize {
        let snapshot = cluster.node("n0").parts.placement.current();
        all.iter()
            .map(|&i| {
                let replicas: Vec<String> = snapshot
                    .read_replicas(&key(i), 3)
                    .into_iter()
                    .map(|n| n.id)
                    .collect();
                nodes
                    .iter()
                    .filter(|id| !replicas.iter().any(|r| r == *id))
                    .filter(|id| held_locally(cluster, id, &[i]) == 1)
                    .count()
            })
            .sum()
    };
    let before = misplaced(&cluster);
    assert!(before > 0, "the old owners hold no copy they gave up");
    let operator = cluster.node("n0").parts.operator.clone();
    let mut dropped = 0;
    for id in nodes {
        let r = operator
            .cleanup(id.to_string())
            .await
            .unwrap_or_else(|e| panic!("cleanup of {id}: {e:?}"));
        dropped += r.records;
    }
    assert_eq!(misplaced(&cluster), 0, "copies left outside their replicas");
    assert_eq!(
        dropped as usize, before,
        "each misplaced copy is dropped once"
    );
    for via in ["n3", "n1"] {
        assert_all_readable(&cluster, via, &all).await;
    }
    println!("cleanup: {dropped} copies the old owners gave up were dropped");
}

#[tokio::test(start_paused = true)]
async fn a_joiner_restarted_mid_stream_resumes_where_it_stood() {
    const PRELOAD: u64 = 2_000;
    let cluster = three_nodes(PRELOAD).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Arc::new(MemoryEngine::ephemeral());
    // Throttled so the restart lands mid-stream: about 5 s of pulls (saved every second).
    let slow = settings(Some(dir.path().to_path_buf()), 48 * 1024);
    let layout = (*cluster.node("n0").parts.membership.layout()).clone();
    let first = cluster.start("n3", layout, &["n0"], engine.clone(), slow.clone());
    // Killed once its saved progress shows 3 ranges done and more to go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let saved = loop {
        if let Some(p) = StreamProgress::load(dir.path()) {
            if p.summary().ranges_done >= 3 {
                break p.summary();
            }
        }
        assert!(Instant::now() < deadline, "the stream saved no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    cluster.kill("n3").await;
    assert!(saved.ranges_done < saved.ranges_total, "{saved:?}");
    assert!(first.parts.rebalance.progress().is_some());
    drop(first);

    // Restart with the same disk (engine and data directory) and the layout that names
    // it joining, as its saved layout.json would give.
    let layout = (*cluster.node("n0").parts.membership.layout()).clone();
    assert_eq!(
        layout.member("n3").map(|m| m.state),
        Some(MemberState::Joining)
    );
    let second = cluster.start("n3", layout, &["n0"], engine, slow);
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        if let Some(p) = second.parts.rebalance.progress() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted joiner did not stream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(resumed.resumed, "{resumed:?}");
    assert!(
        resumed.ranges_done >= saved.ranges_done,
        "resumed at {resumed:?}, saved {saved:?}"
    );
    cluster
        .wait_for_state("n3", MemberState::Normal, Duration::from_secs(60))
        .await;
    let done = second.parts.rebalance.progress().expect("progress");
    assert_eq!(done.ranges_done, done.ranges_total);
    assert!(
        StreamProgress::load(dir.path()).is_none(),
        "the progress file is removed once the join is done"
    );
    let all: Vec<u64> = (0..PRELOAD).collect();
    assert_all_readable(&cluster, "n3", &all).await;
    let held = held_locally(&cluster, "n3", &all);
    assert!(held as u64 > PRELOAD / 2, "n3 holds only {held}");
    println!(
        "restart mid-stream: {}/{} ranges done at the kill, resumed at {}/{}; {held}/{PRELOAD} keys held",
        saved.ranges_done, saved.ranges_total, resumed.ranges_done, resumed.ranges_total
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_decommissioned_under_writes_leaves_every_acknowledged_key_readable() {
    const PRELOAD: u64 = 1_500;
    let cluster = members(&["n0", "n1", "n2", "n3"], PRELOAD).await;
    cluster.net.set_drop_every("n1", 40);
    let load = Load::start(&cluster, PRELOAD);

    // Asked of n0 with n3's id: n0 forwards the command to n3 over the peer transport.
    let operator = cluster.node("n0").parts.operator.clone();
    let unknown = operator.decommission("n9".into()).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let stats = operator
        .decommission("n3".into())
        .await
        .expect("decommission");
    cluster
        .wait_for_state("n3", MemberState::Left, Duration::from_secs(30))
        .await;
    load.more_writes(50).await;
    let (acked, answered) = load.finish("decommission").await;
    cluster.net.set_drop_every("n1", 0);
    cluster.kill("n3").await;

    assert!(stats.records > 0, "{stats:?}");
    assert!(
        stats.layout_version >= 3,
        "answered before n3 left: {stats:?}"
    );
    let all: Vec<u64> = (0..PRELOAD).chain(acked.iter().copied()).collect();
    for via in ["n0", "n1", "n2"] {
        assert_all_readable(&cluster, via, &all).await;
    }
    // With n3 gone and N=3 of 3 nodes, every remaining node holds every earlier key.
    for id in ["n0", "n1", "n2"] {
        let held = held_locally(&cluster, id, &(0..PRELOAD).collect::<Vec<_>>());
        assert_eq!(held as u64, PRELOAD, "{id} holds {held} of {PRELOAD}");
    }
    println!(
        "decommission: pushed {} records / {} bytes over {} ranges; {} writes acknowledged \
         during it, {answered} QUORUM reads",
        stats.records,
        stats.bytes,
        stats.ranges,
        acked.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_node_removed_under_writes_loses_nothing_and_anti_entropy_re_replicates_it() {
    const PRELOAD: u64 = 1_500;
    let cluster = members(&["n0", "n1", "n2", "n3"], PRELOAD).await;
    // A live node is not removed.
    let current = cluster.node("n0").parts.membership.layout();
    let err = plan_removal(&current, "n3", false).unwrap_err();
    assert!(err.contains("alive") || err.contains("live"), "{err}");
    let refused = cluster
        .node("n2")
        .parts
        .operator
        .remove_node("n3".into())
        .await
        .unwrap_err();
    assert!(refused.message().contains("is alive"), "{refused:?}");

    cluster.kill("n3").await;
    let membership = cluster.node("n0").parts.membership.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while membership.liveness("n3").liveness != Liveness::Dead {
        assert!(Instant::now() < deadline, "n3 is not dead to n0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load = Load::start(&cluster, PRELOAD);
    load.more_writes(50).await;
    // Asked of n1, which is not the layout authority: n0 commits it.
    let removed = cluster
        .node("n1")
        .parts
        .operator
        .remove_node("n3".into())
        .await
        .expect("removal of the dead n3");
    assert_eq!(removed.layout_version, 2);
    // Every node notes the removal; with background anti-entropy off here, none of its
    // ranges has compared clean since.
    for id in ["n0", "n1", "n2"] {
        let membership = cluster.node(id).parts.membership.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while membership.layout().version() < 2 {
            assert!(Instant::now() < deadline, "{id} did not learn the removal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let p = loop {
            if let Some(p) = cluster.node(id).parts.operator.removal() {
                break p;
            }
            assert!(Instant::now() < deadline, "{id} shows no removal progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(p.removal.node, "n3");
        assert!(
            p.ranges_total > 0 && p.ranges_clean < p.ranges_total,
            "{id}: {p:?}"
        );
    }
    cluster
        .wait_for_state("n3", MemberState::Left, Duration::from_secs(30))
        .await;
    load.more_writes(50).await;
    let (acked, answered) = load.finish("removal").await;
    let all: Vec<u64> = (0..PRELOAD).chain(acked.iter().copied()).collect();
    let before: Vec<usize> = ["n0", "n1", "n2"]
        .iter()
        .map(|id| held_locally(&cluster, id, &all))
        .collect();
    assert!(
        before.iter().any(|h| *h < all.len()),
        "every node already holds every key: nothing to re-replicate ({before:?})"
    );
    // The copies n3 held are made again from the surviving replicas: anti-entropy passes
    // (a key is pulled when it still differs at a second comparison) until each of the
    // three holds every key (N=3 of 3 nodes).
    let mut passes = 0;
    let complete = loop {
        let held: Vec<usize> = ["n0", "n1", "n2"]
            .iter()
            .map(|id| held_locally(&cluster, id, &all))
            .collect();
        if held.iter().all(|h| *h == all.len()) || passes == 6 {
            break held;
        }
        for id in ["n0", "n1", "n2"] {
            cluster.node(id).parts.antientropy.pass().await;
        }
        passes += 1;
    };
    let lacking: Vec<(&str, Vec<u64>)> = ["n0", "n1", "n2"]
        .into_iter()
        .map(|id| {
            let node = cluster.node(id).parts.node.clone();
            let keys = all
                .iter()
                .copied()
                .filter(|&i| node.local_record(&key(i)).ok().flatten().is_none())
                .take(5)
                .collect();
            (id, keys)
        })
        .collect();
    assert!(
        complete.iter().all(|h| *h == all.len()),
        "after {passes} anti-entropy passes the nodes hold {complete:?} of {} keys; lacking: \
         {lacking:?}",
        all.len()
    );
    for via in ["n0", "n1", "n2"] {
        assert_all_readable(&cluster, via, &all).await;
    }
    // One more pass (a pass that repaired a range finds it clean only at the next), then
    // each node's ranges have compared clean since the removal: `status` says done.
    for id in ["n0", "n1", "n2"] {
        cluster.node(id).parts.antientropy.pass().await;
    }
    for id in ["n0", "n1", "n2"] {
        let p = cluster
            .node(id)
            .parts
            .operator
            .removal()
            .expect("removal progress");
        assert_eq!(p.ranges_clean, p.ranges_total, "{id}: {p:?}");
    }
    println!(
        "remove: {} writes acknowledged during it, {answered} QUORUM reads; the nodes held \
         {before:?} of {} keys, all of them after {passes} anti-entropy pass(es) per node",
        acked.len(),
        all.len()
    );
}

/// Waits (bounded) until every running node holds `id` dead.
async fn wait_dead_everywhere(cluster: &Cluster, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes: Vec<Arc<Running>> = cluster.nodes.lock().values().cloned().collect();
        if nodes
            .iter()
            .all(|n| n.parts.membership.liveness(id).liveness == Liveness::Dead)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is not dead on every node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No running node saw two different layouts with one version.
fn assert_no_layout_conflict(cluster: &Cluster) {
    for (id, n) in cluster.nodes.lock().iter() {
        let conflicts = n.parts.membership.layout_conflicts();
        assert!(
            conflicts.is_empty(),
            "{id} saw conflicting layouts: {conflicts:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn changes_asked_through_different_nodes_meet_at_one_authority_one_at_a_time() {
    const PRELOAD: u64 = 1_000;
    // Streams throttled so that a decommission stays in flight for a few seconds.
    let cluster = members_throttled(&["n0", "n1", "n2", "n3", "n4"], PRELOAD, 64 * 1024).await;
    cluster.kill("n4").await;
    wait_dead_everywhere(&cluster, "n4").await;

    // At the same moment: n3 asks to leave (through n2, forwarded to n3) and n1 is asked
    // to remove the dead n4. Before one authority, each node committed its own version 2
    // and the cluster held two layouts of one version. Now both meet at n0: either the
    // removal goes first and the decommission follows it, or the removal is refused
    // while n3 is leaving.
    let leave = {
        let operator = cluster.node("n2").parts.operator.clone();
        tokio::spawn(async move { operator.decommission("n3".into()).await })
    };
    let removal = cluster
        .node("n1")
        .parts
        .operator
        .remove_node("n4".into())
        .await;
    cluster
        .wait_for_state("n3", MemberState::Leaving, Duration::from_secs(10))
        .await;
    let removed_first = match &removal {
        Ok(r) => {
            assert_eq!(r.layout_version, 2, "the removal went first: {r:?}");
            true
        }
        Err(e) => {
            assert!(
                e.message()
                    .contains("another layout change is in flight (n3 is leaving)"),
                "{e:?}"
            );
            false
        }
    };

    // While n3 leaves: a removal through n2 is refused with the reason, and a node
    // started to join waits (it is not let in while n3 is leaving).
    let refused = cluster
        .node("n2")
        .parts
        .operator
        .remove_node("n4".into())
        .await;
    if removed_first {
        let e = refused.unwrap_err();
        assert!(e.message().contains("already left"), "{e:?}");
    } else {
        let e = refused.unwrap_err();
        assert!(
            e.message()
                .contains("another layout change is in flight (n3 is leaving)"),
            "{e:?}"
        );
    }
    let layout = (*cluster.node("n0").parts.membership.layout()).clone();
    cluster.start(
        "n5",
        layout,
        &["n1"],
        Arc::new(MemoryEngine::ephemeral()),
        settings(None, 0),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = cluster.node("n0").parts.membership.layout();
    assert_eq!(
        during.member("n3").map(|m| m.state),
        Some(MemberState::Leaving),
        "the decommission is still in flight"
    );
    assert!(
        during.member("n5").is_none(),
        "a join was let in while n3 was leaving: {during:?}"
    );

    let stats = leave
        .await
        .expect("decommission task")
        .expect("decommission");
    assert!(stats.records > 0, "{stats:?}");
    if !removed_first {
        cluster
            .node("n1")
            .parts
            .operator
            .remove_node("n4".into())
            .await
            .expect("the removal once the decommission is done");
    }
    cluster
        .wait_for_state("n5", MemberState::Normal, Duration::from_secs(60))
        .await;
    cluster.kill("n3").await;
    for (id, state) in [("n3", MemberState::Left), ("n4", MemberState::Left)] {
        cluster
            .wait_for_state(id, state, Duration::from_secs(10))
            .await;
    }
    // Five changes, one version each: 2 for the decommission, 1 for the removal, 2 for
    // the join; every node holds the last one and none saw two layouts of one version.
    for (id, n) in cluster.nodes.lock().iter() {
        assert_eq!(n.parts.membership.layout().version(), 6, "{id}");
    }
    assert_no_layout_conflict(&cluster);
    let all: Vec<u64> = (0..PRELOAD).collect();
    for via in ["n0", "n5"] {
        assert_all_readable(&cluster, via, &all).await;
    }
    println!(
        "authority: removal {} the decommission; the join waited for both",
        if removed_first {
            "before"
        } else {
            "refused during, then after"
        }
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_removal_each_node_re_replicates_by_itself_and_status_says_when_done() {
    const PRELOAD: u64 = 600;
    // Background anti-entropy on, with passes an hour apart: only the passes the removal
    // starts run during this test.
    let mut s = settings(None, 0);
    s.antientropy.enabled = true;
    s.antientropy.interval = Duration::from_secs(3600);
    let cluster = members_with(&["n0", "n1", "n2", "n3"], PRELOAD, s).await;
    cluster.kill("n3").await;
    wait_dead_everywhere(&cluster, "n3").await;
    let all: Vec<u64> = (0..PRELOAD).collect();
    let short: Vec<usize> = ["n0", "n1", "n2"]
        .iter()
        .map(|id| held_locally(&cluster, id, &all))
        .collect();
    assert!(short.iter().all(|h| (*h as u64) < PRELOAD), "{short:?}");
    cluster
        .node("n2")
        .parts
        .operator
        .remove_node("n3".into())
        .await
        .expect("removal of the dead n3");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress: Vec<_> = ["n0", "n1", "n2"]
            .iter()
            .map(|id| cluster.node(id).parts.operator.removal())
            .collect();
        let done = progress
            .iter()
            .all(|p| p.as_ref().is_some_and(|p| p.ranges_clean == p.ranges_total));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "re-replication not done within a minute: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ["n0", "n1", "n2"] {
        assert_eq!(held_locally(&cluster, id, &all) as u64, PRELOAD, "{id}");
    }
    println!("removal re-replicated by itself: the nodes held {short:?} of {PRELOAD} keys before, all after");
}
