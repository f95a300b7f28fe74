//! Versions of a key: version vectors, dots, and the sibling set every replica stores.
//!
//! Each write gets a *dot* `(coordinator id, counter)` that names it uniquely, and carries
//! the causal context the client read (a [`VersionVector`]): "I have seen every write up
//! to these counters and I replace them". A replica stores a [`Record`]: the join of every
//! context it has merged (`seen`) and the siblings whose dots `seen` does not cover.
//!
//! [`Record::merge`] is a join: associative, commutative and idempotent, so replicas
//! converge whatever order writes, repairs and hints arrive in. Concurrent writes (neither
//! saw the other) both survive as siblings; a write carrying a read's context replaces
//! exactly the siblings that read returned.

use std::collections::BTreeMap;

/// A version vector: for each actor (node id), the highest counter seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVector(BTreeMap<String, u64>);

/// The name of one write: the coordinator that accepted it and its counter there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// Node id of the coordinator.
    pub actor: String,
    /// Counter, unique per actor.
    pub counter: u64,
}

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counter of `actor` (0 if absent).
    pub fn get(&self, actor: &str) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// True when the vector has seen `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Adds `dot` (keeps the higher counter).
    pub fn add(&mut self, dot: &Dot) {
        let c = self.0.entry(dot.actor.clone()).or_insert(0);
        *c = (*c).max(dot.counter);
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.0 {
            let c = self.0.entry(actor.clone()).or_insert(0);
            *c = (*c).max(counter);
        }
    }

    /// True when every entry of `self` is ≤ the one in `other`.
    pub fn descends_from(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, &c)| self.get(a) >= c)
    }

    /// Keeps at most `max` actors, dropping those with the smallest counters. Counters
    /// are issued from each coordinator's clock in microseconds, so these are the actors
    /// that wrote least recently. A write whose context lost an actor this way does not
    /// supersede that actor's old values: they survive as siblings, never silently lost.
    pub fn prune(&mut self, max: usize) {
        if self.0.len() <= max {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self.0.iter().map(|(a, &c)| (c, a.clone())).collect();
        by_age.sort();
        let drop = by_age.len() - max;
        for (_, actor) in by_age.into_iter().take(drop) {
            self.0.remove(&actor);
        }
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no actor is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(a, &c)| (a.as_str(), c))
    }

    /// Encodes the vector as an opaque client context.
    pub fn to_context(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() * 16);
        out.push(CONTEXT_FORMAT);
        encode_vv(&mut out, self);
        out
    }

    /// Decodes a client context; the empty context is the empty vector.
    pub fn from_context(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Ok(VersionVector::new());
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        let format = r.u8()?;
        if format != CONTEXT_FORMAT {
            return Err(DecodeError(format!("unknown context format {format}")));
        }
        let vv = r.vv()?;
        r.finish()?;
        Ok(vv)
    }
}

/// What a causal context from a client may hold. Contexts are untrusted input: a
/// crafted one must not be able to hide or erase writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextLimits {
    /// Largest encoded context accepted.
    pub max_bytes: usize,
    /// Longest actor (node id) accepted.
    pub max_actor_bytes: usize,
    /// How far ahead of this node's clock a counter may be, in microseconds. Counters
    /// are issued from the coordinators' clocks (microseconds since the epoch), so a
    /// counter further ahead than any clock skew was issued by no node.
    pub max_ahead_micros: u64,
}

