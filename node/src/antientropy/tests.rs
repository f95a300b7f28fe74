//! Simulations of replicas as in-memory maps: exchanges, convergence, the in-flight
//! filter, request limits, and tombstone GC over random schedules.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::placement::{key_token, TokenRange};
use crate::version::{Dot, VersionVector};

/// One replica: its records, its tree kept current on every merge, and whether it is up.
#[derive(Clone)]
struct Replica {
    id: String,
    records: BTreeMap<Vec<u8>, Record>,
    tree: HashTree,
    up: bool,
}

use crate::version::Record;

impl Replica {
    fn new(id: &str, shape: TreeShape) -> Self {
        Replica {
            id: id.into(),
            records: BTreeMap::new(),
            tree: HashTree::new(shape),
            up: true,
        }
    }

    /// The merge path: merge, store, report old and new to the tree.
    fn merge(&mut self, key: &[u8], incoming: &Record) {
        let old = self.records.get(key).cloned();
        let mut new = old.clone().unwrap_or_default();
        new.merge(incoming);
        self.tree
            .update(key, key_token(key), old.as_ref(), Some(&new));
        self.records.insert(key.to_vec(), new);
    }

    /// Compare-and-delete.
    fn purge(&mut self, guard: &PurgeGuard) -> bool {
        let stored = self.records.get(&guard.key);
        if !guard.still_current(stored) {
            return false;
        }
        let old = self.records.remove(&guard.key);
        self.tree
            .update(&guard.key, key_token(&guard.key), old.as_ref(), None);
        true
    }

    fn wipe(&mut self) {
        self.records.clear();
        self.tree = HashTree::new(self.tree.shape());
    }

    fn versions(&self) -> BTreeMap<Vec<u8>, u64> {
        self.records
            .iter()
            .map(|(k, r)| (k.clone(), item_hash(k, r)))
            .collect()
    }
}

impl KeyHashSource for Replica {
    fn key_hashes(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&Position>,
        max: usize,
    ) -> Result<(Vec<KeyHash>, bool), String> {
        let mut all: Vec<KeyHash> = self
            .records
            .iter()
            .map(|(k, r)| KeyHash {
                token: key_token(k),
                key: k.clone(),
                hash: item_hash(k, r),
            })
            .filter(|e| e.token >= lo && e.token <= hi)
            .filter(|e| after.is_none_or(|a| (e.token, &e.key) > (a.token, &a.key)))
            .collect();
        all.sort_by(|a, b| (a.token, &a.key).cmp(&(b.token, &b.key)));
        let more = all.len() > max;
        all.truncate(max);
        Ok((all, more))
    }
}

/// One round of `a` comparing `range` with `b`, answered by `b` under `serve`.
fn round(
    a: &Replica,
    b: &Replica,
    range: TokenRange,
    limits: ExchangeLimits,
    serve: ServeLimits,
    suspects: &mut Suspects,
    now: u64,
) -> RoundReport {
    let mut ex = Exchange::new(range, &a.tree, limits).expect("local tree ready");
    let mut guard = 0;
    while let Some(req) = ex.poll() {
        let resp = answer(&b.tree, b, &req, &serve).expect("request within limits");
        ex.on_response(&a.tree, a, resp).expect("valid response");
        guard += 1;
        assert!(guard < 100_000, "the exchange terminates");
    }
    assert!(ex.is_done());
    ex.finish(suspects, now)
}

/// Applies a round's differences: pull what `a` misses, push what `b` misses.
fn apply(report: &RoundReport, a: &mut Replica, b: &mut Replica) {
    for d in &report.to_pull {
        let theirs = b.records.get(&d.key).cloned();
        let ours = a.records.get(&d.key).cloned();
        if let Some(r) = theirs {
            a.merge(&d.key, &r);
        }
        if let Some(r) = ours {
            b.merge(&d.key, &r);
        }
    }
}

/// Rounds until a complete round finds nothing; returns how many rounds it took.
fn sync(a: &mut Replica, b: &mut Replica, range: TokenRange, limits: ExchangeLimits) -> usize {
    let mut suspects = Suspects::new(100_000);
    for n in 1..1000 {
        let report = round(
            a,
            b,
            range,
            limits,
            ServeLimits::default(),
            &mut suspects,
            n as u64,
        );
        apply(&report, a, b);
        if report.complete && report.stats.differing == 0 {
            return n;
        }
    }
    panic!("no convergence in 1000 rounds");
}

