//! The `Membership` contract and the static, fixed-list implementation.

use std::fmt;

/// A node of the cluster as the others know it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeInfo {
    /// Stable identity of the node; the actor in version vectors and the owner of tokens.
    pub id: String,
    /// `host:port` where peers and clients reach the node.
    pub address: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.address)
    }
}

/// Whether a node answers, as the failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Answers.
    Alive,
    /// Missed recent heartbeats; requests still go to it.
    Suspect,
    /// Considered down: writes to it become hints.
    Dead,
    /// Left the cluster for good.
    Left,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
            Liveness::Left => "left",
        })
    }
}

/// The members of the cluster at one topology version. Nodes are sorted by id, so two
/// nodes holding the same topology hold identical values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Increases with every change of membership.
    pub version: u64,
    /// Members, sorted by id, ids unique.
    pub nodes: Vec<NodeInfo>,
}

impl Topology {
    /// A topology of `nodes` (sorted and deduplicated by id here).
    pub fn new(version: u64, mut nodes: Vec<NodeInfo>) -> Self {
        nodes.sort();
        nodes.dedup_by(|a, b| a.id == b.id);
        Topology { version, nodes }
    }

    /// The member with this id.
    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Errors of membership set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A seed entry could not be understood.
    #[error("invalid seed node {entry:?}: {reason} (use HOST:PORT or ID=HOST:PORT)")]
    InvalidSeed {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two members share an id but not an address.
    #[error(
        "node id {id:?} is given for two addresses, {first} and {second}: node ids must be unique"
    )]
    DuplicateId {
        /// The id.
        id: String,
        /// One address.
        first: String,
        /// The other.
        second: String,
    },
}

/// Who is in the cluster and who is alive.
///
/// Contract: [`Membership::topology`] changes only by explicit membership operations (join,
/// leave, remove) and its version increases with each change; [`Membership::liveness`] may
/// change at any moment. Implementations are cheap to query from the hot path.
pub trait Membership: Send + Sync + 'static {
    /// This node.
    fn local(&self) -> &NodeInfo;
    /// The current topology.
    fn topology(&self) -> Topology;
    /// The version of the current topology (cheap; lets callers skip rebuilding a ring).
    fn topology_version(&self) -> u64;
    /// Liveness of a member; [`Liveness::Left`] for an unknown id.
    fn liveness(&self, id: &str) -> Liveness;
}

/// Parses one seed entry: `HOST:PORT` (the id is the address) or `ID=HOST:PORT`.
pub fn parse_seed(entry: &str) -> Result<NodeInfo, MembershipError> {
    let entry_trimmed = entry.trim();
    let (id, address) = match entry_trimmed.split_once('=') {
        Some((id, addr)) => (id.trim().to_string(), addr.trim().to_string()),
        None => (entry_trimmed.to_string(), entry_trimmed.to_string()),
    };
    let invalid = |reason: &str| MembershipError::InvalidSeed {
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() {
        return Err(invalid("the node id is empty"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("the address has no port"));
    };
    if host.is_empty() {
        return Err(invalid("the address has no host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid("the port is not a number from 0 to 65535"));
    }
    Ok(NodeInfo { id, address })
}

/// Membership from a fixed list: every listed node is a member for the life of the
/// process and counts as alive (the coordinator learns about failures from timeouts).
#[derive(Debug)]
pub struct StaticMembership {
    local: NodeInfo,
    topology: Topology,
}

impl StaticMembership {
    /// The cluster of `local` plus `seeds` (the local node may appear among the seeds).
    pub fn new(local: NodeInfo, seeds: Vec<NodeInfo>) -> Result<Self, MembershipError> {
        let mut all = vec![local.clone()];
        all.extend(seeds);
        all.sort();
        for pair in all.windows(2) {
            if pair[0].id == pair[1].id && pair[0].address != pair[1].address {
                return Err(MembershipError::DuplicateId {
                    id: pair[0].id.clone(),
                    first: pair[0].address.clone(),
                    second: pair[1].address.clone(),
                });
            }
        }
        Ok(StaticMembership {
            local,
            topology: Topology::new(1, all),
        })
    }
}

impl Membership for StaticMembership {
    fn local(&self) -> &NodeInfo {
        &self.local
    }

    fn topology(&self) -> Topology {
        self.topology.clone()
    }

    fn topology_version(&self) -> u64 {
        self.topology.version
    }

    fn liveness(&self, id: &str) -> Liveness {
        if self.topology.node(id).is_some() {
            Liveness::Alive
        } else {
            Liveness::Left
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, addr: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: addr.into(),
        }
    }

    #[test]
    fn seeds_parse_with_and_without_ids() {
        assert_eq!(
            parse_seed("127.0.0.1:7001").unwrap(),
            node("127.0.0.1:7001", "127.0.0.1:7001")
        );
        assert_eq!(
            parse_seed(" n1 = 10.0.0.1:80 ").unwrap(),
            node("n1", "10.0.0.1:80")
        );
        assert_eq!(parse_seed("[::1]:80").unwrap().address, "[::1]:80");
        for bad in ["", "host", "host:", ":80", "h:99999", "=h:1"] {
            let err = parse_seed(bad).unwrap_err().to_string();
            assert!(err.contains("invalid seed node"), "{bad}: {err}");
        }
    }

    #[test]
    fn static_membership_includes_self_once_and_rejects_id_clashes() {
        let local = node("a", "h:1");
        let m =
            StaticMembership::new(local.clone(), vec![node("b", "h:2"), local.clone()]).unwrap();
        assert_eq!(m.topology().nodes, vec![node("a", "h:1"), node("b", "h:2")]);
        assert_eq!(m.liveness("b"), Liveness::Alive);
        assert_eq!(m.liveness("zzz"), Liveness::Left);
        let err = StaticMembership::new(local, vec![node("a", "h:9")]).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
    }
}