impl VersionVector {
    /// Decodes a context sent by a client and checks it against `limits` at this node's
    /// time `now_micros`: its size, its actors' names, and that no counter lies further
    /// ahead of the clock than any node could have issued. The error says what is wrong.
    pub fn from_client_context(
        bytes: &[u8],
        limits: &ContextLimits,
        now_micros: u64,
    ) -> Result<Self, String> {
        if bytes.len() > limits.max_bytes {
            return Err(format!(
                "context is {} bytes, over the limit of {} bytes (limits.max_context_bytes)",
                bytes.len(),
                limits.max_bytes
            ));
        }
        let vv = Self::from_context(bytes).map_err(|e| e.to_string())?;
        let horizon = now_micros.saturating_add(limits.max_ahead_micros);
        for (actor, counter) in vv.iter() {
            if actor.len() > limits.max_actor_bytes {
                return Err(format!(
                    "context names a node id of {} bytes; node ids are at most {} bytes",
                    actor.len(),
                    limits.max_actor_bytes
                ));
            }
            if counter > horizon {
                return Err(format!(
                    "context claims counter {counter} for node {actor:?}, ahead of this node's clock ({now_micros}) by more than limits.max_clock_skew: no node issued it"
                ));
            }
        }
        Ok(vv)
    }
}

/// A stored or replicated value of one key: the siblings and the causal history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Join of every causal context merged into this record.
    pub seen: VersionVector,
    /// Writes not covered by `seen`, sorted by dot, dots unique.
    pub siblings: Vec<Sibling>,
}

/// One write: its dot, wall-clock time at the coordinator, and the value (or tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// Unique name of the write.
    pub dot: Dot,
    /// Milliseconds since the Unix epoch at the coordinator (used by `lww`).
    pub timestamp_ms: u64,
    /// The value, or `None` for a delete (tombstone).
    pub value: Option<Vec<u8>>,
}

/// How concurrent siblings are presented (`replication.conflict`: `siblings` or `lww`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConflictPolicy {
    /// Keep every concurrent sibling; the client resolves them.
    #[serde(rename = "siblings")]
    Siblings,
    /// Keep only the sibling with the latest timestamp (ties broken by dot).
    #[serde(rename = "lww")]
    LastWriteWins,
}

const RECORD_FORMAT: u8 = 1;
const CONTEXT_FORMAT: u8 = 1;

impl Record {
    /// About how many bytes the record takes encoded (values, plus a small allowance per
    /// sibling and per actor), without encoding it.
    pub fn approx_bytes(&self) -> usize {
        let siblings: usize = self
            .siblings
            .iter()
            .map(|s| s.value.as_ref().map_or(0, Vec::len) + s.dot.actor.len() + 24)
            .sum();
        let seen: usize = self.seen.iter().map(|(a, _)| a.len() + 10).sum();
        siblings + seen + 8
    }

    /// The record of a single new write with causal context `context`.
    pub fn write(
        dot: Dot,
        context: VersionVector,
        timestamp_ms: u64,
        value: Option<Vec<u8>>,
    ) -> Self {
        Record {
            seen: context,
            siblings: vec![Sibling {
                dot,
                timestamp_ms,
                value,
            }],
        }
    }

    /// Joins `other` into `self`. Associative, commutative and idempotent.
    pub fn merge(&mut self, other: &Record) {
        self.seen.join(&other.seen);
        self.siblings.extend(other.siblings.iter().cloned());
        self.normalize();
    }

    /// Restores the invariants: siblings sorted by dot, unique, none covered by `seen`.
    fn normalize(&mut self) {
        let seen = &self.seen;
        self.siblings.retain(|s| !seen.covers(&s.dot));
        self.siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        self.siblings.dedup_by(|a, b| a.dot == b.dot);
    }

    /// Applies a conflict policy: with `LastWriteWins` only the sibling with the latest
    /// `(timestamp_ms, dot)` is kept, and the others are marked seen so that a stale
    /// replica cannot bring them back. Coordinators issue counters and timestamps that
    /// grow together, so marking a loser seen never covers the survivor; a loser for
    /// which that would happen (a clock that went back) is kept as a sibling instead.
    pub fn resolve(&mut self, policy: ConflictPolicy) {
        if policy != ConflictPolicy::LastWriteWins || self.siblings.len() < 2 {
            return;
        }
        let Some(survivor) = self
            .siblings
            .iter()
            .max_by(|a, b| (a.timestamp_ms, &a.dot).cmp(&(b.timestamp_ms, &b.dot)))
            .cloned()
        else {
            return;
        };
        let mut kept = Vec::with_capacity(1);
        for s in std::mem::take(&mut self.siblings) {
            let covers_survivor =
                s.dot.actor == survivor.dot.actor && s.dot.counter > survivor.dot.counter;
            if s.dot == survivor.dot || covers_survivor {
                kept.push(s);
            } else {
                self.seen.add(&s.dot);
            }
        }
        self.siblings = kept;
        self.normalize();
    }

