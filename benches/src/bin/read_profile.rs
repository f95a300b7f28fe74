//! A small, deterministic driver of DistKV's read paths, for profiling with
//! `valgrind --tool=callgrind` (instruction counts are repeatable on a busy machine where
//! wall-clock numbers are not) and for timing range scans.
//!
//! ```text
//! # once, natively: a settled tree (fill in random order, flush, compact)
//! read-profile build --dir /tmp/rp --keys 300000 [--token-keys]
//! # then, under callgrind, only the measured loop counted:
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*read_profile::measure*' \
//!     read-profile run --dir /tmp/rp --op scan --ops 20000 [--cache-bytes N] [--mem-keys M]
//! # --lsm 'name = value' (LsmOptions fields, TOML) sets options for build and run alike
//! ```
//!
//! `--op get` reads written keys, `missing` never-written ones, `scan` is seek + 10 next
//! (`scan` from a key with limit 11, the first entry being the seek), `range` scans one
//! sixteenth of the key space in pages of 1024, as range streaming does, and reports MB/s.
//! `--mem-keys M` overwrites M random keys after opening and leaves them in the
//! memtable, so the reads also merge a non-empty memtable. `run` prints the operations
//! and the engine's block-cache hit rate; divide callgrind's total by `--ops`.

/// The allocator `distkv-server` runs with (the engines allocate per entry read, so the
/// allocator is part of what a read costs in production).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ops::Bound;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use distkv_benches::{key, value};
use distkv_engine::{KeyRange, Lsm, LsmOptions, StatValue, StorageEngine, SyncPolicy, WriteBatch};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

