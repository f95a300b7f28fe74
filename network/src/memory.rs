//! In-process transport with fault injection, for fast, deterministic cluster tests.
//!
//! Every node of a test cluster registers its [`PeerHandler`] on one [`InMemoryNetwork`]
//! and gets an [`InMemoryTransport`] bound to its own id. Faults are set on the network:
//! a node taken down, a link cut in one direction, a partition into groups, a delay.
//! A call across a fault fails at once with [`TransportError::Unreachable`], so tests need
//! no sleeps; a delay uses `tokio::time::sleep` (pair it with a paused tokio clock).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distkv_proto::v1::{
    PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    ReplicateResponse,
};
use parking_lot::RwLock;

use crate::{NodeInfo, PeerHandler, Transport, TransportError};

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
#[derive(Default)]
pub struct InMemoryNetwork {
    handlers: RwLock<HashMap<String, Arc<dyn PeerHandler>>>,
    faults: RwLock<Faults>,
    calls: std::sync::atomic::AtomicU64,
}

impl InMemoryNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn route(
        &self,
        from: &str,
        to: &NodeInfo,
        timeout: Duration,
    ) -> Result<Arc<dyn PeerHandler>, TransportError> {
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
            return Err(TransportError::Unreachable {
                peer: to.address.clone(),
                reason: reason.to_string(),
            });
        }
        if let Some(d) = delay {
            if d >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout {
                    peer: to.address.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(d).await;
        }
        let handler = self.handlers.read().get(&to.id).cloned();
        let handler = handler.ok_or_else(|| TransportError::Unreachable {
            peer: to.address.clone(),
            reason: "no node registered under this id".to_string(),
        })?;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(handler)
    }
}

/// The in-memory transport of one node.
pub struct InMemoryTransport {
    network: Arc<InMemoryNetwork>,
    from: String,
}

fn remote(to: &NodeInfo, message: String) -> TransportError {
    TransportError::Remote {
        peer: to.address.clone(),
        message,
    }
}

#[async_trait]
impl Transport for InMemoryTransport {
    async fn replicate(
        &self,
        to: &NodeInfo,
        request: ReplicateRequest,
        timeout: Duration,
    ) -> Result<ReplicateResponse, TransportError> {
        let h = self.network.route(&self.from, to, timeout).await?;
        h.replicate(request).await.map_err(|m| remote(to, m))
    }

    async fn read(
        &self,
        to: &NodeInfo,
        request: PeerReadRequest,
        timeout: Duration,
    ) -> Result<PeerReadResponse, TransportError> {
        let h = self.network.route(&self.from, to, timeout).await?;
        h.read(request).await.map_err(|m| remote(to, m))
    }

    async fn ping(
        &self,
        to: &NodeInfo,
        request: PingRequest,
        timeout: Duration,
    ) -> Result<PingResponse, TransportError> {
        let h = self.network.route(&self.from, to, timeout).await?;
        h.ping(request).await.map_err(|m| remote(to, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(String);

    #[async_trait]
    impl PeerHandler for Echo {
        async fn replicate(&self, _: ReplicateRequest) -> Result<ReplicateResponse, String> {
            Ok(ReplicateResponse {})
        }
        async fn read(&self, _: PeerReadRequest) -> Result<PeerReadResponse, String> {
            Err("read refused".into())
        }
        async fn ping(&self, _: PingRequest) -> Result<PingResponse, String> {
            Ok(PingResponse {
                node_id: self.0.clone(),
            })
        }
    }

    fn info(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:1"),
        }
    }

    #[tokio::test]
    async fn faults_block_calls_and_heal() {
        let net = InMemoryNetwork::new();
        for id in ["a", "b", "c"] {
            net.register(id, Arc::new(Echo(id.into())));
        }
        let ta = net.transport("a");
        let t = Duration::from_secs(1);
        let ping = || PingRequest {
            from_node: "a".into(),
        };
        assert_eq!(ta.ping(&info("b"), ping(), t).await.unwrap().node_id, "b");
        net.set_down("b", true);
        assert!(matches!(
            ta.ping(&info("b"), ping(), t).await,
            Err(TransportError::Unreachable { .. })
        ));
        net.set_down("b", false);
        net.partition(&[&["a"], &["b", "c"]]);
        assert!(ta.ping(&info("c"), ping(), t).await.is_err());
        assert!(net.transport("b").ping(&info("c"), ping(), t).await.is_ok());
        net.heal();
        net.set_cut("a", "c", true);
        assert!(ta.ping(&info("c"), ping(), t).await.is_err());
        assert!(net.transport("c").ping(&info("a"), ping(), t).await.is_ok());
        let err = net
            .transport("c")
            .read(&info("a"), PeerReadRequest::default(), t)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read refused"), "{err}");
    }

    #[tokio::test]
    async fn every_nth_call_is_dropped() {
        let net = InMemoryNetwork::new();
        net.register("b", Arc::new(Echo("b".into())));
        net.set_drop_every("b", 3);
        let t = net.transport("a");
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(
                t.ping(&info("b"), PingRequest::default(), Duration::from_secs(1))
                    .await
                    .is_ok(),
            );
        }
        assert_eq!(outcomes, vec![true, true, false, true, true, false]);
        net.set_drop_every("b", 0);
        assert!(t
            .ping(&info("b"), PingRequest::default(), Duration::from_secs(1))
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_past_the_timeout_is_a_timeout() {
        let net = InMemoryNetwork::new();
        net.register("b", Arc::new(Echo("b".into())));
        net.set_delay("b", Duration::from_secs(10));
        let err = net
            .transport("a")
            .ping(&info("b"), PingRequest::default(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
}
