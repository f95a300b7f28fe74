//! The `Partitioner` contract and its default implementation, a consistent-hash ring
//! with virtual nodes.
//!
//! Every key hashes to a 64-bit token with XXH3 (a fixed, platform-independent function,
//! so every node and every version computes the same ring). Each physical node owns
//! `virtual_nodes` tokens on the ring, placed by hashing `"{node id}#{i}"`. A key's
//! preference list is the first N distinct physical nodes met walking clockwise from its
//! token.

use std::sync::Arc;

use distkv_network::{NodeInfo, Topology};
use parking_lot::RwLock;
use xxhash_rust::xxh3::xxh3_64;

/// Maps keys to the replicas that hold them.
///
/// Contract: for a given topology, the result is a pure function of the key (the same on
/// every node); the preference list holds `min(n, members)` distinct nodes, the first
/// being the key's primary owner; a topology change moves only the keys whose owners
/// changed.
pub trait Partitioner: Send + Sync + 'static {
    /// Rebuilds the partitioning for `topology`.
    fn set_topology(&self, topology: &Topology);
    /// Version of the topology currently in use (0 before the first).
    fn topology_version(&self) -> u64;
    /// The token of a key.
    fn token(&self, key: &[u8]) -> u64;
    /// The nodes that hold `key`, in preference order.
    fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeInfo>;
    /// The fraction of the token space whose primary owner is each node, by node id.
    fn ownership(&self) -> Vec<(String, f64)>;
}

/// Consistent hashing with virtual nodes.
pub struct HashRing {
    virtual_nodes: usize,
    state: RwLock<Arc<RingState>>,
}

#[derive(Default)]
struct RingState {
    version: u64,
    nodes: Vec<NodeInfo>,
    /// (token, index into `nodes`), sorted by token.
    tokens: Vec<(u64, usize)>,
}

/// The token of a key: XXH3-64 of its bytes.
pub fn key_token(key: &[u8]) -> u64 {
    xxh3_64(key)
}

impl HashRing {
    /// An empty ring with `virtual_nodes` tokens per physical node (at least 1).
    pub fn new(virtual_nodes: usize) -> Self {
        HashRing {
            virtual_nodes: virtual_nodes.max(1),
            state: RwLock::new(Arc::new(RingState::default())),
        }
    }

    /// A ring built for `topology`.
    pub fn with_topology(virtual_nodes: usize, topology: &Topology) -> Self {
        let ring = HashRing::new(virtual_nodes);
        ring.set_topology(topology);
        ring
    }
}

impl HashRing {
    /// A fingerprint of the whole ring (every token and its owner): two nodes with the
    /// same fingerprint place every key identically.
    pub fn fingerprint(&self) -> u64 {
        let state = self.state.read().clone();
        let mut bytes = Vec::with_capacity(state.tokens.len() * 16);
        for &(token, idx) in &state.tokens {
            bytes.extend_from_slice(&token.to_be_bytes());
            bytes.extend_from_slice(state.nodes[idx].id.as_bytes());
            bytes.push(0);
        }
        xxh3_64(&bytes)
    }
}

impl Partitioner for HashRing {
    fn set_topology(&self, topology: &Topology) {
        let nodes = topology.nodes.clone();
        let mut tokens = Vec::with_capacity(nodes.len() * self.virtual_nodes);
        for (idx, node) in nodes.iter().enumerate() {
            for v in 0..self.virtual_nodes {
                tokens.push((xxh3_64(format!("{}#{v}", node.id).as_bytes()), idx));
            }
        }
        // Ties (astronomically rare) are broken by node id, the same on every node.
        tokens.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| nodes[a.1].id.cmp(&nodes[b.1].id))
        });
        *self.state.write() = Arc::new(RingState {
            version: topology.version,
            nodes,
            tokens,
        });
    }

    fn topology_version(&self) -> u64 {
        self.state.read().version
    }

    fn token(&self, key: &[u8]) -> u64 {
        key_token(key)
    }

    fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeInfo> {
        let state = self.state.read().clone();
        let want = n.min(state.nodes.len());
        let mut out: Vec<NodeInfo> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let token = key_token(key);
        let start = state.tokens.partition_point(|&(t, _)| t < token);
        let len = state.tokens.len();
        for i in 0..len {
            let (_, idx) = state.tokens[(start + i) % len];
            let node = &state.nodes[idx];
            if !out.iter().any(|o| o.id == node.id) {
                out.push(node.clone());
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    fn ownership(&self) -> Vec<(String, f64)> {
        let state = self.state.read().clone();
        let mut owned = vec![0u128; state.nodes.len()];
        let len = state.tokens.len();
        for i in 0..len {
            // The range (previous token, this token] belongs to this token's node.
            let (t, idx) = state.tokens[i];
            let prev = state.tokens[(i + len - 1) % len].0;
            let width = if len == 1 {
                1u128 << 64
            } else {
                u128::from(t.wrapping_sub(prev))
            };
            owned[idx] += width;
        }
        let total = (1u128 << 64) as f64;
        state
            .nodes
            .iter()
            .zip(owned)
            .map(|(n, o)| (n.id.clone(), o as f64 / total))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(n: usize) -> Topology {
        let nodes = (0..n)
            .map(|i| NodeInfo {
                id: format!("node-{i}"),
                address: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        Topology::new(n as u64, nodes)
    }

    #[test]
    fn tokens_are_stable_across_platforms_and_versions() {
        // Fixed expectations: if these change, every existing cluster's data moves.
        assert_eq!(key_token(b""), 0x2d06800538d394c2);
        assert_eq!(key_token(b"user:42"), xxh3_64(b"user:42"));
        assert_eq!(key_token(b"hello"), 0x9555e8555c62dcfd);
    }

    #[test]
    fn preference_lists_hold_distinct_nodes() {
        let ring = HashRing::with_topology(150, &topology(5));
        for i in 0..1000 {
            let key = format!("k{i}");
            let pl = ring.preference_list(key.as_bytes(), 3);
            assert_eq!(pl.len(), 3);
            let mut ids: Vec<_> = pl.iter().map(|n| n.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3, "duplicate node for {key}");
        }
        // More replicas than nodes: every node once.
        assert_eq!(
            HashRing::with_topology(150, &topology(2))
                .preference_list(b"x", 3)
                .len(),
            2
        );
        assert!(HashRing::new(150).preference_list(b"x", 3).is_empty());
    }

    #[test]
    fn ten_nodes_share_the_ring_evenly() {
        let ring = HashRing::with_topology(150, &topology(10));
        let shares = ring.ownership();
        let total: f64 = shares.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
        for (id, share) in shares {
            let ratio = share / 0.1;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "{id} owns {ratio:.3}x the mean share"
            );
        }
    }

    #[test]
    fn an_eleventh_node_moves_about_a_eleventh_of_the_keys_and_only_to_itself() {
        let before = HashRing::with_topology(150, &topology(10));
        let after = HashRing::with_topology(150, &topology(11));
        let keys = 20_000;
        let mut moved = 0;
        for i in 0..keys {
            let key = format!("key-{i}");
            let a = &before.preference_list(key.as_bytes(), 1)[0];
            let b = &after.preference_list(key.as_bytes(), 1)[0];
            if a.id != b.id {
                moved += 1;
                assert_eq!(b.id, "node-10", "{key} moved between two old nodes");
            }
        }
        let fraction = moved as f64 / keys as f64;
        assert!(
            (0.06..=0.12).contains(&fraction),
            "moved {fraction:.3} of keys, expected ~0.091"
        );
    }
}
