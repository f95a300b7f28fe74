//! Gossip membership: the thin async shell that drives the sans-IO [`Gossiper`] over a
//! [`Transport`] (so TLS covers it), and the [`Membership`] the node reads.
//!
//! * Every round ([`Membership::round`], once per probe interval) the core bumps our
//!   heartbeat and picks its targets; each target gets a digest, its ack is merged and
//!   answered with an ack2: at most two calls per target, `fanout + 2` targets per round,
//!   each call bounded by the round's timeout.
//! * A peer's gossip arrives through [`Membership::handle_gossip`]; the reply travels back
//!   as the call's response.
//! * Liveness is phi accrual over the heartbeats gossip carries (direct or relayed), so a
//!   member cut off from us but heard by others stays alive; a member of the layout never
//!   heard from within [`GossipOptions::never_heard_grace`] of start is dead.
//! * The layout is held here and changed only by [`Membership::apply_layout`]; gossip
//!   carries its version and digest, and a member holding another layout under our version
//!   is reported once with both digests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distkv_proto::v1::{
    GossipRequest, GossipResponse, LayoutPullRequest, LayoutPullResponse, PingRequest,
};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::gossip::{
    DigestEntry, GossipEvent, GossipMessage, GossipSettings, Gossiper, NodeState, Outgoing,
    Refusal, ReplicationFingerprint, XorShift64,
};
use super::gossip_wire::{self, WireLimits};
use super::layout::LayoutCell;
use super::{
    Contact, Layout, LayoutError, Liveness, LivenessView, MemberState, Membership, MembershipEvent,
    NodeInfo, EVENT_CAPACITY,
};
use crate::{HandlerError, Transport, TransportExt};

/// Who this node is to gossip, and how it gossips.
#[derive(Clone, Debug)]
pub struct GossipOptions {
    /// The cluster's name; nodes of another cluster are refused.
    pub cluster_name: String,
    /// This process's generation: its start time in milliseconds since the Unix epoch (a
    /// restart must produce a higher one).
    pub generation: u64,
    /// Contact points (`HOST:PORT` peer addresses); our own is ignored.
    pub seeds: Vec<String>,
    /// How the node places data (members that differ are refused).
    pub replication: ReplicationFingerprint,
    /// Build version of this binary.
    pub build: String,
    /// The core's settings (fanout, caps, failure detector).
    pub settings: GossipSettings,
    /// A layout member never heard from this long after start is dead (until then it
    /// counts as alive, so a cluster that starts together is not dead to itself).
    pub never_heard_grace: Duration,
    /// Seed of the random peer choice.
    pub rng_seed: u64,
}

/// The newest layout any of `seeds` holds (`HOST:PORT` peer addresses), asked
/// concurrently with `timeout` each: `None` when none answers with one (a new cluster).
/// Layouts of more than `max_members` members or malformed ones are skipped (logged).
pub async fn newest_layout_of<T: Transport + ?Sized>(
    transport: &T,
    seeds: &[String],
    max_members: usize,
    timeout: Duration,
) -> Option<Layout> {
    let asks = seeds.iter().map(|seed| async move {
        let to = NodeInfo {
            id: seed.clone(),
            address: seed.clone(),
        };
        (
            seed,
            transport.call(&to, LayoutPullRequest {}, timeout).await,
        )
    });
    let mut newest: Option<Layout> = None;
    for (seed, answer) in futures::future::join_all(asks).await {
        let layout = match answer {
            Ok(LayoutPullResponse {
                layout: Some(layout),
            }) => match gossip_wire::decode_layout(layout, max_members) {
                Ok(layout) => layout,
                Err(e) => {
                    tracing::warn!(seed = %seed, "the seed's layout is refused: {e}");
                    continue;
                }
            },
            Ok(LayoutPullResponse { layout: None }) => continue,
            Err(e) => {
                tracing::debug!(seed = %seed, "no layout from the seed: {e}");
                continue;
            }
        };
        if layout.version() > newest.as_ref().map_or(0, Layout::version) {
            newest = Some(layout);
        }
    }
    newest
}

