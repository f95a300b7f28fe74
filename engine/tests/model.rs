//! Model test: random sequences of operations against the engine and a `BTreeMap`, for
//! each compaction strategy, with flushes, compactions and reopens in between.

use std::collections::BTreeMap;
use std::ops::Bound;

use distkv_engine::{
    CompactionStrategy, KeyRange, Lsm, LsmOptions, StorageEngine, SyncPolicy, WriteBatch,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, usize),
    Delete(u8),
    Get(u8),
    Scan(u8, u8, usize),
    Batch(Vec<(u8, Option<usize>)>),
    Flush,
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..64, 0usize..150).prop_map(|(k, l)| Op::Put(k, l)),
        3 => (0u8..64).prop_map(Op::Delete),
        4 => (0u8..64).prop_map(Op::Get),
        2 => (0u8..64, 0u8..64, 0usize..20).prop_map(|(a, b, l)| Op::Scan(a, b, l)),
        2 => proptest::collection::vec((0u8..64, proptest::option::of(0usize..60)), 1..8).prop_map(Op::Batch),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k:03}").into_bytes()
}

fn options(compaction: CompactionStrategy) -> LsmOptions {
    LsmOptions {
        compaction,
        sync: SyncPolicy::Never,
        memtable_size_bytes: 4096,
        block_size_bytes: 256,
        target_file_size_bytes: 2048,
        level1_max_bytes: 4096,
        level_size_ratio: 2,
        max_levels: 4,
        l0_compaction_files: 2,
        min_threshold: 2,
        file_threshold: 3,
        block_cache_bytes: 64 << 10,
        ..LsmOptions::default()
    }
}

fn run(compaction: CompactionStrategy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(compaction);
    let mut db = Lsm::open(dir.path(), opts.clone()).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut stamp = 0u32;
    let mut value = |len: usize| {
        stamp += 1;
        let mut v = stamp.to_le_bytes().to_vec();
        v.resize(len.max(4), (stamp % 251) as u8);
        v.truncate(len);
        v
    };
    for op in ops {
        match op {
            Op::Put(k, len) => {
                let v = value(len);
                let mut b = WriteBatch::new();
                b.put(key(k), v.clone());
                db.write(b).unwrap();
                model.insert(key(k), v);
            }
            Op::Delete(k) => {
                let mut b = WriteBatch::new();
                b.delete(key(k));
                db.write(b).unwrap();
                model.remove(&key(k));
            }
            Op::Batch(items) => {
                let mut b = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(len) => {
                            let v = value(len);
                            b.put(key(k), v.clone());
                            model.insert(key(k), v);
                        }
                        None => {
                            b.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                db.write(b).unwrap();
            }
            Op::Get(k) => prop_assert_eq!(db.get(&key(k)).unwrap(), model.get(&key(k)).cloned()),
            Op::Scan(a, b, limit) => {
                let (lo, hi) = (a.min(b), a.max(b));
                let range = KeyRange {
                    start: Bound::Included(key(lo)),
                    end: Bound::Excluded(key(hi)),
                };
                let want: Vec<_> = model
                    .range::<Vec<u8>, _>((Bound::Included(key(lo)), Bound::Excluded(key(hi))))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(db.scan(&range, limit).unwrap(), want);
            }
            Op::Flush => db.flush_memtable().unwrap(),
            Op::Compact => db.compact().unwrap(),
            Op::Reopen => {
                db.close().unwrap();
                drop(db);
                db = Lsm::open(dir.path(), opts.clone()).unwrap();
            }
        }
    }
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    prop_assert_eq!(db.scan(&KeyRange::all(), usize::MAX).unwrap(), all.clone());
    db.close().unwrap();
    drop(db);
    let db = Lsm::open(dir.path(), opts).unwrap();
    prop_assert_eq!(db.scan(&KeyRange::all(), usize::MAX).unwrap(), all);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn leveled_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
        run(CompactionStrategy::Leveled, ops)?;
    }

    #[test]
    fn size_tiered_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
        run(CompactionStrategy::SizeTiered, ops)?;
    }

    #[test]
    fn simple_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
        run(CompactionStrategy::Simple, ops)?;
    }
}
