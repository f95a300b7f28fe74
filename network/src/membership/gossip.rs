//! Gossip membership, the sans-IO core: per-node versioned state, digest exchanges with a
//! few random peers each round, merge rules, identity refusals and the feed of the failure
//! detector.
//!
//! No sockets, no clock, no global randomness: [`Gossiper::tick`] and
//! [`Gossiper::on_message`] take `now` and (for `tick`) a caller's random source, and return
//! the messages to send ([`Outgoing`]). What happened (members discovered or restarted,
//! liveness changes, refusals) is collected as [`GossipEvent`]s, read with
//! [`Gossiper::take_events`]. A thin async shell maps the messages onto the `Transport` and
//! calls `tick` once per gossip interval.
//!
//! # The exchange (as in Cassandra/Scylla)
//! 1. Every round each node bumps its own heartbeat and sends a [`GossipMessage::Digest`]
//!    (id, generation, heartbeat of every node it knows) to up to `fanout` random live
//!    peers, sometimes to a seed and sometimes to a dead node.
//! 2. The receiver answers [`GossipMessage::DigestAck`]: the states it holds that are
//!    newer than (or missing from) the digest, and the digest entries of the states it
//!    lacks.
//! 3. The first node answers [`GossipMessage::DigestAck2`] with the states asked for.
//!
//! # Merge rule
//! A state is versioned by `(generation, heartbeat)`, compared in that order: a higher
//! generation (a restart) always wins, then a higher heartbeat. Two different states with
//! one version (which an owner never produces) are ordered by their content, so merging
//! the same states in any order gives the same view. Only the owner changes its own state;
//! a state for our own id from elsewhere is never merged.
//!
//! # Liveness
//! Every merge that advances a member's version is a heartbeat for the member in the
//! node's [`LivenessTable`] (phi accrual); `tick` re-evaluates phi. Liveness never rewrites
//! the layout: the state carries the layout's version and digest only so that a node that
//! sees a newer layout knows to pull it ([`GossipEvent::NewerLayout`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::{Contact, DetectorSettings, Liveness, LivenessTable, LivenessView};

/// Default cap on the nodes a [`Gossiper`] knows (its own state included).
pub const DEFAULT_MAX_NODES: usize = 4096;

/// Default cap on the full states in one [`GossipMessage::DigestAck`] or
/// [`GossipMessage::DigestAck2`].
pub const DEFAULT_MAX_STATES_PER_MESSAGE: usize = 256;

/// Cap on the refusal lines remembered to report each only once; when reached, the memory
/// is cleared and refusals still going on are reported again.
const REPORTED_CAPACITY: usize = 1024;

/// How a node places and replicates data: members that differ here would compute
/// different replica sets for one key, so they are refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicationFingerprint {
    /// Replicas per key (N).
    pub replicas: u32,
    /// Name of the partitioner (the hash from key to token).
    pub partitioner: String,
    /// Virtual nodes (ring tokens) per member.
    pub virtual_nodes: u32,
    /// Fingerprint of how the ring is built from a layout (token algorithm and its
    /// version), not of the layout itself: the layout travels as version and digest.
    pub ring: u64,
}

impl fmt::Display for ReplicationFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "N={} partitioner={} virtual_nodes={} ring={:016x}",
            self.replicas, self.partitioner, self.virtual_nodes, self.ring
        )
    }
}

/// What every node gossips about itself. Versioned by `(generation, heartbeat)`; only the
/// owner changes it, and every change bumps the heartbeat ([`Gossiper::update_local`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeState {
    /// Stable identity of the node.
    pub id: String,
    /// Start time of the process that owns the state (e.g. milliseconds since the Unix
    /// epoch at start): a restart must produce a higher one.
    pub generation: u64,
    /// Bumped by the owner every gossip round and with every change of the state.
    pub heartbeat: u64,
    /// `HOST:PORT` where peers reach the node (its peer address).
    pub address: String,
    /// The cluster the node belongs to; nodes of other clusters are refused.
    pub cluster_name: String,
    /// Version of the layout the node holds.
    pub layout_version: u64,
    /// Digest of that layout ([`crate::Layout::digest`]).
    pub layout_digest: u64,
    /// How the node places data; members that differ are refused.
    pub replication: ReplicationFingerprint,
    /// Bytes stored on the node.
    pub load_bytes: u64,
    /// Build version of the node's binary.
    pub build: String,
}

impl NodeState {
    /// `(generation, heartbeat)`: higher generation wins, then higher heartbeat.
    pub fn version(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }

    /// The state's entry in a digest.
    pub fn digest_entry(&self) -> DigestEntry {
        DigestEntry {
            id: self.id.clone(),
            generation: self.generation,
            heartbeat: self.heartbeat,
        }
    }

    /// Whether `self` replaces `old` (same id assumed): a higher version, or the same
    /// version with greater content (a tie no owner produces, broken deterministically).
    fn supersedes(&self, old: &NodeState) -> bool {
        match self.version().cmp(&old.version()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self > old,
        }
    }
}

/// One node's version in a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DigestEntry {
    /// The node's id.
    pub id: String,
    /// Its generation as the sender knows it (0 with heartbeat 0: not known at all).
    pub generation: u64,
    /// Its heartbeat as the sender knows it.
    pub heartbeat: u64,
}

impl DigestEntry {
    fn version(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }
}