fn dot(actor: &str, counter: u64) -> Dot {
    Dot {
        actor: actor.into(),
        counter,
    }
}

fn put(counter: u64, ctx: VersionVector, value: Option<&[u8]>) -> Record {
    Record::write(dot("c", counter), ctx, counter, value.map(<[u8]>::to_vec))
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// Four ranges that do not align with segments, covering the ring once.
fn quarters() -> Vec<TokenRange> {
    let cut = [
        0x1234_5678_9abc_def0u64,
        0x5555_0000_0000_0001,
        0x9000_0000_0000_0007,
        0xdead_beef_0000_0000,
    ];
    (0..4)
        .map(|i| TokenRange {
            start: cut[i],
            end: cut[(i + 1) % 4],
        })
        .collect()
}

fn shape() -> TreeShape {
    TreeShape::new(6, 2).unwrap()
}

#[test]
fn a_replica_that_missed_writes_and_deletes_converges() {
    let mut a = Replica::new("a", shape());
    let mut b = Replica::new("b", shape());
    let mut counter = 0;
    for i in 0..300 {
        counter += 1;
        let r = put(counter, VersionVector::new(), Some(b"v1"));
        a.merge(&key(i), &r);
        b.merge(&key(i), &r);
    }
    // b misses 50 overwrites, 30 deletes and 20 new keys (hints off).
    for i in 0..100 {
        counter += 1;
        let ctx = a
            .records
            .get(&key(i))
            .map(Record::context)
            .unwrap_or_default();
        let value = match i {
            0..50 => Some(b"v2".as_slice()),
            50..80 => None,
            _ => Some(b"new".as_slice()),
        };
        let k = if i >= 80 { key(1000 + i) } else { key(i) };
        a.merge(&k, &put(counter, ctx, value));
    }
    // ...and a misses one write that b took.
    counter += 1;
    b.merge(
        &key(299),
        &put(counter, VersionVector::new(), Some(b"b-only")),
    );
    assert_ne!(a.versions(), b.versions());
    let mut stats = ExchangeStats::default();
    for range in quarters() {
        let mut suspects = Suspects::new(1000);
        let first = round(
            &a,
            &b,
            range,
            ExchangeLimits::default(),
            ServeLimits::default(),
            &mut suspects,
            1,
        );
        assert!(
            first.to_pull.is_empty(),
            "a difference seen once is not pulled"
        );
        assert!(first.complete);
        let second = round(
            &a,
            &b,
            range,
            ExchangeLimits::default(),
            ServeLimits::default(),
            &mut suspects,
            2,
        );
        assert_eq!(second.to_pull.len() as u64, second.stats.differing);
        apply(&second, &mut a, &mut b);
        stats.differing += second.stats.differing;
        stats.keys_compared += second.stats.keys_compared;
    }
    assert_eq!(stats.differing, 101, "100 missed by b, 1 missed by a");
    assert!(stats.keys_compared >= 320);
    assert_eq!(a.versions(), b.versions());
    assert_eq!(a.tree, b.tree);
    assert_eq!(
        b.records[&key(60)].values().count(),
        0,
        "the delete reached b"
    );
}

#[test]
fn a_wiped_replica_converges_over_bounded_rounds() {
    let mut a = Replica::new("a", shape());
    let mut b = Replica::new("b", shape());
    for i in 0..500 {
        let r = put(u64::from(i) + 1, VersionVector::new(), Some(b"v"));
        a.merge(&key(i), &r);
        b.merge(&key(i), &r);
    }
    b.wipe();
    let limits = ExchangeLimits {
        max_differences_per_round: 64,
        max_keys_per_page: 5,
        ..ExchangeLimits::default()
    };
    let rounds = sync(&mut b, &mut a, TokenRange::FULL, limits);
    assert!(rounds > 500 / 64, "bounded rounds: {rounds}");
    assert_eq!(a.versions(), b.versions());
    assert_eq!(b.tree.root().map(|s| s.keys), Some(500));
}

#[test]
fn equal_replicas_compare_with_one_request() {
    let mut a = Replica::new("a", TreeShape::default());
    for i in 0..1000 {
        a.merge(
            &key(i),
            &put(u64::from(i) + 1, VersionVector::new(), Some(b"v")),
        );
    }
    let b = a.clone();
    let mut suspects = Suspects::new(10);
    let report = round(
        &a,
        &b,
        TokenRange::FULL,
        ExchangeLimits::default(),
        ServeLimits::default(),
        &mut suspects,
        1,
    );
    assert_eq!(report.stats.requests, 1);
    assert_eq!(report.stats.keys_compared, 1000);
    assert_eq!(
        report.stats.bytes_sent + report.stats.bytes_received,
        16 + 16
    );
}

#[test]
fn the_in_flight_filter_pulls_only_what_differs_twice() {
    let mut a = Replica::new("a", shape());
    let mut b = Replica::new("b", shape());
    let limits = ExchangeLimits {
        settle_ms: 1000,
        ..ExchangeLimits::default()
    };
    let serve = ServeLimits::default();
    let mut suspects = Suspects::new(10);
    // A write that has reached a but not yet b.
    let w = put(1, VersionVector::new(), Some(b"x"));
    a.merge(b"k", &w);
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut suspects, 0);
    assert!(r.to_pull.is_empty());
    assert_eq!(suspects.len(), 1);
    // It lands: the next complete round finds nothing and forgets the suspect.
    b.merge(b"k", &w);
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut suspects, 2000);
    assert!(r.to_pull.is_empty() && r.complete);
    assert!(suspects.is_empty());
    // A write b really missed: seen at 0, again at 500 (inside the settle delay), then
    // at 1000: pulled.
    let w2 = put(2, w.context(), Some(b"y"));
    a.merge(b"k", &w2);
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut suspects, 3000);
    assert!(r.to_pull.is_empty());
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut suspects, 3500);
    assert!(r.to_pull.is_empty(), "not settled yet");
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut suspects, 4000);
    assert_eq!(
        r.to_pull,
        vec![Difference {
            key: b"k".to_vec(),
            kind: DiffKind::Diverged
        }]
    );
    // A full filter does not remember new suspects (they are found again later).
    let mut full = Suspects::new(0);
    let r = round(&a, &b, TokenRange::FULL, limits, serve, &mut full, 0);
    assert_eq!(r.new_suspects_dropped, 1);
}

