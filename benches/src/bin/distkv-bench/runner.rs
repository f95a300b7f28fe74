//! Running a benchmark: connecting to the targets, the preload, the warm-up and measured
//! phases with their clients, and the progress line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::cli::{Config, Failure};
use crate::stats::{Report, Stats};
use crate::stores::{self, Conn, OpError};
use crate::workload::{KeyChooser, KeyNames, Op, Workload};

/// Bytes of values per preload `BatchPut`, at most.
const PRELOAD_BATCH_BYTES: usize = 1024 * 1024;
/// Entries per preload `BatchPut`, at most.
const PRELOAD_BATCH_ENTRIES: usize = 100;
/// Preload batches in flight at once, at most (more only queue up on the nodes).
const PRELOAD_CONCURRENCY: usize = 16;
/// Shortest deadline of a preload batch (a batch is up to 100 quorum writes).
const PRELOAD_MIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The innermost cause of an error ("Connection refused" rather than "transport error").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Counters shared by the clients of one phase, read by the progress line.
#[derive(Default)]
pub struct Progress {
    /// Operations started (claims against `--ops`).
    issued: AtomicU64,
    /// Operations finished, successful or not.
    done: AtomicU64,
    /// Operations failed.
    errors: AtomicU64,
}

/// What every client of a phase shares.
pub struct Shared {
    workload: Workload,
    chooser: KeyChooser,
    names: KeyNames,
    value_size: usize,
    /// Deadline of each request.
    timeout: Duration,
    /// Next insert number (shared by warm-up and measured phases, so keys never repeat).
    next_insert: AtomicU64,
    seed: u64,
}

/// Bounds and counters of one phase.
pub struct Phase {
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
pub fn random_value(rng: &mut SmallRng, size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..size)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

/// Awaits a gRPC call for at most `limit`; past it the call is dropped (cancelled) and
/// reported as `DEADLINE_EXCEEDED`.
pub async fn within<T>(
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

/// Awaits a store request for at most `limit`; past it the request is dropped (cancelled)
/// and counted as `DEADLINE_EXCEEDED client timeout`, for every store alike.
pub async fn timed<T>(
    limit: Duration,
    request: impl std::future::Future<Output = Result<T, OpError>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(limit, request).await {
        Ok(answer) => answer,
        Err(_) => Err(OpError("DEADLINE_EXCEEDED client timeout".to_string())),
    }
}

/// Runs one operation within `limit` per request; `Ok` carries whether a read found nothing and whether it saw
/// siblings.
pub async fn one_op(
    conn: &mut Conn,
    shared: &Shared,
    limit: Duration,
    op: Op,
    rng: &mut SmallRng,
    value: &Bytes,
) -> Result<(bool, bool), OpError> {
    match op {
        Op::Read => {
            let key = shared.names.existing(shared.chooser.next(rng));
            let r = timed(limit, conn.get(key.into())).await?;
            Ok((!r.found, r.siblings))
        }
        Op::Update => {
            let key: Bytes = shared.names.existing(shared.chooser.next(rng)).into();
            let r = timed(limit, conn.get(key.clone())).await?;
            timed(limit, conn.put(key, value.clone(), r.context)).await?;
            Ok((false, false))
        }
        Op::Insert => {
            let n = shared.next_insert.fetch_add(1, Ordering::Relaxed);
            let key = shared.names.inserted(n).into();
            timed(limit, conn.put(key, value.clone(), Bytes::new())).await?;
            Ok((false, false))
        }
    }
}

/// One client: runs operations until the phase's bounds say stop.
pub async fn client(id: usize, mut conn: Conn, shared: Arc<Shared>, phase: Arc<Phase>) -> Stats {
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
        match one_op(&mut conn, &shared, shared.timeout, op, &mut rng, &value).await {
            Ok((not_found, siblings)) => {
                stats.success(op, start.elapsed());
                stats.not_found += u64::from(not_found);
                stats.siblings += u64::from(siblings);
            }
            Err(OpError(kind)) => {
                stats.failure(op, &kind);
                phase.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        phase.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

/// Prints a progress line on stderr once a second until aborted.
pub fn spawn_progress(phase: Arc<Phase>, start: Instant) -> tokio::task::JoinHandle<()> {
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
pub async fn run_phase(
    channels: &[Vec<Conn>],
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
        let conn = per_target[(id / channels.len()) % per_target.len()].clone();
        tasks.push(tokio::spawn(client(
            id,
            conn,
            shared.clone(),
            phase.clone(),
        )));
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

/// Writes every key of the key space in batches (DistKV `BatchPut`, an etcd transaction,
/// Redis `MSET`), `clients` batches at a time (at most 16).
pub async fn preload(
    channels: &[Vec<Conn>],
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
        let mut conn = per_target[(id / channels.len()) % per_target.len()].clone();
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
                let entries: Vec<(Bytes, Bytes)> = range
                    .clone()
                    .map(|i| (shared.names.existing(i).into(), value.clone()))
                    .collect();
                let n = entries.len() as u64;
                timed(limit, conn.put_many(entries))
                    .await
                    .map_err(|OpError(kind)| {
                        format!(
                            "preload of keys {}..{} failed: {kind}",
                            range.start, range.end
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
pub async fn run(config: Config) -> Result<Report, Failure> {
    let args = &config.args;
    let channels = stores::connect_all(&config).await?;
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
        "store": args.store.name(),
        "store_note": args.store.note(),
        "targets": config.targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "clients": args.clients,
        "connection_per_client": args.connection_per_client,
        "connections_per_target": channels.iter().map(Vec::len).collect::<Vec<_>>(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ops_bound_admits_exactly_that_many_operations() {
        let phase = Phase {
            label: "run",
            deadline: None,
            max_ops: Some(5),
            progress: Progress::default(),
        };
        let admitted = (0..100).filter(|_| phase.claim()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_passed_deadline_admits_nothing() {
        let phase = Phase {
            label: "run",
            deadline: Some(Instant::now()),
            max_ops: Some(5),
            progress: Progress::default(),
        };
        assert!(!phase.claim());
    }

    #[test]
    fn a_late_answer_is_a_client_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let never = std::future::pending::<Result<tonic::Response<()>, tonic::Status>>();
        let err = rt
            .block_on(within(Duration::from_secs(5), never))
            .expect_err("must time out");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            crate::stats::error_kind(&err),
            "DEADLINE_EXCEEDED client timeout"
        );
        let never = std::future::pending::<Result<(), OpError>>();
        let err = rt
            .block_on(timed(Duration::from_secs(5), never))
            .expect_err("must time out");
        assert_eq!(err, OpError("DEADLINE_EXCEEDED client timeout".into()));
    }
}
