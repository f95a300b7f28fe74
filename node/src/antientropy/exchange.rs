//! The sans-IO comparison of this node's tree with one peer's, for one token range.
//!
//! An [`Exchange`] is one comparison ("round"). The driver loops:
//! [`Exchange::poll`] gives the next [`Request`] to send to the peer, the driver sends
//! it (the peer answers with [`answer`]) and hands the [`Response`] to
//! [`Exchange::on_response`], until `poll` returns `None` and [`Exchange::is_done`].
//! [`Exchange::finish`] then says which keys differ, after the in-flight filter.
//!
//! The descent: the range is covered by the largest tree nodes that lie wholly inside
//! it; nodes whose [`Summary`] differs are replaced by their children, down to the leaf
//! segments; differing segments, and the (at most four) segments the range's ends cut
//! through, are compared key by key ([`Request::Keys`], paged).
//!
//! Bounds: one request in flight; at most `max_indexes_per_request` node indexes and
//! `max_keys_per_page` keys and `max_response_bytes` per message; a round stops
//! descending once it has found `max_differences_per_round` differing keys (at most one
//! page more; the report then says `complete: false` and the next round finds the
//! rest); the work queue holds at most one entry per tree node of the range. A peer's
//! key tokens are not trusted for anything but ordering: a key reported differing is
//! pulled by key through the normal merge path.
//!
//! In-flight filter: a write may have reached one replica and not yet the other. A key
//! found differing becomes a *suspect* in the caller's [`Suspects`] (one per peer and
//! range); it is reported to be pulled only when a later round, at least `settle_ms`
//! after the first, still finds it differing. With `settle_ms = 0` that is "seen in two
//! consecutive comparisons".

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::tree::{overlap, HashTree, Overlap, Position, Summary, TreeShape};
use crate::placement::TokenRange;

/// One key's version hash, as compared at the bottom of the descent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHash {
    /// The key's token.
    pub token: u64,
    /// The user key.
    pub key: Vec<u8>,
    /// [`super::tree::item_hash`] of the key and its stored record.
    pub hash: u64,
}

/// A question to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The summaries of nodes `indexes` of `level` of the peer's tree.
    Hashes {
        /// Tree level (0 = root).
        level: u32,
        /// Node indexes at that level.
        indexes: Vec<u64>,
    },
    /// The key hashes of the keys with tokens in `[lo, hi]` (inside one segment), in
    /// storage order, after `after`, at most `max`.
    Keys {
        /// First token.
        lo: u64,
        /// Last token (same segment as `lo`).
        hi: u64,
        /// Resume after this key (from the previous page).
        after: Option<Position>,
        /// Most keys wanted.
        max: u32,
    },
}

/// The peer's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The summaries asked for, in the order of the request's indexes.
    Hashes(Vec<Summary>),
    /// A page of key hashes; `more` when the interval holds more after the last one.
    Keys {
        /// Key hashes in storage order.
        entries: Vec<KeyHash>,
        /// Whether more keys follow.
        more: bool,
    },
    /// The peer's tree is being rebuilt: retry the round later.
    NotReady,
}

impl Request {
    /// About how many bytes the request takes on the wire.
    pub fn approx_bytes(&self) -> u64 {
        match self {
            Request::Hashes { indexes, .. } => 8 + 8 * indexes.len() as u64,
            Request::Keys { after, .. } => {
                28 + after.as_ref().map_or(0, |p| 8 + p.key.len() as u64)
            }
        }
    }
}

impl Response {
    /// About how many bytes the response takes on the wire.
    pub fn approx_bytes(&self) -> u64 {
        match self {
            Response::Hashes(s) => 16 * s.len() as u64,
            Response::Keys { entries, .. } => {
                1 + entries.iter().map(|e| 20 + e.key.len() as u64).sum::<u64>()
            }
            Response::NotReady => 1,
        }
    }
}

/// Where this node reads the key hashes of its own stored records (the store scans the
/// token interval and hashes each record with [`super::tree::item_hash`]).
pub trait KeyHashSource {
    /// Up to `max` key hashes of the keys with tokens in `[lo, hi]`, in storage order,
    /// after `after`; and whether more follow. The error says what failed.
    fn key_hashes(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&Position>,
        max: usize,
    ) -> Result<(Vec<KeyHash>, bool), String>;
}

