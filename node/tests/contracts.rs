//! The contracts a changing cluster builds on, tested in one process over the in-memory
//! transport: range pulls between peers, layout changes reaching the placement, and
//! bounded replica queues.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use distkv_backends::MemoryEngine;
use distkv_network::{
    DetectorSettings, InMemoryNetwork, InMemoryTransport, Member, MemberState, Membership,
    NodeInfo, StaticMembership,
};
use distkv_node::assembly::{assemble, follow_layout, Assembled};
use distkv_node::handoff::HintStore;
use distkv_node::placement::{HashRing, Partitioner};
use distkv_node::{Consistency, NodeSettings, ReadRepair};

type Parts = Assembled<MemoryEngine, StaticMembership, HashRing, InMemoryTransport>;

fn info(i: usize) -> NodeInfo {
    NodeInfo {
        id: format!("n{i}"),
        address: format!("mem-{i}:1"),
    }
}

/// Nodes `0..n` over one network, each knowing the members `0..members`.
fn cluster(
    n: usize,
    members: usize,
    settings: &NodeSettings,
) -> (Arc<InMemoryNetwork>, Vec<Parts>) {
    let net = InMemoryNetwork::new();
    let infos: Vec<NodeInfo> = (0..members).map(info).collect();
    let parts = (0..n)
        .map(|i| {
            let membership = StaticMembership::new(
                info(i),
                infos.clone(),
                settings.virtual_nodes,
                DetectorSettings::default(),
            )
            .expect("membership");
            let hints = HintStore::open(Arc::new(MemoryEngine::ephemeral())).expect("hints");
            let parts = assemble(
                Arc::new(MemoryEngine::ephemeral()),
                Arc::new(membership),
                Arc::new(net.transport(&info(i).id)),
                Some(Arc::new(hints)),
                settings.clone(),
            );
            net.register(&info(i).id, parts.peer.clone());
            parts
        })
        .collect();
    (net, parts)
}

fn settings() -> NodeSettings {
    let mut s = NodeSettings::new(3, 2, 2);
    s.read_repair = ReadRepair::Off;
    s.virtual_nodes = 16;
    s
}

async fn put(parts: &Parts, key: &str) {
    parts
        .node
        .put(key.into(), Some(key.into()), b"", Consistency::Default)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_pulls_a_range_in_checksummed_pages_and_resumes_after_a_dropped_call() {
    let (net, nodes) = cluster(3, 3, &settings());
    let keys: Vec<String> = (0..600).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        put(&nodes[0], k).await;
    }
    let ring = nodes[0].placement.current();
    let ranges = ring.ring().ranges_of("n1", 3);
    assert_eq!(
        ranges.len(),
        ring.ring().ranges().len(),
        "N=3 of 3: n1 holds all"
    );
    // Every third call to n1 is lost: a pull retries the page from the same cursor.
    net.set_drop_every("n1", 3);
    let mut pulled = BTreeSet::new();
    let mut failures = 0;
    for range in ranges {
        let mut after = None;
        loop {
            match nodes[0]
                .replicas
                .pull_range(&info(1), range, after.clone(), 16, 1 << 20)
                .await
            {
                Ok(page) => {
                    for (key, _) in page.entries {
                        let key = String::from_utf8(key).unwrap();
                        assert!(range.contains(HashRing::token(key.as_bytes())), "{key}");
                        assert!(pulled.insert(key), "a resumed pull repeats nothing");
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Err(e) => {
                    failures += 1;
                    assert!(e.to_string().contains("message dropped"), "{e}");
                }
            }
        }
    }
    assert!(failures > 0, "the fault was injected");
    let expected: BTreeSet<String> = keys.into_iter().collect();
    assert_eq!(pulled, expected, "every key of every range, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_layout_reaches_the_placement_and_writes_go_to_old_and_new_owners() {
    // Nodes n0..n3 run; the layout names n0..n2 until n3 joins.
    let (_net, nodes) = cluster(4, 3, &settings());
    let updater = tokio::spawn(follow_layout(
        nodes[0].membership.clone(),
        nodes[0].placement.clone(),
    ));
    assert_eq!(nodes[0].placement.current().version(), 1);
    let mut members: Vec<Member> = nodes[0].membership.layout().members().to_vec();
    members.push(Member {
        id: "n3".into(),
        address: info(3).address,
        state: MemberState::Joining,
    });
    let next = nodes[0].membership.layout().next(members).unwrap();
    nodes[0].membership.apply_layout(next).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes[0].placement.current().version() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "placement never updated"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let snapshot = nodes[0].placement.current();
    let mut moved = 0;
    for i in 0..300 {
        let key = format!("k{i}");
        put(&nodes[0], &key).await;
        let sets = snapshot.write_sets(key.as_bytes(), 3);
        assert!(
            sets.current.iter().all(|n| n.id != "n3"),
            "reads stay with the old owners"
        );
        if sets
            .pending
            .as_ref()
            .is_some_and(|p| p.iter().any(|n| n.id == "n3"))
        {
            moved += 1;
            // Acknowledged with W=2 in each set: n3 holds it once its write lands.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while nodes[3]
                .node
                .local_record(key.as_bytes())
                .unwrap()
                .is_none()
            {
                assert!(tokio::time::Instant::now() < deadline, "{key} not on n3");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            assert!(nodes[3]
                .node
                .local_record(key.as_bytes())
                .unwrap()
                .is_none());
        }
    }
    assert!(moved > 0, "the joining node takes over some keys");
    updater.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_queue_turns_writes_into_hints_and_loses_none() {
    let mut s = settings();
    s.replica_queue_depth = 16;
    let (net, nodes) = cluster(3, 3, &s);
    // n2 answers slowly: its queue on n0 fills up, while n0's and n1's drain at once.
    net.set_delay("n2", Duration::from_millis(300));
    for wave in 0..8 {
        let writes: Vec<_> = (0..8)
            .map(|i| {
                let node = nodes[0].node.clone();
                tokio::spawn(async move {
                    let key = format!("q{}", wave * 8 + i);
                    node.put(
                        key.clone().into(),
                        Some(key.into()),
                        b"",
                        Consistency::Default,
                    )
                    .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().expect("W=2 is met by n0 and n1");
        }
    }
    let hints: u64 = nodes[0].node.pending_hints().iter().map(|(_, n)| n).sum();
    assert!(hints > 0, "writes that found n2's queue full became hints");
    net.set_delay("n2", Duration::ZERO);
    let handoff = nodes[0].handoff.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !nodes[0].node.pending_hints().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hints never delivered"
        );
        handoff.replay_once().await;
    }
    for i in 0..64 {
        let key = format!("q{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while nodes[2]
            .node
            .local_record(key.as_bytes())
            .unwrap()
            .is_none()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never reached n2"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_coalesced_past_the_message_limit_are_split_and_all_answered() {
    let (net, nodes) = cluster(3, 3, &settings());
    let value = vec![7u8; 100_000];
    for i in 0..32 {
        nodes[0]
            .node
            .put(
                format!("big-{i}").into(),
                Some(value.clone()),
                b"",
                Consistency::All,
            )
            .await
            .unwrap();
    }
    // Three records fit in a message, 32 do not: coalesced reads must split.
    net.set_max_message_bytes(350_000);
    let reads: Vec<_> = (0..32)
        .map(|i| {
            let node = nodes[1].node.clone();
            tokio::spawn(async move { node.get(format!("big-{i}").into(), Consistency::All).await })
        })
        .collect();
    for r in reads {
        let got = r.await.unwrap().expect("every read is answered");
        assert_eq!(got.values, vec![value.clone()]);
    }
}