/// Why a node must not start: its identity is taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "node id {id:?} is in use by a live process at {address} (generation {their_generation}, \
     this process is generation {our_generation}): two processes with one id would give two \
     writes the same version and lose one; stop the other process, or give this node another \
     --node-id"
)]
pub struct IdentityTaken {
    /// The id.
    pub id: String,
    /// Where the other process answers.
    pub address: String,
    /// The other process's generation.
    pub their_generation: u64,
    /// Ours.
    pub our_generation: u64,
}

/// Membership by gossip (see the module documentation).
pub struct GossipMembership {
    local: NodeInfo,
    generation: u64,
    started: Instant,
    never_heard_grace: Duration,
    limits: WireLimits,
    core: Mutex<Gossiper>,
    rng: Mutex<XorShift64>,
    layout: LayoutCell,
    events: broadcast::Sender<MembershipEvent>,
    /// (member id, its layout digest) already reported as a conflict; bounded like the
    /// core's refusal memory (cleared when full).
    conflicts: Mutex<BTreeSet<(String, u64)>>,
    /// The newest layout gossip announced and we have not pulled yet: (member, version,
    /// digest). One slot: a newer announcement replaces it; a failed pull is retried
    /// next round.
    pull: Mutex<Option<(String, u64, u64)>>,
}

/// Most layout conflicts remembered to report each once.
const CONFLICTS_REMEMBERED: usize = 1024;

impl std::fmt::Debug for GossipMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipMembership")
            .field("local", &self.local)
            .field("generation", &self.generation)
            .field("layout", &self.layout.get())
            .finish_non_exhaustive()
    }
}