#[test]
fn requests_and_responses_out_of_bounds_are_refused() {
    let mut a = Replica::new("a", shape());
    a.merge(b"k", &put(1, VersionVector::new(), Some(b"x")));
    let serve = ServeLimits {
        max_indexes: 4,
        max_keys: 2,
    };
    let ask = |req: Request| answer(&a.tree, &a, &req, &serve);
    let refused = |r: Result<Response, ServeError>, what: &str| {
        let err = r.expect_err("refused").to_string();
        assert!(err.contains(what), "{err}");
    };
    refused(
        ask(Request::Hashes {
            level: 9,
            indexes: vec![0],
        }),
        "leaf level",
    );
    refused(
        ask(Request::Hashes {
            level: 1,
            indexes: vec![],
        }),
        "1..=4",
    );
    refused(
        ask(Request::Hashes {
            level: 1,
            indexes: vec![0; 5],
        }),
        "1..=4",
    );
    refused(
        ask(Request::Hashes {
            level: 1,
            indexes: vec![4],
        }),
        "does not exist",
    );
    let seg = shape().interval(shape().leaf_level(), 3);
    refused(
        ask(Request::Keys {
            lo: seg.0,
            hi: seg.1 + 1,
            after: None,
            max: 1,
        }),
        "one segment",
    );
    refused(
        ask(Request::Keys {
            lo: seg.1,
            hi: seg.0,
            after: None,
            max: 1,
        }),
        "one segment",
    );
    let outside = Some(Position {
        token: 0,
        key: vec![],
    });
    refused(
        ask(Request::Keys {
            lo: seg.0,
            hi: seg.1,
            after: outside,
            max: 1,
        }),
        "outside",
    );
    refused(
        ask(Request::Keys {
            lo: seg.0,
            hi: seg.1,
            after: None,
            max: 0,
        }),
        "0 keys",
    );
    // A rebuilding tree answers NotReady to hash questions; its own exchanges wait.
    let mut rebuilding = a.clone();
    rebuilding.tree = HashTree::new_rebuilding(shape());
    let r = answer(
        &rebuilding.tree,
        &rebuilding,
        &Request::Hashes {
            level: 0,
            indexes: vec![0],
        },
        &serve,
    );
    assert_eq!(r, Ok(Response::NotReady));
    assert_eq!(
        Exchange::new(
            TokenRange::FULL,
            &rebuilding.tree,
            ExchangeLimits::default()
        )
        .unwrap_err(),
        ExchangeError::LocalNotReady
    );
    // The asking side checks answers.
    let mut ex = Exchange::new(TokenRange::FULL, &a.tree, ExchangeLimits::default()).unwrap();
    assert_eq!(
        ex.on_response(&a.tree, &a, Response::NotReady),
        Err(ExchangeError::Unexpected)
    );
    assert!(matches!(ex.poll(), Some(Request::Hashes { .. })));
    let err = ex
        .on_response(&a.tree, &a, Response::Hashes(vec![]))
        .unwrap_err();
    assert!(err.to_string().contains("0 summaries for 1 nodes"), "{err}");
    let mut ex = Exchange::new(TokenRange::FULL, &a.tree, ExchangeLimits::default()).unwrap();
    ex.poll();
    assert_eq!(
        ex.on_response(&a.tree, &a, Response::NotReady),
        Err(ExchangeError::PeerNotReady)
    );
    // A key page out of order or outside its interval is refused.
    let range = TokenRange {
        start: seg.0 + 5,
        end: seg.1 - 5,
    };
    let mut ex = Exchange::new(range, &a.tree, ExchangeLimits::default()).unwrap();
    let Some(Request::Keys { lo, .. }) = ex.poll() else {
        panic!("a key page first")
    };
    let e = |t: u64, k: &[u8]| KeyHash {
        token: t,
        key: k.to_vec(),
        hash: 0,
    };
    let bad = Response::Keys {
        entries: vec![e(lo + 2, b"b"), e(lo + 1, b"a")],
        more: false,
    };
    let err = ex.on_response(&a.tree, &a, bad).unwrap_err();
    assert!(err.to_string().contains("ascending"), "{err}");
    let mut ex = Exchange::new(range, &a.tree, ExchangeLimits::default()).unwrap();
    ex.poll();
    let bad = Response::Keys {
        entries: vec![e(lo - 1, b"a")],
        more: false,
    };
    assert!(ex
        .on_response(&a.tree, &a, bad)
        .unwrap_err()
        .to_string()
        .contains("outside"));
    let mut ex = Exchange::new(range, &a.tree, ExchangeLimits::default()).unwrap();
    ex.poll();
    let bad = Response::Keys {
        entries: vec![],
        more: true,
    };
    assert!(ex
        .on_response(&a.tree, &a, bad)
        .unwrap_err()
        .to_string()
        .contains("empty page"));
    // A response over the byte bound is refused before it is looked at.
    let small = ExchangeLimits {
        max_response_bytes: 100,
        ..ExchangeLimits::default()
    };
    let mut ex = Exchange::new(range, &a.tree, small).unwrap();
    ex.poll();
    let big = Response::Keys {
        entries: vec![e(lo, &[0; 200])],
        more: false,
    };
    let err = ex.on_response(&a.tree, &a, big).unwrap_err().to_string();
    assert!(err.contains("max_response_bytes"), "{err}");
}

