//! `distkv-bench`: a YCSB-style load generator for a DistKV cluster.
//!
//! `C` concurrent clients (tokio tasks) send `Get`/`Put` requests to the nodes named by
//! `--targets` (and only those: it never discovers other members), for a bounded time
//! (`--duration`) and/or number of operations (`--ops`), and report throughput and
//! latency percentiles per operation kind. See `docs/load-generator.md`.
//!
//! Exit codes: 0 the run completed (failed requests are counted in the report, not fatal);
//! 2 bad usage (including an unbounded run or a non-loopback target without
//! `--allow-remote`); 3 a target could not be reached at start, or the preload failed;
//! 4 the report file could not be written.

mod stats;
mod workload;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use distkv_proto::v1::key_value_client::KeyValueClient;
use distkv_proto::v1::{
    BatchPutRequest, Consistency, GetRequest, KeyValuePair, PutRequest, StatusRequest,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tonic::transport::Channel;

use stats::{Report, Stats};
use workload::{Distribution, KeyChooser, KeyNames, Op, Workload};

/// Largest key space accepted (computing the zipfian constant is linear in it).
const MAX_KEYS: u64 = 100_000_000;
/// Most concurrent clients accepted.
const MAX_CLIENTS: usize = 10_000;
/// Most channels (HTTP/2 connections) per target accepted.
const MAX_CONNECTIONS: usize = 64;
/// Largest value accepted (the server's default limit).
const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;
/// Bytes of values per preload `BatchPut`, at most.
const PRELOAD_BATCH_BYTES: usize = 1024 * 1024;
/// Entries per preload `BatchPut`, at most.
const PRELOAD_BATCH_ENTRIES: usize = 100;
/// Preload batches in flight at once, at most (more only queue up on the nodes).
const PRELOAD_CONCURRENCY: usize = 16;
/// Shortest deadline of a preload batch (a batch is up to 100 quorum writes).
const PRELOAD_MIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "distkv-bench",
    version,
    about = "Load generator for a DistKV cluster (YCSB-style workloads)"
)]
struct Args {
    /// Nodes to send requests to, HOST:PORT,HOST:PORT,...; clients are spread over them
    /// round-robin. Must be loopback addresses unless --allow-remote is given.
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    targets: Vec<String>,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
    /// Concurrent clients.
    #[arg(long, short = 'c', default_value_t = 16)]
    clients: usize,
    /// gRPC channels (HTTP/2 connections) per target, shared by the clients.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Length of the measured phase, e.g. 30s, 2m.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Operations of the measured phase (the run stops at whichever bound comes first).
    #[arg(long)]
    ops: Option<u64>,
    /// Unmeasured phase before the measured one, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Operation mix: a (50% read, 50% update), b (95/5), c (100% read), insert.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// Size of the key space read and updated.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    distribution: Distribution,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Replicas that must answer each request (default: the server's R or W).
    #[arg(long, value_enum, default_value_t = Level::Default)]
    consistency: Level,
    /// Write every key of the key space first (blind writes: run it once per fresh
    /// cluster or key prefix, or the keys get siblings).
    #[arg(long)]
    preload: bool,
    /// Deadline of each request, e.g. 500ms, 5s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Prefix of every key written or read.
    #[arg(long, default_value = "bench")]
    key_prefix: String,
    /// Seed of the random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report to FILE as json or csv.
    #[arg(long, num_args = 2, value_names = ["FORMAT", "FILE"])]
    output: Option<Vec<String>>,
}

/// Consistency level of the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Level {
    /// The server's configured R (reads) or W (writes).
    Default,
    One,
    Quorum,
    All,
}

impl Level {
    fn wire(self) -> i32 {
        match self {
            Level::Default => Consistency::Default as i32,
            Level::One => Consistency::One as i32,
            Level::Quorum => Consistency::Quorum as i32,
            Level::All => Consistency::All as i32,
        }
    }
}