impl GossipMembership {
    /// The membership of `local` holding `layout`, gossiping with `options`.
    pub fn new(local: NodeInfo, layout: Layout, options: GossipOptions, now: Instant) -> Self {
        let state = NodeState {
            id: local.id.clone(),
            generation: options.generation,
            heartbeat: 0,
            address: local.address.clone(),
            cluster_name: options.cluster_name.clone(),
            layout_version: layout.version(),
            layout_digest: layout.digest(),
            replication: options.replication.clone(),
            load_bytes: 0,
            build: options.build.clone(),
        };
        let limits = WireLimits {
            max_entries: options.settings.max_nodes,
            max_states: options.settings.max_states_per_message,
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        GossipMembership {
            local,
            generation: options.generation,
            started: now,
            never_heard_grace: options.never_heard_grace,
            limits,
            core: Mutex::new(Gossiper::new(state, options.seeds, options.settings)),
            rng: Mutex::new(XorShift64::new(options.rng_seed)),
            layout: LayoutCell::new(layout),
            events,
            conflicts: Mutex::new(BTreeSet::new()),
            pull: Mutex::new(None),
        }
    }

    /// Every node gossip knows (this one included) with its liveness at `now`.
    pub fn known(&self, now: Instant) -> Vec<(NodeState, LivenessView)> {
        let core = self.core.lock();
        core.states()
            .map(|s| (s.clone(), core.liveness(&s.id, now)))
            .collect()
    }

    /// Members seen holding another layout under our version, with their digest (see
    /// `check_layouts`), as last reported.
    pub fn layout_conflicts(&self) -> Vec<(String, u64)> {
        self.conflicts.lock().iter().cloned().collect()
    }

    /// Sets the load this node gossips (bytes stored).
    pub fn set_load(&self, bytes: u64) {
        self.core.lock().update_local(|s| s.load_bytes = bytes);
    }

    /// Before the node serves: asks the seeds what they know of our id, without announcing
    /// ourselves (a digest naming only our id at version 0), and pings any other
    /// generation's address. A live process answering there with our id and another
    /// generation is [`IdentityTaken`]; unreachable seeds or addresses prove nothing and
    /// are passed (a restart after `kill -9` finds its old address silent).
    pub async fn check_identity<T: Transport + ?Sized>(
        &self,
        transport: &T,
        timeout: Duration,
    ) -> Result<(), IdentityTaken> {
        let seeds: Vec<String> = self.core.lock().seeds().to_vec();
        let cluster_name = self.core.lock().local().cluster_name.clone();
        let ask = GossipMessage::Digest {
            cluster_name,
            entries: vec![DigestEntry {
                id: self.local.id.clone(),
                generation: 0,
                heartbeat: 0,
            }],
        };
        let asks = seeds.iter().map(|seed| {
            let request = GossipRequest {
                from_address: self.local.address.clone(),
                message: Some(gossip_wire::encode(&ask)),
            };
            let to = NodeInfo {
                id: seed.clone(),
                address: seed.clone(),
            };
            async move { transport.call(&to, request, timeout).await }
        });
        let mut elsewhere = BTreeSet::new();
        for answer in futures::future::join_all(asks).await.into_iter().flatten() {
            let Some(Ok(GossipMessage::DigestAck { states, .. })) =
                answer.reply.map(|m| gossip_wire::decode(m, self.limits))
            else {
                continue;
            };
            for s in states {
                if s.id == self.local.id && s.generation != self.generation {
                    elsewhere.insert(s.address);
                }
            }
        }
        for address in elsewhere {
            let to = NodeInfo {
                id: self.local.id.clone(),
                address: address.clone(),
            };
            if let Ok(pong) = transport.call(&to, PingRequest {}, timeout).await {
                if pong.node_id == self.local.id
                    && pong.generation != 0
                    && pong.generation != self.generation
                {
                    return Err(IdentityTaken {
                        id: self.local.id.clone(),
                        address,
                        their_generation: pong.generation,
                        our_generation: self.generation,
                    });
                }
            }
        }
        Ok(())
    }

    fn publish(&self, event: MembershipEvent) {
        // No subscriber is not an error: the event is only news.
        let _ = self.events.send(event);
    }

    /// Logs and publishes what the core learned.
    fn drain_events(&self) {
        let events = self.core.lock().take_events();
        for event in events {
            match event {
                GossipEvent::Discovered {
                    id,
                    address,
                    generation,
                } => tracing::info!(peer = %id, %address, generation, "gossip discovered a node"),
                GossipEvent::Restarted {
                    id,
                    old_generation,
                    new_generation,
                } => tracing::info!(
                    peer = %id,
                    old_generation,
                    new_generation,
                    "a node restarted"
                ),
                GossipEvent::LivenessChanged { id, from, to } => {
                    tracing::info!(peer = %id, %from, %to, "liveness changed");
                    self.publish(MembershipEvent::LivenessChanged { id, from, to });
                }
                GossipEvent::NewerLayout {
                    id,
                    version,
                    digest,
                } => {
                    tracing::info!(
                        peer = %id,
                        version,
                        digest = format_args!("{digest:016x}"),
                        ours = self.layout.get().version(),
                        "a member holds a newer layout: pulling it"
                    );
                    *self.pull.lock() = Some((id, version, digest));
                }
                GossipEvent::Refused(refusal) => match refusal {
                    Refusal::LiveDuplicateId { .. } => tracing::error!("{refusal}"),
                    _ => tracing::warn!("{refusal}"),
                },
            }
        }
    }

    /// Reports, once per member and digest, members that hold another layout under the
    /// version we hold: the two were started with different initial member lists.
    fn check_layouts(&self) {
        let ours = self.layout.get();
        let found: Vec<(String, String, u64)> = self
            .core
            .lock()
            .states()
            .filter(|s| {
                s.id != self.local.id
                    && s.layout_version == ours.version()
                    && s.layout_digest != ours.digest()
            })
            .map(|s| (s.id.clone(), s.address.clone(), s.layout_digest))
            .collect();
        let mut reported = self.conflicts.lock();
        for (id, address, digest) in found {
            if reported.len() >= CONFLICTS_REMEMBERED {
                reported.clear();
            }
            if reported.insert((id.clone(), digest)) {
                tracing::error!(
                    "member {id:?} at {address} holds layout version {} with digest {digest:016x}, \
                     this node holds digest {:016x}: the two were started with different initial \
                     members (the node and its seed_nodes); keys written through one are placed \
                     differently by the other. Stop the node whose seed list is wrong and start \
                     every node of the cluster with the same seed list",
                    ours.version(),
                    ours.digest()
                );
            }
        }
    }

    /// One exchange with a target: the digest, then the ack2 its ack asks for.
    async fn exchange<T: Transport + ?Sized>(
        &self,
        transport: &T,
        first: Outgoing,
        timeout: Duration,
    ) {
        let mut next = Some(first);
        // A digest gets an ack, whose answer (an ack2) is one more call: at most two.
        for _ in 0..2 {
            let Some(out) = next.take() else { break };
            let to = self.node_at(&out.to);
            let request = GossipRequest {
                from_address: self.local.address.clone(),
                message: Some(gossip_wire::encode(&out.message)),
            };
            match transport.call(&to, request, timeout).await {
                Ok(GossipResponse { reply: Some(reply) }) => {
                    match gossip_wire::decode(reply, self.limits) {
                        Ok(message) => {
                            let replies =
                                self.core.lock().on_message(&out.to, message, crate::now());
                            next = replies.into_iter().next();
                        }
                        Err(reason) => tracing::warn!(
                            peer = %out.to,
                            "a gossip reply was refused: {reason}"
                        ),
                    }
                }
                Ok(GossipResponse { reply: None }) => {}
                Err(e) => {
                    tracing::debug!(peer = %out.to, kind = e.kind(), error = %e, "gossip call failed")
                }
            }
            self.drain_events();
        }
    }

    /// The node at a gossip address: its id when a state names that address, else the
    /// address (a seed not learned yet).
    fn node_at(&self, address: &str) -> NodeInfo {
        let id = self
            .core
            .lock()
            .states()
            .find(|s| s.address == address)
            .map_or_else(|| address.to_string(), |s| s.id.clone());
        NodeInfo {
            id,
            address: address.to_string(),
        }
    }

    async fn gossip_round<T: Transport + ?Sized>(&self, transport: &T, timeout: Duration) {
        let now = crate::now();
        let outgoing = {
            let mut rng = self.rng.lock();
            self.core.lock().tick(now, &mut || rng.next_u64())
        };
        self.drain_events();
        self.check_layouts();
        let exchanges = outgoing
            .into_iter()
            .map(|out| self.exchange(transport, out, timeout));
        futures::future::join_all(exchanges).await;
        self.pull_layout(transport, timeout).await;
    }

    /// Pulls the layout gossip announced (if any) from the member that holds it and
    /// installs it.
    async fn pull_layout<T: Transport + ?Sized>(&self, transport: &T, timeout: Duration) {
        let Some((id, version, digest)) = self.pull.lock().clone() else {
            return;
        };
        if self.layout.get().version() >= version {
            *self.pull.lock() = None;
            return;
        }
        let Some(address) = self.core.lock().state(&id).map(|s| s.address.clone()) else {
            return;
        };
        let to = NodeInfo {
            id: id.clone(),
            address,
        };
        let pulled = match transport.call(&to, LayoutPullRequest {}, timeout).await {
            Ok(LayoutPullResponse {
                layout: Some(layout),
            }) => gossip_wire::decode_layout(layout, self.limits.max_entries),
            Ok(LayoutPullResponse { layout: None }) => Err("the answer holds no layout".into()),
            Err(e) => Err(e.to_string()),
        };
        let layout = match pulled {
            Ok(layout) if layout.version() < version => {
                // The member moved on or answered an older one: wait for the next news.
                tracing::debug!(peer = %id, got = layout.version(), version, "pulled an older layout than announced");
                layout
            }
            Ok(layout) if layout.version() == version && layout.digest() != digest => {
                tracing::warn!(peer = %id, version, "the pulled layout does not match its gossiped digest; retrying next round");
                return;
            }
            Ok(layout) => layout,
            Err(reason) => {
                tracing::warn!(peer = %id, version, "cannot pull the newer layout: {reason}; retrying next round");
                return;
            }
        };
        let (version, digest) = (layout.version(), layout.digest());
        let leaves_us = layout
            .member(&self.local.id)
            .is_some_and(|m| m.state == MemberState::Left);
        match self.layout.adopt(layout) {
            Ok(Some(_)) => {
                *self.pull.lock() = None;
                self.core.lock().update_local(|s| {
                    s.layout_version = version;
                    s.layout_digest = digest;
                });
                self.publish(MembershipEvent::LayoutChanged { version });
                if leaves_us {
                    tracing::error!(
                        version,
                        "this node was removed from the cluster (layout version {version}): it no \
                         longer owns data; stop it, and wipe its data directory before it joins again"
                    );
                }
            }
            Ok(None) => *self.pull.lock() = None,
            Err(e) => {
                *self.pull.lock() = None;
                tracing::error!(peer = %id, "the pulled layout is refused: {e}");
            }
        }
    }
}

impl Membership for GossipMembership {
    fn local(&self) -> &NodeInfo {
        &self.local
    }