#[test]
fn big_segments_are_compared_page_by_page_under_a_smaller_server_limit() {
    let shape = TreeShape::new(1, 1).unwrap();
    let mut a = Replica::new("a", shape);
    let mut b = Replica::new("b", shape);
    for i in 0..200 {
        let r = put(u64::from(i) + 1, VersionVector::new(), Some(b"v"));
        a.merge(&key(i), &r);
        if i % 7 != 0 {
            b.merge(&key(i), &r);
        }
    }
    let range = TokenRange {
        start: 0x7000_0000_0000_0000,
        end: 0x2000_0000_0000_0000,
    };
    let limits = ExchangeLimits {
        max_keys_per_page: 8,
        ..ExchangeLimits::default()
    };
    let serve = ServeLimits {
        max_indexes: 256,
        max_keys: 3,
    };
    let mut suspects = Suspects::new(1000);
    let first = round(&a, &b, range, limits, serve, &mut suspects, 1);
    let second = round(&a, &b, range, limits, serve, &mut suspects, 2);
    let expected: BTreeSet<Vec<u8>> = (0..200)
        .filter(|i| i % 7 == 0)
        .map(key)
        .filter(|k| range.contains(key_token(k)))
        .collect();
    let pulled: BTreeSet<Vec<u8>> = second.to_pull.iter().map(|d| d.key.clone()).collect();
    assert_eq!(pulled, expected);
    let in_range = (0..200)
        .map(key)
        .filter(|k| range.contains(key_token(k)))
        .count() as u64;
    let b_in_range = b
        .records
        .keys()
        .filter(|k| range.contains(key_token(k)))
        .count() as u64;
    assert!(
        first.stats.requests >= b_in_range / 3,
        "paged by 3: {} requests",
        first.stats.requests
    );
    assert_eq!(first.stats.keys_compared, in_range);
}

