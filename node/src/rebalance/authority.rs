//! One authority commits layout changes. Joins, decommissions and removals are all asked
//! of the layout authority ([`layout_authority`]: the lowest-id normal member the node
//! asked does not hold dead), wherever they start, so two changes asked through
//! different nodes at the same moment meet at one node: the second is planned against
//! the first and refused while it is in flight ("another layout change is in flight").
//! A node that is not the authority in its own view refuses, naming the one it holds;
//! the asking node then tries the next candidate, so a stale view on either side costs a
//! retry, never a second commit.

use std::sync::Arc;
use std::time::Duration;

use distkv_network::{
    decode_layout, layout_authority, plan_change, Layout, LayoutChange, LayoutError, MemberState,
    Membership, NodeInfo, PeerError, Transport, TransportExt, DEFAULT_MAX_NODES, NOT_AUTHORITY,
};
use distkv_proto::v1::{layout_change_request::Kind, LayoutChangeRequest};

use crate::replica::MembershipCalls;

/// The wire form of `change`.
pub fn to_wire(change: &LayoutChange) -> LayoutChangeRequest {
    let (kind, address) = match change {
        LayoutChange::Join { address, .. } => (Kind::Join, address.clone()),
        LayoutChange::JoinDone { .. } => (Kind::JoinDone, String::new()),
        LayoutChange::Leave { .. } => (Kind::Leave, String::new()),
        LayoutChange::LeaveDone { .. } => (Kind::LeaveDone, String::new()),
        LayoutChange::Remove { .. } => (Kind::Remove, String::new()),
    };
    LayoutChangeRequest {
        kind: kind as i32,
        node_id: change.node().to_string(),
        address,
    }
}

/// The change a peer asked for, checked: a known kind and a node id, and for a join an
/// address.
pub fn from_wire(request: LayoutChangeRequest) -> Result<LayoutChange, String> {
    let id = request.node_id;
    if id.is_empty() {
        return Err("the layout change names no node".into());
    }
    let kind = Kind::try_from(request.kind)
        .map_err(|_| format!("unknown layout change kind {}", request.kind))?;
    Ok(match kind {
        Kind::Join if request.address.is_empty() => {
            return Err(format!("the join of {id:?} names no address"))
        }
        Kind::Join => LayoutChange::Join {
            id,
            address: request.address,
        },
        Kind::JoinDone => LayoutChange::JoinDone { id },
        Kind::Leave => LayoutChange::Leave { id },
        Kind::LeaveDone => LayoutChange::LeaveDone { id },
        Kind::Remove => LayoutChange::Remove { id },
        Kind::Unspecified => return Err("the layout change has no kind".into()),
    })
}

/// Commits `change` on node `local` if it is the layout authority in its own view, and
/// returns the layout after it (the current one if the change was made before).
/// Refused, with the reason, when this node is not the authority (the reason starts
/// with [`NOT_AUTHORITY`]) or when the change cannot be made now (another change in
/// flight, a live node to remove, ...).
pub fn commit(
    m: &dyn MembershipCalls,
    local: &str,
    change: &LayoutChange,
) -> Result<Layout, String> {
    let dead = |id: &str| m.is_dead(id);
    // Plan from the current layout, offer; if another change was committed between the
    // two (by gossip from a stale authority, or a concurrent call here), plan once more
    // against it, which refuses with the reason.
    for attempt in 0..2 {
        let current = m.current_layout();
        match layout_authority(&current, &dead) {
            Some(authority) if authority.id == local => {}
            Some(authority) => {
                return Err(format!(
                    "{NOT_AUTHORITY}: node {local:?} holds {:?} as the layout authority (the \
                     lowest-id normal member it does not hold dead); ask it",
                    authority.id
                ))
            }
            None => {
                return Err(format!(
                    "{NOT_AUTHORITY}: node {local:?} holds every normal member dead; no \
                     layout change can be committed until one is alive"
                ))
            }
        }
        let next = plan_change(&current, change, &dead)?;
        if next.version() == current.version() {
            return Ok(next);
        }
        match m.offer_layout(next.clone()) {
            Ok(()) => {
                tracing::info!(
                    change = %change,
                    version = next.version(),
                    "layout change committed by this node (the layout authority)"
                );
                return Ok(next);
            }
            Err(e) if attempt == 0 => {
                tracing::debug!(change = %change, "layout moved while committing ({e}); planning again");
            }
            Err(e) => return Err(format!("the layout changed meanwhile ({e}); retry")),
        }
    }
    Err("the layout kept changing while committing; retry".into())
}

