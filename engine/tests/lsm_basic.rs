//! Black-box behaviour of the LSM engine: reads after writes, reopen, strategies,
//! snapshot scans, stats.

use std::path::Path;

use distkv_engine::{
    CompactionStrategy, KeyRange, Lsm, LsmOptions, StorageEngine, SyncPolicy, WriteBatch,
};

fn small(compaction: CompactionStrategy) -> LsmOptions {
    LsmOptions {
        compaction,
        sync: SyncPolicy::Never,
        memtable_size_bytes: 16 << 10,
        block_size_bytes: 512,
        target_file_size_bytes: 16 << 10,
        level1_max_bytes: 64 << 10,
        l0_compaction_files: 2,
        min_threshold: 2,
        file_threshold: 3,
        block_cache_bytes: 1 << 20,
        ..LsmOptions::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value-{i}-{round}-{}", "p".repeat((i % 50) as usize)).into_bytes()
}

fn put(db: &Lsm, i: u32, round: u32) {
    let mut b = WriteBatch::new();
    b.put(key(i), value(i, round));
    db.write(b).unwrap();
}

fn check_all(db: &Lsm, n: u32, round: u32, deleted: impl Fn(u32) -> bool) {
    for i in 0..n {
        let want = (!deleted(i)).then(|| value(i, round));
        assert_eq!(db.get(&key(i)).unwrap(), want, "key {i}");
    }
    let all = db.scan(&KeyRange::all(), usize::MAX).unwrap();
    let want: Vec<_> = (0..n)
        .filter(|i| !deleted(*i))
        .map(|i| (key(i), value(i, round)))
        .collect();
    assert_eq!(all.len(), want.len());
    assert!(all == want, "full scan differs");
}

fn fill(db: &Lsm, n: u32, round: u32) {
    for i in 0..n {
        put(db, i, round);
    }
}

fn delete_every_third(db: &Lsm, n: u32) {
    for i in (0..n).step_by(3) {
        let mut b = WriteBatch::new();
        b.delete(key(i));
        db.write(b).unwrap();
    }
}

#[test]
fn empty_value_is_distinct_from_absent_and_batches_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Lsm::open(dir.path(), LsmOptions::default()).unwrap();
    let mut b = WriteBatch::new();
    b.put("a", "")
        .put("b", "1")
        .delete("b")
        .put("c", "1")
        .put("c", "2");
    db.write(b).unwrap();
    assert_eq!(db.get(b"a").unwrap(), Some(vec![]));
    assert_eq!(db.get(b"b").unwrap(), None);
    assert_eq!(db.get(b"c").unwrap(), Some(b"2".to_vec()));
    assert_eq!(db.scan(&KeyRange::all(), 0).unwrap(), vec![]);
    db.close().unwrap();
    db.close().unwrap();
    assert!(matches!(db.get(b"a"), Err(distkv_engine::Error::Closed)));
}

#[test]
fn data_survives_flushes_compactions_and_reopen_for_every_strategy() {
    for strategy in [
        CompactionStrategy::Leveled,
        CompactionStrategy::SizeTiered,
        CompactionStrategy::Simple,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let n = 3000;
        {
            let db = Lsm::open(dir.path(), small(strategy)).unwrap();
            fill(&db, n, 0);
            fill(&db, n, 1);
            delete_every_third(&db, n);
            db.flush_memtable().unwrap();
            db.compact().unwrap();
            check_all(&db, n, 1, |i| i % 3 == 0);
            let stats = db.stats();
            assert!(
                matches!(stats.get("compactions"), Some(distkv_engine::StatValue::U64(c)) if *c > 0),
                "{strategy:?}"
            );
            db.close().unwrap();
        }
        let db = Lsm::open(dir.path(), small(strategy)).unwrap();
        check_all(&db, n, 1, |i| i % 3 == 0);
    }
}

#[test]
fn switching_strategy_on_an_existing_directory_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let steps = [
        CompactionStrategy::Leveled,
        CompactionStrategy::SizeTiered,
        CompactionStrategy::Leveled,
        CompactionStrategy::Simple,
        CompactionStrategy::Leveled,
    ];
    for (round, strategy) in steps.into_iter().enumerate() {
        let db = Lsm::open(dir.path(), small(strategy)).unwrap();
        if round > 0 {
            check_all(&db, n, round as u32 - 1, |_| false);
        }
        fill(&db, n, round as u32);
        db.flush_memtable().unwrap();
        db.compact().unwrap();
        check_all(&db, n, round as u32, |_| false);
        db.close().unwrap();
    }
}