/// Random histories of two replicas: writes delivered to either or both.
fn arb_pair() -> impl Strategy<Value = Vec<(u8, u8, bool)>> {
    // (key, delivered to: 1 = a, 2 = b, 3 = both, 0 = purge on both), delete?
    prop::collection::vec((0u8..40, 0u8..4, any::<bool>()), 0..80)
}

fn build_pair(ops: &[(u8, u8, bool)], shape: TreeShape) -> (Replica, Replica) {
    let mut a = Replica::new("a", shape);
    let mut b = Replica::new("b", shape);
    for (n, &(k, to, delete)) in ops.iter().enumerate() {
        let k = vec![k];
        let ctx = a.records.get(&k).map(Record::context).unwrap_or_default();
        let w = put(n as u64 + 1, ctx, (!delete).then_some(b"v".as_slice()));
        if to & 1 == 1 {
            a.merge(&k, &w);
        }
        if to & 2 == 2 {
            b.merge(&k, &w);
        }
    }
    (a, b)
}

proptest! {
    /// A comparison of any range (aligned with segments or not) finds no difference iff
    /// the two replicas hold the same versions of every key in that range.
    #[test]
    fn trees_agree_iff_the_replicas_hold_the_same_versions(
        ops in arb_pair(),
        start in any::<u64>(),
        end in any::<u64>(),
        align in 0u8..3,
        segment_bits in 1u32..7,
    ) {
        let shape = TreeShape::new(segment_bits, 2.min(segment_bits)).unwrap();
        let (a, b) = build_pair(&ops, shape);
        let mask = !(u64::MAX >> segment_bits);
        let range = match align {
            0 => TokenRange { start: start & mask, end: end & mask },
            1 => TokenRange { start: (start & mask).wrapping_sub(1), end: end | !mask },
            _ => TokenRange { start, end },
        };
        let va = a.versions();
        let vb = b.versions();
        let keys: BTreeSet<&Vec<u8>> = va.keys().chain(vb.keys()).filter(|k| range.contains(key_token(k))).collect();
        let same = keys.iter().all(|k| va.get(*k) == vb.get(*k));
        let mut suspects = Suspects::new(1000);
        let report = round(&a, &b, range, ExchangeLimits::default(), ServeLimits::default(), &mut suspects, 0);
        prop_assert!(report.complete);
        prop_assert_eq!(report.stats.differing == 0, same);
        let differing = keys.iter().filter(|k| va.get(**k) != vb.get(**k)).count() as u64;
        prop_assert_eq!(report.stats.differing, differing);
    }

    /// After rounds of exchange in both directions, any two histories converge.
    #[test]
    fn any_two_replicas_converge(ops in arb_pair()) {
        let (mut a, mut b) = build_pair(&ops, shape());
        for range in quarters() {
            sync(&mut a, &mut b, range, ExchangeLimits { max_differences_per_round: 3, ..ExchangeLimits::default() });
        }
        prop_assert_eq!(a.versions(), b.versions());
        prop_assert_eq!(&a.tree, &b.tree);
    }
}

// ---------------------------------------------------------------------------------
// Tombstone GC

const POLICY: GcPolicy = GcPolicy {
    grace_ms: 1000,
    in_flight_ms: 100,
};

