//! In-process transport with fault injection, for fast, deterministic cluster tests.
//!
//! Every node of a test cluster registers its [`PeerHandler`] on one [`InMemoryNetwork`]
//! and gets an [`InMemoryTransport`] bound to its own id. Faults are set on the network:
//! a node taken down, a link cut in one direction, a partition into groups, a delay.
//! A call across a fault fails at once with [`PeerError::Unreachable`], so tests need
//! no sleeps; a delay uses `tokio::time::sleep` (pair it with a paused tokio clock).
//! Every call, whatever its kind, goes through the same faults.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use distkv_proto::v1::{peer_request, peer_response, PeerRequest, PeerResponse};
use parking_lot::RwLock;
use prost::Message;

use crate::transport::DEFAULT_MAX_MESSAGE_BYTES;
use crate::{NodeInfo, PeerError, PeerHandler, Transport};

#[derive(Default)]
struct Faults {
    down: HashSet<String>,
    cut: HashSet<(String, String)>,
    partition: Option<Vec<HashSet<String>>>,
    delay: HashMap<String, Duration>,
    /// Per target: drop one call in every `n` (n, calls seen so far).
    drop_every: HashMap<String, (u64, u64)>,
}

impl Faults {
    fn blocks(&self, from: &str, to: &str) -> Option<&'static str> {
        if self.down.contains(to) || self.down.contains(from) {
            return Some("node is down");
        }
        if self.cut.contains(&(from.to_string(), to.to_string())) {
            return Some("link is cut");
        }
        if let Some(groups) = &self.partition {
            let group_of = |id: &str| groups.iter().position(|g| g.contains(id));
            if group_of(from) != group_of(to) {
                return Some("network is partitioned");
            }
        }
        None
    }
}

/// The shared in-memory network of a test cluster.
pub struct InMemoryNetwork {
    handlers: RwLock<HashMap<String, Arc<dyn PeerHandler>>>,
    faults: RwLock<Faults>,
    calls: AtomicU64,
    max_message_bytes: AtomicUsize,
}

impl InMemoryNetwork {
    /// An empty network with the default message limit (64 MiB).
    pub fn new() -> Arc<Self> {
        Arc::new(InMemoryNetwork {
            handlers: RwLock::default(),
            faults: RwLock::default(),
            calls: AtomicU64::new(0),
            max_message_bytes: AtomicUsize::new(DEFAULT_MAX_MESSAGE_BYTES),
        })
    }

    /// Sets the message limit: a request or response body whose encoded envelope
    /// (prost `encoded_len` of the `PeerRequest` / `PeerResponse`) exceeds `limit` bytes
    /// fails with [`PeerError::TooLarge`], as over gRPC.
    pub fn set_max_message_bytes(&self, limit: usize) {
        self.max_message_bytes.store(limit, Ordering::Relaxed);
    }

    /// Registers the handler that answers calls to node `id`.
    pub fn register(&self, id: &str, handler: Arc<dyn PeerHandler>) {
        self.handlers.write().insert(id.to_string(), handler);
    }

    /// A transport that calls from node `id`.
    pub fn transport(self: &Arc<Self>, id: &str) -> InMemoryTransport {
        InMemoryTransport {
            network: self.clone(),
            from: id.to_string(),
        }
    }

    /// Takes node `id` down (`true`) or brings it back (`false`): calls to and from it fail.
    pub fn set_down(&self, id: &str, down: bool) {
        let mut f = self.faults.write();
        if down {
            f.down.insert(id.to_string());
        } else {
            f.down.remove(id);
        }
    }

    /// Cuts (`true`) or restores the link from `from` to `to` (one direction).
    pub fn set_cut(&self, from: &str, to: &str, cut: bool) {
        let mut f = self.faults.write();
        let link = (from.to_string(), to.to_string());
        if cut {
            f.cut.insert(link);
        } else {
            f.cut.remove(&link);
        }
    }