/// Limits of one side of a comparison. The asking side must not ask for more than the
/// answering side serves; [`ExchangeLimits::default`] and [`ServeLimits::default`] agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeLimits {
    /// Most node indexes per [`Request::Hashes`].
    pub max_indexes_per_request: usize,
    /// Most keys per [`Request::Keys`] page.
    pub max_keys_per_page: usize,
    /// A round stops descending after finding this many differing keys.
    pub max_differences_per_round: usize,
    /// How long a suspect must keep differing before it is pulled (0: two rounds).
    pub settle_ms: u64,
    /// Largest response accepted (estimated bytes, [`Response::approx_bytes`]); a
    /// larger one is refused as malformed.
    pub max_response_bytes: u64,
}

impl Default for ExchangeLimits {
    fn default() -> Self {
        ExchangeLimits {
            max_indexes_per_request: 256,
            max_keys_per_page: 1024,
            max_differences_per_round: 10_000,
            settle_ms: 0,
            max_response_bytes: 8 << 20,
        }
    }
}

/// What the answering side accepts ([`answer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Most node indexes in one [`Request::Hashes`]; more is refused.
    pub max_indexes: usize,
    /// Most keys in one [`Response::Keys`] page; a larger `max` is served this many.
    pub max_keys: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_indexes: 256,
            max_keys: 1024,
        }
    }
}

/// Why a comparison stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// This node's tree is being rebuilt.
    #[error(
        "this node's anti-entropy tree is being rebuilt; retry the comparison when it is ready"
    )]
    LocalNotReady,
    /// The peer's tree is being rebuilt.
    #[error("the peer's anti-entropy tree is being rebuilt; retry the comparison later")]
    PeerNotReady,
    /// The peer's answer does not fit the question.
    #[error("the peer's anti-entropy answer is malformed ({0}); the round is abandoned, check the peer's version and log")]
    BadResponse(String),
    /// A response came when none was expected.
    #[error("an anti-entropy response arrived with no request in flight (driver bug)")]
    Unexpected,
    /// This node could not read its own key hashes.
    #[error("reading this node's key hashes failed: {0}")]
    Local(String),
}

/// Why a request from a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request is malformed or over the limits; the message says which.
    #[error("anti-entropy request refused: {0}")]
    Refused(String),
    /// Reading the key hashes failed.
    #[error("anti-entropy request failed reading local keys: {0}")]
    Local(String),
}

/// Answers a peer's request from this node's tree and stored records. Everything in
/// the request is checked: level and indexes in the tree, at most
/// `limits.max_indexes` indexes, a key interval inside one segment with `after` in it.
/// A tree that is not ready answers [`Response::NotReady`] to hash questions.
pub fn answer(
    tree: &HashTree,
    keys: &dyn KeyHashSource,
    request: &Request,
    limits: &ServeLimits,
) -> Result<Response, ServeError> {
    let shape = tree.shape();
    match request {
        Request::Hashes { level, indexes } => {
            if *level > shape.leaf_level() {
                return Err(ServeError::Refused(format!(
                    "level {level} is past the tree's leaf level {}: the trees' shapes differ, configure the same antientropy segment and fanout bits on every node",
                    shape.leaf_level()
                )));
            }
            if indexes.is_empty() || indexes.len() > limits.max_indexes {
                return Err(ServeError::Refused(format!(
                    "{} node indexes asked for; 1..={} accepted per request",
                    indexes.len(),
                    limits.max_indexes
                )));
            }
            if let Some(bad) = indexes.iter().find(|&&i| i >= shape.nodes_at(*level)) {
                return Err(ServeError::Refused(format!(
                    "node {bad} does not exist at level {level} ({} nodes)",
                    shape.nodes_at(*level)
                )));
            }
            if !tree.is_ready() {
                return Ok(Response::NotReady);
            }
            let summaries = indexes
                .iter()
                .map(|&i| tree.summary(*level, i).unwrap_or_default())
                .collect();
            Ok(Response::Hashes(summaries))
        }
        Request::Keys { lo, hi, after, max } => {
            if lo > hi || shape.segment_of(*lo) != shape.segment_of(*hi) {
                return Err(ServeError::Refused(format!(
                    "key interval [{lo:#x}, {hi:#x}] is not inside one segment"
                )));
            }
            if let Some(a) = after {
                if a.token < *lo || a.token > *hi {
                    return Err(ServeError::Refused(format!(
                        "resume token {:#x} lies outside [{lo:#x}, {hi:#x}]",
                        a.token
                    )));
                }
            }
            if *max == 0 {
                return Err(ServeError::Refused("a key page of 0 keys".into()));
            }
            let max = (*max as usize).min(limits.max_keys);
            let (mut entries, mut more) = keys
                .key_hashes(*lo, *hi, after.as_ref(), max)
                .map_err(ServeError::Local)?;
            if entries.len() > max {
                entries.truncate(max);
                more = true;
            }
            Ok(Response::Keys { entries, more })
        }
    }
}