    /// How many siblings `self` would hold after [`Record::merge`] with `other`, without
    /// merging (nothing is cloned but the version vector).
    pub fn siblings_after_merge(&self, other: &Record) -> usize {
        let mut seen = self.seen.clone();
        seen.join(&other.seen);
        let dots: std::collections::BTreeSet<&Dot> = self
            .siblings
            .iter()
            .chain(&other.siblings)
            .map(|s| &s.dot)
            .filter(|d| !seen.covers(d))
            .collect();
        dots.len()
    }

    /// The causal context a client gets from reading this record: everything it saw.
    pub fn context(&self) -> VersionVector {
        let mut vv = self.seen.clone();
        for s in &self.siblings {
            vv.add(&s.dot);
        }
        vv
    }

    /// The live values (tombstones left out), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.siblings.iter().filter_map(|s| s.value.as_deref())
    }

    /// Highest counter of `actor` anywhere in the record.
    pub fn max_counter(&self, actor: &str) -> u64 {
        self.siblings
            .iter()
            .filter(|s| s.dot.actor == actor)
            .map(|s| s.dot.counter)
            .chain(std::iter::once(self.seen.get(actor)))
            .max()
            .unwrap_or(0)
    }

    /// Encodes the record (the bytes stored in the engine and sent to peers).
    pub fn encode(&self) -> Vec<u8> {
        let value_bytes: usize = self
            .siblings
            .iter()
            .map(|s| s.value.as_ref().map_or(0, Vec::len))
            .sum();
        let mut out =
            Vec::with_capacity(16 + value_bytes + 24 * (self.siblings.len() + self.seen.len()));
        out.push(RECORD_FORMAT);
        encode_vv(&mut out, &self.seen);
        put_varint(&mut out, self.siblings.len() as u64);
        for s in &self.siblings {
            put_bytes(&mut out, s.dot.actor.as_bytes());
            put_varint(&mut out, s.dot.counter);
            put_varint(&mut out, s.timestamp_ms);
            match &s.value {
                Some(v) => {
                    out.push(1);
                    put_bytes(&mut out, v);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Decodes a record written by [`Record::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_bounded(bytes, usize::MAX, usize::MAX)
    }

    /// Decodes a record, refusing one that holds more than `max_siblings` siblings or
    /// whose `seen` vector has more than `max_actors` actors before decoding them, so a
    /// crafted record cannot make the decoder allocate far more than the bytes it came
    /// in (each sibling takes a few bytes encoded but ~70 bytes decoded).
    pub fn decode_bounded(
        bytes: &[u8],
        max_siblings: usize,
        max_actors: usize,
    ) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let format = r.u8()?;
        if format != RECORD_FORMAT {
            return Err(DecodeError(format!("unknown record format {format}")));
        }
        let seen = r.vv_bounded(max_actors)?;
        let n = r.varint()?;
        if n > max_siblings as u64 {
            return Err(DecodeError(format!(
                "record holds {n} siblings, more than the {max_siblings} accepted"
            )));
        }
        let n = n as usize;
        let mut siblings = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let actor = r.string()?;
            let counter = r.varint()?;
            let timestamp_ms = r.varint()?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.bytes()?.to_vec()),
                t => return Err(DecodeError(format!("unknown sibling kind {t}"))),
            };
            siblings.push(Sibling {
                dot: Dot { actor, counter },
                timestamp_ms,
                value,
            });
        }
        r.finish()?;
        Ok(Record { seen, siblings })
    }
}

/// A record or context that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed version data: {0}")]
pub struct DecodeError(String);

fn encode_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    put_varint(out, vv.0.len() as u64);
    for (actor, &counter) in &vv.0 {
        put_bytes(out, actor.as_bytes());
        put_varint(out, counter);
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| DecodeError("truncated".into()))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()? as usize;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| DecodeError("length past the end".into()))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError("actor is not UTF-8".into()))
    }

    fn vv(&mut self) -> Result<VersionVector, DecodeError> {
        self.vv_bounded(usize::MAX)
    }

    fn vv_bounded(&mut self, max_actors: usize) -> Result<VersionVector, DecodeError> {
        let n = self.varint()?;
        if n > max_actors as u64 {
            return Err(DecodeError(format!(
                "version vector holds {n} actors, more than the {max_actors} accepted"
            )));
        }
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let actor = self.string()?;
            let counter = self.varint()?;
            map.insert(actor, counter);
        }
        Ok(VersionVector(map))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{} trailing bytes",
                self.buf.len() - self.pos
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dot(a: &str, c: u64) -> Dot {
        Dot {
            actor: a.into(),
            counter: c,
        }
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        VersionVector(entries.iter().map(|(a, c)| (a.to_string(), *c)).collect())
    }

    #[test]
    fn concurrent_blind_writes_become_siblings() {
        let mut r = Record::default();
        r.merge(&Record::write(
            dot("a", 1),
            VersionVector::new(),
            1,
            Some(b"x".to_vec()),
        ));
        r.merge(&Record::write(
            dot("a", 2),
            VersionVector::new(),
            2,
            Some(b"y".to_vec()),
        ));
        assert_eq!(r.values().collect::<Vec<_>>(), vec![b"x".as_slice(), b"y"]);
    }

    #[test]
    fn a_write_with_context_replaces_exactly_what_was_read() {
        let mut r = Record::default();
        r.merge(&Record::write(
            dot("a", 1),
            VersionVector::new(),
            1,
            Some(b"x".to_vec()),
        ));
        r.merge(&Record::write(
            dot("b", 1),
            VersionVector::new(),
            1,
            Some(b"y".to_vec()),
        ));
        let ctx = r.context();
        // A third concurrent write the reader did not see.
        r.merge(&Record::write(
            dot("c", 1),
            VersionVector::new(),
            1,
            Some(b"z".to_vec()),
        ));
        r.merge(&Record::write(dot("a", 2), ctx, 2, Some(b"xy".to_vec())));
        assert_eq!(r.values().collect::<Vec<_>>(), vec![b"xy".as_slice(), b"z"]);
    }

    #[test]
    fn tombstones_hide_values_but_keep_context() {
        let mut r = Record::default();
        r.merge(&Record::write(
            dot("a", 1),
            VersionVector::new(),
            1,
            Some(b"x".to_vec()),
        ));
        let ctx = r.context();
        r.merge(&Record::write(dot("a", 2), ctx, 2, None));
        assert_eq!(r.values().count(), 0);
        assert_eq!(r.context().get("a"), 2);
    }

    #[test]
    fn lww_keeps_the_latest() {
        let mut r = Record::default();
        r.merge(&Record::write(
            dot("a", 1),
            VersionVector::new(),
            50,
            Some(b"late".to_vec()),
        ));
        r.merge(&Record::write(
            dot("b", 1),
            VersionVector::new(),
            10,
            Some(b"early".to_vec()),
        ));
        r.resolve(ConflictPolicy::LastWriteWins);
        assert_eq!(r.values().collect::<Vec<_>>(), vec![b"late".as_slice()]);
        // The loser stays superseded when merged again from a stale replica.
        r.merge(&Record::write(
            dot("b", 1),
            VersionVector::new(),
            10,
            Some(b"early".to_vec()),
        ));
        assert_eq!(r.values().collect::<Vec<_>>(), vec![b"late".as_slice()]);
    }

    #[test]
    fn pruning_keeps_the_most_recent_actors() {
        let mut v = vv(&[("a", 5), ("b", 1), ("c", 9), ("d", 3)]);
        v.prune(2);
        assert_eq!(v, vv(&[("a", 5), ("c", 9)]));
        v.prune(8);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn client_contexts_are_checked_against_the_limits() {
        let limits = ContextLimits {
            max_bytes: 200,
            max_actor_bytes: 8,
            max_ahead_micros: 1_000,
        };
        let now = 1_000_000;
        let ok = vv(&[("n1", now + 1_000), ("n2", 5)]);
        assert_eq!(
            VersionVector::from_client_context(&ok.to_context(), &limits, now).unwrap(),
            ok
        );
        assert!(VersionVector::from_client_context(b"", &limits, now)
            .unwrap()
            .is_empty());
        let ahead = vv(&[("n1", now + 1_001)]).to_context();
        let err = VersionVector::from_client_context(&ahead, &limits, now).unwrap_err();
        assert!(
            err.contains("no node issued it") && err.contains("\"n1\""),
            "{err}"
        );
        let max = vv(&[("n1", u64::MAX)]).to_context();
        assert!(VersionVector::from_client_context(&max, &limits, now).is_err());
        let long = vv(&[("a-very-long-node-name", 1)]).to_context();
        let err = VersionVector::from_client_context(&long, &limits, now).unwrap_err();
        assert!(
            err.contains("21 bytes") && err.contains("at most 8"),
            "{err}"
        );
        let many: Vec<(String, u64)> = (0..60).map(|i| (format!("n{i}"), 1)).collect();
        let big = VersionVector(many.into_iter().collect()).to_context();
        let err = VersionVector::from_client_context(&big, &limits, now).unwrap_err();
        assert!(err.contains("limits.max_context_bytes"), "{err}");
        assert!(VersionVector::from_client_context(b"\x01\x05", &limits, now).is_err());
    }

    #[test]
    fn contexts_round_trip_and_garbage_is_refused() {
        let v = vv(&[("n1", 3), ("n2", u64::MAX)]);
        assert_eq!(VersionVector::from_context(&v.to_context()).unwrap(), v);
        assert_eq!(
            VersionVector::from_context(b"").unwrap(),
            VersionVector::new()
        );
        assert!(VersionVector::from_context(b"\x01\x05").is_err());
        assert!(VersionVector::from_context(b"\x09").is_err());
        assert!(Record::decode(b"").is_err());
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let actor = prop::sample::select(vec!["a", "b", "c"]);
        let sib = (
            actor.clone(),
            1u64..6,
            0u64..4,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..3)),
        )
            .prop_map(|(a, c, t, v)| Sibling {
                dot: dot(a, c),
                timestamp_ms: t,
                value: v.map(|mut v| {
                    v.push(c as u8);
                    v
                }),
            });
        let seen = prop::collection::btree_map(actor.prop_map(String::from), 0u64..5, 0..3)
            .prop_map(VersionVector);
        (seen, prop::collection::vec(sib, 0..4)).prop_map(|(seen, siblings)| {
            let mut r = Record { seen, siblings };
            // The same dot always names the same write.
            for s in &mut r.siblings {
                s.value = Some(format!("{}{}", s.dot.actor, s.dot.counter).into_bytes());
                s.timestamp_ms = s.dot.counter;
            }
            r.normalize();
            r
        })
    }

    fn merged(a: &Record, b: &Record) -> Record {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn approx_bytes_is_close_to_the_encoding(a in arb_record()) {
            let real = a.encode().len();
            let approx = a.approx_bytes();
            prop_assert!(approx + 16 >= real && approx <= real * 4 + 64, "{approx} vs {real}");
        }


        #[test]
        fn merge_is_a_join(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
        }

        #[test]
        fn siblings_after_merge_counts_what_merge_keeps(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(a.siblings_after_merge(&b), merged(&a, &b).siblings.len());
        }

        #[test]
        fn records_round_trip(a in arb_record()) {
            prop_assert_eq!(Record::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&bytes);
            let _ = VersionVector::from_context(&bytes);
        }
    }
}