fn tombstone(at: u64) -> Record {
    Record::write(dot("c", at), VersionVector::new(), at, None)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn confirm(replica: &str, key: &[u8], r: &Record, at_ms: u64) -> Confirmation {
    Confirmation {
        replica: replica.into(),
        version: TombstoneVersion::of(key, r).expect("a tombstone"),
        at_ms,
    }
}

#[test]
fn gc_purges_only_with_every_replica_of_every_active_set() {
    let record = tombstone(10);
    let sets = vec![ids(&["a", "b", "c"]), ids(&["b", "c", "d"])];
    let mut confirmations = vec![
        confirm("b", b"k", &record, 2000),
        confirm("c", b"k", &record, 2000),
    ];
    let at = |confirmations: &[Confirmation], now_ms| {
        let input = GcInput {
            key: b"k",
            record: &record,
            local: "a",
            replica_sets: &sets,
            confirmations,
            hint_pending: false,
            now_ms,
        };
        decide(&input, &POLICY)
    };
    assert_eq!(at(&[], 2000), GcDecision::PushTo(ids(&["b", "c", "d"])));
    assert_eq!(at(&confirmations, 2000), GcDecision::PushTo(ids(&["d"])));
    // d holds another version (a newer write): that is no confirmation.
    let newer = put(20, record.context(), Some(b"back"));
    let mut d_newer = record.clone();
    d_newer.merge(&newer);
    confirmations.push(Confirmation {
        replica: "d".into(),
        version: TombstoneVersion(item_hash(b"k", &d_newer)),
        at_ms: 2000,
    });
    assert_eq!(at(&confirmations, 2000), GcDecision::PushTo(ids(&["d"])));
    confirmations.push(confirm("d", b"k", &record, 2050));
    assert_eq!(
        at(&confirmations, 2100),
        GcDecision::Keep(KeepReason::Settling)
    );
    let GcDecision::Purge(guard) = at(&confirmations, 2150) else {
        panic!("every replica confirmed long enough ago");
    };
    assert!(guard.still_current(Some(&record)));
    // No replica set at all: never purge.
    let lonely = GcInput {
        key: b"k",
        record: &record,
        local: "a",
        replica_sets: &[],
        confirmations: &confirmations,
        hint_pending: false,
        now_ms: 5000,
    };
    assert_eq!(
        decide(&lonely, &POLICY),
        GcDecision::Keep(KeepReason::NoReplicaSets)
    );
}

#[test]
fn gc_waits_for_grace_and_pending_hints_and_ignores_live_values() {
    let record = tombstone(1000);
    let sets = vec![ids(&["a"])];
    let base = GcInput {
        key: b"k",
        record: &record,
        local: "a",
        replica_sets: &sets,
        confirmations: &[],
        hint_pending: false,
        now_ms: 1999,
    };
    assert_eq!(
        decide(&base, &POLICY),
        GcDecision::Keep(KeepReason::InGrace)
    );
    let future = GcInput {
        now_ms: 500,
        ..base
    };
    assert_eq!(
        decide(&future, &POLICY),
        GcDecision::Keep(KeepReason::InGrace),
        "a delete from the future waits"
    );
    let hint = GcInput {
        now_ms: 5000,
        hint_pending: true,
        ..base
    };
    assert_eq!(
        decide(&hint, &POLICY),
        GcDecision::Keep(KeepReason::HintPending)
    );
    let alone = GcInput {
        now_ms: 5000,
        ..base
    };
    assert!(
        matches!(decide(&alone, &POLICY), GcDecision::Purge(_)),
        "a single replica confirms itself"
    );
    // A live sibling beside the tombstone: not a tombstone.
    let mut mixed = record.clone();
    mixed.merge(&Record::write(
        dot("d", 1),
        VersionVector::new(),
        0,
        Some(b"v".to_vec()),
    ));
    let live = GcInput {
        record: &mixed,
        now_ms: 5000,
        ..base
    };
    assert_eq!(
        decide(&live, &POLICY),
        GcDecision::Keep(KeepReason::NotATombstone)
    );
    let empty = Record::default();
    assert_eq!(
        decide(
            &GcInput {
                record: &empty,
                ..alone
            },
            &POLICY
        ),
        GcDecision::Keep(KeepReason::NotATombstone)
    );
}

#[test]
fn a_purge_is_cancelled_by_any_write_since() {
    let record = tombstone(10);
    let guard = PurgeGuard {
        key: b"k".to_vec(),
        version: TombstoneVersion::of(b"k", &record).unwrap(),
    };
    assert!(guard.still_current(Some(&record)));
    assert!(!guard.still_current(None));
    let mut rewritten = record.clone();
    rewritten.merge(&put(20, record.context(), Some(b"new")));
    assert!(!guard.still_current(Some(&rewritten)));
    let mut deleted_again = record.clone();
    deleted_again.merge(&put(21, record.context(), None));
    assert!(
        !guard.still_current(Some(&deleted_again)),
        "another delete is another version"
    );
    let other_key = PurgeGuard {
        key: b"j".to_vec(),
        ..guard.clone()
    };
    assert!(!other_key.still_current(Some(&record)));
}

/// One step of a random schedule over three replicas.
#[derive(Clone, Debug)]
enum Step {
    /// A write through replica `via` (reading the context from the replicas up),
    /// delivered to the replicas up whose bit is in `mask`.
    Write {
        key: u8,
        via: u8,
        mask: u8,
        delete: bool,
    },
    /// Anti-entropy between two replicas (both up).
    Exchange { a: u8, b: u8 },
    /// A GC pass on a replica.
    Gc { on: u8 },
    /// Time passes.
    Wait { ms: u64 },
    /// A replica goes down or comes back.
    Toggle { who: u8 },
    /// A replica restarts: its tree is rebuilt from its records.
    Restart { who: u8 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u8..5, 0u8..3, 0u8..8, any::<bool>()).prop_map(|(key, via, mask, delete)| Step::Write { key, via, mask, delete }),
        2 => (0u8..3, 0u8..3).prop_map(|(a, b)| Step::Exchange { a, b }),
        3 => (0u8..3).prop_map(|on| Step::Gc { on }),
        2 => (1u64..1500).prop_map(|ms| Step::Wait { ms }),
        1 => (0u8..3).prop_map(|who| Step::Toggle { who }),
        1 => (0u8..3).prop_map(|who| Step::Restart { who }),
    ]
}

