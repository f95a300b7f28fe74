//! What anti-entropy costs (issue 13, point 7), in one process: three nodes over the
//! in-memory transport, each on its own LSM engine in a temporary directory, holding the
//! same KEYS records.
//!
//! 1. **Tree rebuild** after a restart: time to rebuild one node's hash tree from its
//!    store.
//! 2. **Comparing equal replicas**: one anti-entropy pass of node 0 over every range it
//!    replicates: wall time, CPU (the whole process: both sides of every comparison), and
//!    bytes of comparison messages.
//! 3. **Repairing a wiped replica**: node 2 restarts on an empty directory and runs
//!    passes until it holds every key again: wall time, CPU, bytes moved, keys pulled.
//! 4. **Tree upkeep on the write path**: CPU per quorum write through a coordinator, and
//!    CPU of the tree update that each replica's merge does; the ratio is the share of a
//!    write's CPU the upkeep takes (it runs once per replica, three per write).
//!
//! Run in release: `cargo run --release -p distkv-benches --bin ae-cost -- 1000000`.
//! CPU is read from /proc/self/stat (10 ms ticks); the machine is shared, so compare
//! CPU, not wall time, across runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use distkv_engine::{Lsm, LsmOptions, SyncPolicy};
use distkv_network::{
    DetectorSettings, InMemoryNetwork, InMemoryTransport, NodeInfo, StaticMembership,
};
use distkv_node::antientropy::upkeep;
use distkv_node::assembly::{assemble, Assembled};
use distkv_node::placement::{key_token, HashRing};
use distkv_node::replica::MergeObserver;
use distkv_node::version::{Dot, Record, VersionVector};
use distkv_node::{Consistency, NodeSettings, ReadRepair};

type Parts = Assembled<Lsm, StaticMembership, HashRing, InMemoryTransport>;

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

struct Measure {
    wall: Instant,
    cpu: f64,
}