    fn layout(&self) -> Arc<Layout> {
        self.layout.get()
    }

    fn liveness(&self, id: &str) -> LivenessView {
        let now = crate::now();
        let core = self.core.lock();
        if id != self.local.id
            && core.state(id).is_none()
            && now.saturating_duration_since(self.started) >= self.never_heard_grace
        {
            return LivenessView {
                liveness: Liveness::Dead,
                last_heard: None,
                phi: f64::INFINITY,
            };
        }
        core.liveness(id, now)
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    fn apply_layout(&self, offered: Layout) -> Result<(), LayoutError> {
        let (version, digest) = (offered.version(), offered.digest());
        if self.layout.apply(offered)?.is_some() {
            self.core.lock().update_local(|s| {
                s.layout_version = version;
                s.layout_digest = digest;
            });
            self.publish(MembershipEvent::LayoutChanged { version });
        }
        Ok(())
    }

    fn record_contact(&self, id: &str, contact: Contact, now: Instant) {
        // Only answers count: a failed call to a member others still hear from is not a
        // sign of its death (phi over gossip heartbeats decides).
        if contact == Contact::Answered {
            self.core.lock().record_contact(id, contact, now);
            self.drain_events();
        }
    }

    fn tick(&self, _now: Instant) {
        // Liveness is re-evaluated by every gossip round (`round`).
        self.drain_events();
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn handle_gossip(
        &self,
        _from: &str,
        request: GossipRequest,
        now: Instant,
    ) -> Result<GossipResponse, HandlerError> {
        let Some(message) = request.message else {
            return Err(HandlerError::Refused(
                "the gossip request carries no message".into(),
            ));
        };
        if request.from_address.len() > gossip_wire::MAX_GOSSIP_STRING_BYTES {
            return Err(HandlerError::Refused(format!(
                "the gossip sender address is {} bytes, the limit is {}",
                request.from_address.len(),
                gossip_wire::MAX_GOSSIP_STRING_BYTES
            )));
        }
        let message = gossip_wire::decode(message, self.limits).map_err(HandlerError::Refused)?;
        let replies = self
            .core
            .lock()
            .on_message(&request.from_address, message, now);
        self.drain_events();
        Ok(GossipResponse {
            reply: replies
                .into_iter()
                .next()
                .map(|out| gossip_wire::encode(&out.message)),
        })
    }

    fn round<'a, T: Transport + ?Sized>(
        &'a self,
        transport: &'a T,
        timeout: Duration,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.gossip_round(transport, timeout))
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use distkv_proto::v1::PingResponse;

    use super::*;
    use crate::{
        peer_request, peer_response, DetectorSettings, InMemoryNetwork, InMemoryTransport, Member,
        MemberState, PeerHandler, StaticMembership,
    };

    /// What a node's peer endpoint does for membership: pings and gossip.
    struct Endpoint(Arc<GossipMembership>);

    #[async_trait]
    impl PeerHandler for Endpoint {
        async fn handle(
            &self,
            from: &str,
            request: peer_request::Body,
        ) -> Result<peer_response::Body, HandlerError> {
            match request {
                peer_request::Body::Ping(_) => Ok(peer_response::Body::Ping(PingResponse {
                    node_id: self.0.local().id.clone(),
                    generation: self.0.generation(),
                })),
                peer_request::Body::Gossip(r) => self
                    .0
                    .handle_gossip(from, r, Instant::now())
                    .map(peer_response::Body::Gossip),
                peer_request::Body::LayoutPull(_) => {
                    Ok(peer_response::Body::LayoutPull(LayoutPullResponse {
                        layout: Some(gossip_wire::encode_layout(&self.0.layout())),
                    }))
                }
                _ => Err(HandlerError::Refused("not in this test".into())),
            }
        }
    }

    struct TestNode {
        m: Arc<GossipMembership>,
        t: InMemoryTransport,
    }

    fn layout_of(ids: &[String]) -> Layout {
        let members = ids
            .iter()
            .map(|id| Member {
                id: id.clone(),
                address: id.clone(),
                state: MemberState::Normal,
            })
            .collect();
        Layout::new(1, 8, members).unwrap()
    }

    fn fast_settings() -> GossipSettings {
        GossipSettings {
            detector: DetectorSettings {
                min_std_dev: Duration::from_millis(10),
                first_interval: Duration::from_millis(20),
                ..DetectorSettings::default()
            },
            ..GossipSettings::default()
        }
    }

    fn options(cluster: &str, generation: u64, seeds: &[&str]) -> GossipOptions {
        GossipOptions {
            cluster_name: cluster.into(),
            generation,
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            replication: ReplicationFingerprint {
                replicas: 3,
                partitioner: "p".into(),
                virtual_nodes: 8,
                ring: 1,
            },
            build: "test".into(),
            settings: fast_settings(),
            never_heard_grace: Duration::from_secs(3600),
            rng_seed: generation,
        }
    }

    fn start(
        net: &Arc<InMemoryNetwork>,
        id: &str,
        layout: Layout,
        options: GossipOptions,
    ) -> TestNode {
        let local = NodeInfo {
            id: id.into(),
            address: id.into(),
        };
        let m = Arc::new(GossipMembership::new(
            local,
            layout,
            options,
            Instant::now(),
        ));
        net.register(id, Arc::new(Endpoint(m.clone())));
        TestNode {
            m,
            t: net.transport(id),
        }
    }

    async fn round_all(nodes: &[TestNode]) {
        for n in nodes {
            n.m.round(&n.t, Duration::from_secs(1)).await;
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8001")).collect()
    }

    #[tokio::test]
    async fn nodes_seeded_with_one_address_learn_the_whole_cluster_in_few_rounds() {
        let net = InMemoryNetwork::new();
        let all = ids(16);
        let nodes: Vec<TestNode> = all
            .iter()
            .enumerate()
            .map(|(i, id)| {
                start(
                    &net,
                    id,
                    layout_of(&all),
                    options("c", 1 + i as u64, &[&all[0]]),
                )
            })
            .collect();
        let mut rounds = 0;
        while nodes
            .iter()
            .any(|n| n.m.known(Instant::now()).len() < all.len())
        {
            rounds += 1;
            assert!(rounds <= 12, "not converged after {rounds} rounds");
            round_all(&nodes).await;
        }
        // Each round here lets every node gossip once; O(log N) for N = 16.
        assert!(rounds >= 2, "converged in {rounds} rounds");
        for n in &nodes {
            for (state, view) in n.m.known(Instant::now()) {
                assert_eq!(
                    view.liveness,
                    Liveness::Alive,
                    "{} on {}",
                    state.id,
                    n.m.local()
                );
                assert_eq!(state.cluster_name, "c");
            }
        }
    }

    #[tokio::test]
    async fn a_node_taken_down_is_dead_everywhere_and_alive_again_after_a_restart() {
        let net = InMemoryNetwork::new();
        let all = ids(4);
        let mut nodes: Vec<TestNode> = all
            .iter()
            .enumerate()
            .map(|(i, id)| {
                start(
                    &net,
                    id,
                    layout_of(&all),
                    options("c", 10 + i as u64, &[&all[0]]),
                )
            })
            .collect();
        let mut events = nodes[0].m.subscribe();
        // Heartbeats every ~20 ms give the detector its intervals.
        for _ in 0..20 {
            round_all(&nodes).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = all[3].clone();
        net.set_down(&victim, true);
        let deadline = Instant::now() + Duration::from_secs(20);
        while nodes[..3]
            .iter()
            .any(|n| n.m.liveness(&victim).liveness != Liveness::Dead)
        {
            assert!(Instant::now() < deadline, "{victim} not dead everywhere");
            round_all(&nodes[..3]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut saw_dead = false;
        while let Ok(event) = events.try_recv() {
            saw_dead |= matches!(&event, MembershipEvent::LivenessChanged { id, to: Liveness::Dead, .. } if *id == victim);
        }
        assert!(saw_dead, "the change to dead is published");

        // The restarted process has a higher generation.
        net.set_down(&victim, false);
        nodes[3] = start(&net, &victim, layout_of(&all), options("c", 99, &[&all[0]]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while nodes[..3]
            .iter()
            .any(|n| n.m.liveness(&victim).liveness != Liveness::Alive)
        {
            assert!(
                Instant::now() < deadline,
                "{victim} not alive again everywhere"
            );
            round_all(&nodes).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in &nodes[..3] {
            let known = n.m.known(Instant::now());
            let state = known.iter().find(|(s, _)| s.id == victim).unwrap();
            assert_eq!(
                state.0.generation, 99,
                "the new generation replaced the old"
            );
        }
    }

    #[tokio::test]
    async fn nodes_of_another_cluster_are_not_merged_on_either_side() {
        let net = InMemoryNetwork::new();
        let all = ids(3);
        let a = start(&net, &all[0], layout_of(&all), options("prod", 1, &[]));
        let b = start(
            &net,
            &all[1],
            layout_of(&all),
            options("prod", 2, &[&all[0]]),
        );
        let stranger = start(
            &net,
            &all[2],
            layout_of(&all),
            options("test", 3, &[&all[0]]),
        );
        let nodes = [a, b, stranger];
        for _ in 0..5 {
            round_all(&nodes).await;
        }
        let names = |n: &TestNode| -> Vec<String> {
            n.m.known(Instant::now())
                .into_iter()
                .map(|(s, _)| s.id)
                .collect()
        };
        assert_eq!(names(&nodes[0]), vec![all[0].clone(), all[1].clone()]);
        assert_eq!(names(&nodes[1]), vec![all[0].clone(), all[1].clone()]);
        assert_eq!(names(&nodes[2]), vec![all[2].clone()]);
    }

    #[tokio::test]
    async fn a_second_live_process_with_an_id_is_refused_and_a_restart_is_not() {
        let net = InMemoryNetwork::new();
        let all = ids(2);
        let first = start(&net, &all[0], layout_of(&all), options("c", 5, &[]));
        let seed = start(&net, &all[1], layout_of(&all), options("c", 6, &[&all[0]]));
        let nodes = [first, seed];
        for _ in 0..3 {
            round_all(&nodes).await;
        }
        // A second process with the first's id asks the seed before it serves (it is not
        // registered on the network: the first process answers at the address).
        let local = NodeInfo {
            id: all[0].clone(),
            address: all[0].clone(),
        };
        let second = GossipMembership::new(
            local.clone(),
            layout_of(&all),
            options("c", 50, &[&all[1]]),
            Instant::now(),
        );
        let t = net.transport(&all[0]);
        let err = second
            .check_identity(&t, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.their_generation, 5);
        assert_eq!(err.our_generation, 50);
        assert!(
            err.to_string().contains("in use by a live process"),
            "{err}"
        );
        // Once the first is gone (killed), the same check passes: a restart.
        net.set_down(&all[0], true);
        second
            .check_identity(&t, Duration::from_secs(1))
            .await
            .unwrap();
        // The seed never learned generation 50 from the check.
        let known = nodes[1].m.known(Instant::now());
        assert_eq!(
            known
                .iter()
                .find(|(s, _)| s.id == all[0])
                .unwrap()
                .0
                .generation,
            5
        );
    }

    #[tokio::test]
    async fn members_holding_another_first_layout_are_reported_and_never_heard_members_die() {
        let net = InMemoryNetwork::new();
        let all = ids(3);
        // The third node was started with a seed list naming a member the others lack.
        let a = start(&net, &all[0], layout_of(&all[..2]), options("c", 1, &[]));
        let b = start(
            &net,
            &all[1],
            layout_of(&all[..2]),
            options("c", 2, &[&all[0]]),
        );
        let c = start(&net, &all[2], layout_of(&all), options("c", 3, &[&all[0]]));
        let nodes = [a, b, c];
        for _ in 0..4 {
            round_all(&nodes).await;
        }
        let theirs = layout_of(&all).digest();
        assert_eq!(
            nodes[0].m.layout_conflicts(),
            vec![(all[2].clone(), theirs)]
        );
        let ours = layout_of(&all[..2]).digest();
        let on_c = nodes[2].m.layout_conflicts();
        assert_eq!(on_c, vec![(all[0].clone(), ours), (all[1].clone(), ours)]);

        // A layout member never heard from is dead once the grace has passed.
        let lonely = GossipMembership::new(
            NodeInfo {
                id: "x:1".into(),
                address: "x:1".into(),
            },
            layout_of(&["x:1".to_string(), "ghost:1".to_string()]),
            GossipOptions {
                never_heard_grace: Duration::ZERO,
                ..options("c", 1, &["ghost:1"])
            },
            Instant::now(),
        );
        assert_eq!(lonely.liveness("ghost:1").liveness, Liveness::Dead);
        assert_eq!(lonely.liveness("x:1").liveness, Liveness::Alive);
    }

    #[tokio::test]
    async fn a_layout_change_on_one_node_reaches_every_node_by_gossip_and_pull() {
        let net = InMemoryNetwork::new();
        let all = ids(5);
        let nodes: Vec<TestNode> = all
            .iter()
            .enumerate()
            .map(|(i, id)| {
                start(
                    &net,
                    id,
                    layout_of(&all),
                    options("c", 1 + i as u64, &[&all[0]]),
                )
            })
            .collect();
        for _ in 0..4 {
            round_all(&nodes).await;
        }
        let mut events = nodes[3].m.subscribe();
        // Node 1 removes node 4, then node 2 (after learning it) removes node 3: two
        // versions, so a node that missed the first pulls only the newest.
        let v2 = crate::plan_removal(&nodes[1].m.layout(), &all[4], true).unwrap();
        nodes[1].m.apply_layout(v2.clone()).unwrap();
        let mut rounds = 0;
        while nodes.iter().any(|n| n.m.layout().version() < 2) {
            rounds += 1;
            assert!(rounds <= 10, "v2 not everywhere after {rounds} rounds");
            round_all(&nodes).await;
        }
        for n in &nodes {
            assert_eq!(*n.m.layout(), v2, "on {}", n.m.local());
        }
        assert!(matches!(
            events.try_recv(),
            Ok(MembershipEvent::LayoutChanged { version: 2 })
        ));
        let v3 = crate::plan_removal(&nodes[2].m.layout(), &all[3], true).unwrap();
        nodes[2].m.apply_layout(v3.clone()).unwrap();
        for _ in 0..10 {
            round_all(&nodes).await;
        }
        for n in &nodes {
            assert_eq!(n.m.layout().digest(), v3.digest(), "on {}", n.m.local());
            let own = n.m.known(Instant::now());
            let me = own.iter().find(|(s, _)| s.id == n.m.local().id).unwrap();
            assert_eq!((me.0.layout_version, me.0.layout_digest), (3, v3.digest()));
        }
    }

    #[test]
    fn static_membership_refuses_gossip_saying_why() {
        let m = StaticMembership::new(
            NodeInfo {
                id: "a".into(),
                address: "a:1".into(),
            },
            vec![],
            8,
            DetectorSettings::default(),
        )
        .unwrap();
        let err = m
            .handle_gossip("b", GossipRequest::default(), Instant::now())
            .unwrap_err();
        assert!(err.to_string().contains("does not gossip"), "{err}");
        assert_eq!(Membership::generation(&m), 0);
    }

    #[tokio::test]
    async fn malformed_gossip_is_refused_whole() {
        let net = InMemoryNetwork::new();
        let all = ids(1);
        let a = start(&net, &all[0], layout_of(&all), options("c", 1, &[]));
        let err =
            a.m.handle_gossip("b", GossipRequest::default(), Instant::now())
                .unwrap_err();
        assert!(err.to_string().contains("no message"), "{err}");
        let huge = GossipRequest {
            from_address: "y".repeat(MAX_GOSSIP_BYTES_FOR_TEST),
            message: Some(gossip_wire::encode(&GossipMessage::Digest {
                cluster_name: "c".into(),
                entries: vec![],
            })),
        };
        let err = a.m.handle_gossip("b", huge, Instant::now()).unwrap_err();
        assert!(err.to_string().contains("sender address"), "{err}");
    }

    const MAX_GOSSIP_BYTES_FOR_TEST: usize = gossip_wire::MAX_GOSSIP_STRING_BYTES + 1;
}