/// How a key differs between the two replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffKind {
    /// The peer holds the key, this node does not: pull it.
    MissingHere,
    /// This node holds the key, the peer does not: push it (or let the peer pull).
    MissingThere,
    /// Both hold different versions: pull it (merging is a join; push too for the peer).
    Diverged,
}

/// A key found differing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The user key.
    pub key: Vec<u8>,
    /// How it differs.
    pub kind: DiffKind,
}

/// Counters of one round, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests sent.
    pub requests: u64,
    /// Tree nodes compared.
    pub nodes_compared: u64,
    /// Keys covered by the comparison (under equal nodes, or compared one by one).
    pub keys_compared: u64,
    /// Keys found differing this round (before the in-flight filter).
    pub differing: u64,
    /// Estimated bytes sent.
    pub bytes_sent: u64,
    /// Estimated bytes received.
    pub bytes_received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyWork {
    lo: u64,
    hi: u64,
    after: Option<Position>,
}

#[derive(Clone, Debug)]
enum InFlight {
    Hashes { level: u32, indexes: Vec<u64> },
    Keys(KeyWork),
}

/// One comparison of one token range with one peer (see the module docs).
#[derive(Debug)]
pub struct Exchange {
    range: TokenRange,
    shape: TreeShape,
    limits: ExchangeLimits,
    nodes: VecDeque<(u32, u64)>,
    keys: VecDeque<KeyWork>,
    in_flight: Option<InFlight>,
    differing: BTreeMap<Vec<u8>, DiffKind>,
    stats: ExchangeStats,
    truncated: bool,
}

impl Exchange {
    /// A comparison of `range` between `local` and a peer whose tree has the same shape.
    pub fn new(
        range: TokenRange,
        local: &HashTree,
        limits: ExchangeLimits,
    ) -> Result<Self, ExchangeError> {
        if !local.is_ready() {
            return Err(ExchangeError::LocalNotReady);
        }
        let shape = local.shape();
        let intervals = range.intervals();
        let mut nodes = VecDeque::new();
        let mut keys = VecDeque::new();
        // Cover the range: nodes inside it, down through the nodes it cuts.
        let mut stack = vec![(0u32, 0u64)];
        while let Some((level, index)) = stack.pop() {
            let (lo, hi) = shape.interval(level, index);
            match overlap(&intervals, lo, hi) {
                Overlap::Outside => {}
                Overlap::Inside => nodes.push_back((level, index)),
                Overlap::Partial if level < shape.leaf_level() => {
                    stack.extend(shape.children(level, index).rev().map(|c| (level + 1, c)));
                }
                Overlap::Partial => {
                    for &(a, b) in &intervals {
                        if a <= hi && lo <= b {
                            keys.push_back(KeyWork {
                                lo: lo.max(a),
                                hi: hi.min(b),
                                after: None,
                            });
                        }
                    }
                }
            }
        }
        // Compare shallow nodes first: requests batch by level.
        nodes.make_contiguous().sort();
        Ok(Exchange {
            range,
            shape,
            limits,
            nodes,
            keys,
            in_flight: None,
            differing: BTreeMap::new(),
            stats: ExchangeStats::default(),
            truncated: false,
        })
    }

    /// The range compared.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// The statistics so far.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// True when the round has nothing more to ask.
    pub fn is_done(&self) -> bool {
        self.in_flight.is_none() && (self.full() || (self.nodes.is_empty() && self.keys.is_empty()))
    }

    fn full(&self) -> bool {
        self.differing.len() >= self.limits.max_differences_per_round
    }