#[test]
fn scans_respect_bounds_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    fill(&db, 1000, 0);
    db.flush_memtable().unwrap();
    for i in 500..600 {
        put(&db, i, 1);
    }
    let r = KeyRange::between(key(495), key(505));
    let got = db.scan(&r, 100).unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], (key(495), value(495, 0)));
    assert_eq!(got[5], (key(500), value(500, 1)));
    let page = db.scan(&r, 3).unwrap();
    assert_eq!(page.len(), 3);
    let next = db.scan(&r.after(&page[2].0), 3).unwrap();
    assert_eq!(next[0].0, key(498));
    assert_eq!(
        db.scan(&KeyRange::prefix(b"key0009"), 100).unwrap().len(),
        100
    );
}

#[test]
fn scans_see_a_consistent_snapshot_while_writers_and_compactions_run() {
    let dir = tempfile::tempdir().unwrap();
    let db =
        std::sync::Arc::new(Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap());
    // Every batch rewrites all 50 keys with the same round number: a scan must never see
    // two different rounds.
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for round in 0..60u32 {
                let mut b = WriteBatch::new();
                for i in 0..50 {
                    b.put(key(i), format!("{round:05}{}", "x".repeat(200)));
                }
                db.write(b).unwrap();
            }
        })
    };
    for _ in 0..200 {
        let got = db.scan(&KeyRange::all(), usize::MAX).unwrap();
        if got.is_empty() {
            continue;
        }
        assert_eq!(got.len(), 50);
        let first = &got[0].1[..5];
        assert!(
            got.iter().all(|(_, v)| &v[..5] == first),
            "scan mixed two batches"
        );
    }
    writer.join().unwrap();
}

#[test]
fn concurrent_writers_share_group_commits_with_sync_always() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        sync: SyncPolicy::Always,
        ..small(CompactionStrategy::Leveled)
    };
    let db = std::sync::Arc::new(Lsm::open(dir.path(), opts).unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    put(&db, t * 1000 + i, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4u32 {
        for i in 0..200 {
            assert_eq!(
                db.get(&key(t * 1000 + i)).unwrap(),
                Some(value(t * 1000 + i, 0))
            );
        }
    }
}

#[test]
fn invalid_options_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        l0_stop_files: 1,
        l0_slowdown_files: 5,
        ..LsmOptions::default()
    };
    match Lsm::open(dir.path(), opts) {
        Err(distkv_engine::Error::InvalidOption { option, .. }) => {
            assert_eq!(option, "l0_stop_files")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn stats_report_levels_and_amplification() {
    let dir = tempfile::tempdir().unwrap();
    let db = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    fill(&db, 3000, 0);
    db.flush_memtable().unwrap();
    db.compact().unwrap();
    for i in 0..100 {
        db.get(&key(i)).unwrap();
        db.get(format!("key{i:06}x").as_bytes()).unwrap();
    }
    let s = db.stats();
    for name in [
        "level.0.files",
        "level.1.bytes",
        "compactions",
        "bytes.wal_written",
        "bytes.flushed",
        "bytes.compacted",
        "write_amplification",
        "read_amplification",
        "space_amplification",
        "block_cache.hit_rate",
        "bloom.negatives",
        "memtable.bytes",
        "reads",
        "writes",
    ] {
        assert!(s.get(name).is_some(), "missing stat {name}");
    }
    assert_eq!(s.get("writes"), Some(&distkv_engine::StatValue::U64(3000)));
    assert!(matches!(s.get("bloom.negatives"), Some(distkv_engine::StatValue::U64(n)) if *n > 50));
}

/// Files of a data directory with the given extension.
pub fn files_with(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn unreferenced_files_are_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
        fill(&db, 500, 0);
        db.flush_memtable().unwrap();
    }
    std::fs::write(
        dir.path().join("999999.sst"),
        b"garbage from a crashed compaction",
    )
    .unwrap();
    let db = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    assert!(!dir.path().join("999999.sst").exists());
    check_all(&db, 500, 0, |_| false);
    assert!(!files_with(dir.path(), "sst").is_empty());
}

fn stat(db: &Lsm, name: &str) -> u64 {
    match db.stats().get(name) {
        Some(distkv_engine::StatValue::U64(v)) => *v,
        other => panic!("stat {name}: {other:?}"),
    }
}

#[test]
fn tombstones_are_dropped_at_the_bottom_only_after_their_ttl() {
    for (ttl, expect_dropped) in [(0, true), (3600, false)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LsmOptions {
            tombstone_ttl_secs: ttl,
            ..small(CompactionStrategy::Simple)
        };
        let db = Lsm::open(dir.path(), opts).unwrap();
        fill(&db, 500, 0);
        db.flush_memtable().unwrap();
        delete_every_third(&db, 500);
        for _ in 0..3 {
            db.flush_memtable().unwrap();
            put(&db, 0, 0);
        }
        db.flush_memtable().unwrap();
        db.compact().unwrap();
        check_all(&db, 500, 0, |i| i % 3 == 0 && i != 0);
        assert_eq!(
            stat(&db, "tombstones.dropped") > 0,
            expect_dropped,
            "ttl {ttl}"
        );
    }
}

#[test]
fn writers_stall_instead_of_growing_memory_when_flushes_fall_behind() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        memtable_size_bytes: 8 << 10,
        max_immutable_memtables: 1,
        l0_slowdown_files: 2,
        l0_stop_files: 3,
        l0_compaction_files: 2,
        ..small(CompactionStrategy::Leveled)
    };
    let db = Lsm::open(dir.path(), opts).unwrap();
    let mut peak = 0;
    for i in 0..4000 {
        put(&db, i, 0);
        peak = peak.max(stat(&db, "memtable.bytes"));
    }
    // One active and one frozen memtable, each at most one write over its size.
    assert!(
        peak <= 2 * ((8 << 10) + 1024),
        "memtables grew to {peak} bytes"
    );
    assert!(stat(&db, "level.0.files") <= 3);
    check_all(&db, 4000, 0, |_| false);
}