/// A gossip message. Every message but [`GossipMessage::Refused`] carries the sender's
/// cluster name and is refused (answered with `Refused`) when it is not ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMessage {
    /// "This is what I know": the version of every node the sender knows (at most
    /// `max_nodes` entries).
    Digest {
        /// The sender's cluster.
        cluster_name: String,
        /// One entry per known node, the sender's own included.
        entries: Vec<DigestEntry>,
    },
    /// Answer to a digest: states the digest's sender lacks, and what we lack.
    DigestAck {
        /// The sender's cluster.
        cluster_name: String,
        /// States newer than the digest's, or missing from it (at most
        /// `max_states_per_message`).
        states: Vec<NodeState>,
        /// Nodes whose newer state we want, with the version we hold.
        requests: Vec<DigestEntry>,
    },
    /// Answer to an ack: the states it asked for.
    DigestAck2 {
        /// The sender's cluster.
        cluster_name: String,
        /// The states asked for that we hold newer (at most `max_states_per_message`).
        states: Vec<NodeState>,
    },
    /// The receiver refused a message; `reason` is its log line.
    Refused {
        /// The refusing node's cluster.
        cluster_name: String,
        /// Why, naming both values.
        reason: String,
    },
}

impl GossipMessage {
    fn cluster_name(&self) -> &str {
        match self {
            GossipMessage::Digest { cluster_name, .. }
            | GossipMessage::DigestAck { cluster_name, .. }
            | GossipMessage::DigestAck2 { cluster_name, .. }
            | GossipMessage::Refused { cluster_name, .. } => cluster_name,
        }
    }
}

/// A message to send to the peer at `to` (`HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The peer address to send to.
    pub to: String,
    /// The message.
    pub message: GossipMessage,
}

/// A refusal; its `Display` is the one log line, naming both values and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A peer of another cluster sent us a message (or a state of another cluster was
    /// relayed to us): not merged, answered with [`GossipMessage::Refused`].
    ClusterName {
        /// The peer's address.
        peer_address: String,
        /// Our cluster name.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// A peer refused our message; its reason.
    RefusedByPeer {
        /// The peer's address.
        peer_address: String,
        /// Its cluster name.
        their_cluster: String,
        /// Its log line.
        reason: String,
    },
    /// A newer generation of our own id is about while we are alive: a second process
    /// runs with our node id.
    LiveDuplicateId {
        /// Our id.
        id: String,
        /// Our generation.
        our_generation: u64,
        /// The other process's generation.
        their_generation: u64,
        /// Where it was seen: the other process's address, or the peer whose digest named
        /// it.
        seen_at: String,
    },
    /// A member places data differently: not merged.
    Replication {
        /// The member's id.
        id: String,
        /// The member's address.
        address: String,
        /// Our settings.
        ours: ReplicationFingerprint,
        /// Its settings.
        theirs: ReplicationFingerprint,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ClusterName {
                peer_address,
                ours,
                theirs,
            } => write!(
                f,
                "refused gossip from {peer_address}: its cluster name is {theirs:?}, ours is \
                 {ours:?}; remove the address from the seed nodes of the wrong cluster or fix \
                 cluster_name"
            ),
            Refusal::RefusedByPeer {
                peer_address,
                their_cluster,
                reason,
            } => write!(
                f,
                "peer {peer_address} (cluster {their_cluster:?}) refused our gossip: {reason}"
            ),
            Refusal::LiveDuplicateId {
                id,
                our_generation,
                their_generation,
                seen_at,
            } => write!(
                f,
                "node id {id:?} is used by a second live process: generation \
                 {their_generation} (seen at {seen_at}) while this process, generation \
                 {our_generation}, is alive; stop one of them and give each node a unique id"
            ),
            Refusal::Replication {
                id,
                address,
                ours,
                theirs,
            } => write!(
                f,
                "refused member {id:?} at {address}: its replication settings are {theirs}, \
                 ours are {ours}; start it with the cluster's settings (they cannot change \
                 in a running cluster)"
            ),
        }
    }
}

/// What the gossiper learned; read with [`Gossiper::take_events`].
#[derive(Clone, Debug, PartialEq)]
pub enum GossipEvent {
    /// A node was learned for the first time.
    Discovered {
        /// Its id.
        id: String,
        /// Its address.
        address: String,
        /// Its generation.
        generation: u64,
    },
    /// A known node restarted (a higher generation replaced its state; its failure
    /// detector started over).
    Restarted {
        /// Its id.
        id: String,
        /// The generation before.
        old_generation: u64,
        /// The generation now.
        new_generation: u64,
    },
    /// A member's liveness changed.
    LivenessChanged {
        /// The member.
        id: String,
        /// Before.
        from: Liveness,
        /// Now.
        to: Liveness,
    },
    /// A member holds a newer layout than ours: pull it (from that member).
    NewerLayout {
        /// The member.
        id: String,
        /// Its layout version.
        version: u64,
        /// Its layout digest.
        digest: u64,
    },
    /// Something was refused; log the refusal's line. Each distinct line is reported once
    /// (see [`Gossiper::take_events`]).
    Refused(Refusal),
}

/// Settings of the gossiper.
#[derive(Clone, Debug)]
pub struct GossipSettings {
    /// Live peers gossiped to each round (at least 1).
    pub fanout: usize,
    /// Cap on known nodes, our own included. At the cap a state for a new id is dropped
    /// (and counted, [`Gossiper::dropped_at_bound`]); known nodes are never evicted, since
    /// an evicted state would come back from the others as a ghost.
    pub max_nodes: usize,
    /// Cap on full states in one ack or ack2. Beyond it the states the other side lacks
    /// entirely go first, then the most out of date; the rest go in later rounds. Received
    /// messages with more are read up to the cap.
    pub max_states_per_message: usize,
    /// The failure detector. Gossip heartbeats arrive less regularly than pings (a
    /// heartbeat travels a few hops), so the default `min_std_dev` is half the interval.
    pub detector: DetectorSettings,
}