    /// The next request to send, or `None` while one is in flight or the round is done.
    pub fn poll(&mut self) -> Option<Request> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.full() {
            self.truncated |= !self.nodes.is_empty() || !self.keys.is_empty();
            return None;
        }
        let request = if let Some(work) = self.keys.pop_front() {
            let request = Request::Keys {
                lo: work.lo,
                hi: work.hi,
                after: work.after.clone(),
                max: self.limits.max_keys_per_page.clamp(1, u32::MAX as usize) as u32,
            };
            self.in_flight = Some(InFlight::Keys(work));
            request
        } else {
            let &(level, _) = self.nodes.front()?;
            let mut indexes = Vec::new();
            while indexes.len() < self.limits.max_indexes_per_request.max(1) {
                match self.nodes.front() {
                    Some(&(l, i)) if l == level => {
                        indexes.push(i);
                        self.nodes.pop_front();
                    }
                    _ => break,
                }
            }
            self.in_flight = Some(InFlight::Hashes {
                level,
                indexes: indexes.clone(),
            });
            Request::Hashes { level, indexes }
        };
        self.stats.requests += 1;
        self.stats.bytes_sent += request.approx_bytes();
        Some(request)
    }

    /// Takes the peer's answer to the request in flight, comparing it with `local` (the
    /// tree as it is now) and this node's key hashes.
    pub fn on_response(
        &mut self,
        local: &HashTree,
        keys: &dyn KeyHashSource,
        response: Response,
    ) -> Result<(), ExchangeError> {
        let in_flight = self.in_flight.take().ok_or(ExchangeError::Unexpected)?;
        let bytes = response.approx_bytes();
        self.stats.bytes_received += bytes;
        if bytes > self.limits.max_response_bytes {
            return Err(ExchangeError::BadResponse(format!(
                "a response of about {bytes} bytes, over the {} accepted (max_response_bytes)",
                self.limits.max_response_bytes
            )));
        }
        match (in_flight, response) {
            (_, Response::NotReady) => Err(ExchangeError::PeerNotReady),
            (InFlight::Hashes { level, indexes }, Response::Hashes(remote)) => {
                self.on_hashes(local, level, &indexes, &remote)
            }
            (InFlight::Keys(work), Response::Keys { entries, more }) => {
                self.on_keys(keys, work, entries, more)
            }
            (_, _) => Err(ExchangeError::BadResponse(
                "the answer is of another kind than the question".into(),
            )),
        }
    }

    fn on_hashes(
        &mut self,
        local: &HashTree,
        level: u32,
        indexes: &[u64],
        remote: &[Summary],
    ) -> Result<(), ExchangeError> {
        if remote.len() != indexes.len() {
            return Err(ExchangeError::BadResponse(format!(
                "{} summaries for {} nodes",
                remote.len(),
                indexes.len()
            )));
        }
        if local.shape() != self.shape {
            return Err(ExchangeError::LocalNotReady);
        }
        for (&index, theirs) in indexes.iter().zip(remote) {
            let ours = local
                .summary(level, index)
                .ok_or(ExchangeError::LocalNotReady)?;
            self.stats.nodes_compared += 1;
            if ours == *theirs {
                self.stats.keys_compared += ours.keys;
            } else if level < self.shape.leaf_level() {
                for child in self.shape.children(level, index) {
                    self.nodes.push_back((level + 1, child));
                }
            } else {
                let (lo, hi) = self.shape.interval(level, index);
                self.keys.push_back(KeyWork {
                    lo,
                    hi,
                    after: None,
                });
            }
        }
        Ok(())
    }

    fn on_keys(
        &mut self,
        source: &dyn KeyHashSource,
        work: KeyWork,
        theirs: Vec<KeyHash>,
        their_more: bool,
    ) -> Result<(), ExchangeError> {
        let max = self.limits.max_keys_per_page.max(1);
        check_page(&work, &theirs, their_more, max)?;
        let (ours, our_more) = source
            .key_hashes(work.lo, work.hi, work.after.as_ref(), max)
            .map_err(ExchangeError::Local)?;
        check_page(&work, &ours, our_more, usize::MAX).map_err(|e| {
            ExchangeError::Local(format!(
                "this node's key hashes are out of order or range: {e}"
            ))
        })?;
        // Compare up to the end of the shorter page; the rest is the next page.
        let last = |v: &[KeyHash], more: bool| {
            more.then(|| v.last().map(|e| (e.token, e.key.clone())))
                .flatten()
        };
        let cut = match (last(&theirs, their_more), last(&ours, our_more)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let within = |e: &&KeyHash| {
            cut.as_ref()
                .is_none_or(|(t, k)| (e.token, &e.key) <= (*t, k))
        };
        let ours: BTreeMap<(u64, &[u8]), u64> = ours
            .iter()
            .filter(within)
            .map(|e| ((e.token, e.key.as_slice()), e.hash))
            .collect();
        let theirs: BTreeMap<(u64, &[u8]), u64> = theirs
            .iter()
            .filter(within)
            .map(|e| ((e.token, e.key.as_slice()), e.hash))
            .collect();
        let all: BTreeSet<(u64, &[u8])> = ours.keys().chain(theirs.keys()).copied().collect();
        for pos in all {
            self.stats.keys_compared += 1;
            let kind = match (ours.get(&pos), theirs.get(&pos)) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(_), Some(_)) => DiffKind::Diverged,
                (None, _) => DiffKind::MissingHere,
                (_, None) => DiffKind::MissingThere,
            };
            self.stats.differing += 1;
            self.differing.insert(pos.1.to_vec(), kind);
        }
        if let Some((token, key)) = cut {
            self.keys.push_front(KeyWork {
                after: Some(Position { token, key }),
                ..work
            });
        }
        Ok(())
    }

    /// Ends the round: keys found differing become suspects in `suspects` (the peer's
    /// and range's filter), and those that were already suspects since at least
    /// `settle_ms` before `now_ms` are returned to be pulled (or pushed). A complete
    /// round also forgets suspects that no longer differ.
    pub fn finish(mut self, suspects: &mut Suspects, now_ms: u64) -> RoundReport {
        let complete =
            self.is_done() && !self.truncated && self.nodes.is_empty() && self.keys.is_empty();
        self.truncated |= !complete;
        let mut confirmed = Vec::new();
        let mut dropped = 0;
        for (key, kind) in &self.differing {
            match suspects.first_seen.get(key) {
                // A suspect is only ever recorded by an earlier round.
                Some(&since) if now_ms.saturating_sub(since) >= self.limits.settle_ms => {
                    suspects.first_seen.remove(key);
                    confirmed.push(Difference {
                        key: key.clone(),
                        kind: *kind,
                    });
                }
                Some(_) => {}
                None if suspects.first_seen.len() < suspects.max => {
                    suspects.first_seen.insert(key.clone(), now_ms);
                }
                None => dropped += 1,
            }
        }
        if complete {
            let differing = &self.differing;
            suspects.first_seen.retain(|k, _| differing.contains_key(k));
        }
        RoundReport {
            to_pull: confirmed,
            new_suspects_dropped: dropped,
            complete,
            stats: self.stats,
        }
    }
}