/// Format of the report file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Json,
    Csv,
}

/// A node the benchmark talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// As given on the command line.
    name: String,
    /// Its checked addresses, tried in order until one connects (`localhost` may give
    /// both `::1` and `127.0.0.1`).
    addrs: Vec<SocketAddr>,
}

/// Validated settings.
#[derive(Clone, Debug)]
struct Config {
    args: Args,
    targets: Vec<Target>,
    output: Option<(OutputFormat, String)>,
}

/// A failure with its exit code and one-line message.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

/// Checks the settings; `resolve` turns a `HOST:PORT` into addresses (DNS in `main`, a
/// stub in tests). Nothing is contacted here.
fn validate(
    args: Args,
    resolve: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<Config, Failure> {
    if args.duration.is_none() && args.ops.is_none() {
        return Err(Failure::usage(
            "the run is unbounded: give --duration (e.g. 30s) and/or --ops (e.g. 100000)",
        ));
    }
    if args.duration.is_some_and(|d| d.is_zero()) || args.ops == Some(0) {
        return Err(Failure::usage("--duration and --ops must be positive"));
    }
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        return Err(Failure::usage(format!(
            "--clients must be between 1 and {MAX_CLIENTS}"
        )));
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(Failure::usage(format!(
            "--connections must be between 1 and {MAX_CONNECTIONS}"
        )));
    }
    if args.keys == 0 || args.keys > MAX_KEYS {
        return Err(Failure::usage(format!(
            "--keys must be between 1 and {MAX_KEYS}"
        )));
    }
    if args.value_size > MAX_VALUE_SIZE {
        return Err(Failure::usage(format!(
            "--value-size must be at most {MAX_VALUE_SIZE} bytes"
        )));
    }
    if args.timeout.is_zero() {
        return Err(Failure::usage("--timeout must be positive"));
    }
    if args.key_prefix.is_empty() {
        return Err(Failure::usage("--key-prefix must not be empty"));
    }
    let output = match &args.output {
        None => None,
        Some(v) => {
            let format = match v[0].as_str() {
                "json" => OutputFormat::Json,
                "csv" => OutputFormat::Csv,
                other => {
                    return Err(Failure::usage(format!(
                        "--output format {other:?} is not json or csv"
                    )))
                }
            };
            Some((format, v[1].clone()))
        }
    };
    let mut targets: Vec<Target> = Vec::new();
    for name in &args.targets {
        let name = name.trim();
        if name.is_empty() {
            return Err(Failure::usage("--targets has an empty entry"));
        }
        let addrs = resolve(name).map_err(|e| {
            Failure::usage(format!("target {name:?} is not a HOST:PORT address: {e}"))
        })?;
        if addrs.is_empty() {
            return Err(Failure::usage(format!(
                "target {name:?} resolves to no address"
            )));
        }
        if !args.allow_remote {
            if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Failure::usage(format!(
                    "target {name} ({}) is not a loopback address; pass --allow-remote to load a remote cluster",
                    remote.ip()
                )));
            }
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(Failure::usage(format!("target {name} is given twice")));
        }
        targets.push(Target {
            name: name.to_string(),
            addrs,
        });
    }
    Ok(Config {
        args,
        targets,
        output,
    })
}

/// Resolves `HOST:PORT` with the system resolver.
fn system_resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(name.to_socket_addrs()?.collect())
}