impl Default for GossipSettings {
    fn default() -> Self {
        GossipSettings {
            fanout: 3,
            max_nodes: DEFAULT_MAX_NODES,
            max_states_per_message: DEFAULT_MAX_STATES_PER_MESSAGE,
            detector: DetectorSettings {
                min_std_dev: Duration::from_millis(500),
                first_interval: Duration::from_secs(1),
                ..DetectorSettings::default()
            },
        }
    }
}

/// A small seeded xorshift64* generator, for shells and tests that need a random source
/// for [`Gossiper::tick`] without global state.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed` (0 is replaced by a fixed non-zero constant).
    pub fn new(seed: u64) -> Self {
        XorShift64(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The gossip core of one node. See the module documentation for the protocol.
#[derive(Debug)]
pub struct Gossiper {
    settings: GossipSettings,
    local_id: String,
    /// Every known node's newest state by id, our own included.
    states: BTreeMap<String, NodeState>,
    /// Seed addresses, our own removed.
    seeds: Vec<String>,
    liveness: LivenessTable,
    events: Vec<GossipEvent>,
    /// Refusal lines already reported.
    reported: BTreeSet<String>,
    /// Ids refused for their replication settings, with the version refused: not asked
    /// for again until a newer generation shows up.
    refused: BTreeMap<String, (u64, u64)>,
    dropped_at_bound: u64,
    newest_layout_announced: u64,
}

impl Gossiper {
    /// A gossiper for `local`, with `seeds` as contact points (`HOST:PORT` peer
    /// addresses, any subset of the cluster; validate them with [`crate::parse_seed`]
    /// first). Our own address among the seeds is ignored, as are duplicates and empty
    /// entries. A seed is only an address: once its state arrives it is tracked by id like
    /// any other node, and the address stays a contact point.
    pub fn new(local: NodeState, seeds: Vec<String>, settings: GossipSettings) -> Self {
        let mut unique = BTreeSet::new();
        let seeds = seeds
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && *s != local.address && unique.insert(s.clone()))
            .collect();
        let liveness = LivenessTable::new(settings.detector.clone());
        let newest_layout_announced = local.layout_version;
        let local_id = local.id.clone();
        let mut states = BTreeMap::new();
        states.insert(local_id.clone(), local);
        Gossiper {
            settings,
            local_id,
            states,
            seeds,
            liveness,
            events: Vec::new(),
            reported: BTreeSet::new(),
            refused: BTreeMap::new(),
            dropped_at_bound: 0,
            newest_layout_announced,
        }
    }

    /// Our own state.
    pub fn local(&self) -> &NodeState {
        // The local state is inserted in `new` and never removed.
        &self.states[&self.local_id]
    }

    /// Changes our own state (layout version and digest, load, ...) and bumps the
    /// heartbeat so that the change spreads. The id and generation cannot change: a new
    /// generation is a new process, a new `Gossiper`.
    pub fn update_local(&mut self, change: impl FnOnce(&mut NodeState)) {
        let local_id = self.local_id.clone();
        let Some(state) = self.states.get_mut(&local_id) else {
            return;
        };
        let (id, generation, heartbeat) = (state.id.clone(), state.generation, state.heartbeat);
        change(state);
        state.id = id;
        state.generation = generation;
        state.heartbeat = heartbeat.saturating_add(1);
    }

    /// The newest state known for `id`.
    pub fn state(&self, id: &str) -> Option<&NodeState> {
        self.states.get(id)
    }

    /// Every known state, by id, our own included.
    pub fn states(&self) -> impl Iterator<Item = &NodeState> {
        self.states.values()
    }

    /// The seed addresses in use (our own removed).
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Liveness of `id` as of `now` (we are always alive to ourselves).
    pub fn liveness(&self, id: &str, now: Instant) -> LivenessView {
        if id == self.local_id {
            return LivenessView {
                liveness: Liveness::Alive,
                last_heard: Some(Duration::ZERO),
                phi: 0.0,
            };
        }
        self.liveness.view(id, now)
    }

    /// Feeds the failure detector with the outcome of a direct contact the shell made
    /// (e.g. a gossip send that failed).
    pub fn record_contact(&mut self, id: &str, contact: Contact, now: Instant) {
        if id == self.local_id || !self.states.contains_key(id) {
            return;
        }
        if let Some((from, to)) = self.liveness.record(id, contact, now) {
            self.events.push(GossipEvent::LivenessChanged {
                id: id.to_string(),
                from,
                to,
            });
        }
    }

    /// States for new ids dropped because `max_nodes` were known.
    pub fn dropped_at_bound(&self) -> u64 {
        self.dropped_at_bound
    }

    /// Takes the events since the last call.
    pub fn take_events(&mut self) -> Vec<GossipEvent> {
        std::mem::take(&mut self.events)
    }

    /// One gossip round at `now`: bumps our heartbeat, re-evaluates liveness, and returns a
    /// [`GossipMessage::Digest`] for each target: up to `fanout` random live peers; one
    /// random seed whose node we have not learned yet (no known state has its address), so
    /// islands formed by lost first contacts join up; else a random seed when no peer is
    /// live, else with probability seeds / (live + seeds); and
    /// a random dead node with probability dead / (live + 1) (so a node that comes back
    /// is found). No target appears twice.
    pub fn tick(&mut self, now: Instant, rng: &mut impl FnMut() -> u64) -> Vec<Outgoing> {
        if let Some(local) = self.states.get_mut(&self.local_id) {
            local.heartbeat = local.heartbeat.saturating_add(1);
        }
        for (id, from, to) in self.liveness.tick(now) {
            self.events
                .push(GossipEvent::LivenessChanged { id, from, to });
        }

        let mut live = Vec::new();
        let mut dead = Vec::new();
        for state in self.states.values() {
            if state.id == self.local_id {
                continue;
            }
            match self.liveness.view(&state.id, now).liveness {
                Liveness::Dead => dead.push(state.address.clone()),
                Liveness::Alive | Liveness::Suspect => live.push(state.address.clone()),
            }
        }
        let mut targets: Vec<String> = Vec::new();
        let fanout = self.settings.fanout.max(1);
        pick_distinct(&mut live, fanout, rng, &mut targets);

        let known_addresses: BTreeSet<&str> =
            self.states.values().map(|s| s.address.as_str()).collect();
        let mut unlearned: Vec<String> = self
            .seeds
            .iter()
            .filter(|s| !known_addresses.contains(s.as_str()) && !targets.contains(s))
            .cloned()
            .collect();
        if !unlearned.is_empty() {
            pick_distinct(&mut unlearned, 1, rng, &mut targets);
        } else {
            let mut seeds: Vec<String> = self
                .seeds
                .iter()
                .filter(|s| !targets.contains(s))
                .cloned()
                .collect();
            let seed_chance = live.len() + seeds.len();
            if !seeds.is_empty()
                && (targets.is_empty() || (rng() % seed_chance as u64) < seeds.len() as u64)
            {
                pick_distinct(&mut seeds, 1, rng, &mut targets);
            }
        }
        dead.retain(|d| !targets.contains(d));
        if !dead.is_empty() && (rng() % (live.len() as u64 + 1)) < dead.len() as u64 {
            pick_distinct(&mut dead, 1, rng, &mut targets);
        }

        let entries: Vec<DigestEntry> = self
            .states
            .values()
            .take(self.settings.max_nodes)
            .map(NodeState::digest_entry)
            .collect();
        targets
            .into_iter()
            .map(|to| Outgoing {
                to,
                message: GossipMessage::Digest {
                    cluster_name: self.local().cluster_name.clone(),
                    entries: entries.clone(),
                },
            })
            .collect()
    }

    /// Handles a message from the peer at `from_addr` at `now`; returns the answers.
    ///
    /// A message of another cluster is not read: it is answered with
    /// [`GossipMessage::Refused`] and reported ([`Refusal::ClusterName`]); a `Refused` is
    /// reported ([`Refusal::RefusedByPeer`]) and never answered.
    pub fn on_message(
        &mut self,
        from_addr: &str,
        message: GossipMessage,
        now: Instant,
    ) -> Vec<Outgoing> {
        let ours = self.local().cluster_name.clone();
        if let GossipMessage::Refused {
            cluster_name,
            reason,
        } = message
        {
            self.report(Refusal::RefusedByPeer {
                peer_address: from_addr.to_string(),
                their_cluster: cluster_name,
                reason,
            });
            return Vec::new();
        }
        if message.cluster_name() != ours {
            let refusal = Refusal::ClusterName {
                peer_address: from_addr.to_string(),
                ours: ours.clone(),
                theirs: message.cluster_name().to_string(),
            };
            let reason = refusal.to_string();
            self.report(refusal);
            return vec![Outgoing {
                to: from_addr.to_string(),
                message: GossipMessage::Refused {
                    cluster_name: ours,
                    reason,
                },
            }];
        }
        let reply = match message {
            GossipMessage::Digest { entries, .. } => {
                let (states, requests) = self.examine_digest(from_addr, entries);
                (!states.is_empty() || !requests.is_empty()).then_some(GossipMessage::DigestAck {
                    cluster_name: ours,
                    states,
                    requests,
                })
            }
            GossipMessage::DigestAck {
                states, requests, ..
            } => {
                self.merge_all(states, now);
                let wanted = self.states_newer_than(requests);
                (!wanted.is_empty()).then_some(GossipMessage::DigestAck2 {
                    cluster_name: ours,
                    states: wanted,
                })
            }
            GossipMessage::DigestAck2 { states, .. } => {
                self.merge_all(states, now);
                None
            }
            GossipMessage::Refused { .. } => None,
        };
        reply
            .map(|message| Outgoing {
                to: from_addr.to_string(),
                message,
            })
            .into_iter()
            .collect()
    }

    /// Merges one state (as if it arrived in a message) at `now`. Exposed for the shell's
    /// start-up (states saved from a previous run) and for tests.
    pub fn merge(&mut self, state: NodeState, now: Instant) {
        let local = self.local();
        if state.cluster_name != local.cluster_name {
            let refusal = Refusal::ClusterName {
                peer_address: state.address.clone(),
                ours: local.cluster_name.clone(),
                theirs: state.cluster_name.clone(),
            };
            self.report(refusal);
            return;
        }
        if state.id == self.local_id {
            self.merge_own(state);
            return;
        }
        if state.replication != local.replication {
            let refusal = Refusal::Replication {
                id: state.id.clone(),
                address: state.address.clone(),
                ours: local.replication.clone(),
                theirs: state.replication.clone(),
            };
            self.refused.insert(state.id.clone(), state.version());
            self.report(refusal);
            return;
        }
        let local_layout = local.layout_version;
        let id = state.id.clone();
        match self.states.get(&id) {
            None => {
                if self.states.len() >= self.settings.max_nodes {
                    self.dropped_at_bound = self.dropped_at_bound.saturating_add(1);
                    return;
                }
                self.events.push(GossipEvent::Discovered {
                    id: id.clone(),
                    address: state.address.clone(),
                    generation: state.generation,
                });
            }
            Some(old) => {
                if !state.supersedes(old) {
                    return;
                }
                if state.generation > old.generation {
                    self.events.push(GossipEvent::Restarted {
                        id: id.clone(),
                        old_generation: old.generation,
                        new_generation: state.generation,
                    });
                    self.liveness.forget(&id);
                }
                if state.version() == old.version() {
                    // A tie broken by content: not a sign of life.
                    self.states.insert(id, state);
                    return;
                }
            }
        }
        if state.layout_version > local_layout
            && state.layout_version > self.newest_layout_announced
        {
            self.newest_layout_announced = state.layout_version;
            self.events.push(GossipEvent::NewerLayout {
                id: id.clone(),
                version: state.layout_version,
                digest: state.layout_digest,
            });
        }
        self.refused.remove(&id);
        self.states.insert(id.clone(), state);
        self.record_contact(&id, Contact::Answered, now);
    }

    fn merge_all(&mut self, states: Vec<NodeState>, now: Instant) {
        for state in states
            .into_iter()
            .take(self.settings.max_states_per_message)
        {
            self.merge(state, now);
        }
    }

    /// A state for our own id from elsewhere: never merged. A newer generation is a second
    /// live process; the same generation with a higher heartbeat (this process restarted
    /// within one generation tick) moves our heartbeat past it so ours wins again.
    fn merge_own(&mut self, state: NodeState) {
        let (our_generation, our_heartbeat) = self.local().version();
        if state.generation > our_generation {
            self.report(Refusal::LiveDuplicateId {
                id: state.id,
                our_generation,
                their_generation: state.generation,
                seen_at: state.address,
            });
        } else if state.generation == our_generation && state.heartbeat > our_heartbeat {
            self.update_local(|s| s.heartbeat = state.heartbeat);
        }
    }

    /// Our answer to a digest: states it lacks (newer than its entry, or not listed), and
    /// requests for what we lack.
    fn examine_digest(
        &mut self,
        from_addr: &str,
        mut entries: Vec<DigestEntry>,
    ) -> (Vec<NodeState>, Vec<DigestEntry>) {
        entries.truncate(self.settings.max_nodes);
        let mut listed = BTreeSet::new();
        // (lacks entirely, version gap) for ordering, then the state.
        let mut offers: Vec<(bool, u64, u64, &NodeState)> = Vec::new();
        let mut requests = Vec::new();
        let mut duplicate = None;
        for entry in &entries {
            listed.insert(entry.id.as_str());
            if entry.id == self.local_id {
                let ours = self.local();
                if entry.generation > ours.generation {
                    duplicate = Some(Refusal::LiveDuplicateId {
                        id: entry.id.clone(),
                        our_generation: ours.generation,
                        their_generation: entry.generation,
                        seen_at: format!("a digest from {from_addr}"),
                    });
                } else if entry.version() < ours.version() {
                    offers.push((
                        false,
                        0,
                        ours.heartbeat.saturating_sub(entry.heartbeat),
                        ours,
                    ));
                }
                continue;
            }
            match self.states.get(&entry.id) {
                Some(state) if state.version() > entry.version() => {
                    let generation_gap = state.generation.saturating_sub(entry.generation);
                    let heartbeat_gap = state.heartbeat.saturating_sub(entry.heartbeat);
                    offers.push((false, generation_gap, heartbeat_gap, state));
                }
                Some(state) if state.version() < entry.version() => {
                    requests.push(state.digest_entry());
                }
                Some(_) => {}
                None => {
                    // A refused member is asked for again only once it restarted (its
                    // settings may have been fixed), not every time its heartbeat moves.
                    let refused = self
                        .refused
                        .get(&entry.id)
                        .is_some_and(|v| v.0 >= entry.generation);
                    if !refused {
                        requests.push(DigestEntry {
                            id: entry.id.clone(),
                            generation: 0,
                            heartbeat: 0,
                        });
                    }
                }
            }
        }
        for state in self.states.values() {
            if !listed.contains(state.id.as_str()) {
                offers.push((true, 0, 0, state));
            }
        }
        // Entirely missing first, then restarts, then the most out of date.
        offers.sort_by_key(|o| std::cmp::Reverse((o.0, o.1, o.2)));
        let states = offers
            .into_iter()
            .take(self.settings.max_states_per_message)
            .map(|(_, _, _, s)| s.clone())
            .collect();
        if let Some(refusal) = duplicate {
            self.report(refusal);
        }
        (states, requests)
    }

    /// The states asked for that we hold newer than the requester.
    fn states_newer_than(&self, mut requests: Vec<DigestEntry>) -> Vec<NodeState> {
        requests.truncate(self.settings.max_nodes);
        requests
            .iter()
            .filter_map(|r| self.states.get(&r.id).filter(|s| s.version() > r.version()))
            .take(self.settings.max_states_per_message)
            .cloned()
            .collect()
    }

    /// Reports a refusal once per distinct line (a live duplicate once per generation).
    fn report(&mut self, refusal: Refusal) {
        if self.reported.len() >= REPORTED_CAPACITY {
            self.reported.clear();
        }
        let key = match &refusal {
            // One report per other generation, wherever it was seen.
            Refusal::LiveDuplicateId {
                id,
                their_generation,
                ..
            } => format!("duplicate {id} {their_generation}"),
            other => other.to_string(),
        };
        if self.reported.insert(key) {
            self.events.push(GossipEvent::Refused(refusal));
        }
    }
}

/// Moves up to `n` random distinct items of `from` into `into` (partial Fisher-Yates).
fn pick_distinct(
    from: &mut Vec<String>,
    n: usize,
    rng: &mut impl FnMut() -> u64,
    into: &mut Vec<String>,
) {
    for _ in 0..n.min(from.len()) {
        let i = (rng() % from.len() as u64) as usize;
        into.push(from.swap_remove(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROUND: Duration = Duration::from_millis(1000);

    fn fingerprint() -> ReplicationFingerprint {
        ReplicationFingerprint {
            replicas: 3,
            partitioner: "xxh3".into(),
            virtual_nodes: 16,
            ring: 0xfeed,
        }
    }

    fn id(i: usize) -> String {
        format!("n{i:02}")
    }

    fn addr(i: usize) -> String {
        format!("10.0.{}.{}:7000", i / 200, i % 200)
    }

    fn node_state(i: usize, generation: u64) -> NodeState {
        NodeState {
            id: id(i),
            generation,
            heartbeat: 0,
            address: addr(i),
            cluster_name: "test".into(),
            layout_version: 1,
            layout_digest: 0xabc,
            replication: fingerprint(),
            load_bytes: 0,
            build: "0.1.0".into(),
        }
    }

    fn ceil_log2(n: usize) -> u32 {
        usize::BITS - (n - 1).leading_zeros()
    }

    /// A tiny network: delivers every `Outgoing` round by round, with optional loss,
    /// stopped nodes (neither tick nor receive) and isolated nodes (cut off from the
    /// others, both ways).
    struct Net {
        nodes: Vec<Gossiper>,
        by_addr: BTreeMap<String, usize>,
        stopped: BTreeSet<usize>,
        isolated: BTreeSet<usize>,
        loss_percent: u64,
        rng: XorShift64,
        t0: Instant,
        round: u32,
        events: Vec<Vec<GossipEvent>>,
    }

    impl Net {
        /// `n` nodes of generation 1; node i > 0 knows one seed, a random node before it
        /// (a tree, so the seed graph is connected); node 0 knows node 1.
        fn new(n: usize, seed: u64) -> Net {
            let mut rng = XorShift64::new(seed);
            let mut net = Net {
                nodes: Vec::new(),
                by_addr: BTreeMap::new(),
                stopped: BTreeSet::new(),
                isolated: BTreeSet::new(),
                loss_percent: 0,
                rng: XorShift64::new(seed ^ 0x5555),
                t0: Instant::now(),
                round: 0,
                events: Vec::new(),
            };
            for i in 0..n {
                let seed_node = if i == 0 {
                    1
                } else {
                    (rng.next_u64() % i as u64) as usize
                };
                net.add(node_state(i, 1), vec![addr(seed_node)]);
            }
            net
        }

        fn add(&mut self, state: NodeState, seeds: Vec<String>) -> usize {
            let i = self.nodes.len();
            self.by_addr.insert(state.address.clone(), i);
            self.nodes
                .push(Gossiper::new(state, seeds, GossipSettings::default()));
            self.events.push(Vec::new());
            i
        }

        fn now(&self) -> Instant {
            self.t0 + ROUND * self.round
        }

        fn cut(&self, a: usize, b: usize) -> bool {
            self.stopped.contains(&a)
                || self.stopped.contains(&b)
                || self.isolated.contains(&a) != self.isolated.contains(&b)
        }

        /// One gossip round: every running node ticks, then messages (and their answers)
        /// are delivered until none is left.
        fn step(&mut self) {
            self.round += 1;
            let now = self.now();
            let mut queue = std::collections::VecDeque::new();
            let Net { nodes, rng, .. } = self;
            for (i, node) in nodes.iter_mut().enumerate() {
                if self.stopped.contains(&i) {
                    continue;
                }
                for out in node.tick(now, &mut || rng.next_u64()) {
                    queue.push_back((i, out));
                }
            }
            while let Some((from, out)) = queue.pop_front() {
                let Some(&to) = self.by_addr.get(&out.to) else {
                    continue;
                };
                if self.cut(from, to) || self.rng.next_u64() % 100 < self.loss_percent {
                    continue;
                }
                let from_addr = self.nodes[from].local().address.clone();
                for reply in self.nodes[to].on_message(&from_addr, out.message, now) {
                    queue.push_back((to, reply));
                }
            }
            for (i, node) in self.nodes.iter_mut().enumerate() {
                self.events[i].extend(node.take_events());
            }
        }

        fn running(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|i| !self.stopped.contains(i))
                .collect()
        }

        /// Every running node knows every running node's current generation.
        fn all_known(&self) -> bool {
            let running = self.running();
            running.iter().all(|&i| {
                running.iter().all(|&j| {
                    let want = self.nodes[j].local();
                    self.nodes[i]
                        .state(&want.id)
                        .is_some_and(|s| s.generation == want.generation)
                })
            })
        }

        /// The largest gap between a running node's heartbeat and another's view of it.
        fn max_heartbeat_lag(&self) -> u64 {
            let running = self.running();
            let mut lag = 0;
            for &i in &running {
                for &j in &running {
                    let want = self.nodes[j].local();
                    let seen = self.nodes[i].state(&want.id).map_or(0, |s| s.heartbeat);
                    lag = lag.max(want.heartbeat.saturating_sub(seen));
                }
            }
            lag
        }

        /// Rounds (at most `max`) until `done` holds; panics if it never does.
        fn run_until(&mut self, max: u32, what: &str, done: impl Fn(&Net) -> bool) -> u32 {
            for r in 1..=max {
                self.step();
                if done(self) {
                    return r;
                }
            }
            panic!("{what}: not reached within {max} rounds");
        }

        fn liveness_of(&self, viewer: usize, target: usize) -> Liveness {
            self.nodes[viewer]
                .liveness(&id(target), self.now())
                .liveness
        }

        fn everyone_sees(&self, target: usize, liveness: Liveness) -> bool {
            self.running()
                .into_iter()
                .filter(|&i| i != target)
                .all(|i| self.liveness_of(i, target) == liveness)
        }

        fn refusals(&self, i: usize) -> Vec<Refusal> {
            self.events[i]
                .iter()
                .filter_map(|e| match e {
                    GossipEvent::Refused(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    fn converge_rounds(n: usize, loss_percent: u64, seed: u64) -> (u32, u64) {
        let mut net = Net::new(n, seed);
        net.loss_percent = loss_percent;
        let rounds = net.run_until(200, "convergence", Net::all_known);
        // Steady state: how far behind the freshest heartbeats the views are.
        let mut lag = 0;
        for _ in 0..10 {
            net.step();
            lag = lag.max(net.max_heartbeat_lag());
        }
        (rounds, lag)
    }

    #[test]
    fn gossip_converges_in_log_n_rounds() {
        for n in [16usize, 32, 64] {
            let bound = 4 * ceil_log2(n) + 4;
            for seed in [1u64, 2, 3] {
                let (rounds, lag) = converge_rounds(n, 0, seed);
                println!("gossip n={n} seed={seed}: converged in {rounds} rounds (bound {bound}), steady heartbeat lag {lag}");
                assert!(rounds <= bound, "n={n} seed={seed}: {rounds} > {bound}");
                assert!(lag <= u64::from(ceil_log2(n)) + 2, "n={n}: lag {lag}");
            }
        }
    }

    #[test]
    fn gossip_converges_with_message_loss() {
        for n in [16usize, 32, 64] {
            let bound = 4 * ceil_log2(n) + 4;
            for seed in [1u64, 2, 3] {
                let (rounds, lag) = converge_rounds(n, 10, seed);
                println!("gossip n={n} seed={seed} loss=10%: converged in {rounds} rounds (bound {bound}), steady heartbeat lag {lag}");
                assert!(rounds <= bound, "n={n} seed={seed}: {rounds} > {bound}");
                assert!(lag <= u64::from(ceil_log2(n)) + 3, "n={n}: lag {lag}");
            }
        }
    }

    /// Rounds after which a silent member is dead everywhere: the last heartbeat takes up
    /// to about log2(N) + 2 rounds to reach everyone, then phi reaches `phi_dead` (8) after
    /// about 3.5 s of silence with the default settings (1 s rounds, std dev floor 0.5 s).
    fn detection_window(n: usize) -> u32 {
        ceil_log2(n) + 2 + 5
    }

    #[test]
    fn a_stopped_node_is_dead_everywhere_within_the_window_and_alive_when_it_resumes() {
        let n = 16;
        let mut net = Net::new(n, 7);
        net.run_until(40, "convergence", Net::all_known);
        // Steady state: nobody is suspected.
        for _ in 0..20 {
            net.step();
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(net.liveness_of(i, j), Liveness::Alive, "{i} sees {j}");
                }
            }
        }
        let victim = 5;
        net.stopped.insert(victim);
        let window = detection_window(n);
        let rounds = net.run_until(window, "dead everywhere", |net| {
            net.everyone_sees(victim, Liveness::Dead)
        });
        println!("stopped node dead everywhere after {rounds} rounds (window {window})");
        // Nobody else was suspected meanwhile.
        for i in net.running() {
            for j in net.running() {
                assert_eq!(net.liveness_of(i, j), Liveness::Alive, "{i} sees {j}");
            }
        }
        net.stopped.remove(&victim);
        let back = net.run_until(window, "alive again", |net| {
            net.everyone_sees(victim, Liveness::Alive)
                && net
                    .running()
                    .iter()
                    .all(|&j| net.liveness_of(victim, j) == Liveness::Alive)
        });
        println!("resumed node alive everywhere after {back} rounds");
        let changes: Vec<&GossipEvent> = net.events[0]
            .iter()
            .filter(|e| matches!(e, GossipEvent::LivenessChanged { id: x, .. } if *x == id(victim)))
            .collect();
        assert!(
            matches!(
                changes.last(),
                Some(GossipEvent::LivenessChanged {
                    to: Liveness::Alive,
                    ..
                })
            ),
            "{changes:?}"
        );
    }

    #[test]
    fn a_partitioned_node_is_suspected_and_recovers_after_the_heal() {
        let n = 16;
        let mut net = Net::new(n, 11);
        net.run_until(40, "convergence", Net::all_known);
        for _ in 0..5 {
            net.step();
        }
        let cut = 3;
        net.isolated.insert(cut);
        let suspected = net.run_until(detection_window(n), "suspected", |net| {
            (0..n)
                .filter(|&i| i != cut)
                .all(|i| net.liveness_of(i, cut) != Liveness::Alive)
                && (0..n)
                    .filter(|&j| j != cut)
                    .all(|j| net.liveness_of(cut, j) != Liveness::Alive)
        });
        println!("partitioned node suspected on both sides after {suspected} rounds");
        for _ in 0..10 {
            net.step();
        }
        net.isolated.clear();
        let healed = net.run_until(detection_window(n), "healed", |net| {
            (0..n).all(|i| (0..n).all(|j| net.liveness_of(i, j) == Liveness::Alive))
        });
        println!("partition healed: all alive everywhere after {healed} rounds");
    }

    #[test]
    fn a_node_of_another_cluster_is_refused_on_both_sides() {
        let mut net = Net::new(4, 3);
        net.run_until(40, "convergence", Net::all_known);
        let mut stranger = node_state(4, 1);
        stranger.cluster_name = "other".into();
        let s = net.add(stranger, vec![addr(0)]);
        for _ in 0..5 {
            net.step();
        }
        for i in 0..4 {
            assert!(
                net.nodes[i].state(&id(s)).is_none(),
                "{i} merged the stranger"
            );
        }
        assert!(net.nodes[s].state(&id(0)).is_none());
        let ours = net.refusals(0);
        assert_eq!(
            ours,
            vec![Refusal::ClusterName {
                peer_address: addr(s),
                ours: "test".into(),
                theirs: "other".into()
            }],
            "reported once"
        );
        let line = ours[0].to_string();
        assert!(
            line.contains("\"test\"") && line.contains("\"other\""),
            "{line}"
        );
        let theirs = net.refusals(s);
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        let line = theirs[0].to_string();
        assert!(
            line.contains(&addr(0)) && line.contains("\"test\"") && line.contains("\"other\""),
            "{line}"
        );
    }

    #[test]
    fn a_second_process_with_a_live_id_is_reported() {
        let mut net = Net::new(4, 5);
        net.run_until(40, "convergence", Net::all_known);
        // Another process takes id n01 with a newer generation, at another address.
        let mut twin = node_state(1, 50);
        twin.address = "10.9.9.9:7000".into();
        net.add(twin, vec![addr(2)]);
        for _ in 0..6 {
            net.step();
        }
        let refusals = net.refusals(1);
        assert_eq!(refusals.len(), 1, "reported once: {refusals:?}");
        let Some(Refusal::LiveDuplicateId {
            id: dup,
            our_generation,
            their_generation,
            ..
        }) = refusals.first()
        else {
            panic!("no duplicate reported: {refusals:?}");
        };
        assert_eq!(
            (dup.as_str(), *our_generation, *their_generation),
            ("n01", 1, 50)
        );
        let line = refusals[0].to_string();
        assert!(
            line.contains("generation 50") && line.contains("generation 1,"),
            "{line}"
        );
        // The original process never merged the other's state over its own.
        assert_eq!(net.nodes[1].local().generation, 1);
    }

    #[test]
    fn a_member_with_other_replication_settings_is_refused() {
        let mut net = Net::new(4, 9);
        net.run_until(40, "convergence", Net::all_known);
        let mut odd = node_state(4, 1);
        odd.replication.replicas = 5;
        let o = net.add(odd, vec![addr(0)]);
        for _ in 0..6 {
            net.step();
        }
        for i in 0..4 {
            assert!(net.nodes[i].state(&id(o)).is_none(), "{i} merged it");
        }
        let ours = net.refusals(0);
        assert!(
            matches!(&ours[..], [Refusal::Replication { id: r, .. }] if *r == id(o)),
            "{ours:?}"
        );
        let line = ours[0].to_string();
        assert!(line.contains("N=5") && line.contains("N=3"), "{line}");
        // The odd node refuses the cluster's members the same way.
        assert!(net
            .refusals(o)
            .iter()
            .all(|r| matches!(r, Refusal::Replication { .. })),);
        assert!(!net.refusals(o).is_empty());
    }

    #[test]
    fn a_restarted_node_replaces_its_old_state_everywhere() {
        let n = 8;
        let mut net = Net::new(n, 13);
        net.run_until(40, "convergence", Net::all_known);
        let r = 4;
        net.stopped.insert(r);
        for _ in 0..3 {
            net.step();
        }
        // Restart: same id and address, higher generation, heartbeat from 0.
        net.nodes[r] = Gossiper::new(
            node_state(r, 1000),
            vec![addr(0)],
            GossipSettings::default(),
        );
        net.stopped.remove(&r);
        let rounds = net.run_until(30, "restart known", |net| {
            net.all_known() && net.everyone_sees(r, Liveness::Alive)
        });
        println!("restarted node replaced everywhere after {rounds} rounds");
        for i in 0..n {
            assert_eq!(net.nodes[i].state(&id(r)).map(|s| s.generation), Some(1000));
            if i != r {
                assert!(
                    net.events[i].iter().any(|e| matches!(e,
                        GossipEvent::Restarted { id: x, old_generation: 1, new_generation: 1000 } if *x == id(r))),
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn known_nodes_and_message_sizes_are_capped() {
        let settings = GossipSettings {
            max_nodes: 4,
            max_states_per_message: 2,
            ..GossipSettings::default()
        };
        let now = Instant::now();
        let mut g = Gossiper::new(
            node_state(0, 1),
            vec![addr(0), addr(1), addr(1), " ".into()],
            settings,
        );
        assert_eq!(
            g.seeds(),
            [addr(1)],
            "own address, duplicates and blanks ignored"
        );
        for i in 1..8 {
            g.merge(node_state(i, 1), now);
        }
        assert_eq!(g.states().count(), 4);
        assert_eq!(g.dropped_at_bound(), 4);
        // A digest from someone who knows nothing gets at most 2 states back.
        let out = g.on_message(
            &addr(9),
            GossipMessage::Digest {
                cluster_name: "test".into(),
                entries: vec![],
            },
            now,
        );
        let [Outgoing {
            message: GossipMessage::DigestAck { states, .. },
            ..
        }] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!(states.len(), 2);
    }

    fn arbitrary_state() -> impl Strategy<Value = NodeState> {
        (1usize..6, 1u64..4, 0u64..6, 0u64..3).prop_map(|(i, generation, heartbeat, load)| {
            let mut s = node_state(i, generation);
            s.heartbeat = heartbeat;
            s.load_bytes = load;
            s
        })
    }

    proptest! {
        #[test]
        fn merging_in_any_order_gives_the_same_view(
            (states, shuffled) in proptest::collection::vec(arbitrary_state(), 0..24)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        ) {
            let now = Instant::now();
            let view = |states: &[NodeState]| {
                let mut g = Gossiper::new(node_state(0, 1), vec![], GossipSettings::default());
                for s in states {
                    g.merge(s.clone(), now);
                }
                g.states().cloned().collect::<Vec<_>>()
            };
            let a = view(&states);
            let b = view(&shuffled);
            prop_assert_eq!(&a, &b);
            // And the view holds the highest version per id.
            for s in &states {
                let held = a.iter().find(|h| h.id == s.id).unwrap();
                prop_assert!(held.version() >= s.version());
            }
        }
    }
}
