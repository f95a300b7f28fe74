//! Compares DistKV's LSM engine (each compaction strategy) with fjall on db_bench-style
//! workloads, in one process, and sweeps the Bloom filter false-positive rate.
//!
//! ```text
//! cargo run --release -p distkv-benches --bin engine-compare -- [--keys N] [--reads N]
//!     [--csv PATH] [--dir PATH] [--engines leveled,size-tiered,simple,fjall] [--no-sweep]
//!     [--lsm 'memtable_size_bytes = 33554432' ...]   (LsmOptions fields, TOML syntax)
//! ```
//! Keys are 16 bytes, values 100 bytes (half compressible), WAL sync off. Write
//! amplification is bytes passed to `write(2)` by the process (`wchar` of
//! `/proc/self/io`), plus what an engine wrote through memory maps (DistKV's WAL, by its
//! own counter), during fillrandom and the compactions it caused, over the user bytes;
//! space amplification is the directory size over the user bytes of the live keys.

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
  --keys N      keys written by fillseq/fillrandom (default 2000000)
  --reads N     gets per read workload (default min(keys, 1000000))
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
        "fjall" => return Ok(Box::new(Fjall::open(dir, 64 << 20)?)),
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
    settle(e.as_ref())?;
    let space = dir_size(dir.path()) as f64 / (n as f64 * ENTRY_BYTES);
    let reads = a.reads;
    let probe = |e: &dyn BenchEngine| e.read_amplification();
    let mut row = timed(&label, "readrandom", reads, || {
        for _ in 0..reads {
            let i = rng.random_range(0..n);
            if e.get(&key(2 * i))?.is_none() {
                bail!("{label}: key {i} missing");
            }
        }
        Ok(())
    })?;
    row.read_amp = probe(e.as_ref());
    row.space_amp = Some(space);
    rows.push(row);
    rows.push(timed(&label, "readmissing", reads, || {
        for _ in 0..reads {
            let i = rng.random_range(0..n);
            if e.get(&key(2 * i + 1))?.is_some() {
                bail!("{label}: never-written key {i} found");
            }
        }
        Ok(())
    })?);
    let seeks = (reads / 10).max(1);
    rows.push(timed(&label, "seek+10next", seeks, || {
        for _ in 0..seeks {
            let i = rng.random_range(0..n);
            e.seek_next(&key(2 * i), 10)?;
        }
        Ok(())
    })?);
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
        "\n| engine | workload | ops | ops/s | write amp | read amp (tables/get) | space amp |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} |",
            r.engine,
            r.workload,
            r.ops,
            r.ops_per_sec(),
            fmt_opt(r.write_amp),
            fmt_opt(r.read_amp),
            fmt_opt(r.space_amp)
        );
    }
    let fjall = |w: &str| {
        rows.iter()
            .find(|r| r.engine == "fjall" && r.workload == w)
            .map(Row::ops_per_sec)
    };
    println!("\n| engine | fillrandom vs fjall | readrandom vs fjall | readmissing vs fjall |");
    println!("|---|---:|---:|---:|");
    for eng in rows
        .iter()
        .map(|r| r.engine.clone())
        .filter(|e| e != "fjall")
        .collect::<std::collections::BTreeSet<_>>()
    {
        let ratio = |w: &str| {
            let mine = rows
                .iter()
                .find(|r| r.engine == eng && r.workload == w)
                .map(Row::ops_per_sec);
            match (mine, fjall(w)) {
                (Some(m), Some(f)) => format!("{:.2}x", m / f),
                _ => "-".into(),
            }
        };
        println!(
            "| {eng} | {} | {} | {} |",
            ratio("fillrandom"),
            ratio("readrandom"),
            ratio("readmissing")
        );
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
    writeln!(csv, "section,engine,workload,ops,secs,ops_per_sec,write_amp,read_amp,space_amp,bloom_fpr,measured_fpr,bits_per_key")?;
    for r in &rows {
        let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        writeln!(
            csv,
            "engine,{},{},{},{:.3},{:.0},{},{},{},,,",
            r.engine,
            r.workload,
            r.ops,
            r.secs,
            r.ops_per_sec(),
            o(r.write_amp),
            o(r.read_amp),
            o(r.space_amp)
        )?;
    }
    for s in &sweep {
        writeln!(
            csv,
            "bloom,lsm-leveled,readmissing,,,{:.0},,,,{},{:.5},{:.3}",
            s.ops_per_sec, s.fpr, s.measured_fpr, s.bits_per_key
        )?;
    }
    eprintln!("wrote {}", a.csv.display());
    Ok(())
}
