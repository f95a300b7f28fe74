//! Cluster behaviour in one process, over the in-memory transport with injected faults.
//! Deterministic: faults fail calls at once, hints are replayed by explicit calls, and
//! read repair runs in blocking mode where a test checks it, so nothing waits on a timer.

use std::sync::Arc;
use std::time::Duration;

use distkv_backends::MemoryEngine;
use distkv_network::{
    DetectorSettings, InMemoryNetwork, InMemoryTransport, NodeInfo, StaticMembership,
};
use distkv_node::assembly::{assemble, Assembled};
use distkv_node::handoff::HintStore;
use distkv_node::placement::HashRing;
use distkv_node::version::Record;
use distkv_node::ReadRepair;
use distkv_node::{Consistency, Node, NodeError, NodeSettings};

type TestNode = Node<MemoryEngine, StaticMembership, HashRing, InMemoryTransport>;
type TestParts = Assembled<MemoryEngine, StaticMembership, HashRing, InMemoryTransport>;

struct Cluster {
    net: Arc<InMemoryNetwork>,
    nodes: Vec<Arc<TestNode>>,
    parts: Vec<TestParts>,
}

fn id(i: usize) -> String {
    format!("n{i}")
}

fn cluster(n: usize, settings: NodeSettings) -> Cluster {
    let net = InMemoryNetwork::new();
    let infos: Vec<NodeInfo> = (0..n)
        .map(|i| NodeInfo {
            id: id(i),
            address: format!("mem-{i}:1"),
        })
        .collect();
    let parts: Vec<TestParts> = infos
        .iter()
        .map(|info| {
            let membership = StaticMembership::new(
                info.clone(),
                infos.clone(),
                150,
                DetectorSettings::default(),
            )
            .expect("membership");
            let hints = HintStore::open(Arc::new(MemoryEngine::ephemeral())).expect("hint store");
            let parts = assemble(
                Arc::new(MemoryEngine::ephemeral()),
                Arc::new(membership),
                Arc::new(net.transport(&info.id)),
                Some(Arc::new(hints)),
                settings.clone(),
            );
            net.register(&info.id, parts.peer.clone());
            parts
        })
        .collect();
    let nodes = parts.iter().map(|p| p.node.clone()).collect();
    Cluster { net, nodes, parts }
}

fn settings(n: usize, r: usize, w: usize) -> NodeSettings {
    let mut s = NodeSettings::new(n, r, w);
    s.read_repair = ReadRepair::Off;
    s.request_timeout = Duration::from_secs(5);
    s
}

impl Cluster {
    async fn put(
        &self,
        via: usize,
        key: &str,
        value: &str,
        ctx: &[u8],
        c: Consistency,
    ) -> Result<Vec<u8>, NodeError> {
        let node = &self.nodes[via];
        node.put(
            key.as_bytes().to_vec(),
            Some(value.as_bytes().to_vec()),
            ctx,
            c,
        )
        .await
        .map(|v| v.to_context())
    }

    async fn get(
        &self,
        via: usize,
        key: &str,
        c: Consistency,
    ) -> Result<(Vec<String>, Vec<u8>), NodeError> {
        let r = self.nodes[via].get(key.as_bytes().to_vec(), c).await?;
        let mut values: Vec<String> = r
            .values
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        values.sort();
        Ok((values, r.context.to_context()))
    }

    async fn local(&self, i: usize, key: &str) -> Option<Record> {
        self.nodes[i]
            .local_record(key.as_bytes())
            .expect("local read")
    }

    async fn local_values(&self, i: usize, key: &str) -> Vec<String> {
        let mut v: Vec<String> = match self.local(i, key).await {
            Some(r) => r
                .values()
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .collect(),
            None => vec![],
        };
        v.sort();
        v
    }

