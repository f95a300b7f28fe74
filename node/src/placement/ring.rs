//! The default [`Partitioner`]: a consistent-hash ring with virtual nodes.
//!
//! Every key hashes to a 64-bit token with XXH3 (a fixed, platform-independent function,
//! so every node and every version computes the same ring). Each physical node owns
//! `virtual_nodes` tokens on the ring, placed by hashing `"{node id}#{i}"`. A key's
//! preference list is the first N distinct physical nodes met walking clockwise from its
//! token.

use distkv_network::NodeInfo;
use xxhash_rust::xxh3::xxh3_64;

use super::{Partitioner, TokenRange};

/// Consistent hashing with virtual nodes. Immutable once built.
pub struct HashRing {
    version: u64,
    nodes: Vec<NodeInfo>,
    /// (token, index into `nodes`), sorted by token.
    tokens: Vec<(u64, usize)>,
}

/// The token of a key: XXH3-64 of its bytes.
pub fn key_token(key: &[u8]) -> u64 {
    xxh3_64(key)
}

impl Partitioner for HashRing {
    fn build(version: u64, virtual_nodes: u32, nodes: &[NodeInfo]) -> Self {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup_by(|a, b| a.id == b.id);
        let per_node = virtual_nodes.max(1) as usize;
        let mut tokens = Vec::with_capacity(nodes.len() * per_node);
        for (idx, node) in nodes.iter().enumerate() {
            for v in 0..per_node {
                tokens.push((xxh3_64(format!("{}#{v}", node.id).as_bytes()), idx));
            }
        }
        // Ties (astronomically rare) are broken by node id, the same on every node.
        tokens.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| nodes[a.1].id.cmp(&nodes[b.1].id))
        });
        HashRing {
            version,
            nodes,
            tokens,
        }
    }

    fn token(key: &[u8]) -> u64 {
        key_token(key)
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn replicas(&self, token: u64, n: usize) -> Vec<NodeInfo> {
        let want = n.min(self.nodes.len());
        let mut out: Vec<NodeInfo> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.tokens.partition_point(|&(t, _)| t < token);
        let len = self.tokens.len();
        for i in 0..len {
            let (_, idx) = self.tokens[(start + i) % len];
            let node = &self.nodes[idx];
            if !out.iter().any(|o| o.id == node.id) {
                out.push(node.clone());
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    fn ranges(&self) -> Vec<TokenRange> {
        let len = self.tokens.len();
        if len == 0 {
            return Vec::new();
        }
        if len == 1 {
            return vec![TokenRange::FULL];
        }
        // The range (previous token, this token] belongs to this token's node; the
        // first token's range wraps around from the last.
        (0..len)
            .map(|i| TokenRange {
                start: self.tokens[(i + len - 1) % len].0,
                end: self.tokens[i].0,
            })
            .collect()
    }

    fn ownership(&self) -> Vec<(String, f64)> {
        let mut owned = vec![0u128; self.nodes.len()];
        let len = self.tokens.len();
        for i in 0..len {
            let (t, idx) = self.tokens[i];
            let prev = self.tokens[(i + len - 1) % len].0;
            let width = if len == 1 {
                1u128 << 64
            } else {
                u128::from(t.wrapping_sub(prev))
            };
            owned[idx] += width;
        }
        let total = (1u128 << 64) as f64;
        self.nodes
            .iter()
            .zip(owned)
            .map(|(n, o)| (n.id.clone(), o as f64 / total))
            .collect()
    }

    fn fingerprint(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.tokens.len() * 16);
        for &(token, idx) in &self.tokens {
            bytes.extend_from_slice(&token.to_be_bytes());
            bytes.extend_from_slice(self.nodes[idx].id.as_bytes());
            bytes.push(0);
        }
        xxh3_64(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(n: usize) -> HashRing {
        let nodes: Vec<NodeInfo> = (0..n)
            .map(|i| NodeInfo {
                id: format!("node-{i}"),
                address: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        HashRing::build(n as u64, 150, &nodes)
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
        let ring = ring_of(5);
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
        assert_eq!(ring_of(2).preference_list(b"x", 3).len(), 2);
        assert!(HashRing::build(0, 150, &[])
            .preference_list(b"x", 3)
            .is_empty());
    }

    #[test]
    fn ten_nodes_share_the_ring_evenly() {
        let ring = ring_of(10);
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
        let before = ring_of(10);
        let after = ring_of(11);
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
