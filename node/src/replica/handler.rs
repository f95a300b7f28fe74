//! The receiving side of peer calls: what this node does when a peer replicates to it,
//! reads from it, pings it or pulls a range from it. A struct of its own over the
//! replica store; the coordinator is not involved.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use distkv_engine::StorageEngine;
use distkv_network::{
    encode_layout, peer_request, peer_response, range_checksum, HandlerError, Layout, LayoutError,
    Liveness, Membership, PeerHandler,
};
use distkv_proto::v1::{
    AntiEntropyRequest, AntiEntropyResponse, GcHeld, GcPurgeRequest, GcPurgeResponse,
    GcPushRequest, GcPushResponse, GossipRequest, GossipResponse, KeyRecord, LayoutChangeRequest,
    LayoutChangeResponse, LayoutPullResponse, MergeRequest, MergeResponse, PeerReadRequest,
    PeerReadResponse, PingResponse, RangePullRequest, RangePullResponse, RangeSizeRequest,
    RangeSizeResponse, ReplicateRequest, ReplicateResponse,
};

use super::checks::{self, PeerLimits};
use super::{origin_from_wire, outcome_to_wire, Incoming, Origin, ReplicaStore};
use crate::antientropy::gc::{is_tombstone, PurgeGuard, TombstoneVersion};
use crate::antientropy::gc_driver::{GcCounters, MAX_GC_ITEMS};
use crate::antientropy::{wire, HashTree, ServeError, ServeLimits};
use crate::coordinator::now_micros;
use crate::error::NodeError;
use crate::handoff::HintStore;
use crate::placement::TokenRange;
use crate::rebalance::authority;
use crate::util::blocking;

/// Most entries in one page of a range pull, whatever the caller asks.
pub const MAX_PULL_ENTRIES: u32 = 4096;
/// Most bytes (keys and records) in one page of a range pull, whatever the caller asks
/// (a single larger record still travels alone).
pub const MAX_PULL_BYTES: u64 = 4 << 20;

/// This node as its peers see it. Everything a peer sends is checked against the same
/// limits as client input ([`PeerLimits`]); a request with one bad entry is refused
/// whole ([`HandlerError::Refused`], naming the entry and the limit), nothing of it
/// stored.
pub struct PeerEndpoint<S: StorageEngine + ?Sized> {
    node_id: String,
    store: Arc<ReplicaStore<S>>,
    limits: PeerLimits,
    membership: Option<Arc<dyn MembershipCalls>>,
    tree: Option<Arc<parking_lot::Mutex<HashTree>>>,
    /// Runs operator commands forwarded by other nodes; set once the node is assembled.
    operator: std::sync::OnceLock<Arc<dyn crate::operator::ForwardedCommands>>,
    gc: Option<(Option<Arc<HintStore>>, Arc<GcCounters>)>,
}

/// The peer calls membership answers: pings (with the process generation) and gossip.
pub trait MembershipCalls: Send + Sync + 'static {
    /// The process generation ([`Membership::generation`]).
    fn generation(&self) -> u64;
    /// The layout this node holds ([`Membership::layout`]).
    fn current_layout(&self) -> Arc<Layout>;
    /// Applies a layout change ([`Membership::apply_layout`]).
    fn offer_layout(&self, layout: Layout) -> Result<(), LayoutError>;
    /// Whether member `id` is dead in this node's view ([`Membership::liveness`]).
    fn is_dead(&self, id: &str) -> bool;
    /// Answers a gossip message ([`Membership::handle_gossip`]).
    fn gossip(
        &self,
        from: &str,
        request: GossipRequest,
        now: Instant,
    ) -> Result<GossipResponse, HandlerError>;
}

impl<M: Membership> MembershipCalls for M {
    fn generation(&self) -> u64 {
        Membership::generation(self)
    }

    fn current_layout(&self) -> Arc<Layout> {
        self.layout()
    }

    fn offer_layout(&self, layout: Layout) -> Result<(), LayoutError> {
        self.apply_layout(layout)
    }

    fn is_dead(&self, id: &str) -> bool {
        self.liveness(id).liveness == Liveness::Dead
    }

    fn gossip(
        &self,
        from: &str,
        request: GossipRequest,
        now: Instant,
    ) -> Result<GossipResponse, HandlerError> {
        self.handle_gossip(from, request, now)
    }
}