struct Args {
    cmd: String,
    dir: PathBuf,
    keys: u64,
    ops: u64,
    op: String,
    cache_bytes: u64,
    mem_keys: u64,
    token_keys: bool,
    /// Extra `LsmOptions` fields (`--lsm 'name = value'`, TOML), for `build` and `run`.
    lsm_toml: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        cmd: it
            .next()
            .context("usage: read-profile build|run [options]")?,
        dir: PathBuf::from("/tmp/read-profile"),
        keys: 300_000,
        ops: 10_000,
        op: "scan".into(),
        cache_bytes: 8 << 20,
        mem_keys: 0,
        token_keys: false,
        lsm_toml: String::new(),
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = val()?.into(),
            "--keys" => a.keys = val()?.parse()?,
            "--ops" => a.ops = val()?.parse()?,
            "--op" => a.op = val()?,
            "--cache-bytes" => a.cache_bytes = val()?.parse()?,
            "--mem-keys" => a.mem_keys = val()?.parse()?,
            "--token-keys" => a.token_keys = true,
            "--lsm" => {
                a.lsm_toml.push_str(&val()?);
                a.lsm_toml.push('\n');
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// The stored key of logical index `i`: the bench key, or (`--token-keys`) the node's
/// layout, an 8-byte big-endian token (a hash of the key) then the key.
fn stored_key(i: u64, token_keys: bool) -> Vec<u8> {
    let k = key(i);
    if !token_keys {
        return k.to_vec();
    }
    let token = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5555;
    let mut out = token.to_be_bytes().to_vec();
    out.extend_from_slice(&k);
    out
}

/// The default options scaled down (memtable, file and level sizes divided by 8), so a
/// few hundred thousand keys make a tree of the shape 2M keys make with the defaults:
/// some L0 files, a full L1 and the rest in L2. `build` and `run` must use the same
/// options, or opening the tree would start compactions.
fn options(a: &Args) -> anyhow::Result<LsmOptions> {
    let d: LsmOptions = toml::from_str(&a.lsm_toml).context("--lsm options")?;
    Ok(LsmOptions {
        sync: SyncPolicy::Never,
        block_cache_bytes: a.cache_bytes,
        memtable_size_bytes: d.memtable_size_bytes / 8,
        target_file_size_bytes: d.target_file_size_bytes / 8,
        level1_max_bytes: d.level1_max_bytes / 8,
        ..d
    })
}

fn put(db: &Lsm, k: Vec<u8>, v: Vec<u8>) -> anyhow::Result<()> {
    let mut b = WriteBatch::new();
    b.put(k, v);
    Ok(db.write(b)?)
}

fn build(a: &Args) -> anyhow::Result<()> {
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    let db = Lsm::open(&a.dir, options(a)?)?;
    let mut order: Vec<u64> = (0..a.keys).collect();
    order.shuffle(&mut StdRng::seed_from_u64(42));
    for &i in &order {
        put(&db, stored_key(2 * i, a.token_keys), value(i, 0))?;
    }
    // Overwrite half the keys, as engine-compare does, so older versions lie deeper.
    let mut rng = StdRng::seed_from_u64(43);
    for _ in 0..a.keys / 2 {
        let i = rng.random_range(0..a.keys);
        put(&db, stored_key(2 * i, a.token_keys), value(i, 1))?;
    }
    db.flush_memtable()?;
    db.compact()?;
    let stats = db.stats();
    for l in 0..4 {
        if let Some(StatValue::U64(n)) = stats.get(&format!("level.{l}.files")) {
            eprintln!("level {l}: {n} files");
        }
    }
    db.close()?;
    Ok(())
}

/// The measured loop; callgrind counts only inside it (`--toggle-collect`).
#[inline(never)]
fn measure(db: &Lsm, a: &Args, rng: &mut StdRng) -> anyhow::Result<(u64, u64)> {
    let (mut found, mut bytes) = (0u64, 0u64);
    match a.op.as_str() {
        "get" | "missing" => {
            let odd = u64::from(a.op == "missing");
            for _ in 0..a.ops {
                let i = rng.random_range(0..a.keys);
                if let Some(v) = db.get(&stored_key(2 * i + odd, a.token_keys))? {
                    found += 1;
                    bytes += v.len() as u64;
                }
            }
        }
        "scan" => {
            for _ in 0..a.ops {
                let i = rng.random_range(0..a.keys);
                let r = KeyRange {
                    start: Bound::Included(stored_key(2 * i, a.token_keys)),
                    end: Bound::Unbounded,
                };
                for (k, v) in db.scan(&r, 11)? {
                    found += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
            }
        }
        "range" => {
            // One sixteenth of the key space, in pages of 1024 as range streaming reads.
            for n in 0..a.ops {
                let s = n % 16;
                let mut r = if a.token_keys {
                    let lo = (s << 60).to_be_bytes().to_vec();
                    match s {
                        15 => KeyRange {
                            start: Bound::Included(lo),
                            end: Bound::Unbounded,
                        },
                        _ => KeyRange::between(lo, ((s + 1) << 60).to_be_bytes().to_vec()),
                    }
                } else {
                    let w = 2 * a.keys / 16;
                    KeyRange::between(key(s * w).to_vec(), key((s + 1) * w).to_vec())
                };
                loop {
                    let page = db.scan(&r, 1024)?;
                    for (k, v) in &page {
                        found += 1;
                        bytes += (k.len() + v.len()) as u64;
                    }
                    match page.last() {
                        Some((k, _)) if page.len() == 1024 => r = r.after(k),
                        _ => break,
                    }
                }
            }
        }
        other => bail!("unknown op {other}"),
    }
    Ok((found, bytes))
}

fn run(a: &Args) -> anyhow::Result<()> {
    let db = Lsm::open(&a.dir, options(a)?)?;
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..a.mem_keys {
        let i = rng.random_range(0..a.keys);
        put(&db, stored_key(2 * i, a.token_keys), value(i, 1))?;
    }
    let t = Instant::now();
    let (found, bytes) = measure(&db, a, &mut rng)?;
    let secs = t.elapsed().as_secs_f64();
    let hit = match db.stats().get("block_cache.hit_rate") {
        Some(StatValue::F64(h)) => *h,
        _ => f64::NAN,
    };
    println!(
        "op={} ops={} entries={found} bytes={bytes} secs={secs:.3} ops/s={:.0} MB/s={:.1} cache_hit_rate={hit:.3}",
        a.op,
        a.ops,
        a.ops as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    db.close()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    match a.cmd.as_str() {
        "build" => build(&a),
        "run" => run(&a),
        other => bail!("unknown command {other}: build or run"),
    }
}