    /// Splits the network into groups that cannot reach each other. A node named in no
    /// group is alone.
    pub fn partition(&self, groups: &[&[&str]]) {
        let groups = groups
            .iter()
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .collect();
        self.faults.write().partition = Some(groups);
    }

    /// Removes the partition.
    pub fn heal(&self) {
        self.faults.write().partition = None;
    }

    /// Drops every `n`-th call to node `id` (deterministically: the n-th, 2n-th, ...
    /// call since this was set); `n = 0` stops dropping.
    pub fn set_drop_every(&self, id: &str, n: u64) {
        let mut f = self.faults.write();
        if n == 0 {
            f.drop_every.remove(id);
        } else {
            f.drop_every.insert(id.to_string(), (n, 0));
        }
    }

    /// Delays every call to node `id` by `delay` (zero removes the delay).
    pub fn set_delay(&self, id: &str, delay: Duration) {
        let mut f = self.faults.write();
        if delay.is_zero() {
            f.delay.remove(id);
        } else {
            f.delay.insert(id.to_string(), delay);
        }
    }

    /// Number of calls delivered so far (for tests that count messages).
    pub fn calls_delivered(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn route(
        &self,
        from: &str,
        to: &NodeInfo,
        timeout: Duration,
    ) -> Result<(Arc<dyn PeerHandler>, Duration), PeerError> {
        let (blocked, delay) = {
            let mut f = self.faults.write();
            let mut blocked = f.blocks(from, &to.id);
            if let Some((n, seen)) = f.drop_every.get_mut(&to.id) {
                *seen += 1;
                if blocked.is_none() && (*seen).is_multiple_of(*n) {
                    blocked = Some("message dropped");
                }
            }
            (blocked, f.delay.get(&to.id).copied())
        };
        if let Some(reason) = blocked {
            return Err(PeerError::Unreachable {
                peer: to.id.clone(),
                reason: reason.to_string(),
            });
        }
        let mut left = timeout;
        if let Some(d) = delay {
            if d >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(PeerError::Timeout {
                    peer: to.id.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(d).await;
            left = timeout - d;
        }
        let handler = self.handlers.read().get(&to.id).cloned();
        let handler = handler.ok_or_else(|| PeerError::Unreachable {
            peer: to.id.clone(),
            reason: "no node registered under this id".to_string(),
        })?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok((handler, left))
    }
}

/// The in-memory transport of one node.
pub struct InMemoryTransport {
    network: Arc<InMemoryNetwork>,
    from: String,
}

fn too_large(to: &NodeInfo, bytes: usize, limit: usize) -> PeerError {
    PeerError::TooLarge {
        peer: to.id.clone(),
        bytes,
        limit,
    }
}

#[async_trait]
impl Transport for InMemoryTransport {
    fn local_id(&self) -> &str {
        &self.from
    }

    async fn send(
        &self,
        to: &NodeInfo,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, PeerError> {
        let limit = self.network.max_message_bytes.load(Ordering::Relaxed);
        let envelope = PeerRequest {
            from_node: self.from.clone(),
            body: Some(body),
        };
        let bytes = envelope.encoded_len();
        if bytes > limit {
            return Err(too_large(to, bytes, limit));
        }
        let PeerRequest {
            from_node,
            body: Some(body),
        } = envelope
        else {
            unreachable!("the envelope was built with a body just above")
        };
        let (handler, left) = self.network.route(&self.from, to, timeout).await?;
        let answer = tokio::time::timeout(left, handler.handle(&from_node, body))
            .await
            .map_err(|_| PeerError::Timeout {
                peer: to.id.clone(),
                timeout,
            })?
            .map_err(|e| e.into_peer_error(&to.id))?;
        let response = PeerResponse { body: Some(answer) };
        let bytes = response.encoded_len();
        if bytes > limit {
            return Err(too_large(to, bytes, limit));
        }
        response.body.ok_or_else(|| PeerError::Failed {
            peer: to.id.clone(),
            message: "answered an envelope with no body".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{range_checksum, HandlerError, TransportExt};
    use bytes::Bytes;
    use distkv_proto::v1::{
        KeyRecord, PeerReadRequest, PingRequest, PingResponse, RangePullRequest, RangePullResponse,
        ReplicateRequest, ReplicateResponse,
    };

    /// Answers pings with its id, accepts replicates, refuses reads, and serves range pulls
    /// in pages from `data` (the cursor is the last key sent; tokens are ignored).
    struct TestNode {
        id: String,
        data: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    impl TestNode {
        fn new(id: &str) -> Arc<Self> {
            Arc::new(TestNode {
                id: id.into(),
                data: (0..10u8).map(|i| (vec![b'k', i], vec![i; 3])).collect(),
            })
        }

        fn page(&self, r: &RangePullRequest) -> RangePullResponse {
            use std::ops::Bound::{Excluded, Unbounded};
            let start = if r.after.is_empty() {
                Unbounded
            } else {
                Excluded(r.after.to_vec())
            };
            let mut rest = self.data.range((start, Unbounded)).peekable();
            let mut entries = Vec::new();
            while entries.len() < r.max_entries as usize {
                let Some((k, v)) = rest.next() else { break };
                entries.push(KeyRecord {
                    key: Bytes::from(k.clone()),
                    record: Bytes::from(v.clone()),
                });
            }
            let done = rest.peek().is_none();
            RangePullResponse {
                next: entries.last().map(|e| e.key.clone()).unwrap_or_default(),
                checksum: range_checksum(&entries),
                entries,
                done,
            }
        }
    }

    #[async_trait]
    impl PeerHandler for TestNode {
        async fn handle(
            &self,
            _from: &str,
            request: peer_request::Body,
        ) -> Result<peer_response::Body, HandlerError> {
            use peer_request::Body as Req;
            use peer_response::Body as Resp;
            match request {
                Req::Ping(_) => Ok(Resp::Ping(PingResponse {
                    node_id: self.id.clone(),
                    generation: 0,
                })),
                Req::Replicate(_) => Ok(Resp::Replicate(ReplicateResponse {})),
                Req::Merge(_) => Ok(Resp::Merge(Default::default())),
                Req::Read(_) => Err(HandlerError::Refused("read refused".into())),
                Req::RangePull(r) => Ok(Resp::RangePull(self.page(&r))),
                Req::Gossip(_) | Req::LayoutPull(_) | Req::LayoutChange(_) | Req::Operator(_) => {
                    Err(HandlerError::Refused("not served here".into()))
                }
                Req::AntiEntropy(_) => Err(HandlerError::Refused("anti-entropy refused".into())),
                Req::RangeSize(_) => Err(HandlerError::Refused("range size refused".into())),
                Req::GcPush(_) | Req::GcPurge(_) => {
                    Err(HandlerError::Refused("tombstone GC refused".into()))
                }
            }
        }
    }

    fn info(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:1"),
        }
    }

    const T: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn faults_block_calls_and_heal() {
        let net = InMemoryNetwork::new();
        for id in ["a", "b", "c"] {
            net.register(id, TestNode::new(id));
        }
        let ta = net.transport("a");
        assert_eq!(ta.local_id(), "a");
        let ping = || PingRequest {};
        assert_eq!(ta.call(&info("b"), ping(), T).await.unwrap().node_id, "b");
        net.set_down("b", true);
        assert!(matches!(
            ta.call(&info("b"), ping(), T).await,
            Err(PeerError::Unreachable { .. })
        ));
        net.set_down("b", false);
        net.partition(&[&["a"], &["b", "c"]]);
        assert!(ta.call(&info("c"), ping(), T).await.is_err());
        assert!(net.transport("b").call(&info("c"), ping(), T).await.is_ok());
        net.heal();
        net.set_cut("a", "c", true);
        assert!(ta.call(&info("c"), ping(), T).await.is_err());
        assert!(net.transport("c").call(&info("a"), ping(), T).await.is_ok());
        let err = net
            .transport("c")
            .call(&info("a"), PeerReadRequest::default(), T)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PeerError::Refused {
                peer: "a".into(),
                reason: "read refused".into()
            }
        );
    }

    #[tokio::test]
    async fn every_nth_call_is_dropped() {
        let net = InMemoryNetwork::new();
        net.register("b", TestNode::new("b"));
        net.set_drop_every("b", 3);
        let t = net.transport("a");
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(t.call(&info("b"), PingRequest {}, T).await.is_ok());
        }
        assert_eq!(outcomes, vec![true, true, false, true, true, false]);
        assert_eq!(net.calls_delivered(), 4);
        net.set_drop_every("b", 0);
        assert!(t.call(&info("b"), PingRequest {}, T).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_past_the_timeout_is_a_timeout() {
        let net = InMemoryNetwork::new();
        net.register("b", TestNode::new("b"));
        net.set_delay("b", Duration::from_secs(10));
        let err = net
            .transport("a")
            .call(&info("b"), PingRequest {}, T)
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_paged_range_pull_resumes_from_next_and_meets_the_same_faults() {
        let net = InMemoryNetwork::new();
        net.register("b", TestNode::new("b"));
        let t = net.transport("a");
        let mut request = RangePullRequest {
            max_entries: 4,
            max_bytes: 1 << 20,
            ..Default::default()
        };
        let mut pulled = Vec::new();
        let mut pages = 0;
        loop {
            let page = t.call(&info("b"), request.clone(), T).await.unwrap();
            assert_eq!(page.checksum, range_checksum(&page.entries));
            pulled.extend(page.entries.iter().map(|e| e.key.to_vec()));
            pages += 1;
            if page.done {
                break;
            }
            request.after = page.next;
        }
        assert_eq!(pages, 3);
        let expected: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'k', i]).collect();
        assert_eq!(pulled, expected, "every key once, in order");

        net.set_down("b", true);
        assert!(matches!(
            t.call(&info("b"), request.clone(), T).await,
            Err(PeerError::Unreachable { .. })
        ));
        net.set_down("b", false);
        net.set_drop_every("b", 1);
        assert!(matches!(
            t.call(&info("b"), request.clone(), T).await,
            Err(PeerError::Unreachable { .. })
        ));
        net.set_drop_every("b", 0);
        net.partition(&[&["a"], &["b"]]);
        assert!(t.call(&info("b"), request.clone(), T).await.is_err());
        net.heal();
        assert!(t.call(&info("b"), request, T).await.is_ok());
    }

    #[tokio::test]
    async fn bodies_over_the_message_limit_are_too_large() {
        let net = InMemoryNetwork::new();
        net.register("b", TestNode::new("b"));
        net.set_max_message_bytes(64);
        let t = net.transport("a");
        let big = ReplicateRequest {
            records: vec![KeyRecord {
                key: Bytes::from_static(b"k"),
                record: Bytes::from(vec![0u8; 100]),
            }],
        };
        let delivered = net.calls_delivered();
        match t.call(&info("b"), big, T).await {
            Err(PeerError::TooLarge { peer, bytes, limit }) => {
                assert_eq!((peer.as_str(), limit), ("b", 64));
                assert!(bytes > 100, "{bytes}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(net.calls_delivered(), delivered, "not delivered");
        // A small request whose answer is over the limit: a 10-entry page is ~110 bytes.
        let pull = RangePullRequest {
            max_entries: 10,
            ..Default::default()
        };
        let err = t.call(&info("b"), pull, T).await.unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");
        assert!(t.call(&info("b"), PingRequest {}, T).await.is_ok());
    }
}