impl<S: StorageEngine + ?Sized> PeerEndpoint<S> {
    /// The endpoint of node `node_id` over its `store`, checking requests against
    /// `limits`.
    pub fn new(
        node_id: impl Into<String>,
        store: Arc<ReplicaStore<S>>,
        limits: PeerLimits,
    ) -> Self {
        PeerEndpoint {
            node_id: node_id.into(),
            store,
            limits,
            membership: None,
            tree: None,
            operator: std::sync::OnceLock::new(),
            gc: None,
        }
    }

    /// Answers tombstone GC calls (`GcPush`, `GcPurge`): a purge is refused for a key
    /// that may have a hint pending in `hints`; purges are counted in `counters`.
    pub fn with_gc(mut self, hints: Option<Arc<HintStore>>, counters: Arc<GcCounters>) -> Self {
        self.gc = Some((hints, counters));
        self
    }

    /// Answers anti-entropy comparisons from `tree` (this node's hash tree, kept
    /// current by the store) and the store's key hashes.
    pub fn with_antientropy(mut self, tree: Arc<parking_lot::Mutex<HashTree>>) -> Self {
        self.tree = Some(tree);
        self
    }

    /// Answers pings with `membership`'s generation and hands it gossip calls.
    pub fn with_membership(mut self, membership: Arc<dyn MembershipCalls>) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Runs operator commands that other nodes forward (`--node ID`) with `operator`.
    /// Set once; a second call is ignored.
    pub fn set_operator(&self, operator: Arc<dyn crate::operator::ForwardedCommands>) {
        let _ = self.operator.set(operator);
    }

