//! Wiring the subsystems of one node together, for whatever implementations the caller
//! chose (the server from its configuration, tests from theirs).

use std::sync::Arc;

use distkv_engine::StorageEngine;
use distkv_network::{Membership, Transport};

use crate::api::NodeSettings;
use crate::coordinator::{Node, NodeParts};
use crate::handoff::{Handoff, HintStore};
use crate::placement::{Partitioner, Placement, PlacementSnapshot};
use crate::replica::{PeerEndpoint, ReplicaStore, Replicas};
use crate::supervisor::Supervisor;

/// The subsystems of one node, wired together.
pub struct Assembled<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    /// The coordinator (client requests).
    pub node: Arc<Node<S, M, P, T>>,
    /// What peers call (register it with the transport's server).
    pub peer: Arc<PeerEndpoint<S>>,
    /// This node's records.
    pub store: Arc<ReplicaStore<S>>,
    /// Hinted handoff, when enabled.
    pub handoff: Option<Arc<Handoff<S, M, T>>>,
    /// The placement in force.
    pub placement: Arc<Placement<P>>,
    /// Membership.
    pub membership: Arc<M>,
    /// How replicas are reached.
    pub replicas: Arc<Replicas<S, T>>,
    settings: NodeSettings,
}

/// Wires a node from its parts. `hints` enables hinted handoff.
pub fn assemble<S, M, P, T>(
    storage: Arc<S>,
    membership: Arc<M>,
    transport: Arc<T>,
    hints: Option<Arc<HintStore>>,
    settings: NodeSettings,
) -> Assembled<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let local = membership.local().clone();
    let store = Arc::new(ReplicaStore::new(
        storage,
        settings.conflict,
        P::token,
        &local.id,
        settings.replica_queue_depth,
    ));
    let replicas = Replicas::new(
        local.clone(),
        store.clone(),
        transport,
        settings.request_timeout,
        settings.replica_queue_depth,
    );
    let topology = membership.topology();
    let placement = Arc::new(Placement::new(PlacementSnapshot::build(
        topology.version,
        settings.virtual_nodes,
        &topology.nodes,
        &topology.nodes,
    )));
    let handoff = hints.filter(|_| settings.hinted_handoff).map(|h| {
        Arc::new(Handoff::new(
            h,
            replicas.clone(),
            membership.clone(),
            settings.hint_replay_batch,
        ))
    });
    let node = Node::new(
        NodeParts {
            membership: membership.clone(),
            placement: placement.clone(),
            replicas: replicas.clone(),
            handoff: handoff.clone(),
        },
        settings.clone(),
    );
    let peer = Arc::new(PeerEndpoint::new(local.id, store.clone()));
    Assembled {
        node,
        peer,
        store,
        handoff,
        placement,
        membership,
        replicas,
        settings,
    }
}

impl<S, M, P, T> Assembled<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// Starts the node's background work under `supervisor`: hint replay.
    pub fn start_background(&self, supervisor: &Supervisor) {
        if let Some(handoff) = &self.handoff {
            let handoff = handoff.clone();
            supervisor.every(
                "hint-replay",
                self.settings.hint_replay_interval,
                move || {
                    let handoff = handoff.clone();
                    async move {
                        handoff.replay_once().await;
                    }
                },
            );
        }
    }
}
