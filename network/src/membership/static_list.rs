//! Membership from a fixed list: the layout starts as every listed node in state normal
//! and changes only through `apply_layout`; liveness comes from the failure detector.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::layout::LayoutCell;
use super::{
    Contact, DetectorSettings, Layout, LayoutError, Liveness, LivenessTable, LivenessView, Member,
    MemberState, Membership, MembershipError, MembershipEvent, NodeInfo,
};

/// Capacity of [`StaticMembership`]'s event channel: a subscriber more than this many
/// events behind gets `RecvError::Lagged`.
pub const EVENT_CAPACITY: usize = 1024;

/// Membership from a fixed list: layout version 1 holds every listed node as
/// [`MemberState::Normal`]; operators and tests may apply later versions. Liveness comes
/// from a [`LivenessTable`] fed by [`Membership::record_contact`] and
/// [`Membership::tick`] (see [`crate::probe_members`]).
pub struct StaticMembership {
    local: NodeInfo,
    layout: LayoutCell,
    liveness: Mutex<LivenessTable>,
    events: broadcast::Sender<MembershipEvent>,
}

impl std::fmt::Debug for StaticMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticMembership")
            .field("local", &self.local)
            .field("layout", &self.layout.get())
            .finish_non_exhaustive()
    }
}

impl StaticMembership {
    /// The cluster of `local` plus `seeds` (the local node may appear among the seeds);
    /// one id given with two addresses is [`MembershipError::DuplicateId`].
    pub fn new(
        local: NodeInfo,
        seeds: Vec<NodeInfo>,
        virtual_nodes: u32,
        detector: DetectorSettings,
    ) -> Result<Self, MembershipError> {
        let mut all = vec![local.clone()];
        all.extend(seeds);
        all.sort();
        all.dedup();
        if let Some(pair) = all.windows(2).find(|p| p[0].id == p[1].id) {
            return Err(MembershipError::DuplicateId {
                id: pair[0].id.clone(),
                first: pair[0].address.clone(),
                second: pair[1].address.clone(),
            });
        }
        let members = all
            .into_iter()
            .map(|n| Member {
                id: n.id,
                address: n.address,
                state: MemberState::Normal,
            })
            .collect();
        let layout = Layout::new(1, virtual_nodes, members)?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(StaticMembership {
            local,
            layout: LayoutCell::new(layout),
            liveness: Mutex::new(LivenessTable::new(detector)),
            events,
        })
    }

    /// The membership of `local` in `layout` (e.g. one saved by an earlier run).
    pub fn with_layout(local: NodeInfo, layout: Layout, detector: DetectorSettings) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        StaticMembership {
            local,
            layout: LayoutCell::new(layout),
            liveness: Mutex::new(LivenessTable::new(detector)),
            events,
        }
    }

    fn publish(&self, event: MembershipEvent) {
        // No subscriber is not an error: the event is only news.
        let _ = self.events.send(event);
    }
}

impl Membership for StaticMembership {
    fn local(&self) -> &NodeInfo {
        &self.local
    }

    fn layout(&self) -> Arc<Layout> {
        self.layout.get()
    }