impl Measure {
    fn start() -> Self {
        Measure {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }
    fn stop(&self) -> (Duration, f64) {
        (self.wall.elapsed(), cpu_seconds() - self.cpu)
    }
}

fn settings() -> NodeSettings {
    let mut s = NodeSettings::new(3, 2, 2);
    s.read_repair = ReadRepair::Off;
    s.hinted_handoff = false;
    s.request_timeout = Duration::from_secs(30);
    // Passes are run by hand here, unthrottled.
    s.antientropy.enabled = false;
    s.antientropy.max_bytes_per_sec = 1 << 40;
    s
}

fn infos() -> Vec<NodeInfo> {
    (0..3)
        .map(|i| NodeInfo {
            id: format!("n{i}"),
            address: format!("n{i}"),
        })
        .collect()
}

fn start_node(
    net: &Arc<InMemoryNetwork>,
    i: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Parts> {
    let all = infos();
    let engine = Lsm::open(
        dir,
        LsmOptions {
            sync: SyncPolicy::Never,
            ..LsmOptions::default()
        },
    )
    .with_context(|| format!("opening the engine of n{i} in {}", dir.display()))?;
    let membership = StaticMembership::new(
        all[i].clone(),
        all.clone(),
        settings().virtual_nodes,
        DetectorSettings::default(),
    )
    .context("membership")?;
    let parts = assemble(
        Arc::new(engine),
        Arc::new(membership),
        Arc::new(net.transport(&all[i].id)),
        None,
        settings(),
    );
    net.register(&all[i].id, parts.peer.clone());
    Ok(parts)
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

fn record(i: u64, value_size: usize) -> Record {
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(value_size, b'x');
    Record::write(
        Dot {
            actor: "n0".into(),
            counter: i + 1,
        },
        VersionVector::new(),
        1_700_000_000_000 + i,
        Some(value),
    )
}

async fn load(parts: &Parts, keys: u64, value_size: usize) -> anyhow::Result<()> {
    const BATCH: u64 = 2_000;
    let mut i = 0;
    while i < keys {
        let end = (i + BATCH).min(keys);
        let batch: Vec<(Vec<u8>, Record)> =
            (i..end).map(|k| (key(k), record(k, value_size))).collect();
        parts
            .store
            .merge_repairs(batch)
            .await
            .map_err(|e| anyhow::anyhow!("loading keys {i}..{end}: {e}"))?;
        i = end;
    }
    Ok(())
}

fn held(parts: &Parts, keys: u64) -> u64 {
    (0..keys)
        .filter(|&k| parts.node.local_record(&key(k)).ok().flatten().is_some())
        .count() as u64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = match args.next() {
        Some(k) => k.parse().context("KEYS must be a number, e.g. 1000000")?,
        None => 1_000_000,
    };
    let value_size: usize = match args.next() {
        Some(v) => v.parse().context("VALUE_SIZE must be a number of bytes")?,
        None => 100,
    };
    let writes: u64 = (keys / 10).clamp(1_000, 100_000);
    let root = tempfile::tempdir().context("temporary directory")?;
    let net = InMemoryNetwork::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start_node(&net, i, &root.path().join(format!("n{i}")))?);
    }
    let m = Measure::start();
    for n in &nodes {
        load(n, keys, value_size).await?;
    }
    let (wall, _) = m.stop();
    println!(
        "ae-cost: {keys} keys of {value_size} B on 3 replicas (LSM, no fsync), loaded in {:.1} s",
        wall.as_secs_f64()
    );

    // 1. Tree rebuild.
    let mut rebuild = Vec::new();
    for n in &nodes {
        let m = Measure::start();
        upkeep::rebuild(n.store.clone(), n.tree.clone(), 1024)
            .await
            .map_err(|e| anyhow::anyhow!("tree rebuild: {e}"))?;
        rebuild.push(m.stop());
    }
    let (w, c) = rebuild[0];
    println!(
        "tree rebuild (one node, {keys} keys): {:.2} s wall, {c:.2} s CPU",
        w.as_secs_f64()
    );

    // 2. Equal replicas.
    let m = Measure::start();
    let report = nodes[0].antientropy.pass().await;
    let (w, c) = m.stop();
    if report.keys_differing != 0 || report.failures != 0 {
        bail!("equal replicas compared unequal: {report:?}");
    }
    println!(
        "compare equal replicas (node 0, {} ranges x 2 peers): {:.3} s wall, {:.3} s CPU, {} bytes \
         of comparison messages ({:.1} B per range and peer), {} keys covered",
        report.ranges,
        w.as_secs_f64(),
        c,
        report.bytes_moved,
        report.bytes_moved as f64 / (report.ranges.max(1) * 2) as f64,
        report.keys_compared
    );

    // 3. Wiped replica.
    let wiped = root.path().join("n2-wiped");
    let old = nodes.pop().context("three nodes")?;
    drop(old);
    let fresh = start_node(&net, 2, &wiped)?;
    upkeep::rebuild(fresh.store.clone(), fresh.tree.clone(), 1024)
        .await
        .map_err(|e| anyhow::anyhow!("tree rebuild: {e}"))?;
    nodes.push(fresh);
    let m = Measure::start();
    let mut total = distkv_node::antientropy::PassReport::default();
    let mut passes = 0;
    while passes < 6 {
        let r = nodes[2].antientropy.pass().await;
        passes += 1;
        total.keys_repaired += r.keys_repaired;
        total.bytes_moved += r.bytes_moved;
        total.keys_differing += r.keys_differing;
        if r.keys_differing == 0 && r.failures == 0 {
            break;
        }
    }
    let (w, c) = m.stop();
    let have = held(&nodes[2], keys);
    println!(
        "repair wiped replica: {passes} passes, {:.1} s wall, {:.1} s CPU, {:.1} MB moved ({:.2}x \
         the {:.1} MB of records pulled), {} keys pulled, holds {have}/{keys} after",
        w.as_secs_f64(),
        c,
        mb(total.bytes_moved),
        total.bytes_moved as f64 / (keys as f64 * (value_size + 40) as f64),
        keys as f64 * (value_size + 40) as f64 / 1e6,
        total.keys_repaired
    );
    if have != keys {
        bail!("the wiped replica holds {have} of {keys} keys after {passes} passes");
    }

    // 4. Write path: quorum writes through node 0, and the tree update per merge.
    let coordinator = nodes[0].node.clone();
    let m = Measure::start();
    for i in 0..writes {
        let mut value = vec![b'w'; value_size];
        value[..8].copy_from_slice(&i.to_be_bytes());
        coordinator
            .put(key(keys + i), Some(value), b"", Consistency::Quorum)
            .await
            .map_err(|e| anyhow::anyhow!("quorum write {i}: {e}"))?;
    }
    let (w, c) = m.stop();
    let write_cpu_us = c / writes as f64 * 1e6;
    let tree = distkv_node::antientropy::HashTree::new(Default::default());
    let tree = parking_lot::Mutex::new(tree);
    let records: Vec<(Vec<u8>, u64, Record)> = (0..writes)
        .map(|i| {
            let k = key(keys * 2 + i);
            let t = key_token(&k);
            (k, t, record(i, value_size))
        })
        .collect();
    let m = Measure::start();
    let rounds = 20;
    for _ in 0..rounds {
        for (k, t, r) in &records {
            tree.merged(k, *t, None, Some(r));
        }
    }
    let (_, uc) = m.stop();
    let upkeep_us = uc / (writes * rounds) as f64 * 1e6;
    println!(
        "write path: {writes} quorum writes in {:.1} s, {write_cpu_us:.1} us CPU per write (3 \
         replicas in this process); tree upkeep {upkeep_us:.2} us CPU per merge, x3 = {:.1}% of a \
         write's CPU",
        w.as_secs_f64(),
        upkeep_us * 3.0 / write_cpu_us * 100.0
    );
    Ok(())
}