/// The innermost cause of an error ("Connection refused" rather than "transport error").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Opens `connections` channels to each target and checks that each answers `Status`.
async fn connect_all(config: &Config) -> Result<Vec<Vec<KeyValueClient<Channel>>>, Failure> {
    let args = &config.args;
    let mut all = Vec::with_capacity(config.targets.len());
    for target in &config.targets {
        let mut channels = Vec::with_capacity(args.connections);
        // The first connection finds an address that answers; the others reuse it.
        let mut candidates = target.addrs.clone();
        for _ in 0..args.connections {
            let mut last_error = String::from("no address");
            let mut connected = None;
            for (i, addr) in candidates.iter().enumerate() {
                let endpoint = Channel::from_shared(format!("http://{addr}"))
                    .map_err(|e| Failure::usage(format!("target {}: {e}", target.name)))?
                    .connect_timeout(args.timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true);
                match endpoint.connect().await {
                    Ok(channel) => {
                        connected = Some((i, channel));
                        break;
                    }
                    Err(e) => last_error = format!("{addr}: {}", root_cause(&e)),
                }
            }
            let Some((i, channel)) = connected else {
                return Err(Failure::unreachable(format!(
                    "cannot connect to target {} ({last_error}) (is distkv-server running there?)",
                    target.name
                )));
            };
            candidates = vec![candidates[i]];
            channels.push(
                KeyValueClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        let mut first = channels[0].clone();
        let status = within(args.timeout, first.status(StatusRequest {}))
            .await
            .map_err(|s| {
                Failure::unreachable(format!(
                    "target {} does not answer as a DistKV node: {} {}",
                    target.name,
                    stats::code_name(s.code()),
                    s.message().lines().next().unwrap_or("")
                ))
            })?;
        eprintln!(
            "distkv-bench: target {} is node {:?} (N={} R={} W={}, {} members, engine {})",
            target.name,
            status.node_id,
            status.replicas,
            status.read_quorum,
            status.write_quorum,
            status.members.len(),
            status.storage_engine
        );
        all.push(channels);
    }
    Ok(all)
}

/// Counters shared by the clients of one phase, read by the progress line.
#[derive(Default)]
struct Progress {
    /// Operations started (claims against `--ops`).
    issued: AtomicU64,
    /// Operations finished, successful or not.
    done: AtomicU64,
    /// Operations failed.
    errors: AtomicU64,
}

/// What every client of a phase shares.
struct Shared {
    workload: Workload,
    chooser: KeyChooser,
    names: KeyNames,
    value_size: usize,
    consistency: i32,
    /// Deadline of each request.
    timeout: Duration,
    /// Next insert number (shared by warm-up and measured phases, so keys never repeat).
    next_insert: AtomicU64,
    seed: u64,
}

/// Bounds and counters of one phase.
struct Phase {
    label: &'static str,
    deadline: Option<Instant>,
    max_ops: Option<u64>,
    progress: Progress,
}

impl Phase {
    /// Whether another operation may start; claims it against `max_ops`.
    fn claim(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match self.max_ops {
            Some(max) => self.progress.issued.fetch_add(1, Ordering::Relaxed) < max,
            None => true,
        }
    }
}

/// A random value of `size` printable bytes.
fn random_value(rng: &mut SmallRng, size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..size)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

/// Awaits a gRPC call for at most `limit`; past it the call is dropped (cancelled) and
/// reported as `DEADLINE_EXCEEDED`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "client timeout: no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

/// Runs one operation within `limit` per request; `Ok` carries whether a read found nothing and whether it saw
/// siblings.
async fn one_op(
    kv: &mut KeyValueClient<Channel>,
    shared: &Shared,
    limit: Duration,
    op: Op,
    rng: &mut SmallRng,
    value: &Bytes,
) -> Result<(bool, bool), tonic::Status> {
    match op {
        Op::Read => {
            let key = shared.names.existing(shared.chooser.next(rng));
            let get = kv.get(GetRequest {
                key: key.into(),
                consistency: shared.consistency,
            });
            let r = within(limit, get).await?;
            Ok((!r.found, r.values.len() > 1))
        }
        Op::Update => {
            let key: Bytes = shared.names.existing(shared.chooser.next(rng)).into();
            let get = kv.get(GetRequest {
                key: key.clone(),
                consistency: shared.consistency,
            });
            let r = within(limit, get).await?;
            let put = kv.put(PutRequest {
                key,
                value: value.clone(),
                context: r.context,
                consistency: shared.consistency,
            });
            within(limit, put).await?;
            Ok((false, false))
        }
        Op::Insert => {
            let n = shared.next_insert.fetch_add(1, Ordering::Relaxed);
            let put = kv.put(PutRequest {
                key: shared.names.inserted(n).into(),
                value: value.clone(),
                context: Bytes::new(),
                consistency: shared.consistency,
            });
            within(limit, put).await?;
            Ok((false, false))
        }
    }
}

/// One client: runs operations until the phase's bounds say stop.
async fn client(
    id: usize,
    mut kv: KeyValueClient<Channel>,
    shared: Arc<Shared>,
    phase: Arc<Phase>,
) -> Stats {
    let mut rng = SmallRng::seed_from_u64(
        shared
            .seed
            .wrapping_add((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let value = random_value(&mut rng, shared.value_size);
    let mut stats = Stats::default();
    while phase.claim() {
        let op = shared.workload.next_op(&mut rng);
        let start = Instant::now();
        match one_op(&mut kv, &shared, shared.timeout, op, &mut rng, &value).await {
            Ok((not_found, siblings)) => {
                stats.success(op, start.elapsed());
                stats.not_found += u64::from(not_found);
                stats.siblings += u64::from(siblings);
            }
            Err(status) => {
                stats.failure(op, &status);
                phase.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        phase.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

/// Prints a progress line on stderr once a second until aborted.
fn spawn_progress(phase: Arc<Phase>, start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(start) + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut last = 0u64;
        loop {
            tick.tick().await;
            let done = phase.progress.done.load(Ordering::Relaxed);
            let errors = phase.progress.errors.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "distkv-bench: {} {:>5.0}s: {done} ops, {} ops/s now, {:.0} ops/s avg, {errors} errors",
                phase.label,
                secs,
                done - last,
                done as f64 / secs
            );
            last = done;
        }
    })
}

/// Runs one phase with every client; returns the merged stats and the phase's length.
async fn run_phase(
    channels: &[Vec<KeyValueClient<Channel>>],
    clients: usize,
    shared: &Arc<Shared>,
    phase: Phase,
) -> Result<(Stats, Duration), Failure> {
    let phase = Arc::new(phase);
    let start = Instant::now();
    let progress = spawn_progress(phase.clone(), start);
    let mut tasks = Vec::with_capacity(clients);
    for id in 0..clients {
        // Round-robin over targets, then over each target's channels.
        let per_target = &channels[id % channels.len()];
        let kv = per_target[(id / channels.len()) % per_target.len()].clone();
        tasks.push(tokio::spawn(client(id, kv, shared.clone(), phase.clone())));
    }
    let mut stats = Stats::default();
    let mut panicked = 0;
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(&s),
            Err(_) => panicked += 1,
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    if panicked > 0 {
        return Err(Failure {
            code: 4,
            message: format!("{panicked} client tasks failed unexpectedly"),
        });
    }
    Ok((stats, elapsed))
}

/// Writes every key of the key space with `BatchPut`s, `clients` batches at a time.
async fn preload(
    channels: &[Vec<KeyValueClient<Channel>>],
    config: &Config,
    shared: &Arc<Shared>,
) -> Result<(), Failure> {
    let args = &config.args;
    let per_batch =
        (PRELOAD_BATCH_BYTES / args.value_size.max(1)).clamp(1, PRELOAD_BATCH_ENTRIES) as u64;
    let batches = args.keys.div_ceil(per_batch);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    eprintln!(
        "distkv-bench: preloading {} keys ({batches} batches of up to {per_batch})",
        args.keys
    );
    let mut tasks = Vec::new();
    let limit = args.timeout.max(PRELOAD_MIN_TIMEOUT);
    let concurrency = args.clients.min(PRELOAD_CONCURRENCY).min(batches as usize);
    for id in 0..concurrency {
        let per_target = &channels[id % channels.len()];
        let mut kv = per_target[(id / channels.len()) % per_target.len()].clone();
        let (next, written, shared) = (next.clone(), written.clone(), shared.clone());
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(shared.seed ^ (id as u64 + 1));
            let value = random_value(&mut rng, shared.value_size);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok(());
                }
                let range = (b * per_batch)..((b + 1) * per_batch).min(keys);
                let entries: Vec<KeyValuePair> = range
                    .clone()
                    .map(|i| KeyValuePair {
                        key: shared.names.existing(i).into(),
                        value: value.clone(),
                        context: Bytes::new(),
                    })
                    .collect();
                let n = entries.len() as u64;
                let call = kv.batch_put(BatchPutRequest {
                    entries,
                    consistency: shared.consistency,
                });
                within(limit, call).await.map_err(|s| {
                    format!(
                        "preload of keys {}..{} failed: {}",
                        range.start,
                        range.end,
                        stats::error_kind(&s)
                    )
                })?;
                written.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let reporter = {
        let written = written.clone();
        let total = args.keys;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "distkv-bench: preload {:>5.0}s: {} of {total} keys",
                    start.elapsed().as_secs_f64(),
                    written.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut first_error = None;
    for t in tasks {
        let result = match t.await {
            Ok(r) => r,
            Err(_) => Err("a preload task failed unexpectedly".to_string()),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
            // Stop the other tasks at their next batch.
            next.store(batches, Ordering::Relaxed);
        }
    }
    reporter.abort();
    if let Some(e) = first_error {
        return Err(Failure::unreachable(e));
    }
    eprintln!(
        "distkv-bench: preloaded {} keys in {:.1} s",
        args.keys,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The whole run after validation.
async fn run(config: Config) -> Result<Report, Failure> {
    let args = &config.args;
    let channels = connect_all(&config).await?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    });
    let shared = Arc::new(Shared {
        workload: args.workload,
        chooser: KeyChooser::new(args.distribution, args.keys),
        names: KeyNames::new(&args.key_prefix, seed),
        value_size: args.value_size,
        consistency: args.consistency.wire(),
        timeout: args.timeout,
        next_insert: AtomicU64::new(0),
        seed,
    });
    if let KeyChooser::Zipfian(z) = &shared.chooser {
        eprintln!(
            "distkv-bench: zipfian over {} keys: the hottest key gets {:.1}% of the requests",
            args.keys,
            100.0 * z.probability(0)
        );
    }
    if args.preload {
        preload(&channels, &config, &shared).await?;
    } else if args.workload.uses_existing_keys() {
        eprintln!("distkv-bench: no --preload: reads of keys never written count as \"not found\"");
    }
    if !args.warmup.is_zero() {
        let phase = Phase {
            label: "warmup",
            deadline: Some(Instant::now() + args.warmup),
            max_ops: None,
            progress: Progress::default(),
        };
        let (stats, _) = run_phase(&channels, args.clients, &shared, phase).await?;
        eprintln!(
            "distkv-bench: warm-up done: {} ops, {} errors",
            stats.total_ops(),
            stats.total_errors()
        );
    }
    let phase = Phase {
        label: "run",
        deadline: args.duration.map(|d| Instant::now() + d),
        max_ops: args.ops,
        progress: Progress::default(),
    };
    let (stats, elapsed) = run_phase(&channels, args.clients, &shared, phase).await?;
    let settings = json!({
        "targets": config.targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "clients": args.clients,
        "connections_per_target": args.connections,
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "keys": args.keys,
        "distribution": format!("{:?}", args.distribution).to_lowercase(),
        "value_size": args.value_size,
        "consistency": format!("{:?}", args.consistency).to_lowercase(),
        "duration_s": args.duration.map(|d| d.as_secs_f64()),
        "ops": args.ops,
        "warmup_s": args.warmup.as_secs_f64(),
        "preload": args.preload,
        "timeout_s": args.timeout.as_secs_f64(),
        "seed": seed,
    });
    Ok(Report {
        settings,
        elapsed,
        stats,
    })
}

/// Writes the report file, if asked for.
fn write_output(config: &Config, report: &Report) -> Result<(), Failure> {
    let Some((format, path)) = &config.output else {
        return Ok(());
    };
    let text = match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report.json()).map_err(|e| Failure {
                code: 4,
                message: format!("cannot encode the report: {e}"),
            })?;
            s.push('\n');
            s
        }
        OutputFormat::Csv => report.csv(),
    };
    std::fs::write(path, text).map_err(|e| Failure {
        code: 4,
        message: format!("cannot write the report to {path}: {e}"),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = validate(args, system_resolve).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure {
                code: 4,
                message: format!("cannot start the async runtime: {e}"),
            })?;
        let report = runtime.block_on(run(config.clone()))?;
        print!("{}", report.text());
        write_output(&config, &report)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("distkv-bench: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["distkv-bench"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("arguments parse")
    }

    /// Resolves IP literals only, like the system resolver does without DNS.
    fn literal(name: &str) -> std::io::Result<Vec<SocketAddr>> {
        name.parse::<SocketAddr>()
            .map(|a| vec![a])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }

    fn refusal(extra: &[&str]) -> Failure {
        validate(args(extra), literal).expect_err("must be refused")
    }

    #[test]
    fn unbounded_run_is_refused() {
        let f = refusal(&["--targets", "127.0.0.1:7101"]);
        assert_eq!(f.code, 2);
        assert!(f.message.contains("unbounded"), "{}", f.message);
        let f = refusal(&["--targets", "127.0.0.1:7101", "--ops", "0"]);
        assert_eq!(f.code, 2);
    }

    #[test]
    fn either_bound_is_enough() {
        let c = validate(args(&["--targets", "127.0.0.1:1", "--ops", "10"]), literal).unwrap();
        assert_eq!(c.args.ops, Some(10));
        let c = validate(
            args(&["--targets", "127.0.0.1:1", "--duration", "1500ms"]),
            literal,
        )
        .unwrap();
        assert_eq!(c.args.duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn non_loopback_target_is_refused_without_allow_remote() {
        let f = refusal(&["--targets", "127.0.0.1:7101,10.1.2.3:7102", "--ops", "5"]);
        assert_eq!(f.code, 2);
        assert!(f.message.contains("10.1.2.3:7102"), "{}", f.message);
        assert!(f.message.contains("--allow-remote"), "{}", f.message);
        assert!(!f.message.contains('\n'));
        let c = validate(
            args(&["--targets", "10.1.2.3:7102", "--ops", "5", "--allow-remote"]),
            literal,
        )
        .unwrap();
        assert_eq!(c.targets[0].addrs, ["10.1.2.3:7102".parse().unwrap()]);
    }

    #[test]
    fn loopback_targets_are_kept_in_order() {
        let c = validate(
            args(&["--targets", "127.0.0.1:7101,[::1]:7102", "--ops", "5"]),
            literal,
        )
        .unwrap();
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:7101", "[::1]:7102"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            &["--targets", "nonsense", "--ops", "5"][..],
            &["--targets", "127.0.0.1:1,127.0.0.1:1", "--ops", "5"],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--clients", "0"],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--keys", "0"],
            &[
                "--targets",
                "127.0.0.1:1",
                "--ops",
                "5",
                "--output",
                "xml",
                "f",
            ],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--timeout", "0s"],
        ] {
            assert_eq!(refusal(bad).code, 2, "{bad:?}");
        }
    }

    #[test]
    fn output_format_and_file_are_parsed() {
        let c = validate(
            args(&[
                "--targets",
                "127.0.0.1:1",
                "--ops",
                "5",
                "--output",
                "csv",
                "r.csv",
            ]),
            literal,
        )
        .unwrap();
        assert_eq!(c.output, Some((OutputFormat::Csv, "r.csv".to_string())));
    }
}
