//! Tombstone GC in one process, over the in-memory transport: tombstones are purged on
//! every replica once all confirmed; a replica that is down blocks purging; a write
//! after the confirmations cancels the purge; a key with a pending hint on a replica is
//! not purged there; a hint older than the grace is dropped instead of delivered.
//!
//! Time: the GC's clock is shifted past the grace (`TombstoneGc::shift_clock`) instead
//! of waiting for it; the only real wait is the pass's own `in_flight` pause between its
//! phases (the request timeout, short here).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distkv_backends::MemoryEngine;
use distkv_engine::{Lsm, LsmOptions, StatValue, StorageEngine, SyncPolicy};
use distkv_network::{
    DetectorSettings, InMemoryNetwork, InMemoryTransport, NodeInfo, StaticMembership,
};
use distkv_node::antientropy::upkeep;
use distkv_node::assembly::{assemble, Assembled};
use distkv_node::handoff::HintStore;
use distkv_node::placement::HashRing;
use distkv_node::version::{Dot, Record, VersionVector};
use distkv_node::{Consistency, NodeSettings, ReadRepair};

type Parts = Assembled<MemoryEngine, StaticMembership, HashRing, InMemoryTransport>;

/// Past the default grace (24 h).
const LATER: Duration = Duration::from_secs(25 * 3600);

fn cluster(n: usize, timeout: Duration, hints: bool) -> (Arc<InMemoryNetwork>, Vec<Parts>) {
    let net = InMemoryNetwork::new();
    let infos: Vec<NodeInfo> = (0..n)
        .map(|i| NodeInfo {
            id: format!("n{i}"),
            address: format!("mem-{i}:1"),
        })
        .collect();
    let mut settings = NodeSettings::new(3, 2, 2);
    settings.read_repair = ReadRepair::Off;
    settings.hinted_handoff = hints;
    settings.request_timeout = timeout;
    settings.virtual_nodes = 16;
    let parts = infos
        .iter()
        .map(|info| {
            let membership =
                StaticMembership::new(info.clone(), infos.clone(), 16, DetectorSettings::default())
                    .expect("membership");
            let hint_store = hints.then(|| {
                Arc::new(HintStore::open(Arc::new(MemoryEngine::ephemeral())).expect("hints"))
            });
            let parts = assemble(
                Arc::new(MemoryEngine::ephemeral()),
                Arc::new(membership),
                Arc::new(net.transport(&info.id)),
                hint_store,
                settings.clone(),
            );
            net.register(&info.id, parts.peer.clone());
            parts
        })
        .collect();
    (net, parts)
}