    fn liveness(&self, id: &str) -> LivenessView {
        let now = crate::now();
        if id == self.local.id {
            return LivenessView {
                liveness: Liveness::Alive,
                last_heard: Some(std::time::Duration::ZERO),
                phi: 0.0,
            };
        }
        self.liveness.lock().view(id, now)
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    fn apply_layout(&self, offered: Layout) -> Result<(), LayoutError> {
        if let Some(gone) = self.layout.apply(offered)? {
            let mut table = self.liveness.lock();
            for id in &gone {
                table.forget(id);
            }
            drop(table);
            let version = self.layout.get().version();
            self.publish(MembershipEvent::LayoutChanged { version });
        }
        Ok(())
    }

    fn record_contact(&self, id: &str, contact: Contact, now: Instant) {
        if id == self.local.id {
            return;
        }
        let change = self.liveness.lock().record(id, contact, now);
        if let Some((from, to)) = change {
            tracing::info!(peer = id, %from, %to, "liveness changed");
            self.publish(MembershipEvent::LivenessChanged {
                id: id.to_string(),
                from,
                to,
            });
        }
    }

    fn tick(&self, now: Instant) {
        let changes = self.liveness.lock().tick(now);
        for (id, from, to) in changes {
            tracing::info!(peer = %id, %from, %to, "liveness changed");
            self.publish(MembershipEvent::LivenessChanged { id, from, to });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::broadcast::error::TryRecvError;

    fn node(id: &str, addr: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: addr.into(),
        }
    }

    fn membership() -> StaticMembership {
        StaticMembership::new(
            node("a", "h:1"),
            vec![node("b", "h:2"), node("c", "h:3")],
            8,
            DetectorSettings::default(),
        )
        .unwrap()
    }

    #[test]
    fn includes_self_once_and_rejects_id_clashes() {
        let local = node("a", "h:1");
        let m = StaticMembership::new(
            local.clone(),
            vec![node("b", "h:2"), local.clone()],
            8,
            DetectorSettings::default(),
        )
        .unwrap();
        let layout = m.layout();
        assert_eq!(layout.version(), 1);
        assert_eq!(layout.virtual_nodes(), 8);
        assert_eq!(
            layout.nodes_in(&[MemberState::Normal]),
            vec![node("a", "h:1"), node("b", "h:2")]
        );
        assert_eq!(m.liveness("b").liveness, Liveness::Alive);
        let err = StaticMembership::new(
            local,
            vec![node("a", "h:9")],
            8,
            DetectorSettings::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("\"a\""), "{err}");
    }

    #[test]
    fn contacts_and_ticks_become_events() {
        let m = membership();
        let mut events = m.subscribe();
        let t0 = Instant::now();
        m.record_contact("b", Contact::Answered, t0);
        m.record_contact("b", Contact::Failed, t0 + Duration::from_secs(1));
        m.record_contact("a", Contact::Failed, t0);
        assert_eq!(m.liveness("a").liveness, Liveness::Alive, "self is alive");
        assert_eq!(m.liveness("b").liveness, Liveness::Suspect);
        assert_eq!(
            events.try_recv(),
            Ok(MembershipEvent::LivenessChanged {
                id: "b".into(),
                from: Liveness::Alive,
                to: Liveness::Suspect
            })
        );
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
        m.record_contact("c", Contact::Answered, t0);
        m.tick(t0 + Duration::from_secs(60));
        assert_eq!(
            events.try_recv(),
            Ok(MembershipEvent::LivenessChanged {
                id: "b".into(),
                from: Liveness::Suspect,
                to: Liveness::Dead
            })
        );
        assert_eq!(
            events.try_recv(),
            Ok(MembershipEvent::LivenessChanged {
                id: "c".into(),
                from: Liveness::Alive,
                to: Liveness::Dead
            })
        );
    }

    #[test]
    fn a_conflicting_layout_is_refused_and_the_first_stays() {
        let m = membership();
        let mut events = m.subscribe();
        let current = m.layout();
        let mut members = current.members().to_vec();
        members[1].state = MemberState::Leaving;
        let first = current.next(members.clone()).unwrap();
        members[1].state = MemberState::Left;
        let second = current.next(members).unwrap();

        m.apply_layout(first.clone()).unwrap();
        assert_eq!(
            events.try_recv(),
            Ok(MembershipEvent::LayoutChanged { version: 2 })
        );
        m.apply_layout(first.clone()).unwrap();
        assert_eq!(
            events.try_recv(),
            Err(TryRecvError::Empty),
            "same: no event"
        );
        let err = m.apply_layout(second.clone()).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Conflict {
                version: 2,
                ours: first.digest(),
                theirs: second.digest()
            }
        );
        assert_eq!(*m.layout(), first);
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
        assert!(matches!(
            m.apply_layout(Layout::new(4, 8, vec![]).unwrap()),
            Err(LayoutError::Gap { .. })
        ));
        assert!(matches!(
            m.apply_layout((*current).clone()),
            Err(LayoutError::Stale { .. })
        ));
    }

    #[test]
    fn a_member_removed_from_the_layout_is_forgotten() {
        let m = membership();
        m.record_contact("c", Contact::Failed, Instant::now());
        assert_eq!(m.liveness("c").liveness, Liveness::Suspect);
        let current = m.layout();
        let kept: Vec<Member> = current
            .members()
            .iter()
            .filter(|x| x.id != "c")
            .cloned()
            .collect();
        m.apply_layout(current.next(kept).unwrap()).unwrap();
        assert_eq!(m.liveness("c").liveness, Liveness::Alive);
        assert_eq!(m.liveness("c").last_heard, None);
    }
}