/// Runs a schedule with two-phase GC; returns the replicas after every replica is up
/// and they have converged, and the merge of every write ever made (what must show).
fn run_schedule(steps: &[Step]) -> (Vec<Replica>, BTreeMap<Vec<u8>, Record>) {
    let shape = TreeShape::new(3, 1).unwrap();
    let mut rs: Vec<Replica> = ["r0", "r1", "r2"]
        .iter()
        .map(|id| Replica::new(id, shape))
        .collect();
    let sets = vec![ids(&["r0", "r1", "r2"])];
    let mut truth: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    let mut confirmations: BTreeMap<(usize, Vec<u8>), Vec<Confirmation>> = BTreeMap::new();
    let mut now = 10_000u64;
    let mut counter = 0u64;
    let exchange = |rs: &mut Vec<Replica>, i: usize, j: usize| {
        if i == j || !rs[i].up || !rs[j].up {
            return;
        }
        let (lo, hi) = rs.split_at_mut(i.max(j));
        let (a, b) = (&mut lo[i.min(j)], &mut hi[0]);
        sync(a, b, TokenRange::FULL, ExchangeLimits::default());
    };
    for step in steps {
        match *step {
            Step::Write {
                key,
                via,
                mask,
                delete,
            } => {
                let via = via as usize;
                if !rs[via].up {
                    continue;
                }
                let k = vec![key];
                let mut ctx = VersionVector::new();
                for r in rs.iter().filter(|r| r.up) {
                    if let Some(rec) = r.records.get(&k) {
                        ctx.join(&rec.context());
                    }
                }
                counter += 1;
                let w = Record::write(
                    dot(&rs[via].id.clone(), counter),
                    ctx,
                    now,
                    (!delete).then(|| vec![counter as u8]),
                );
                truth.entry(k.clone()).or_default().merge(&w);
                for (i, r) in rs.iter_mut().enumerate() {
                    if r.up && (i == via || mask & (1 << i) != 0) {
                        r.merge(&k, &w);
                    }
                }
            }
            Step::Exchange { a, b } => exchange(&mut rs, a as usize, b as usize),
            Step::Gc { on } => {
                let on = on as usize;
                if !rs[on].up {
                    continue;
                }
                let candidates: Vec<(Vec<u8>, Record)> = rs[on]
                    .records
                    .iter()
                    .map(|(k, r)| (k.clone(), r.clone()))
                    .collect();
                for (k, record) in candidates {
                    let mut purged = false;
                    for _phase in 0..2 {
                        let got = confirmations.entry((on, k.clone())).or_default().clone();
                        let input = GcInput {
                            key: &k,
                            record: &record,
                            local: &rs[on].id.clone(),
                            replica_sets: &sets,
                            confirmations: &got,
                            hint_pending: false,
                            now_ms: now,
                        };
                        match decide(
                            &input,
                            &GcPolicy {
                                grace_ms: 1000,
                                in_flight_ms: 0,
                            },
                        ) {
                            GcDecision::Keep(_) => break,
                            GcDecision::PushTo(targets) => {
                                for t in targets {
                                    let Some(ti) = rs.iter().position(|r| r.id == t) else {
                                        continue;
                                    };
                                    if !rs[ti].up {
                                        continue; // a down replica cannot confirm
                                    }
                                    rs[ti].merge(&k, &record);
                                    if let Some(v) = rs[ti]
                                        .records
                                        .get(&k)
                                        .and_then(|r| TombstoneVersion::of(&k, r))
                                    {
                                        confirmations.entry((on, k.clone())).or_default().push(
                                            Confirmation {
                                                replica: t,
                                                version: v,
                                                at_ms: now,
                                            },
                                        );
                                    }
                                }
                            }
                            GcDecision::Purge(guard) => {
                                // Phase 2 on every replica: each deletes only if it
                                // still holds exactly the confirmed tombstone.
                                for r in rs.iter_mut().filter(|r| r.up) {
                                    purged |= r.purge(&guard);
                                }
                                break;
                            }
                        }
                    }
                    if purged {
                        confirmations.remove(&(on, k));
                    }
                }
            }
            Step::Wait { ms } => now += ms,
            Step::Toggle { who } => {
                let r = &mut rs[who as usize];
                r.up = !r.up;
            }
            Step::Restart { who } => {
                let r = &mut rs[who as usize];
                r.tree = HashTree::rebuild_from(
                    shape,
                    r.records
                        .iter()
                        .map(|(k, rec)| (k.as_slice(), key_token(k), rec)),
                );
            }
        }
    }
    for r in &mut rs {
        r.up = true;
    }
    for _ in 0..2 {
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            exchange(&mut rs, i, j);
        }
    }
    (rs, truth)
}