async fn ready(nodes: &[Parts]) {
    for n in nodes {
        upkeep::rebuild(n.store.clone(), n.tree.clone(), 64)
            .await
            .expect("tree rebuilt");
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

async fn write_then_delete(via: &Parts, keys: std::ops::Range<usize>, delete_at: Consistency) {
    for i in keys.clone() {
        via.node
            .put(key(i), Some(b"v".to_vec()), b"", Consistency::All)
            .await
            .unwrap();
    }
    for i in keys {
        let read = via.node.get(key(i), Consistency::Quorum).await.unwrap();
        via.node
            .put(key(i), None, &read.context.to_context(), delete_at)
            .await
            .unwrap();
    }
}

fn held(node: &Parts, i: usize) -> Option<Record> {
    node.node.local_record(&key(i)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_purged_on_every_replica_once_all_confirmed() {
    let (_net, nodes) = cluster(3, Duration::from_millis(200), false);
    ready(&nodes).await;
    write_then_delete(&nodes[0], 0..60, Consistency::All).await;
    // Keys 60..70 stay live: GC leaves them alone.
    for i in 60..70 {
        nodes[0]
            .node
            .put(key(i), Some(b"live".to_vec()), b"", Consistency::All)
            .await
            .unwrap();
    }
    // Within the grace: nothing happens.
    let early = nodes[0].gc.pass().await;
    assert_eq!(
        (early.tombstones, early.candidates, early.purged_here),
        (60, 0, 0)
    );

    nodes[0].gc.shift_clock(LATER);
    let report = nodes[0].gc.pass().await;
    assert_eq!(report.failures, 0, "{report:?}");
    assert_eq!(report.candidates, 60, "{report:?}");
    assert_eq!(report.confirmations, 120, "two other replicas per key");
    assert_eq!(report.purged_here, 60, "{report:?}");
    assert_eq!(report.purged_there, 120, "{report:?}");
    assert_eq!(report.waiting_total(), 0, "{report:?}");
    for n in &nodes {
        for i in 0..60 {
            assert_eq!(held(n, i), None, "key {i} purged on {}", n.node.local().id);
        }
        for i in 60..70 {
            assert!(held(n, i).is_some(), "live key {i} kept");
        }
        assert!(n.gc.view().purged >= 60, "{:?}", n.gc.view());
    }
    let view = nodes[0].gc.view();
    assert_eq!(view.tombstones, Some(0), "{view:?}");
    // The purge went through the store's writer, so the trees saw it: they agree.
    assert_eq!(*nodes[0].tree.lock(), *nodes[1].tree.lock());
    assert_eq!(*nodes[0].tree.lock(), *nodes[2].tree.lock());
    // And nothing comes back.
    for i in 0..60 {
        let read = nodes[1].node.get(key(i), Consistency::All).await.unwrap();
        assert!(read.values.is_empty(), "key {i} came back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_down_blocks_purging_until_it_holds_the_tombstone() {
    let (net, nodes) = cluster(3, Duration::from_millis(200), false);
    ready(&nodes).await;
    for i in 0..40 {
        nodes[0]
            .node
            .put(key(i), Some(b"old".to_vec()), b"", Consistency::All)
            .await
            .unwrap();
    }
    // n2 misses the deletes (hints off): it holds the old values.
    net.set_down("n2", true);
    for i in 0..40 {
        let read = nodes[0]
            .node
            .get(key(i), Consistency::Quorum)
            .await
            .unwrap();
        nodes[0]
            .node
            .put(
                key(i),
                None,
                &read.context.to_context(),
                Consistency::Quorum,
            )
            .await
            .unwrap();
    }
    for n in &nodes[..2] {
        n.gc.shift_clock(LATER);
        let report = n.gc.pass().await;
        assert_eq!(report.candidates, 40, "{report:?}");
        assert_eq!(report.purged_here, 0, "n2 is down: {report:?}");
        assert_eq!(report.waiting_total(), 40, "{report:?}");
        let view = n.gc.view();
        assert_eq!(view.waiting, 40);
        assert!(
            view.waiting_reasons.iter().any(|r| r.contains("n2")),
            "{view:?}"
        );
    }
    for i in 0..40 {
        assert!(held(&nodes[0], i).is_some(), "tombstone kept on n0");
        assert!(
            held(&nodes[2], i).unwrap().values().count() == 1,
            "n2 holds the old value"
        );
    }
    // n2 is back: the next pass pushes it the tombstones, then purges everywhere.
    net.set_down("n2", false);
    let report = nodes[0].gc.pass().await;
    assert_eq!(report.purged_here, 40, "{report:?}");
    assert_eq!(report.purged_there, 80, "{report:?}");
    for n in &nodes {
        for i in 0..40 {
            assert_eq!(held(n, i), None, "key {i} on {}", n.node.local().id);
        }
    }
    for i in 0..40 {
        for n in &nodes {
            let read = n.node.get(key(i), Consistency::One).await.unwrap();
            assert!(read.values.is_empty(), "key {i} came back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_confirmations_cancels_the_purge() {
    // The pass waits the request timeout (1 s) between its phases; the write lands in
    // that window.
    let (_net, nodes) = cluster(3, Duration::from_secs(1), false);
    ready(&nodes).await;
    write_then_delete(&nodes[0], 0..10, Consistency::All).await;
    nodes[0].gc.shift_clock(LATER);
    let gc = nodes[0].gc.clone();
    let pass = tokio::spawn(async move { gc.pass().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = nodes[1].node.get(key(3), Consistency::All).await.unwrap();
    nodes[1]
        .node
        .put(
            key(3),
            Some(b"again".to_vec()),
            &read.context.to_context(),
            Consistency::All,
        )
        .await
        .unwrap();
    let report = pass.await.unwrap();
    assert_eq!(report.candidates, 10, "{report:?}");
    assert_eq!(report.purged_here, 9, "{report:?}");
    for n in &nodes {
        let r = held(n, 3).expect("key 3 kept");
        assert_eq!(
            r.values().map(<[u8]>::to_vec).collect::<Vec<_>>(),
            vec![b"again".to_vec()],
            "the new write survives on {}",
            n.node.local().id
        );
        for i in (0..10).filter(|i| *i != 3) {
            assert_eq!(held(n, i), None);
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record_at(actor: &str, at_ms: u64, value: &[u8]) -> Record {
    Record::write(
        Dot {
            actor: actor.into(),
            counter: at_ms * 1000,
        },
        VersionVector::new(),
        at_ms,
        Some(value.to_vec()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_older_than_the_grace_is_dropped_and_a_pending_hint_blocks_the_purge_there() {
    let (_net, nodes) = cluster(3, Duration::from_millis(200), true);
    ready(&nodes).await;
    let handoff = nodes[0].handoff.clone().expect("hints on");
    let grace = nodes[0].gc.settings().grace;
    // A hint for n2 from before the grace (a write older than any purge could be) and
    // a fresh one.
    let stale = record_at(
        "n9",
        wall_ms() - grace.as_millis() as u64 - 60_000,
        b"stale",
    );
    let fresh = record_at("n9", wall_ms(), b"fresh");
    handoff
        .store()
        .add(
            "n2",
            &[(b"old".to_vec(), stale), (b"new".to_vec(), fresh.clone())],
        )
        .unwrap();
    let delivered = handoff.replay_once().await;
    assert_eq!(delivered, 1, "only the fresh hint is delivered");
    assert_eq!(handoff.store().total_pending(), 0, "the stale one is gone");
    assert_eq!(nodes[0].gc.view().hints_dropped, 1);
    assert_eq!(
        nodes[2].node.local_record(b"old").unwrap(),
        None,
        "the stale hint did not reach n2"
    );
    assert_eq!(nodes[2].node.local_record(b"new").unwrap(), Some(fresh));

    // A hint for key 5 is pending on n1 (for n2, not yet replayed): n1 keeps its
    // tombstone of key 5 when n0 purges; every other key goes everywhere.
    write_then_delete(&nodes[0], 0..10, Consistency::All).await;
    let n1_hints = nodes[1].handoff.clone().unwrap();
    n1_hints
        .store()
        .add("n2", &[(key(5), record_at("n9", 1, b"x"))])
        .unwrap();
    nodes[0].gc.shift_clock(LATER);
    let report = nodes[0].gc.pass().await;
    assert_eq!(report.purged_here, 10, "{report:?}");
    assert_eq!(report.purged_there, 19, "all but key 5 on n1: {report:?}");
    assert!(held(&nodes[1], 5).is_some(), "n1 keeps key 5's tombstone");
    assert_eq!(held(&nodes[2], 5), None);
    // Its own pass waits for the hint too.
    nodes[1].gc.shift_clock(LATER);
    let report = nodes[1].gc.pass().await;
    assert_eq!(report.purged_here, 0, "{report:?}");
    assert!(
        report.waiting.keys().any(|r| r.contains("hint")),
        "{report:?}"
    );
    // Replayed (dropped: it is older than the grace), nothing pending: purged.
    n1_hints.replay_once().await;
    assert_eq!(n1_hints.store().total_pending(), 0);
    assert_eq!(
        nodes[1].gc.view().hints_dropped,
        1,
        "{:?}",
        nodes[1].gc.view()
    );
    let report = nodes[1].gc.pass().await;
    assert_eq!(report.purged_here, 1, "{report:?}");
    assert_eq!(held(&nodes[1], 5), None);
    assert!(nodes[1].gc.view().purged >= 1);
}

fn stat(lsm: &Lsm, name: &str) -> u64 {
    match lsm.stats().get(name) {
        Some(StatValue::U64(v)) => *v,
        other => panic!("engine stat {name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_tombstones_leave_the_lsm_files_at_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Two L0 files trigger a compaction into L1 (the bottom level holding anything).
    let lsm = Arc::new(
        Lsm::open(
            dir.path(),
            LsmOptions {
                l0_compaction_files: 2,
                sync: SyncPolicy::Never,
                ..LsmOptions::default()
            },
        )
        .unwrap(),
    );
    let net = InMemoryNetwork::new();
    let me = NodeInfo {
        id: "n0".into(),
        address: "mem-0:1".into(),
    };
    let membership = StaticMembership::new(
        me.clone(),
        vec![me.clone()],
        16,
        DetectorSettings::default(),
    )
    .unwrap();
    let mut settings = NodeSettings::new(1, 1, 1);
    settings.request_timeout = Duration::from_millis(100);
    settings.hinted_handoff = false;
    let node = assemble::<Lsm, _, HashRing, _>(
        lsm.clone(),
        Arc::new(membership),
        Arc::new(net.transport("n0")),
        None,
        settings,
    );
    net.register("n0", node.peer.clone());
    upkeep::rebuild(node.store.clone(), node.tree.clone(), 64)
        .await
        .unwrap();
    const N: usize = 2_000;
    for i in 0..N {
        let ctx = node
            .node
            .put(key(i), Some(vec![b'v'; 100]), b"", Consistency::One)
            .await
            .unwrap();
        node.node
            .put(key(i), None, &ctx.to_context(), Consistency::One)
            .await
            .unwrap();
    }
    lsm.flush_memtable().unwrap();
    lsm.compact().unwrap();
    let before = stat(&lsm, "bytes.sstables");
    assert!(before > 0);

    node.gc.shift_clock(LATER);
    let report = node.gc.pass().await;
    assert_eq!(report.purged_here, N as u64, "{report:?}");
    lsm.flush_memtable().unwrap();
    lsm.compact().unwrap();
    let after = stat(&lsm, "bytes.sstables");
    let dropped = stat(&lsm, "tombstones.dropped");
    println!(
        "{N} purged tombstones: SSTable bytes {before} before GC, {after} after GC and compaction ({dropped} delete markers dropped)"
    );
    assert_eq!(after, 0, "every purged key left the files");
    assert!(dropped >= N as u64, "{dropped}");
    for i in (0..N).step_by(97) {
        assert_eq!(node.node.local_record(&key(i)).unwrap(), None);
    }
}
