//! Compares DistKV's LSM engine (each compaction strategy) with fjall on db_bench-style
//! workloads, in one process, and sweeps the Bloom filter false-positive rate.
//!
//! ```text
//! cargo run --release -p distkv-benches --bin engine-compare -- [--keys N] [--reads N]
//!     [--csv PATH] [--dir PATH] [--engines leveled,size-tiered,simple,fjall] [--no-sweep]
//!     [--lsm 'memtable_size_bytes = 33554432' ...]   (LsmOptions fields, TOML syntax)
//! ```
//! Keys are 16 bytes, values 100 bytes (half compressible). Both engines get the same
//! block-cache budget (`--cache-mb`, default 64) and the same durability: every write is
//! in the operating system's page cache before it returns (it survives a crash of the
//! process, not of the machine): DistKV with `sync = "never"` (the WAL file is written,
//! not fsynced), fjall with its defaults (each write flushed from the journal buffer to
//! the OS, no fsync). Reads run twice: right after the writes (memtables and L0 as the
//! writes left them) and after both engines wrote their memtables out and compactions
//! stopped, each with 1 and 2 reader threads: readrandom, readmissing, seek+10next (a
//! seek and the 10 following entries, 11 in all), and rangescan (every entry of one
//! sixteenth of the key space, MB/s of keys and values). Write
//! amplification is bytes passed to `write(2)` by the process (`wchar` of
//! `/proc/self/io`), plus what an engine wrote through memory maps (DistKV's WAL, by its
//! own counter), during fillrandom and the compactions it caused, over the user bytes;
//! space amplification is the directory size over the user bytes of the live keys.

