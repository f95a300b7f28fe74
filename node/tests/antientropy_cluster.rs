//! The anti-entropy driver in one process, over the in-memory transport: a replica that
//! missed writes and deletes (hints off) converges after one pass, and a comparison that
//! cannot run is never counted clean.

use std::sync::Arc;
use std::time::Duration;

use distkv_backends::MemoryEngine;
use distkv_network::{
    DetectorSettings, InMemoryNetwork, InMemoryTransport, NodeInfo, StaticMembership,
};
use distkv_node::antientropy::upkeep;
use distkv_node::assembly::{assemble, Assembled};
use distkv_node::placement::HashRing;
use distkv_node::{Consistency, NodeSettings, ReadRepair};

type Parts = Assembled<MemoryEngine, StaticMembership, HashRing, InMemoryTransport>;

fn cluster(n: usize) -> (Arc<InMemoryNetwork>, Vec<Parts>) {
    let net = InMemoryNetwork::new();
    let infos: Vec<NodeInfo> = (0..n)
        .map(|i| NodeInfo {
            id: format!("n{i}"),
            address: format!("mem-{i}:1"),
        })
        .collect();
    let mut settings = NodeSettings::new(3, 2, 2);
    settings.read_repair = ReadRepair::Off;
    settings.hinted_handoff = false;
    settings.request_timeout = Duration::from_secs(5);
    // A small ring keeps the passes short.
    settings.virtual_nodes = 16;
    let parts = infos
        .iter()
        .map(|info| {
            let membership =
                StaticMembership::new(info.clone(), infos.clone(), 16, DetectorSettings::default())
                    .expect("membership");
            let parts = assemble(
                Arc::new(MemoryEngine::ephemeral()),
                Arc::new(membership),
                Arc::new(net.transport(&info.id)),
                None,
                settings.clone(),
            );
            net.register(&info.id, parts.peer.clone());
            parts
        })
        .collect();
    (net, parts)
}

async fn rebuild(parts: &Parts) {
    upkeep::rebuild(parts.store.clone(), parts.tree.clone(), 64)
        .await
        .expect("tree rebuilt");
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_writes_and_deletes_converges_after_one_pass() {
    let (net, nodes) = cluster(3);
    for n in &nodes {
        rebuild(n).await;
    }
    let via = &nodes[0].node;
    for i in 0..100 {
        via.put(key(i), Some(b"v1".to_vec()), b"", Consistency::All)
            .await
            .unwrap();
    }
    // n2 misses 150 new keys, 30 overwrites and 20 deletes (no hints).
    net.set_down("n2", true);
    for i in 100..250 {
        via.put(key(i), Some(b"v1".to_vec()), b"", Consistency::Quorum)
            .await
            .unwrap();
    }
    for i in 0..50 {
        let read = via.get(key(i), Consistency::Quorum).await.unwrap();
        let value = if i < 30 { Some(b"v2".to_vec()) } else { None };
        via.put(
            key(i),
            value,
            &read.context.to_context(),
            Consistency::Quorum,
        )
        .await
        .unwrap();
    }
    net.set_down("n2", false);
    assert_eq!(nodes[2].node.local_record(&key(120)).unwrap(), None);

    let report = nodes[2].antientropy.pass().await;
    assert_eq!(report.failures, 0, "{report:?}");
    assert_eq!(report.keys_repaired, 200, "{report:?}");
    assert_eq!(report.ranges, report.ranges_clean, "{report:?}");
    for i in 0..250 {
        assert_eq!(
            nodes[2].node.local_record(&key(i)).unwrap(),
            nodes[0].node.local_record(&key(i)).unwrap(),
            "key {i} converged on n2"
        );
    }
    let deleted = nodes[2].node.local_record(&key(40)).unwrap().unwrap();
    assert_eq!(
        deleted.values().count(),
        0,
        "the delete reached n2 as a tombstone"
    );
    assert_eq!(*nodes[2].tree.lock(), *nodes[0].tree.lock(), "trees agree");

    // Nothing left to do, from either side.
    let again = nodes[2].antientropy.pass().await;
    assert_eq!(
        (again.keys_differing, again.keys_repaired),
        (0, 0),
        "{again:?}"
    );
    let other = nodes[0].antientropy.pass().await;
    assert_eq!(
        (other.keys_differing, other.keys_repaired),
        (0, 0),
        "{other:?}"
    );
    let stats = nodes[2].antientropy.range_stats();
    assert_eq!(stats.len() as u64, again.ranges);
    assert!(stats.iter().all(|(_, s)| s.last_clean_ms.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_rebuilding_its_tree_makes_no_range_clean() {
    let (net, nodes) = cluster(3);
    rebuild(&nodes[0]).await;
    rebuild(&nodes[1]).await;
    // n2's tree is still being rebuilt: it answers NotReady.
    let report = nodes[0].antientropy.pass().await;
    assert!(report.ranges > 0);
    assert_eq!(report.failures, report.ranges, "{report:?}");
    assert_eq!(report.ranges_clean, 0, "{report:?}");
    // An unreachable peer: its ranges are not clean either.
    rebuild(&nodes[2]).await;
    net.set_down("n2", true);
    let report = nodes[0].antientropy.pass().await;
    assert_eq!(report.ranges_clean, 0, "{report:?}");
    net.set_down("n2", false);
    let report = nodes[0].antientropy.pass().await;
    assert_eq!(report.ranges_clean, report.ranges, "{report:?}");
    // This node's own tree not ready: the pass is skipped, every range failed.
    let shape = nodes[0].tree.lock().shape();
    *nodes[0].tree.lock() = distkv_node::antientropy::HashTree::new_rebuilding(shape);
    let report = nodes[0].antientropy.pass().await;
    assert_eq!(report.failures, report.ranges, "{report:?}");
}
