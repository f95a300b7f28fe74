//! The ping round that feeds the failure detector: the thin async shell around
//! [`Membership::record_contact`] and [`Membership::tick`].

use std::time::Duration;

use distkv_proto::v1::PingRequest;

use super::{Contact, MemberState, Membership};
use crate::{NodeInfo, Transport, TransportExt};

/// Pings every other member of the layout whose state is not left, concurrently (each
/// ping bounded by `timeout`), records each outcome with
/// `record_contact(id, Answered | Failed, Instant::now())`, then calls
/// `tick(Instant::now())`. Returns how many answered.
///
/// Any error counts as a failed contact, and so does an answer from another node id than
/// the layout names for that address (another process took the address). Call it about
/// once per [`crate::DetectorSettings::first_interval`].
pub async fn probe_members<M: Membership + ?Sized, T: Transport + ?Sized>(
    membership: &M,
    transport: &T,
    timeout: Duration,
) -> usize {
    let layout = membership.layout();
    let local = &membership.local().id;
    let targets: Vec<NodeInfo> = layout
        .members()
        .iter()
        .filter(|m| m.state != MemberState::Left && &m.id != local)
        .map(|m| NodeInfo {
            id: m.id.clone(),
            address: m.address.clone(),
        })
        .collect();
    let pings = targets.iter().map(|to| async move {
        let outcome = transport.call(to, PingRequest {}, timeout).await;
        (to, outcome)
    });
    let outcomes = futures::future::join_all(pings).await;
    let mut answered = 0;
    for (to, outcome) in outcomes {
        let contact = match outcome {
            Ok(pong) if pong.node_id == to.id => {
                answered += 1;
                Contact::Answered
            }
            Ok(pong) => {
                tracing::warn!(
                    peer = %to.id,
                    address = %to.address,
                    answered_as = %pong.node_id,
                    "another node answers at this member's address: counted as a failed contact"
                );
                Contact::Failed
            }
            Err(e) => {
                tracing::debug!(peer = %to.id, kind = e.kind(), error = %e, "probe failed");
                Contact::Failed
            }
        };
        membership.record_contact(&to.id, contact, crate::now());
    }
    membership.tick(crate::now());
    answered
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use distkv_proto::v1::PingResponse;
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::{
        peer_request, peer_response, DetectorSettings, HandlerError, InMemoryNetwork, Liveness,
        MembershipEvent, PeerHandler, StaticMembership,
    };

    struct Pong(String);

    #[async_trait]
    impl PeerHandler for Pong {
        async fn handle(
            &self,
            _: &str,
            _: peer_request::Body,
        ) -> Result<peer_response::Body, HandlerError> {
            Ok(peer_response::Body::Ping(PingResponse {
                node_id: self.0.clone(),
                generation: 0,
            }))
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:1"),
        }
    }

    fn changed(id: &str, from: Liveness, to: Liveness) -> Result<MembershipEvent, TryRecvError> {
        Ok(MembershipEvent::LivenessChanged {
            id: id.into(),
            from,
            to,
        })
    }

    #[tokio::test]
    async fn a_member_taken_down_becomes_suspect_then_dead_then_alive_again() {
        let net = InMemoryNetwork::new();
        for id in ["a", "b", "c"] {
            net.register(id, Arc::new(Pong(id.into())));
        }
        // "d" is in the layout but another process answers at its address.
        net.register("d", Arc::new(Pong("impostor".into())));
        let m = StaticMembership::new(
            node("a"),
            vec![node("b"), node("c"), node("d")],
            8,
            DetectorSettings::default(),
        )
        .unwrap();
        let t = net.transport("a");
        let mut events = m.subscribe();
        let timeout = Duration::from_secs(1);

        assert_eq!(probe_members(&m, &t, timeout).await, 2);
        assert_eq!(
            events.try_recv(),
            changed("d", Liveness::Alive, Liveness::Suspect)
        );
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));

        net.set_down("b", true);
        assert_eq!(probe_members(&m, &t, timeout).await, 1);
        assert_eq!(m.liveness("b").liveness, Liveness::Suspect);
        assert_eq!(
            events.try_recv(),
            changed("b", Liveness::Alive, Liveness::Suspect)
        );
        assert_eq!(probe_members(&m, &t, timeout).await, 1);
        assert_eq!(
            events.try_recv(),
            changed("d", Liveness::Suspect, Liveness::Dead),
            "the impostor's third failed round"
        );
        assert_eq!(
            events.try_recv(),
            Err(TryRecvError::Empty),
            "b still suspect"
        );
        assert_eq!(probe_members(&m, &t, timeout).await, 1);
        assert_eq!(m.liveness("b").liveness, Liveness::Dead);
        assert_eq!(
            events.try_recv(),
            changed("b", Liveness::Suspect, Liveness::Dead)
        );
        assert_eq!(m.liveness("c").liveness, Liveness::Alive);
        assert!(m.liveness("b").last_heard.is_some());

        net.set_down("b", false);
        assert_eq!(probe_members(&m, &t, timeout).await, 2);
        assert_eq!(m.liveness("b").liveness, Liveness::Alive);
        assert_eq!(
            events.try_recv(),
            changed("b", Liveness::Dead, Liveness::Alive)
        );
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn members_that_left_and_the_local_node_are_not_probed() {
        let net = InMemoryNetwork::new();
        for id in ["a", "b", "c"] {
            net.register(id, Arc::new(Pong(id.into())));
        }
        let m = StaticMembership::new(
            node("a"),
            vec![node("b"), node("c")],
            8,
            DetectorSettings::default(),
        )
        .unwrap();
        let current = m.layout();
        let mut members = current.members().to_vec();
        members[2].state = MemberState::Left;
        m.apply_layout(current.next(members).unwrap()).unwrap();
        let t = net.transport("a");
        assert_eq!(probe_members(&m, &t, Duration::from_secs(1)).await, 1);
        assert_eq!(net.calls_delivered(), 1, "only b was pinged");
    }
}