#[test]
fn gc_purges_everywhere_once_every_replica_holds_the_tombstone() {
    let steps = vec![
        Step::Write {
            key: 1,
            via: 0,
            mask: 7,
            delete: false,
        },
        Step::Write {
            key: 2,
            via: 0,
            mask: 7,
            delete: false,
        },
        Step::Write {
            key: 1,
            via: 1,
            mask: 1,
            delete: true,
        },
        Step::Wait { ms: 500 },
        Step::Gc { on: 0 },
        Step::Wait { ms: 600 },
        Step::Gc { on: 0 },
    ];
    let (rs, _) = run_schedule(&steps);
    for r in &rs {
        assert!(
            !r.records.contains_key(&vec![1]),
            "{} still holds the tombstone",
            r.id
        );
        assert!(r.records.contains_key(&vec![2]));
        assert_eq!(r.tree.root().map(|s| s.keys), Some(1));
    }
}

fn live_dots(r: Option<&Record>) -> BTreeSet<Dot> {
    r.map(|r| {
        r.siblings
            .iter()
            .filter(|s| s.value.is_some())
            .map(|s| s.dot.clone())
            .collect()
    })
    .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the order of writes, deletes, exchanges, GC, restarts and outages (one
    /// replica down past the grace included), once every replica is back and they have
    /// converged each shows exactly the values of the merge of every write ever made:
    /// a deleted key never comes back, and GC never loses a live value.
    #[test]
    fn deleted_keys_never_come_back(steps in prop::collection::vec(arb_step(), 0..120)) {
        let (rs, truth) = run_schedule(&steps);
        for r in &rs {
            prop_assert_eq!(r.versions(), rs[0].versions(), "replicas converged");
        }
        let keys: BTreeSet<&Vec<u8>> = truth.keys().collect();
        for k in keys {
            let want = live_dots(truth.get(k));
            for r in &rs {
                prop_assert_eq!(&live_dots(r.records.get(k)), &want, "replica {} key {:?}", r.id, k);
            }
        }
    }
}

#[test]
fn a_replica_down_past_the_grace_does_not_bring_a_delete_back() {
    // Written to all three, r2 goes down, the key is deleted on r0 and r1, long past
    // the grace both run GC: r2 cannot confirm, so nobody purges; r2 comes back.
    let steps = vec![
        Step::Write {
            key: 1,
            via: 0,
            mask: 7,
            delete: false,
        },
        Step::Toggle { who: 2 },
        Step::Write {
            key: 1,
            via: 0,
            mask: 3,
            delete: true,
        },
        Step::Wait { ms: 5000 },
        Step::Gc { on: 0 },
        Step::Gc { on: 1 },
        Step::Toggle { who: 2 },
        Step::Gc { on: 0 },
    ];
    let (rs, truth) = run_schedule(&steps);
    assert!(live_dots(truth.get(&vec![1])).is_empty());
    for r in &rs {
        assert!(
            live_dots(r.records.get(&vec![1])).is_empty(),
            "{} shows the deleted key",
            r.id
        );
    }
}