    /// Waits until every node holds exactly `expected` hints (hints are stored by the
    /// replica tasks, which may finish just after the client was answered).
    async fn wait_for_hints(&self, expected: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let total: u64 = self
                .nodes
                .iter()
                .flat_map(|n| n.pending_hints())
                .map(|(_, c)| c)
                .sum();
            if total == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{total} hints pending, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn replay_all(&self) -> usize {
        let mut n = 0;
        for parts in &self.parts {
            if let Some(handoff) = &parts.handoff {
                n += handoff.replay_once().await;
            }
        }
        n
    }
}

/// For N=3 and N=5 and several R/W: a write succeeds exactly when at least W replicas are
/// up, a read exactly when at least R are, and the error says how many acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_arithmetic() {
    for (n, r, w) in [
        (3, 1, 1),
        (3, 2, 2),
        (3, 1, 3),
        (3, 3, 1),
        (5, 3, 3),
        (5, 2, 4),
        (5, 5, 5),
    ] {
        for down in 0..n {
            let c = cluster(n, settings(n, r, w));
            // Node 0 coordinates; the last `down` nodes are down. With N = cluster size every
            // node is a replica of every key.
            for i in (n - down)..n {
                c.net.set_down(&id(i), true);
            }
            let up = n - down;
            let put = c.put(0, "k", "v", b"", Consistency::Default).await;
            if up >= w {
                assert!(put.is_ok(), "N={n} W={w} with {up} up: {put:?}");
            } else {
                let msg = put.expect_err("write must fail").to_string();
                assert!(
                    msg.starts_with(&format!("quorum not reached: {up} of {w} acknowledged")),
                    "N={n} W={w}: {msg}"
                );
            }
            let get = c.get(0, "k", Consistency::Default).await;
            if up >= r {
                assert!(get.is_ok(), "N={n} R={r} with {up} up: {get:?}");
            } else {
                let msg = get.expect_err("read must fail").to_string();
                assert!(
                    msg.starts_with(&format!("quorum not reached: {up} of {r} acknowledged")),
                    "N={n} R={r}: {msg}"
                );
            }
            // Per-request levels override the configured R and W.
            for (level, needed) in [
                (Consistency::One, 1),
                (Consistency::Quorum, n / 2 + 1),
                (Consistency::All, n),
            ] {
                let ok = c.put(0, "k2", "v", b"", level).await.is_ok();
                assert_eq!(ok, up >= needed, "N={n} {level:?} with {up} up");
                let ok = c.get(0, "k2", level).await.is_ok();
                assert_eq!(ok, up >= needed, "N={n} read {level:?} with {up} up");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_replica_gets_a_hint_and_receives_it_when_back() {
    let c = cluster(3, settings(3, 2, 2));
    c.net.set_down("n2", true);
    for i in 0..20 {
        c.put(
            0,
            &format!("key-{i}"),
            &format!("v{i}"),
            b"",
            Consistency::Default,
        )
        .await
        .expect("W=2 with one node down");
    }
    c.wait_for_hints(20).await;
    assert_eq!(c.nodes[0].pending_hints(), vec![("n2".to_string(), 20)]);
    assert!(
        c.local(2, "key-0").await.is_none(),
        "the down node missed the writes"
    );

    // While n2 is still down, replay delivers nothing and keeps the hints.
    assert_eq!(c.replay_all().await, 0);
    assert_eq!(c.nodes[0].pending_hints(), vec![("n2".to_string(), 20)]);

    c.net.set_down("n2", false);
    assert_eq!(c.replay_all().await, 20);
    assert!(
        c.nodes[0].pending_hints().is_empty(),
        "delivered hints are removed"
    );
    for i in 0..20 {
        assert_eq!(
            c.local_values(2, &format!("key-{i}")).await,
            vec![format!("v{i}")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_count_toward_w_only_when_configured() {
    let c = cluster(3, settings(3, 1, 3));
    c.net.set_down("n2", true);
    let err = c
        .put(0, "k", "v", b"", Consistency::Default)
        .await
        .expect_err("W=3 with a node down");
    assert!(err.to_string().contains("2 of 3"), "{err}");
    assert!(err.to_string().contains("kept as a hint"), "{err}");

    let mut sloppy = settings(3, 1, 3);
    sloppy.hints_count_toward_w = true;
    let c = cluster(3, sloppy);
    c.net.set_down("n2", true);
    c.put(0, "k", "v", b"", Consistency::Default)
        .await
        .expect("the hint counts toward W");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_misses_its_quorum_still_lands_on_the_replicas_that_got_it() {
    let mut s = settings(3, 1, 3);
    s.hinted_handoff = false;
    let c = cluster(3, s);
    c.net.set_down("n2", true);
    let err = c
        .put(0, "k", "v", b"", Consistency::Default)
        .await
        .expect_err("W=3 with a node down");
    assert!(
        err.to_string()
            .starts_with("quorum not reached: 2 of 3 acknowledged"),
        "{err}"
    );
    assert_eq!(c.local_values(0, "k").await, vec!["v"]);
    assert_eq!(c.local_values(1, "k").await, vec!["v"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_is_repaired_by_a_read() {
    let mut s = settings(3, 3, 2);
    s.hinted_handoff = false;
    s.read_repair = ReadRepair::Blocking;
    let c = cluster(3, s);
    c.net.set_down("n1", true);
    c.put(0, "k", "new", b"", Consistency::Default)
        .await
        .unwrap();
    c.net.set_down("n1", false);
    assert!(c.local(1, "k").await.is_none(), "n1 is stale");
    let (values, _) = c.get(2, "k", Consistency::All).await.unwrap();
    assert_eq!(values, vec!["new"]);
    assert_eq!(
        c.local(1, "k").await,
        c.local(0, "k").await,
        "read repair brought n1 up to date"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_become_siblings_and_a_write_with_context_resolves_them() {
    let c = cluster(3, settings(3, 2, 2));
    c.put(0, "k", "from-n0", b"", Consistency::Default)
        .await
        .unwrap();
    c.put(1, "k", "from-n1", b"", Consistency::Default)
        .await
        .unwrap();
    let (values, ctx) = c.get(2, "k", Consistency::All).await.unwrap();
    assert_eq!(
        values,
        vec!["from-n0", "from-n1"],
        "no acknowledged write disappears"
    );
    c.put(2, "k", "resolved", &ctx, Consistency::All)
        .await
        .unwrap();
    let (values, _) = c.get(0, "k", Consistency::All).await.unwrap();
    assert_eq!(values, vec!["resolved"]);
    for i in 0..3 {
        assert_eq!(
            c.local_values(i, "k").await,
            vec!["resolved"],
            "replica n{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_after_a_partition_heals() {
    let c = cluster(3, settings(3, 2, 2));
    c.put(0, "k", "before", b"", Consistency::All)
        .await
        .unwrap();
    let (_, ctx) = c.get(0, "k", Consistency::All).await.unwrap();
    c.net.partition(&[&["n0"], &["n1", "n2"]]);
    // Both sides update the value they read; the minority side at ONE.
    c.put(0, "k", "minority", &ctx, Consistency::One)
        .await
        .unwrap();
    c.put(1, "k", "majority", &ctx, Consistency::Quorum)
        .await
        .unwrap();
    assert!(
        c.put(0, "other", "x", b"", Consistency::Quorum)
            .await
            .is_err(),
        "n0 alone has no quorum"
    );
    // n0 holds hints for n1 and n2 for each of its two writes, n1 one for n0.
    c.wait_for_hints(5).await;
    c.net.heal();
    assert_eq!(c.replay_all().await, 5, "hints cross the healed partition");
    let expected = c.local(0, "k").await;
    assert_eq!(
        expected.as_ref().map(|r| r.values().count()),
        Some(2),
        "both updates survive as siblings"
    );
    for i in 1..3 {
        assert_eq!(c.local(i, "k").await, expected, "replica n{i} converged");
    }
    let (values, _) = c.get(2, "k", Consistency::All).await.unwrap();
    assert_eq!(values, vec!["majority", "minority"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lww_keeps_one_value() {
    let mut s = settings(3, 2, 2);
    s.conflict = distkv_node::version::ConflictPolicy::LastWriteWins;
    let c = cluster(3, s);
    c.put(0, "k", "first", b"", Consistency::All).await.unwrap();
    c.put(1, "k", "second", b"", Consistency::All)
        .await
        .unwrap();
    let (values, _) = c.get(2, "k", Consistency::All).await.unwrap();
    assert_eq!(values, vec!["second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lives_on_exactly_n_of_five_nodes() {
    let c = cluster(5, settings(3, 2, 2));
    for i in 0..50 {
        let key = format!("k{i}");
        c.put(i % 5, &key, "v", b"", Consistency::All)
            .await
            .unwrap();
        let mut holders = 0;
        for n in 0..5 {
            if c.local(n, &key).await.is_some() {
                holders += 1;
            }
        }
        assert_eq!(holders, 3, "{key}");
    }
}

/// With a third of the messages to one replica dropped, every acknowledged write is still
/// read back, and once hints are replayed every replica holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_messages_lose_no_acknowledged_write() {
    let c = cluster(3, settings(3, 2, 2));
    c.net.set_drop_every("n2", 3);
    for i in 0..60 {
        c.put(
            i % 3,
            &format!("k{i}"),
            &format!("v{i}"),
            b"",
            Consistency::Default,
        )
        .await
        .expect("W=2 of 3");
    }
    for i in 0..60 {
        let (values, _) = c
            .get(i % 3, &format!("k{i}"), Consistency::Quorum)
            .await
            .expect("R=2");
        assert_eq!(values, vec![format!("v{i}")]);
    }
    c.net.set_drop_every("n2", 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.replay_all().await;
        let pending: u64 = c
            .nodes
            .iter()
            .flat_map(|n| n.pending_hints())
            .map(|(_, n)| n)
            .sum();
        if pending == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{pending} hints left");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 0..60 {
        assert_eq!(
            c.local_values(2, &format!("k{i}")).await,
            vec![format!("v{i}")],
            "k{i} on n2"
        );
    }
}

/// A context crafted to claim a counter no node could have issued (the largest one, or
/// one far ahead of every clock) is refused; every later write of the key, through every
/// node at every consistency level, is then readable (none is hidden by its own context).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_context_is_refused_and_hides_no_later_write() {
    use distkv_node::version::{Dot, VersionVector};
    let c = cluster(3, settings(3, 2, 2));
    c.put(0, "k", "v0", b"", Consistency::Default)
        .await
        .unwrap();
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for counter in [u64::MAX, u64::MAX / 2, now_micros + 2 * 3_600_000_000] {
        for target in 0..3 {
            let mut evil = VersionVector::new();
            evil.add(&Dot {
                actor: id(target),
                counter,
            });
            let err = c
                .put(0, "k", "evil", &evil.to_context(), Consistency::Default)
                .await
                .expect_err("a counter no node issued is refused");
            assert!(matches!(err, NodeError::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains("no node issued it"), "{err}");
        }
    }
    for via in 0..3 {
        for level in [Consistency::One, Consistency::Quorum, Consistency::All] {
            // The context comes from every replica: a blind write acknowledged at ONE
            // may not have reached a quorum yet, and a context that misses it would
            // (rightly) leave it as a sibling.
            let (_, ctx) = c.get(via, "k", Consistency::All).await.unwrap();
            let value = format!("v-{via}-{level:?}");
            c.put(via, "k", &value, &ctx, level).await.unwrap();
            for reader in 0..3 {
                let (values, _) = c.get(reader, "k", Consistency::All).await.unwrap();
                assert_eq!(values, vec![value.clone()], "read through n{reader}");
            }
            // A blind write is kept beside the value as a sibling, never hidden.
            let blind = format!("blind-{via}-{level:?}");
            c.put(via, "k", &blind, b"", level).await.unwrap();
            let (mut values, _) = c.get((via + 1) % 3, "k", Consistency::All).await.unwrap();
            values.sort();
            let mut expected = vec![value, blind];
            expected.sort();
            assert_eq!(values, expected);
        }
    }
}

fn limited(max_siblings: usize) -> NodeSettings {
    let mut s = settings(3, 2, 2);
    s.max_siblings = max_siblings;
    s
}

/// limits.max_siblings: blind writes grow a key up to the limit; the next one is refused
/// by every replica with FAILED_PRECONDITION naming the count, the limit and the way
/// out, and nothing is written; a write with the context of a read resolves the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_writes_past_max_siblings_are_refused_until_a_write_with_context_resolves_them() {
    let c = cluster(3, limited(3));
    // Concurrent blind writes through every node: three siblings.
    let values: Vec<String> = (0..3).map(|i| format!("v{i}")).collect();
    let writes: Vec<_> = (0..3)
        .map(|i| c.put(i, "k", &values[i], b"", Consistency::All))
        .collect();
    for w in futures::future::join_all(writes).await {
        w.expect("within the limit");
    }
    for via in 0..3 {
        let err = c
            .put(via, "k", "one-too-many", b"", Consistency::Default)
            .await
            .expect_err("a fourth sibling is refused");
        match &err {
            NodeError::TooManySiblings {
                held: 3,
                limit: 3,
                refused: 3,
                stored: 0,
                may_land: false,
                ..
            } => {}
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("holds 3 siblings")
                && msg.contains("limits.max_siblings = 3")
                && msg.contains("nothing was written")
                && msg.contains("write with the context"),
            "{msg}"
        );
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }
    // A blind delete adds a tombstone sibling: refused the same way.
    let err = c.nodes[1]
        .put(b"k".to_vec(), None, b"", Consistency::One)
        .await
        .expect_err("a blind delete past the limit");
    assert!(matches!(err, NodeError::TooManySiblings { .. }), "{err}");
    let (values, ctx) = c.get(2, "k", Consistency::All).await.unwrap();
    assert_eq!(
        values,
        vec!["v0", "v1", "v2"],
        "the refused writes left no trace"
    );
    for i in 0..3 {
        assert_eq!(c.local_values(i, "k").await, vec!["v0", "v1", "v2"]);
    }

    // A write with the read's context replaces the three siblings.
    c.put(0, "k", "resolved", &ctx, Consistency::All)
        .await
        .expect("a write with context is never refused");
    let (values, _) = c.get(1, "k", Consistency::All).await.unwrap();
    assert_eq!(values, vec!["resolved"]);
    c.put(1, "k", "blind-again", b"", Consistency::All)
        .await
        .expect("room for siblings again");
}

/// Records acknowledged elsewhere are never refused for their sibling count: hints
/// delivered after a partition, and read repair, store a key past limits.max_siblings on
/// every replica (refusing them would hide acknowledged writes), after which blind
/// client writes are refused until the key is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_read_repair_store_records_past_max_siblings() {
    let mut s = limited(3);
    s.read_repair = ReadRepair::Blocking;
    let c = cluster(3, s);
    for key in ["hinted", "repaired"] {
        c.put(0, key, "base", b"", Consistency::All).await.unwrap();
    }
    c.net.partition(&[&["n0", "n1"], &["n2"]]);
    // Each side adds two blind siblings at ONE: three on each side, within the limit.
    for key in ["hinted", "repaired"] {
        for i in 0..2 {
            c.put(0, key, &format!("left{i}"), b"", Consistency::One)
                .await
                .expect("left side");
            c.put(2, key, &format!("right{i}"), b"", Consistency::One)
                .await
                .expect("right side");
        }
    }
    // n0 keeps 4 hints for n2; n2 keeps 8, for n0 and for n1 (two writes per key).
    c.wait_for_hints(12).await;
    c.net.heal();
    let all = vec!["base", "left0", "left1", "right0", "right1"];

    // Read repair first, for one key: merged at ALL, then written back to every
    // replica as a repair: five siblings everywhere, past the limit of three.
    let (values, _) = c.get(1, "repaired", Consistency::All).await.unwrap();
    assert_eq!(values, all);
    for i in 0..3 {
        assert_eq!(c.local_values(i, "repaired").await, all, "n{i} repaired");
    }

    // Hint delivery, for the other key: every hint is stored although it takes each
    // replica past the limit.
    assert_eq!(c.replay_all().await, 12, "no hint is refused");
    for i in 0..3 {
        assert_eq!(
            c.local_values(i, "hinted").await,
            all,
            "n{i} holds every hint"
        );
    }

    // Past the limit, blind writes are refused; a write with context resolves.
    let err = c
        .put(1, "hinted", "more", b"", Consistency::Default)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            NodeError::TooManySiblings {
                held: 5,
                limit: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let (_, ctx) = c.get(0, "hinted", Consistency::All).await.unwrap();
    c.put(2, "hinted", "resolved", &ctx, Consistency::All)
        .await
        .unwrap();
    assert_eq!(
        c.get(1, "hinted", Consistency::All).await.unwrap().0,
        vec!["resolved"]
    );
}

/// When some replicas refuse a client write and others store it (here a replica that
/// missed earlier siblings), the write succeeds only with W replicas that stored it;
/// otherwise the error says it may still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_some_replicas_refuse_needs_w_that_stored_it() {
    let c = cluster(3, limited(2));
    for key in ["k", "j"] {
        c.put(0, key, "base", b"", Consistency::All).await.unwrap();
    }
    // n2 misses a sibling: n0 and n1 hold two, n2 one.
    c.net.set_down("n2", true);
    for key in ["k", "j"] {
        c.put(0, key, "second", b"", Consistency::Default)
            .await
            .unwrap();
    }
    // Once n0 kept its hints, its calls to n2 have failed: n2 missed both writes (the
    // hints are never replayed in this test).
    c.wait_for_hints(2).await;
    c.net.set_down("n2", false);
    for key in ["k", "j"] {
        assert_eq!(
            c.local_values(2, key).await,
            vec!["base"],
            "n2 missed {key}"
        );
    }
    // A blind write: n0 and n1 refuse (it would make three), n2 stores it.
    let err = c
        .put(2, "k", "third", b"", Consistency::Default)
        .await
        .expect_err("one replica stored it, W is 2");
    match &err {
        NodeError::TooManySiblings {
            refused: 2,
            stored: 1,
            needed: 2,
            may_land: true,
            ..
        } => {}
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("may still appear"), "{err}");
    assert_eq!(c.local_values(2, "k").await, vec!["base", "third"]);
    assert_eq!(c.local_values(0, "k").await, vec!["base", "second"]);
    // At ONE, n2's acknowledgement is enough: success although two replicas refused
    // (they learn the write by read repair or anti-entropy, which are never refused).
    c.put(2, "j", "third", b"", Consistency::One)
        .await
        .expect("W=1 stored by n2");
    assert_eq!(c.local_values(2, "j").await, vec!["base", "third"]);
    assert_eq!(c.local_values(1, "j").await, vec!["base", "second"]);
}