    /// Decodes and checks the entries of a merge or replicate call.
    fn accept<'a>(
        &self,
        from: &str,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8], Origin)>,
    ) -> Result<Vec<Incoming>, HandlerError> {
        let now = now_micros();
        entries
            .enumerate()
            .map(|(i, (key, bytes, origin))| {
                checks::accept_record(key, bytes, origin, &self.limits, now)
                    .map(|record| Incoming {
                        key: key.to_vec(),
                        record,
                        origin,
                    })
                    .map_err(|e| {
                        HandlerError::Refused(format!(
                            "entry {i} of a write from {from} refused, nothing of the call stored: {e}"
                        ))
                    })
            })
            .collect()
    }

    /// A call from a node of an earlier version: every record is taken as a repair.
    async fn replicate(
        &self,
        from: &str,
        request: ReplicateRequest,
    ) -> Result<ReplicateResponse, HandlerError> {
        let entries = self.accept(
            from,
            request
                .records
                .iter()
                .map(|kr| (&kr.key[..], &kr.record[..], Origin::Repair)),
        )?;
        self.store.merge(entries).await.map_err(storage_error)?;
        Ok(ReplicateResponse {})
    }

    async fn merge(
        &self,
        from: &str,
        request: MergeRequest,
    ) -> Result<MergeResponse, HandlerError> {
        let entries = self.accept(
            from,
            request
                .entries
                .iter()
                .map(|e| (&e.key[..], &e.record[..], origin_from_wire(e.origin))),
        )?;
        let outcomes = self.store.merge(entries).await.map_err(storage_error)?;
        if outcomes.iter().all(Result::is_ok) {
            return Ok(MergeResponse::default());
        }
        Ok(MergeResponse {
            outcomes: outcomes.iter().map(outcome_to_wire).collect(),
        })
    }

    fn read(&self, from: &str, request: PeerReadRequest) -> Result<PeerReadResponse, HandlerError> {
        for (i, key) in request.keys.iter().enumerate() {
            checks::check_key(key, &self.limits).map_err(|e| {
                HandlerError::Refused(format!("key {i} of a read from {from} refused: {e}"))
            })?;
        }
        // Inline, like local reads (see `ReplicaStore::get_encoded`).
        let records = request
            .keys
            .into_iter()
            .map(|k| {
                let record = self
                    .store
                    .get_encoded(&k)
                    .map_err(storage_error)?
                    .unwrap_or_default();
                Ok(KeyRecord {
                    key: k,
                    record: record.into(),
                })
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        Ok(PeerReadResponse { records })
    }

    async fn range_pull(
        &self,
        from: &str,
        request: RangePullRequest,
    ) -> Result<RangePullResponse, HandlerError> {
        checks::check_cursor(&request.after, &self.limits)
            .map_err(|e| HandlerError::Refused(format!("range pull from {from} refused: {e}")))?;
        let range = TokenRange {
            start: request.start_token,
            end: request.end_token,
        };
        let after = (!request.after.is_empty()).then(|| request.after.to_vec());
        let max_entries = request.max_entries.clamp(1, MAX_PULL_ENTRIES) as usize;
        let max_bytes = request.max_bytes.clamp(1, MAX_PULL_BYTES) as usize;
        let store = self.store.clone();
        // A page may read from disk: off the async workers.
        let page =
            blocking(move || store.scan_range(range, after.as_deref(), max_entries, max_bytes))
                .await
                .map_err(storage_error)?;
        let entries: Vec<KeyRecord> = page
            .entries
            .into_iter()
            .map(|(key, record)| KeyRecord {
                key: key.into(),
                record: record.into(),
            })
            .collect();
        Ok(RangePullResponse {
            checksum: range_checksum(&entries),
            done: page.next.is_none(),
            next: page.next.unwrap_or_default().into(),
            entries,
        })
    }
}

impl<S: StorageEngine + ?Sized + 'static> PeerEndpoint<S> {
    /// Tombstone GC phase 1 from a peer: merges each tombstone as a repair (checked
    /// like a merge; a record that is not a tombstone is refused) and answers the
    /// version held after it.
    async fn gc_push(
        &self,
        from: &str,
        request: GcPushRequest,
    ) -> Result<GcPushResponse, HandlerError> {
        if self.gc.is_none() {
            return Err(HandlerError::Refused(format!(
                "tombstone GC push from {from} refused: this node runs no tombstone GC"
            )));
        }
        check_gc_items(from, "push", request.items.len())?;
        let entries = self.accept(
            from,
            request
                .items
                .iter()
                .map(|kr| (&kr.key[..], &kr.record[..], Origin::Repair)),
        )?;
        if let Some(i) = entries.iter().position(|e| !is_tombstone(&e.record)) {
            return Err(HandlerError::Refused(format!(
                "tombstone GC push from {from} refused, nothing of it stored: item {i} is not a tombstone"
            )));
        }
        let keys: Vec<Vec<u8>> = entries.iter().map(|e| e.key.clone()).collect();
        self.store.merge(entries).await.map_err(storage_error)?;
        let held = keys
            .iter()
            .map(|k| {
                let record = self.store.get(k).map_err(storage_error)?;
                Ok(match record.and_then(|r| TombstoneVersion::of(k, &r)) {
                    Some(v) => GcHeld {
                        has_version: true,
                        version: v.0,
                    },
                    None => GcHeld::default(),
                })
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        Ok(GcPushResponse { held })
    }

    /// Tombstone GC phase 2 from a peer: deletes each key where it still holds exactly
    /// the given version and no hint for it may be pending here.
    async fn gc_purge(
        &self,
        from: &str,
        request: GcPurgeRequest,
    ) -> Result<GcPurgeResponse, HandlerError> {
        let Some((hints, counters)) = &self.gc else {
            return Err(HandlerError::Refused(format!(
                "tombstone GC purge from {from} refused: this node runs no tombstone GC"
            )));
        };
        check_gc_items(from, "purge", request.items.len())?;
        for (i, item) in request.items.iter().enumerate() {
            checks::check_key(&item.key, &self.limits).map_err(|e| {
                HandlerError::Refused(format!(
                    "tombstone GC purge from {from} refused, nothing deleted: item {i}: {e}"
                ))
            })?;
        }
        let mut purged = vec![false; request.items.len()];
        let mut asked = Vec::new();
        let mut items = Vec::new();
        for (i, item) in request.items.into_iter().enumerate() {
            let key = item.key.to_vec();
            if hints.as_ref().is_some_and(|h| h.may_have_hint_for(&key)) {
                continue;
            }
            let guard = PurgeGuard {
                key: key.clone(),
                version: TombstoneVersion(item.version),
            };
            asked.push(i);
            items.push((key, move |r: Option<&crate::version::Record>| {
                guard.still_current(r)
            }));
        }
        if !items.is_empty() {
            let deleted = self
                .store
                .delete_each_if(items)
                .await
                .map_err(storage_error)?;
            let n = deleted.iter().filter(|d| **d).count() as u64;
            counters
                .purged
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            for (i, d) in asked.into_iter().zip(deleted) {
                purged[i] = d;
            }
        }
        Ok(GcPurgeResponse { purged })
    }

    /// One question of a peer's comparison. The question names tree nodes or a token
    /// interval, not a range, so it is not checked against the ranges this node
    /// replicates: an answer about tokens this node does not hold simply shows no keys,
    /// and the asking node then finds nothing to pull from here.
    async fn anti_entropy(
        &self,
        from: &str,
        request: AntiEntropyRequest,
    ) -> Result<AntiEntropyResponse, HandlerError> {
        let Some(tree) = self.tree.clone() else {
            return Err(HandlerError::Refused(format!(
                "anti-entropy question from {from} refused: this node keeps no anti-entropy tree"
            )));
        };
        let request = wire::request_from_wire(request, self.limits.max_key_bytes).map_err(|e| {
            HandlerError::Refused(format!("anti-entropy question from {from} refused: {e}"))
        })?;
        let store = self.store.clone();
        // Key pages read storage: off the async workers. The tree stays locked for one
        // page at most (ServeLimits::max_keys keys).
        let answer = blocking(move || {
            let tree = tree.lock();
            Ok(crate::antientropy::answer(
                &tree,
                &*store,
                &request,
                &ServeLimits::default(),
            ))
        })
        .await
        .map_err(storage_error)?;
        match answer {
            Ok(response) => Ok(wire::response_to_wire(&response)),
            Err(e @ ServeError::Refused(_)) => {
                Err(HandlerError::Refused(format!("{e} (question from {from})")))
            }
            Err(e) => Err(HandlerError::Failed(e.to_string())),
        }
    }
}

fn check_gc_items(from: &str, what: &str, n: usize) -> Result<(), HandlerError> {
    if n > MAX_GC_ITEMS {
        return Err(HandlerError::Refused(format!(
            "tombstone GC {what} from {from} refused: {n} items, over the limit of {MAX_GC_ITEMS} per call"
        )));
    }
    Ok(())
}

fn storage_error(e: NodeError) -> HandlerError {
    match e {
        NodeError::Unavailable(m) => HandlerError::Unavailable(m),
        other => HandlerError::Failed(other.to_string()),
    }
}

/// Commits the layout change `request` asks for if this node is the layout authority
/// ([`authority::commit`]) and answers the layout after it. A node asks only its own
/// join or decommission; a removal may come from any member (an operator's command).
fn layout_change(
    m: &dyn MembershipCalls,
    local: &str,
    from: &str,
    request: LayoutChangeRequest,
) -> Result<LayoutChangeResponse, HandlerError> {
    let change = authority::from_wire(request)
        .map_err(|e| HandlerError::Refused(format!("layout change from {from} refused: {e}")))?;
    if change.asked_by_its_node() && change.node() != from {
        return Err(HandlerError::Refused(format!(
            "the {change} was asked by {from:?}: a node asks its own join or decommission"
        )));
    }
    let next = authority::commit(m, local, &change).map_err(HandlerError::Refused)?;
    Ok(LayoutChangeResponse {
        layout: Some(encode_layout(&next)),
    })
}

/// Most ranges one `RangeSize` request may name (a ring of 256 virtual nodes on 16
/// members has 4,096 ranges).
pub const MAX_SIZE_RANGES: usize = 4096;

impl<S: StorageEngine + ?Sized> PeerEndpoint<S> {
    /// About how many records this node holds in each range of `request`, from its
    /// anti-entropy tree (not ready while it is rebuilt, or on an endpoint without one).
    fn range_size(
        &self,
        from: &str,
        request: RangeSizeRequest,
    ) -> Result<RangeSizeResponse, HandlerError> {
        if request.ranges.len() > MAX_SIZE_RANGES {
            return Err(HandlerError::Refused(format!(
                "range size request from {from} names {} ranges; at most {MAX_SIZE_RANGES} \
                 per request",
                request.ranges.len()
            )));
        }
        let not_ready = RangeSizeResponse {
            ready: false,
            records: Vec::new(),
        };
        let Some(tree) = &self.tree else {
            return Ok(not_ready);
        };
        let tree = tree.lock();
        let mut records = Vec::with_capacity(request.ranges.len());
        for b in &request.ranges {
            let range = TokenRange {
                start: b.start,
                end: b.end,
            };
            match tree.approx_keys_in(range) {
                Some(n) => records.push(n),
                None => return Ok(not_ready),
            }
        }
        Ok(RangeSizeResponse {
            ready: true,
            records,
        })
    }
}

#[async_trait]
impl<S: StorageEngine + ?Sized + 'static> PeerHandler for PeerEndpoint<S> {
    async fn handle(
        &self,
        from: &str,
        request: peer_request::Body,
    ) -> Result<peer_response::Body, HandlerError> {
        use peer_request::Body as Req;
        use peer_response::Body as Resp;
        match request {
            Req::Replicate(r) => self.replicate(from, r).await.map(Resp::Replicate),
            Req::Merge(r) => self.merge(from, r).await.map(Resp::Merge),
            Req::Read(r) => self.read(from, r).map(Resp::Read),
            Req::Ping(_) => Ok(Resp::Ping(PingResponse {
                node_id: self.node_id.clone(),
                generation: self.membership.as_ref().map_or(0, |m| m.generation()),
            })),
            Req::RangePull(r) => self.range_pull(from, r).await.map(Resp::RangePull),
            Req::RangeSize(r) => self.range_size(from, r).map(Resp::RangeSize),
            Req::AntiEntropy(r) => self.anti_entropy(from, r).await.map(Resp::AntiEntropy),
            Req::GcPush(r) => self.gc_push(from, r).await.map(Resp::GcPush),
            Req::GcPurge(r) => self.gc_purge(from, r).await.map(Resp::GcPurge),
            Req::Gossip(r) => match &self.membership {
                Some(m) => m.gossip(from, r, distkv_network::now()).map(Resp::Gossip),
                None => Err(HandlerError::Refused(format!(
                    "gossip from {from} refused: this endpoint has no membership to answer it"
                ))),
            },
            Req::Operator(r) => match self.operator.get() {
                Some(operator) => operator
                    .run(r)
                    .await
                    .map(Resp::Operator)
                    .map_err(|status| HandlerError::Refused(status.message().to_string())),
                None => Err(HandlerError::Refused(format!(
                    "operator command from {from} refused: this endpoint runs none"
                ))),
            },
            Req::LayoutChange(r) => match &self.membership {
                Some(m) => layout_change(&**m, &self.node_id, from, r).map(Resp::LayoutChange),
                None => Err(HandlerError::Refused(format!(
                    "layout change from {from} refused: this endpoint has no membership"
                ))),
            },
            Req::LayoutPull(_) => match &self.membership {
                Some(m) => Ok(Resp::LayoutPull(LayoutPullResponse {
                    layout: Some(encode_layout(&m.current_layout())),
                })),
                None => Err(HandlerError::Refused(format!(
                    "layout pull from {from} refused: this endpoint has no membership"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeSettings;
    use crate::placement::{HashRing, Partitioner};
    use crate::replica::{wire_origin, PeerLimits};
    use crate::version::{ConflictPolicy, Dot, Record, VersionVector};
    use distkv_backends::MemoryEngine;
    use distkv_proto::v1::MergeEntry;
    use peer_request::Body as Req;
    use peer_response::Body as Resp;

    fn endpoint() -> PeerEndpoint<MemoryEngine> {
        let settings = NodeSettings {
            max_key_bytes: 8,
            max_value_bytes: 16,
            max_siblings: 2,
            ..NodeSettings::default()
        };
        let store = Arc::new(ReplicaStore::new(
            Arc::new(MemoryEngine::ephemeral()),
            ConflictPolicy::Siblings,
            settings.max_siblings,
            HashRing::token,
            "b",
            16,
        ));
        PeerEndpoint::new("b", store, PeerLimits::from_settings(&settings))
    }

    /// A first write of `value` (`None`: a tombstone) by `actor`, a millisecond old.
    fn record(actor: &str, value: Option<&[u8]>) -> Record {
        let counter = now_micros() - 1_000;
        Record::write(
            Dot {
                actor: actor.into(),
                counter,
            },
            VersionVector::new(),
            counter / 1000,
            value.map(<[u8]>::to_vec),
        )
    }

    fn write(actor: &str, value: &[u8]) -> Record {
        record(actor, Some(value))
    }

    fn merge(entries: Vec<(&[u8], Record, Origin)>) -> Req {
        Req::Merge(MergeRequest {
            entries: entries
                .into_iter()
                .map(|(k, r, o)| MergeEntry {
                    key: k.to_vec().into(),
                    record: r.encode().into(),
                    origin: wire_origin(o) as i32,
                })
                .collect(),
        })
    }

    fn refused(result: Result<Resp, HandlerError>) -> String {
        match result {
            Err(HandlerError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn range_sizes_come_from_the_tree_and_too_many_ranges_are_refused() {
        let bounds = |n: usize| RangeSizeRequest {
            ranges: (0..n as u64)
                .map(|i| distkv_proto::v1::RangeBounds { start: i, end: i })
                .collect(),
        };
        // No tree: not ready, nothing estimated.
        let peer = endpoint();
        match peer.handle("a", Req::RangeSize(bounds(2))).await {
            Ok(Resp::RangeSize(r)) => assert!(!r.ready && r.records.is_empty(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        // A ready tree of an empty store: zero per range, one answer per range.
        let tree = Arc::new(parking_lot::Mutex::new(HashTree::new(
            crate::antientropy::TreeShape::default(),
        )));
        let peer = endpoint().with_antientropy(tree);
        match peer.handle("a", Req::RangeSize(bounds(3))).await {
            Ok(Resp::RangeSize(r)) => assert_eq!((r.ready, r.records), (true, vec![0, 0, 0])),
            other => panic!("{other:?}"),
        }
        let m = refused(
            peer.handle("a", Req::RangeSize(bounds(MAX_SIZE_RANGES + 1)))
                .await,
        );
        assert!(
            m.contains("4097 ranges") && m.contains("at most 4096"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_merge_with_one_bad_entry_is_refused_whole() {
        let peer = endpoint();
        let good = (&b"good"[..], write("a", b"v"), Origin::Client);
        for (bad, what) in [
            ((&b""[..], write("a", b"v"), Origin::Client), "key is empty"),
            (
                (&b"123456789"[..], write("a", b"v"), Origin::Repair),
                "limits.max_key_bytes = 8",
            ),
            (
                (&b"k"[..], write("a", &[0; 17]), Origin::Repair),
                "limits.max_value_bytes = 16",
            ),
        ] {
            let m = refused(peer.handle("a", merge(vec![good.clone(), bad])).await);
            assert!(m.contains("entry 1") && m.contains(what), "{m}");
            assert!(m.contains("nothing of the call stored"), "{m}");
        }
        assert_eq!(peer.store.get(b"good").unwrap(), None, "nothing stored");
    }

    #[tokio::test]
    async fn client_writes_past_the_limit_are_refused_per_entry_and_repairs_stored() {
        let peer = endpoint();
        let mut outcomes = Vec::new();
        for (i, origin) in [
            Origin::Client,
            Origin::Client,
            Origin::Client,
            Origin::Repair,
        ]
        .into_iter()
        .enumerate()
        {
            let r = write(&format!("n{i}"), b"v");
            match peer.handle("a", merge(vec![(b"k", r, origin)])).await {
                Ok(Resp::Merge(m)) => outcomes.push(m.outcomes),
                other => panic!("{other:?}"),
            }
        }
        assert!(outcomes[0].is_empty() && outcomes[1].is_empty(), "stored");
        assert_eq!(outcomes[2].len(), 1);
        assert!(!outcomes[2][0].stored);
        assert_eq!(
            (outcomes[2][0].siblings, outcomes[2][0].max_siblings),
            (2, 2)
        );
        assert!(outcomes[3].is_empty(), "a repair is stored past the limit");
        assert_eq!(peer.store.get(b"k").unwrap().unwrap().siblings.len(), 3);
    }

    #[tokio::test]
    async fn the_legacy_replicate_call_is_checked_as_repairs() {
        let peer = endpoint();
        let bad = ReplicateRequest {
            records: vec![KeyRecord {
                key: Vec::new().into(),
                record: write("a", b"v").encode().into(),
            }],
        };
        let m = refused(peer.handle("a", Req::Replicate(bad)).await);
        assert!(m.contains("key is empty"), "{m}");
        let mut many = Record::default();
        for i in 0..(2 * checks::REPAIR_HEADROOM + 1) {
            many.merge(&write(&format!("n{i}"), b"v"));
        }
        let huge = ReplicateRequest {
            records: vec![KeyRecord {
                key: b"k".to_vec().into(),
                record: many.encode().into(),
            }],
        };
        let m = refused(peer.handle("a", Req::Replicate(huge)).await);
        assert!(
            m.contains("33 siblings") && m.contains("for a repair"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn reads_and_range_pulls_with_bad_keys_are_refused() {
        let peer = endpoint();
        let read = PeerReadRequest {
            keys: vec![b"ok".to_vec().into(), Vec::new().into()],
        };
        let m = refused(peer.handle("a", Req::Read(read)).await);
        assert!(m.contains("key 1") && m.contains("key is empty"), "{m}");
        let pull = RangePullRequest {
            after: vec![0; 8 + 9].into(),
            ..Default::default()
        };
        let m = refused(peer.handle("a", Req::RangePull(pull)).await);
        assert!(m.contains("cursor is 17 bytes"), "{m}");
    }

    fn gc_endpoint() -> PeerEndpoint<MemoryEngine> {
        endpoint().with_gc(None, Arc::new(GcCounters::default()))
    }

    fn tombstone(actor: &str) -> Record {
        record(actor, None)
    }

    fn push(items: Vec<(&[u8], Record)>) -> Req {
        Req::GcPush(GcPushRequest {
            items: items
                .into_iter()
                .map(|(k, r)| KeyRecord {
                    key: k.to_vec().into(),
                    record: r.encode().into(),
                })
                .collect(),
        })
    }

    #[tokio::test]
    async fn gc_calls_from_peers_are_checked_and_answer_the_held_version() {
        // Without GC wired, both calls are refused.
        let m = refused(endpoint().handle("a", push(vec![])).await);
        assert!(m.contains("runs no tombstone GC"), "{m}");
        let peer = gc_endpoint();
        // A live value is no tombstone: the whole push is refused.
        let m = refused(
            peer.handle(
                "a",
                push(vec![(b"k1", tombstone("a")), (b"k2", write("a", b"v"))]),
            )
            .await,
        );
        assert!(m.contains("item 1 is not a tombstone"), "{m}");
        assert_eq!(peer.store.get(b"k1").unwrap(), None, "nothing stored");
        // Bad keys and too many items are refused as for a merge.
        let m = refused(
            peer.handle("a", push(vec![(b"123456789", tombstone("a"))]))
                .await,
        );
        assert!(m.contains("limits.max_key_bytes"), "{m}");
        let many = vec![(&b"k"[..], tombstone("a")); MAX_GC_ITEMS + 1];
        let m = refused(peer.handle("a", push(many)).await);
        assert!(m.contains("over the limit"), "{m}");
        // A good push: merged, and the held version answered.
        let t = tombstone("a");
        let held = match peer.handle("a", push(vec![(b"k1", t.clone())])).await {
            Ok(Resp::GcPush(r)) => r.held,
            other => panic!("{other:?}"),
        };
        let version = TombstoneVersion::of(b"k1", &t).unwrap();
        assert_eq!(
            held,
            vec![GcHeld {
                has_version: true,
                version: version.0
            }]
        );
        // A purge with another version deletes nothing; with the held one it does.
        let purge = |v: u64| {
            Req::GcPurge(GcPurgeRequest {
                items: vec![distkv_proto::v1::GcPurgeItem {
                    key: b"k1".to_vec().into(),
                    version: v,
                }],
            })
        };
        match peer.handle("a", purge(version.0 ^ 1)).await {
            Ok(Resp::GcPurge(r)) => assert_eq!(r.purged, vec![false]),
            other => panic!("{other:?}"),
        }
        assert!(peer.store.get(b"k1").unwrap().is_some());
        match peer.handle("a", purge(version.0)).await {
            Ok(Resp::GcPurge(r)) => assert_eq!(r.purged, vec![true]),
            other => panic!("{other:?}"),
        }
        assert_eq!(peer.store.get(b"k1").unwrap(), None);
        let bad = Req::GcPurge(GcPurgeRequest {
            items: vec![distkv_proto::v1::GcPurgeItem {
                key: Vec::new().into(),
                version: 1,
            }],
        });
        let m = refused(peer.handle("a", bad).await);
        assert!(m.contains("item 0") && m.contains("key is empty"), "{m}");
    }
}