/// Checks a page of key hashes against the request: in the interval, after the resume
/// point, strictly ascending, at most `max`, and not empty when `more`.
fn check_page(
    work: &KeyWork,
    page: &[KeyHash],
    more: bool,
    max: usize,
) -> Result<(), ExchangeError> {
    if page.len() > max {
        return Err(ExchangeError::BadResponse(format!(
            "{} keys in a page of at most {max}",
            page.len()
        )));
    }
    if more && page.is_empty() {
        return Err(ExchangeError::BadResponse(
            "an empty page that claims more keys follow".into(),
        ));
    }
    let mut prev = work.after.as_ref().map(|p| (p.token, p.key.as_slice()));
    for e in page {
        if e.token < work.lo || e.token > work.hi {
            return Err(ExchangeError::BadResponse(format!(
                "key token {:#x} outside the interval [{:#x}, {:#x}]",
                e.token, work.lo, work.hi
            )));
        }
        let pos = (e.token, e.key.as_slice());
        if prev.is_some_and(|p| pos <= p) {
            return Err(ExchangeError::BadResponse(
                "keys not in strictly ascending storage order".into(),
            ));
        }
        prev = Some(pos);
    }
    Ok(())
}

/// The outcome of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundReport {
    /// Keys that differed in this round and the previous one(s) (past the settle
    /// delay): merge them through the normal write path.
    pub to_pull: Vec<Difference>,
    /// Differing keys not remembered because [`Suspects`] was full (found again next
    /// round).
    pub new_suspects_dropped: usize,
    /// Whether the round covered the whole range (false when stopped at
    /// `max_differences_per_round`: run another round soon).
    pub complete: bool,
    /// Counters.
    pub stats: ExchangeStats,
}

/// The in-flight filter of one (peer, range): keys seen differing, and when first.
/// Bounded: at most `max` keys; past it, new differing keys are not remembered (they
/// are found again in the next round, when there is room).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suspects {
    first_seen: BTreeMap<Vec<u8>, u64>,
    max: usize,
}

impl Suspects {
    /// An empty filter holding at most `max` keys.
    pub fn new(max: usize) -> Self {
        Suspects {
            first_seen: BTreeMap::new(),
            max,
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.first_seen.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
    }
}
