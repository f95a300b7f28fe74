//! Simulations of replicas as in-memory maps: exchanges, convergence, the in-flight
//! filter, request limits; [`gc`] holds the tombstone GC schedules.

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

mod gc;