#[test]
fn every_sync_policy_recovers_acknowledged_writes_after_reopen() {
    for sync in [
        SyncPolicy::Always,
        SyncPolicy::Batch,
        SyncPolicy::Interval,
        SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LsmOptions {
            sync,
            sync_interval_ms: 5,
            ..small(CompactionStrategy::Leveled)
        };
        {
            let db = Lsm::open(dir.path(), opts.clone()).unwrap();
            fill(&db, 300, 0);
            db.flush().unwrap();
        }
        let db = Lsm::open(dir.path(), opts).unwrap();
        check_all(&db, 300, 0, |_| false);
    }
}

#[test]
fn readers_never_lose_sight_of_acknowledged_writes_while_flushes_and_compactions_run() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        memtable_size_bytes: 4096,
        ..small(CompactionStrategy::Leveled)
    };
    let db = Arc::new(Lsm::open(dir.path(), opts).unwrap());
    let acked = Arc::new(AtomicU32::new(0));
    let n = 3000;
    let writer = {
        let (db, acked) = (db.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 1..=n {
                put(&db, i, 0);
                acked.store(i, Ordering::Release);
            }
        })
    };
    let mut checks = 0u32;
    while acked.load(Ordering::Acquire) < n {
        let upto = acked.load(Ordering::Acquire);
        if upto == 0 {
            continue;
        }
        let i = 1 + (checks.wrapping_mul(7919) % upto);
        assert_eq!(
            db.get(&key(i)).unwrap(),
            Some(value(i, 0)),
            "acknowledged key {i} invisible"
        );
        checks += 1;
    }
    writer.join().unwrap();
    assert!(stat(&db, "compactions") > 0);
    assert!(checks > 100);
}

#[test]
fn close_during_a_long_compaction_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        compaction: CompactionStrategy::Simple,
        file_threshold: 2,
        ..small(CompactionStrategy::Simple)
    };
    let n = 20_000;
    {
        let db = Lsm::open(dir.path(), opts.clone()).unwrap();
        fill(&db, n, 0);
        db.close().unwrap();
    }
    let db = Lsm::open(dir.path(), opts).unwrap();
    check_all(&db, n, 0, |_| false);
}

