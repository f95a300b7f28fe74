//! Hot paths of the LSM engine: point reads (memtable, SSTable hit, Bloom-filtered miss),
//! a single-put write, and a seek with ten next steps.

use criterion::{criterion_group, criterion_main, Criterion};
use distkv_benches::{key, value, BenchEngine, DistkvLsm};
use distkv_engine::{LsmOptions, SyncPolicy};

const N: u64 = 100_000;

fn open(dir: &std::path::Path) -> DistkvLsm {
    let opts = LsmOptions {
        sync: SyncPolicy::Never,
        ..LsmOptions::default()
    };
    DistkvLsm::open(dir, opts, "lsm").expect("open")
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    for i in 0..N {
        e.put(&key(2 * i), &value(i, 0)).expect("put");
    }
    let mut i = 0u64;
    c.bench_function("get/memtable_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            e.get(&key(2 * i)).expect("get")
        })
    });
    e.settle().expect("settle");
    c.bench_function("get/sstable_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            e.get(&key(2 * i)).expect("get")
        })
    });
    c.bench_function("get/sstable_miss_bloom", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            e.get(&key(2 * i + 1)).expect("get")
        })
    });
    c.bench_function("scan/seek_plus_10_next", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            e.seek_next(&key(2 * i), 11).expect("scan")
        })
    });
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    let mut i = 0u64;
    c.bench_function("write/put_sync_never", |b| {
        b.iter(|| {
            i += 1;
            e.put(&key(i), &value(i, 0)).expect("put")
        })
    });
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);