/// The allocator `distkv-server` runs with (the engines allocate per entry read, so the
/// allocator is part of what a read costs in production).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use distkv_benches::{key, value, BenchEngine, DistkvLsm, Fjall};
use distkv_engine::{CompactionStrategy, LsmOptions, SyncPolicy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const USAGE: &str = "usage: engine-compare [--keys N] [--reads N] [--csv PATH] [--dir PATH]
    [--engines leveled,size-tiered,simple,fjall] [--no-sweep] [--lsm 'name = value' ...]
    [--cache-mb N] [--threads 1,2]
  --keys N      keys written by fillseq/fillrandom (default 2000000)
  --reads N     gets per read workload (default min(keys, 1000000))
  --cache-mb N  block cache of every engine, MiB (default 64)
  --threads L   reader thread counts (default 1,2)
  --csv PATH    CSV output (default engine-compare.csv)
  --dir PATH    where the engines' directories are made (default the temp dir)
  --engines     which engines, in this order
  --no-sweep    skip the Bloom filter false-positive sweep
  --lsm         an LsmOptions field in TOML syntax, repeatable";

struct Args {
    keys: u64,
    reads: u64,
    csv: PathBuf,
    dir: PathBuf,
    engines: Vec<String>,
    sweep: bool,
    cache_mb: u64,
    threads: Vec<usize>,
    /// Base options of the DistKV engines (from `--lsm name=value`, TOML syntax).
    lsm: LsmOptions,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        keys: 2_000_000,
        reads: 0,
        csv: PathBuf::from("engine-compare.csv"),
        dir: std::env::temp_dir(),
        engines: ["leveled", "size-tiered", "simple", "fjall"]
            .map(String::from)
            .to_vec(),
        sweep: true,
        cache_mb: 64,
        threads: vec![1, 2],
        lsm: LsmOptions::default(),
    };
    let mut lsm_toml = String::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--keys" => a.keys = val()?.parse()?,
            "--reads" => a.reads = val()?.parse()?,
            "--csv" => a.csv = val()?.into(),
            "--dir" => a.dir = val()?.into(),
            "--engines" => a.engines = val()?.split(',').map(String::from).collect(),
            "--no-sweep" => a.sweep = false,
            "--cache-mb" => a.cache_mb = val()?.parse()?,
            "--threads" => {
                a.threads = val()?
                    .split(',')
                    .map(|t| t.parse())
                    .collect::<Result<_, _>>()?
            }
            "--lsm" => {
                lsm_toml.push_str(&val()?);
                lsm_toml.push('\n');
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    a.lsm = toml::from_str(&lsm_toml).context("--lsm options")?;
    a.lsm.block_cache_bytes = a.cache_mb << 20;
    if a.reads == 0 {
        a.reads = a.keys.min(1_000_000);
    }
    Ok(a)
}

/// Bytes this process has passed to write-like system calls.
fn wchar() -> u64 {
    fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("wchar: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Lets background work finish: the engine's own wait, then until writes stop (max 60 s).
fn settle(e: &dyn BenchEngine) -> anyhow::Result<()> {
    e.settle()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = wchar();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(250));
        let now = wchar();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    Ok(())
}

#[derive(Default, Clone)]
struct Row {
    engine: String,
    workload: String,
    ops: u64,
    secs: f64,
    write_amp: Option<f64>,
    read_amp: Option<f64>,
    space_amp: Option<f64>,
    /// Key and value bytes read per second, for range scans.
    mb_per_sec: Option<f64>,
}

impl Row {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn timed(
    engine: &str,
    workload: &str,
    ops: u64,
    f: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Row> {
    let t = Instant::now();
    f()?;
    let row = Row {
        engine: engine.into(),
        workload: workload.into(),
        ops,
        secs: t.elapsed().as_secs_f64(),
        ..Row::default()
    };
    eprintln!(
        "  {engine:<12} {workload:<12} {:>12.0} ops/s",
        row.ops_per_sec()
    );
    Ok(row)
}

fn open_engine(
    name: &str,
    dir: &Path,
    base: &LsmOptions,
    bloom_fpr: f64,
) -> anyhow::Result<Box<dyn BenchEngine>> {
    let compaction = match name {
        "leveled" => CompactionStrategy::Leveled,
        "size-tiered" => CompactionStrategy::SizeTiered,
        "simple" => CompactionStrategy::Simple,
        "fjall" => return Ok(Box::new(Fjall::open(dir, base.block_cache_bytes)?)),
        other => bail!("unknown engine {other}"),
    };
    let opts = LsmOptions {
        compaction,
        sync: SyncPolicy::Never,
        bloom_fpr,
        ..base.clone()
    };
    Ok(Box::new(DistkvLsm::open(
        dir,
        opts,
        &format!("lsm-{name}"),
    )?))
}

const ENTRY_BYTES: f64 = 116.0;

fn run_engine(name: &str, a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = a.keys;
    let mut rng = StdRng::seed_from_u64(42);
    // fillseq, in a fresh directory.
    {
        let dir = tempfile::tempdir_in(&a.dir)?;
        let e = open_engine(name, dir.path(), &a.lsm, 0.01)?;
        let label = e.name();
        rows.push(timed(&label, "fillseq", n, || {
            (0..n).try_for_each(|i| e.put(&key(2 * i), &value(i, 0)))
        })?);
    }
    let dir = tempfile::tempdir_in(&a.dir)?;
    let e = open_engine(name, dir.path(), &a.lsm, 0.01)?;
    let label = e.name();
    let mut order: Vec<u64> = (0..n).collect();
    order.shuffle(&mut rng);
    let w0 = wchar() + e.mapped_bytes_written();
    let mut row = timed(&label, "fillrandom", n, || {
        order
            .iter()
            .try_for_each(|&i| e.put(&key(2 * i), &value(i, 0)))
    })?;
    eprintln!("  {label:<12} after fillrandom: {}", e.describe());
    settle(e.as_ref())?;
    let w1 = wchar() + e.mapped_bytes_written();
    row.write_amp = Some((w1 - w0) as f64 / (n as f64 * ENTRY_BYTES));
    row.space_amp = Some(dir_size(dir.path()) as f64 / (n as f64 * ENTRY_BYTES));
    rows.push(row);
    let over = n / 2;
    rows.push(timed(&label, "overwrite", over, || {
        (0..over).try_for_each(|_| {
            let i = rng.random_range(0..n);
            e.put(&key(2 * i), &value(i, 1))
        })
    })?);
    for state in ["fresh", "settled"] {
        if state == "settled" {
            settle(e.as_ref())?;
        }
        let space = dir_size(dir.path()) as f64 / (n as f64 * ENTRY_BYTES);
        eprintln!("  {label:<12} {state}: {}", e.describe());
        for &threads in &a.threads {
            read_phases(e.as_ref(), &label, state, threads, a, space, rows)?;
        }
    }
    Ok(())
}

/// Runs `ops` operations split over `threads` threads, each with its own random
/// generator; `f(rng)` does one operation.
fn parallel(
    threads: usize,
    ops: u64,
    seed: u64,
    f: impl Fn(&mut StdRng) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let f = &f;
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((t + 1) * 0x9E37_79B9));
                    let mine = ops / threads as u64 + u64::from(t < ops % threads as u64);
                    (0..mine).try_for_each(|_| f(&mut rng))
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        })
    })
}