#[test]
fn one_open_engine_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    put(&db, 1, 0);
    let second = Lsm::open(dir.path(), small(CompactionStrategy::Leveled));
    let err = second.expect_err("a second engine on the same directory must be refused");
    assert!(
        matches!(&err, distkv_engine::Error::Locked { path } if path == dir.path()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains("in use"),
        "{msg}"
    );
    // The refused open touched nothing: the first engine still reads its write.
    assert_eq!(db.get(&key(1)).unwrap(), Some(value(1, 0)));
    // close() releases the directory even while the handle lives on.
    db.close().unwrap();
    let reopened = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    assert_eq!(reopened.get(&key(1)).unwrap(), Some(value(1, 0)));
    drop(reopened);
    // So does dropping it.
    drop(db);
    let again = Lsm::open(dir.path(), small(CompactionStrategy::Leveled)).unwrap();
    assert_eq!(again.get(&key(1)).unwrap(), Some(value(1, 0)));
}

/// The number of tables in `level`, from the engine's stats.
fn files_in(db: &Lsm, level: usize) -> u64 {
    match db.stats().get(&format!("level.{level}.files")) {
        Some(distkv_engine::StatValue::U64(n)) => *n,
        other => panic!("level.{level}.files: {other:?}"),
    }
}

/// Scans whose sources are the memtable, L0 and several deeper levels at once, with
/// newer versions and tombstones shadowing older ones in other levels, every kind of
/// start and end bound, and limits that stop inside and across tables: each must equal
/// the same scan of a `BTreeMap` holding what was written.
#[test]
fn scans_across_levels_honour_shadowing_tombstones_bounds_and_limits() {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    for compress_from_level in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LsmOptions {
            compress_from_level,
            ..small(CompactionStrategy::Leveled)
        };
        let db = Lsm::open(dir.path(), opts).unwrap();
        let mut model = BTreeMap::new();
        let mut write = |db: &Lsm, i: u32, round: u32, delete: bool| {
            let mut b = WriteBatch::new();
            if delete {
                b.delete(key(i));
                model.remove(&key(i));
            } else {
                b.put(key(i), value(i, round));
                model.insert(key(i), value(i, round));
            }
            db.write(b).unwrap();
        };
        // Round 0 settles into the deeper levels ...
        for i in 0..4000 {
            write(&db, i, 0, false);
        }
        db.flush_memtable().unwrap();
        db.compact().unwrap();
        // ... round 1 and deletions are flushed (to L0, or L1 if compacted by then) ...
        for i in (1000..1400).step_by(3) {
            write(&db, i, 1, false);
        }
        db.flush_memtable().unwrap();
        for i in (1200..2600).step_by(5) {
            write(&db, i, 1, true);
        }
        // ... and round 2 and more deletions in the memtable.
        for i in (1100..3000).step_by(7) {
            write(&db, i, 2, i % 2 == 0);
        }
        assert!(files_in(&db, 0) + files_in(&db, 1) > 0);
        assert!(
            (2..7).map(|l| files_in(&db, l)).sum::<u64>() > 0,
            "no deep level"
        );
        let bounds = |i: u32, kind: u32| match kind {
            0 => Bound::Included(key(i)),
            1 => Bound::Excluded(key(i)),
            _ => Bound::Unbounded,
        };
        for (lo, hi) in [
            (0, 4000),
            (995, 1410),
            (1199, 1201),
            (2599, 3100),
            (3990, 4100),
        ] {
            for (sk, ek) in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (0, 2), (1, 2)] {
                for limit in [1, 11, 100, 5000] {
                    let range = KeyRange {
                        start: bounds(lo, sk),
                        end: bounds(hi, ek),
                    };
                    let want: Vec<_> = model
                        .range::<Vec<u8>, _>((range.start.clone(), range.end.clone()))
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let got = db.scan(&range, limit).unwrap();
                    assert_eq!(
                        got, want,
                        "compress_from_level {compress_from_level} range {range:?} limit {limit}"
                    );
                }
            }
        }
        // Paging through everything with `after` yields the model exactly.
        let mut range = KeyRange::all();
        let mut all = Vec::new();
        loop {
            let page = db.scan(&range, 97).unwrap();
            match page.last() {
                Some((k, _)) => range = range.after(k),
                None => break,
            }
            all.extend(page);
        }
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        db.close().unwrap();
    }
}