/// Asks the layout authority for changes, from one node.
pub struct LayoutChanges<M, T> {
    /// This node.
    pub local: NodeInfo,
    /// Its membership (the layout and liveness that name the authority).
    pub membership: Arc<M>,
    /// Its peer transport.
    pub transport: Arc<T>,
    /// Timeout of each call.
    pub timeout: Duration,
}

impl<M: Membership, T: Transport> LayoutChanges<M, T> {
    /// Asks for `change`: of the authority in this node's view, then, if it does not
    /// answer or says it is not the authority, of the other normal members by id (each
    /// commits only if it is the authority in its own view). Installs and returns the
    /// layout answered. A refusal of the change itself ends the search.
    pub async fn request(&self, change: &LayoutChange) -> Result<Layout, String> {
        let layout = self.membership.layout();
        let dead = |id: &str| self.membership.is_dead(id);
        let mut candidates: Vec<NodeInfo> = layout.nodes_in(&[MemberState::Normal]);
        // The authority in this node's view first; the dead ones last.
        candidates.sort_by_key(|n| (dead(&n.id), n.id.clone()));
        let mut tried = Vec::new();
        for member in candidates {
            if member.id == self.local.id {
                match commit(&*self.membership, &self.local.id, change) {
                    Ok(next) => return Ok(next),
                    Err(reason) if reason.starts_with(NOT_AUTHORITY) => {
                        tried.push(format!("{}: {reason}", member.id));
                        continue;
                    }
                    Err(reason) => return Err(reason),
                }
            }
            match self
                .transport
                .call(&member, to_wire(change), self.timeout)
                .await
            {
                Ok(answer) => {
                    let Some(next) = answer.layout else {
                        tried.push(format!("{} answered no layout", member.id));
                        continue;
                    };
                    let next = decode_layout(next, DEFAULT_MAX_NODES)?;
                    self.install(next.clone())?;
                    return Ok(next);
                }
                Err(PeerError::Refused { reason, .. }) if reason.contains(NOT_AUTHORITY) => {
                    tried.push(format!("{}: {reason}", member.id));
                }
                Err(PeerError::Refused { reason, .. }) => return Err(reason),
                Err(e) => tried.push(format!("{}: {e}", member.id)),
            }
        }
        Err(format!(
            "no layout authority took the {change}: {}; retry once the members agree on who \
             is alive",
            if tried.is_empty() {
                "the layout has no normal member".to_string()
            } else {
                tried.join("; ")
            }
        ))
    }

    /// Installs `next` if it is newer than this node's layout. A layout more than one
    /// version ahead is left to the layout pull of the membership (it fetches the
    /// newest); a conflicting one is refused.
    fn install(&self, next: Layout) -> Result<(), String> {
        if next.version() <= self.membership.layout().version() {
            return Ok(());
        }
        match self.membership.apply_layout(next) {
            Ok(()) | Err(LayoutError::Gap { .. }) | Err(LayoutError::Stale { .. }) => Ok(()),
            Err(e) => Err(format!("the answered layout is refused: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_survives_the_wire_and_bad_requests_are_refused() {
        let changes = [
            LayoutChange::Join {
                id: "n4".into(),
                address: "127.0.0.1:7004".into(),
            },
            LayoutChange::JoinDone { id: "n4".into() },
            LayoutChange::Leave { id: "n1".into() },
            LayoutChange::LeaveDone { id: "n1".into() },
            LayoutChange::Remove { id: "n2".into() },
        ];
        for change in changes {
            assert_eq!(from_wire(to_wire(&change)).unwrap(), change);
        }
        let no_node = LayoutChangeRequest {
            kind: Kind::Leave as i32,
            ..Default::default()
        };
        assert!(from_wire(no_node).unwrap_err().contains("names no node"));
        let no_address = LayoutChangeRequest {
            kind: Kind::Join as i32,
            node_id: "n4".into(),
            address: String::new(),
        };
        assert!(from_wire(no_address).unwrap_err().contains("no address"));
        let unknown = LayoutChangeRequest {
            kind: 99,
            node_id: "n4".into(),
            address: String::new(),
        };
        assert!(from_wire(unknown)
            .unwrap_err()
            .contains("unknown layout change kind 99"));
        let unspecified = LayoutChangeRequest {
            node_id: "n4".into(),
            ..Default::default()
        };
        assert!(from_wire(unspecified).unwrap_err().contains("no kind"));
    }
}