/// The read workloads on `e` as it is now (`state`: fresh or settled), `threads` readers.
fn read_phases(
    e: &dyn BenchEngine,
    label: &str,
    state: &str,
    threads: usize,
    a: &Args,
    space: f64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = a.keys;
    let reads = a.reads;
    let name = |w: &str| format!("{w}/{state}/t{threads}");
    let mut row = timed(label, &name("readrandom"), reads, || {
        parallel(threads, reads, 1, |rng| {
            let i = rng.random_range(0..n);
            if e.get(&key(2 * i))?.is_none() {
                bail!("{label}: key {i} missing");
            }
            Ok(())
        })
    })?;
    row.read_amp = e.read_amplification();
    row.space_amp = Some(space);
    rows.push(row);
    rows.push(timed(label, &name("readmissing"), reads, || {
        parallel(threads, reads, 2, |rng| {
            let i = rng.random_range(0..n);
            if e.get(&key(2 * i + 1))?.is_some() {
                bail!("{label}: never-written key {i} found");
            }
            Ok(())
        })
    })?);
    let seeks = (reads / 10).max(1);
    rows.push(timed(label, &name("seek+10next"), seeks, || {
        parallel(threads, seeks, 3, |rng| {
            let i = rng.random_range(0..n);
            e.seek_next(&key(2 * i), 11)?;
            Ok(())
        })
    })?);
    // Range scans: each scan reads one sixteenth of the keys (as a node streams one
    // token range); the threads share out the sixteen, so the whole store is read once.
    let scans = 16;
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let next = std::sync::atomic::AtomicU64::new(0);
    let mut row = timed(label, &name("rangescan"), scans, || {
        parallel(threads, scans, 4, |_| {
            let w = 2 * n / 16;
            let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
            let (_, b) = e.scan_range(&key(s * w), &key((s + 1) * w))?;
            bytes.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    })?;
    row.mb_per_sec = Some(bytes.into_inner() as f64 / row.secs / 1e6);
    eprintln!(
        "  {label:<12} {:<24} {:>12.1} MB/s",
        row.workload,
        row.mb_per_sec.unwrap_or(0.0)
    );
    rows.push(row);
    Ok(())
}

struct SweepRow {
    fpr: f64,
    measured_fpr: f64,
    bits_per_key: f64,
    ops_per_sec: f64,
}

fn bloom_sweep(a: &Args) -> anyhow::Result<Vec<SweepRow>> {
    let n = (a.keys / 4).max(1000);
    let reads = a.reads.min(n * 2);
    let mut out = Vec::new();
    for fpr in [0.001, 0.01, 0.05, 0.10] {
        let dir = tempfile::tempdir_in(&a.dir)?;
        let opts = LsmOptions {
            sync: SyncPolicy::Never,
            bloom_fpr: fpr,
            ..a.lsm.clone()
        };
        let e = DistkvLsm::open(dir.path(), opts, "lsm-leveled")?;
        let mut order: Vec<u64> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(7));
        for &i in &order {
            e.put(&key(2 * i), &value(i, 0))?;
        }
        e.settle()?;
        let (p0, n0) = (e.stat("table_probes"), e.stat("bloom.negatives"));
        let mut rng = StdRng::seed_from_u64(9);
        let t = Instant::now();
        for _ in 0..reads {
            let i = rng.random_range(0..n);
            if e.get(&key(2 * i + 1))?.is_some() {
                bail!("never-written key found");
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let (dp, dn) = (e.stat("table_probes") - p0, e.stat("bloom.negatives") - n0);
        let row = SweepRow {
            fpr,
            measured_fpr: dp / (dp + dn),
            bits_per_key: e.stat("bloom.bytes") * 8.0 / n as f64,
            ops_per_sec: reads as f64 / secs,
        };
        eprintln!(
            "  bloom fpr {:.3}: measured {:.4}, {:.2} bits/key, readmissing {:.0} ops/s",
            row.fpr, row.measured_fpr, row.bits_per_key, row.ops_per_sec
        );
        out.push(row);
    }
    Ok(out)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.2}"))
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    fs::create_dir_all(&a.dir)?;
    eprintln!(
        "engine-compare: {} keys, {} reads, dir {}",
        a.keys,
        a.reads,
        a.dir.display()
    );
    let mut rows = Vec::new();
    for name in &a.engines {
        run_engine(name, &a, &mut rows)?;
    }
    let sweep = if a.sweep {
        bloom_sweep(&a)?
    } else {
        Vec::new()
    };

    println!(
        "\n{} keys of 16 B, 100 B values; {} reads per read workload; block cache {} MiB \
         for every engine (DistKV: decompressed blocks of compressed tables, raw L0/L1 blocks \
         read in place from the OS page cache, index and Bloom filters held beside it; \
         fjall: data, index and filter blocks in one cache, some pinned, misses read from \
         the OS page cache). \
         Durability, both engines: a write returns once it is in the OS page cache (WAL / \
         journal written, not fsynced): it survives a process crash, not a power loss. \
         fresh = right after the writes; settled = memtables written out, compactions done.",
        a.keys, a.reads, a.cache_mb
    );
    println!(
        "\n| engine | workload | ops | ops/s | MB/s | write amp | read amp (tables/get) | space amp |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            r.engine,
            r.workload,
            r.ops,
            r.ops_per_sec(),
            fmt_opt(r.mb_per_sec),
            fmt_opt(r.write_amp),
            fmt_opt(r.read_amp),
            fmt_opt(r.space_amp)
        );
    }
    let engines: Vec<String> = rows
        .iter()
        .map(|r| r.engine.clone())
        .filter(|e| e != "fjall")
        .fold(Vec::new(), |mut v, e| {
            if !v.contains(&e) {
                v.push(e);
            }
            v
        });
    let workloads: Vec<String> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.workload) {
            v.push(r.workload.clone());
        }
        v
    });
    if rows.iter().any(|r| r.engine == "fjall") && !engines.is_empty() {
        println!(
            "\n| workload | {} |",
            engines
                .iter()
                .map(|e| format!("{e} vs fjall"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---:|".repeat(engines.len()));
        let speed = |eng: &str, w: &str| {
            rows.iter()
                .find(|r| r.engine == eng && r.workload == w)
                .map(Row::ops_per_sec)
        };
        for w in &workloads {
            let cells: Vec<String> = engines
                .iter()
                .map(|eng| match (speed(eng, w), speed("fjall", w)) {
                    (Some(m), Some(f)) => format!("{:.2}x", m / f),
                    _ => "-".into(),
                })
                .collect();
            println!("| {w} | {} |", cells.join(" | "));
        }
    }
    if !sweep.is_empty() {
        println!("\n| bloom_fpr | measured FPR | bits/key | readmissing ops/s |");
        println!("|---:|---:|---:|---:|");
        for s in &sweep {
            println!(
                "| {:.3} | {:.4} | {:.2} | {:.0} |",
                s.fpr, s.measured_fpr, s.bits_per_key, s.ops_per_sec
            );
        }
    }
    let mut csv =
        fs::File::create(&a.csv).with_context(|| format!("creating {}", a.csv.display()))?;
    writeln!(csv, "section,engine,workload,ops,secs,ops_per_sec,write_amp,read_amp,space_amp,bloom_fpr,measured_fpr,bits_per_key,mb_per_sec")?;
    for r in &rows {
        let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        writeln!(
            csv,
            "engine,{},{},{},{:.3},{:.0},{},{},{},,,,{}",
            r.engine,
            r.workload,
            r.ops,
            r.secs,
            r.ops_per_sec(),
            o(r.write_amp),
            o(r.read_amp),
            o(r.space_amp),
            o(r.mb_per_sec)
        )?;
    }
    for s in &sweep {
        writeln!(
            csv,
            "bloom,lsm-leveled,readmissing,,,{:.0},,,,{},{:.5},{:.3},",
            s.ops_per_sec, s.fpr, s.measured_fpr, s.bits_per_key
        )?;
    }
    eprintln!("wrote {}", a.csv.display());
    Ok(())
}
