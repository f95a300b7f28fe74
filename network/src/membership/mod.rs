//! The `Membership` contract: who is in the cluster (the [`Layout`], explicit and
//! versioned) and who answers now ([`Liveness`], from a failure detector), and the events
//! that announce changes of either.
//!
//! * `layout.rs`: the layout and its sans-IO acceptance rule.
//! * `liveness.rs`: the sans-IO phi accrual detector and liveness table.
//! * `static_list.rs`: membership from a fixed list.
//! * `gossip.rs`: the sans-IO gossip core (versioned node states, digest exchanges,
//!   identity refusals) that a gossip membership's shell drives.
//! * `probe.rs`: the ping round that feeds the failure detector.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distkv_proto::v1::{GossipRequest, GossipResponse};
use futures::future::BoxFuture;

use crate::{HandlerError, Transport};

mod gossip;
mod gossip_wire;
mod gossiping;
mod layout;
mod liveness;
mod probe;
mod static_list;

pub use gossip::{
    DigestEntry, GossipEvent, GossipMessage, GossipSettings, Gossiper, NodeState, Outgoing,
    Refusal, ReplicationFingerprint, XorShift64, DEFAULT_MAX_NODES, DEFAULT_MAX_STATES_PER_MESSAGE,
};
pub use gossip_wire::MAX_GOSSIP_STRING_BYTES;
pub use gossip_wire::{decode_layout, encode_layout};
pub use gossiping::{newest_layout_of, GossipMembership, GossipOptions, IdentityTaken};
pub use layout::{
    layout_authority, plan_change, plan_join, plan_join_done, plan_leave, plan_leave_done,
    plan_removal, Layout, LayoutChange, LayoutError, Member, MemberState, Succession,
    NOT_AUTHORITY,
};
pub use liveness::{Contact, DetectorSettings, Liveness, LivenessTable, LivenessView, PhiDetector};
pub use probe::probe_members;
pub use static_list::{StaticMembership, EVENT_CAPACITY};

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
    /// The initial layout could not be built.
    #[error("invalid initial layout: {0}")]
    Layout(#[from] LayoutError),
}

/// A change announced to [`Membership::subscribe`] subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum MembershipEvent {
    /// The layout changed to this version; read it with [`Membership::layout`].
    LayoutChanged {
        /// The new version.
        version: u64,
    },
    /// A member's liveness changed.
    LivenessChanged {
        /// The member.
        id: String,
        /// Its liveness before.
        from: Liveness,
        /// Its liveness now.
        to: Liveness,
    },
}

/// Who is in the cluster and who is alive.
///
/// Contract: the layout changes only through [`Membership::apply_layout`] (a join, a
/// decommission or a removal), one version at a time; liveness may change at any moment
/// and never rewrites the layout. Queries are cheap enough for the hot path.
pub trait Membership: Send + Sync + 'static {
    /// This node.
    fn local(&self) -> &NodeInfo;
    /// The current layout (cheap: an Arc clone).
    fn layout(&self) -> Arc<Layout>;
    /// Liveness of a member as of now (the local node is always Alive).
    fn liveness(&self, id: &str) -> LivenessView;
    /// Subscribes to layout and liveness changes. The channel is bounded (see the
    /// implementation's capacity, [`EVENT_CAPACITY`] for [`StaticMembership`]): a
    /// subscriber that falls behind gets `RecvError::Lagged` and must re-read
    /// `layout()`/`liveness()`.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MembershipEvent>;
    /// Applies a layout change. Must be version current+1 (LayoutError::Gap/Stale
    /// otherwise); the same version with another digest is LayoutError::Conflict and is
    /// logged (tracing::error! naming both digests); the same layout again is Ok and sends
    /// no event.
    fn apply_layout(&self, offered: Layout) -> Result<(), LayoutError>;
    /// Feeds the failure detector with the outcome of a contact with `id` (a ping or any
    /// peer call); `now` from the caller.
    fn record_contact(&self, id: &str, contact: Contact, now: Instant);
    /// Re-evaluates every member's liveness at `now` (call it periodically).
    fn tick(&self, now: Instant);

    /// This process's generation (its start time in milliseconds since the Unix epoch),
    /// answered in pings so that a restarted node is told from a second process with its
    /// id; 0 where the implementation keeps none.
    fn generation(&self) -> u64 {
        0
    }

    /// Answers a gossip message from peer `from`. Memberships that do not gossip refuse
    /// it.
    fn handle_gossip(
        &self,
        from: &str,
        request: GossipRequest,
        now: Instant,
    ) -> Result<GossipResponse, HandlerError> {
        let _ = (request, now);
        Err(HandlerError::Refused(format!(
            "gossip from {from} refused: this node does not gossip (membership.kind = \"static\"); \
             run every node of the cluster with the same membership.kind"
        )))
    }

    /// One round of the membership's background work, run by the node once per probe
    /// interval with `timeout` per call: by default, ping every member of the layout
    /// ([`probe_members`]) and re-evaluate liveness.
    fn round<'a, T: Transport + ?Sized>(
        &'a self,
        transport: &'a T,
        timeout: Duration,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            probe_members(self, transport, timeout).await;
        })
    }
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
}
