//! Wiring the subsystems of one node together, for whatever implementations the caller
//! chose (the server from its configuration, tests from theirs).

use std::sync::Arc;

use distkv_engine::StorageEngine;
use distkv_network::{Membership, MembershipEvent, Transport};
use tokio::sync::broadcast::error::RecvError;

use crate::antientropy::driver::DriverParts;
use crate::antientropy::gc_driver::GcParts;
use crate::antientropy::{upkeep, AntiEntropy, GcCounters, HashTree, TombstoneGc, TreeShape};
use crate::api::NodeSettings;
use crate::coordinator::{Node, NodeParts};
use crate::handoff::{Handoff, HintStore};
use crate::operator::Operator;
use crate::placement::{Partitioner, Placement, PlacementSnapshot};
use crate::rebalance::authority::LayoutChanges;
use crate::rebalance::removal::{removed_by, Removal, Rereplication};
use crate::rebalance::Joiner;
use crate::replica::{MergeObserver, PeerEndpoint, PeerLimits, ReplicaStore, Replicas};
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
    /// The peer transport.
    pub transport: Arc<T>,
    /// How replicas are reached.
    pub replicas: Arc<Replicas<S, T>>,
    /// The anti-entropy hash tree, kept current by the store (not ready until the
    /// start-up rebuild of [`Assembled::start_background`] is done).
    pub tree: Arc<parking_lot::Mutex<HashTree>>,
    /// The anti-entropy driver (its background passes run only when enabled; `repair`
    /// runs a pass either way).
    pub antientropy: Arc<AntiEntropy<S, M, P, T>>,
    /// Tombstone GC (its background passes run only when enabled).
    pub gc: Arc<TombstoneGc<S, M, P, T>>,
    /// Joins and decommissions of this node.
    pub rebalance: Arc<Joiner<S, M, P, T>>,
    /// Notified when the node should stop on its own (after a decommission).
    pub stop: Arc<tokio::sync::Notify>,
    /// Operator commands (decommission, repair), for this node or forwarded.
    pub operator: Arc<Operator<M, T>>,
    /// The re-replication after the last removal this node applied.
    pub rereplication: Arc<Rereplication>,
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
    // Not ready until the start-up rebuild has read the store; meanwhile peers' questions
    // are answered NotReady and writes still update it.
    let tree = Arc::new(parking_lot::Mutex::new(HashTree::new_rebuilding(
        TreeShape::default(),
    )));
    let observer: Arc<dyn MergeObserver> = tree.clone();
    let store = Arc::new(
        ReplicaStore::with_observer(
            storage,
            settings.conflict,
            settings.max_siblings,
            P::token,
            &local.id,
            settings.replica_queue_depth,
            Some(observer),
        )
        .waiting_on_blocking_pool(settings.storage_wait_on_blocking_pool),
    );
    let replicas = Replicas::new(
        local.clone(),
        store.clone(),
        transport.clone(),
        settings.request_timeout,
        settings.replica_queue_depth,
    );
    let placement = Arc::new(Placement::new(PlacementSnapshot::of_layout(
        &membership.layout(),
    )));
    let gc_counters = Arc::new(GcCounters::default());
    let handoff = hints.clone().filter(|_| settings.hinted_handoff).map(|h| {
        Arc::new(
            Handoff::new(
                h,
                replicas.clone(),
                membership.clone(),
                settings.hint_replay_batch,
            )
            .with_max_age(settings.gc.grace, gc_counters.clone()),
        )
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
    let peer = Arc::new(
        PeerEndpoint::new(
            local.id,
            store.clone(),
            PeerLimits::from_settings(&settings),
        )
        .with_membership(membership.clone())
        .with_antientropy(tree.clone())
        .with_gc(hints.clone(), gc_counters.clone()),
    );
    let gc = Arc::new(TombstoneGc::new(
        GcParts {
            store: store.clone(),
            membership: membership.clone(),
            placement: placement.clone(),
            transport: transport.clone(),
            hints,
            counters: gc_counters,
        },
        settings.replicas,
        settings.request_timeout,
        settings.antientropy.max_bytes_per_sec,
        settings.gc,
    ));
    let antientropy = Arc::new(AntiEntropy::new(
        DriverParts {
            store: store.clone(),
            tree: tree.clone(),
            membership: membership.clone(),
            placement: placement.clone(),
            transport: transport.clone(),
        },
        settings.replicas,
        settings.request_timeout,
        PeerLimits::from_settings(&settings),
        settings.antientropy,
    ));
    let rebalance = Arc::new(Joiner {
        local: membership.local().clone(),
        membership: membership.clone(),
        transport: transport.clone(),
        store: store.clone(),
        placement: placement.clone(),
        limits: PeerLimits::from_settings(&settings),
        replicas: settings.replicas,
        max_bytes_per_sec: settings.rebalance_max_bytes_per_sec,
        timeout: settings.request_timeout,
        state_dir: settings.state_dir.clone(),
        current: parking_lot::Mutex::new(None),
        tree: tree.clone(),
    });
    let rereplication = {
        let (placement, id, n) = (
            placement.clone(),
            membership.local().id.clone(),
            settings.replicas,
        );
        Arc::new(Rereplication::new(Arc::new(move || {
            placement.current().ranges_of(&id, n).0
        })))
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let operator = Arc::new(Operator {
        local: membership.local().clone(),
        membership: membership.clone(),
        transport: transport.clone(),
        rebalance: rebalance.clone(),
        repair: antientropy.clone(),
        rereplication: rereplication.clone(),
        changes: LayoutChanges {
            local: membership.local().clone(),
            membership: membership.clone(),
            transport: transport.clone(),
            timeout: settings.request_timeout,
        },
        stop: stop.clone(),
    });
    peer.set_operator(operator.clone());
    Assembled {
        rereplication,
        rebalance,
        stop,
        operator,
        node,
        peer,
        store,
        handoff,
        placement,
        membership,
        transport,
        replicas,
        tree,
        antientropy,
        gc,
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
    /// Starts the node's background work under `supervisor`: hint replay, the
    /// membership's round (gossip, or the liveness probe of every member), the placement
    /// updater that installs a new snapshot when the layout changes, the anti-entropy
    /// tree's rebuild from the store and, when enabled, the anti-entropy passes and the
    /// tombstone GC passes.
    pub fn start_background(&self, supervisor: &Supervisor) {
        let (store, tree) = (self.store.clone(), self.tree.clone());
        supervisor.spawn("antientropy-rebuild", async move {
            let began = std::time::Instant::now();
            match upkeep::rebuild(store, tree, REBUILD_PAGE).await {
                Ok(()) => tracing::info!(
                    took_ms = began.elapsed().as_millis() as u64,
                    "anti-entropy tree rebuilt from storage"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "rebuilding the anti-entropy tree failed: this node answers no comparisons and runs none until it restarts; fix the storage error above and restart it"
                ),
            }
        });
        if self.settings.antientropy.enabled {
            let driver = self.antientropy.clone();
            let interval = self.settings.antientropy.interval;
            // The first pass one interval after start-up: by then the tree is rebuilt
            // and the peers are heard from.
            supervisor.spawn("antientropy", async move {
                let first = tokio::time::Instant::now() + interval;
                let mut tick = tokio::time::interval_at(first, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A pass started by `repair` is as good as this one.
                    driver.pass_unless_running().await;
                }
            });
        }
        if self.settings.gc.enabled {
            let gc = self.gc.clone();
            let interval = self.settings.gc.interval;
            // The first pass one interval after start-up, like anti-entropy's.
            supervisor.spawn("tombstone-gc", async move {
                let first = tokio::time::Instant::now() + interval;
                let mut tick = tokio::time::interval_at(first, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    gc.pass_unless_running().await;
                }
            });
        }
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
        let (membership, transport) = (self.membership.clone(), self.transport.clone());
        let timeout = self
            .settings
            .probe_interval
            .min(self.settings.request_timeout);
        supervisor.every("membership", self.settings.probe_interval, move || {
            let (membership, transport) = (membership.clone(), transport.clone());
            async move {
                membership.round(&*transport, timeout).await;
            }
        });
        supervisor.spawn(
            "placement-updater",
            follow_layout(self.membership.clone(), self.placement.clone()),
        );
        let (membership, placement, driver, tracker) = (
            self.membership.clone(),
            self.placement.clone(),
            self.antientropy.clone(),
            self.rereplication.clone(),
        );
        let repair = self.settings.antientropy.enabled;
        supervisor.spawn("removal-watch", async move {
            watch_removals(membership, placement, driver, tracker, repair).await;
        });
        if self.rebalance.needed() {
            let joiner = self.rebalance.clone();
            supervisor.spawn("join", async move {
                joiner.run().await;
            });
        }
    }
}

/// Most anti-entropy passes started after a removal (the scheduled passes go on after).
const REMOVAL_PASSES: usize = 4;

/// Keys read per step of the anti-entropy tree's rebuild (each step runs between two
/// merges on the store's writer).
const REBUILD_PAGE: usize = 1024;

/// Installs a placement snapshot for every new layout `membership` announces, until the
/// membership goes away. A subscriber that lagged re-reads the layout, so it never misses
/// the newest; snapshots are built here, off the request path.
pub async fn follow_layout<M: Membership, P: Partitioner>(
    membership: Arc<M>,
    placement: Arc<Placement<P>>,
) {
    let mut events = membership.subscribe();
    // A change between assembly and subscription is caught by this first look.
    refresh(&*membership, &placement);
    loop {
        match events.recv().await {
            Ok(MembershipEvent::LayoutChanged { .. }) | Err(RecvError::Lagged(_)) => {
                refresh(&*membership, &placement)
            }
            Ok(MembershipEvent::LivenessChanged { .. }) => {}
            Err(RecvError::Closed) => break,
        }
    }
}

/// Notes every removal this node applies (see [`crate::rebalance::removal`]) and, when
/// anti-entropy runs, starts a pass once the new placement is installed: the removed
/// node's ranges are re-replicated now, not one `antientropy.interval` later.
async fn watch_removals<S, M, P, T>(
    membership: Arc<M>,
    placement: Arc<Placement<P>>,
    driver: Arc<AntiEntropy<S, M, P, T>>,
    tracker: Arc<Rereplication>,
    repair: bool,
) where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let mut events = membership.subscribe();
    let mut seen = membership.layout();
    loop {
        match events.recv().await {
            Ok(MembershipEvent::LayoutChanged { .. }) | Err(RecvError::Lagged(_)) => {}
            Ok(MembershipEvent::LivenessChanged { .. }) => continue,
            Err(RecvError::Closed) => break,
        }
        let now = membership.layout();
        let removed = removed_by(&seen, &now);
        seen = now.clone();
        let Some(node) = removed.into_iter().next() else {
            continue;
        };
        let version = now.version();
        tracker.note(Removal {
            node: node.clone(),
            layout_version: version,
            at_ms: crate::coordinator::now_micros() / 1000,
        });
        tracing::info!(
            node = %node,
            version,
            "a node was removed: its ranges are re-replicated by anti-entropy; `status` shows the progress"
        );
        if !repair {
            continue;
        }
        // The placement updater installs it within a moment; the passes go on anyway.
        placement
            .installed(version, std::time::Duration::from_secs(2))
            .await;
        // Passes until every range of this node compared clean since the removal (a
        // pass that repairs a range finds it clean only at the next one), at most a few.
        let (driver, tracker) = (driver.clone(), tracker.clone());
        tokio::spawn(async move {
            for _ in 0..REMOVAL_PASSES {
                driver.pass_unless_running().await;
                let done = tracker
                    .progress(&driver.range_stats())
                    .is_none_or(|p| p.ranges_clean == p.ranges_total);
                if done {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}

fn refresh<M: Membership, P: Partitioner>(membership: &M, placement: &Placement<P>) {
    let layout = membership.layout();
    if layout.version() > placement.current().version()
        && placement.install(PlacementSnapshot::of_layout(&layout))
    {
        tracing::info!(
            version = layout.version(),
            "placement updated to a new layout"
        );
    }
}
