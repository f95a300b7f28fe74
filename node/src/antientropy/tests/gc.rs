//! Tombstone GC: the decision's rules, and random schedules of writes, deletes,
//! exchanges, GC, restarts and outages over three simulated replicas.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::placement::{key_token, TokenRange};
use crate::version::{Dot, Record, VersionVector};

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
