//! What a node tells its operator: the `distkv_*` Prometheus metrics.
//!
//! Two kinds of figures, recorded two ways so that the request path stays cheap:
//!
//! * **Events on the request path** (client requests, quorum failures, fan-out, read
//!   repairs, hints, peer calls) are counted in [`Counters`], plain relaxed atomics in a
//!   `static`, so counting costs one atomic add and never allocates; latencies and
//!   fan-out go to histogram handles registered once ([`Histograms`]). The counters are
//!   also what `distkv-client status` shows, with or without the exporter.
//! * **State** (engine figures, pending hints, peer liveness and phi, process memory and
//!   file descriptors) is read when `/metrics` is scraped ([`scrape`]), not maintained.
//!
//! Without the exporter (the admin port turned off) no recorder is installed: the
//! histogram handles are no-ops and only the atomics count.

mod names;
mod peers;
mod process;
mod scrape;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use metrics::Histogram;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::Consistency;
use crate::error::NodeError;

pub use names::*;
pub use peers::MeteredTransport;
pub use process::{open_fds, resident_memory_bytes};
pub use scrape::{render, NodeProbe, NodeView};

/// A client operation, as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Get`.
    Get = 0,
    /// `Put`.
    Put = 1,
    /// `Delete`.
    Delete = 2,
    /// `BatchPut`.
    BatchPut = 3,
}

/// Label values of `op`, by [`Op`].
pub const OPS: [&str; 4] = ["get", "put", "delete", "batch_put"];
/// Label values of `consistency`, by [`Consistency`].
pub const CONSISTENCIES: [&str; 4] = ["default", "one", "quorum", "all"];
/// Label values of `outcome` of a client request.
pub const OUTCOMES: [&str; 6] = [
    "ok",
    "invalid_argument",
    "quorum_not_reached",
    "not_enough_replicas",
    "storage_error",
    "unavailable",
];

fn consistency_index(c: Consistency) -> usize {
    match c {
        Consistency::Default => 0,
        Consistency::One => 1,
        Consistency::Quorum => 2,
        Consistency::All => 3,
    }
}

fn outcome_index(error: Option<&NodeError>) -> usize {
    match error {
        None => 0,
        Some(NodeError::InvalidArgument(_)) => 1,
        Some(NodeError::QuorumNotReached { .. }) => 2,
        Some(NodeError::NotEnoughReplicas { .. }) => 3,
        Some(NodeError::Storage(_)) => 4,
        Some(_) => 5,
    }
}

/// Whether a quorum was missed because the deadline passed with replicas still silent
/// (`timeout`) or because too many replicas answered with an error (`replica_errors`).
pub const QUORUM_CAUSES: [&str; 2] = ["timeout", "replica_errors"];
/// Label values of `op` for coordinator figures.
pub const COORDINATOR_OPS: [&str; 2] = ["read", "write"];
/// Label values of `outcome` of a read repair.
pub const REPAIR_OUTCOMES: [&str; 3] = ["repaired", "failed", "skipped"];

const REQUESTS: usize = OPS.len() * CONSISTENCIES.len() * OUTCOMES.len();

/// Event counters of the request path. Monotonic since the process started.
pub struct Counters {
    requests: [AtomicU64; REQUESTS],
    shed: AtomicU64,
    quorum_failures: [AtomicU64; 4],
    read_repairs: [AtomicU64; 3],
    read_repair_replicas: AtomicU64,
    hints_stored: AtomicU64,
    hints_delivered: AtomicU64,
    hints_dropped: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the arrays
const ZERO: AtomicU64 = AtomicU64::new(0);

static COUNTERS: Counters = Counters {
    requests: [ZERO; REQUESTS],
    shed: ZERO,
    quorum_failures: [ZERO; 4],
    read_repairs: [ZERO; 3],
    read_repair_replicas: ZERO,
    hints_stored: ZERO,
    hints_delivered: ZERO,
    hints_dropped: ZERO,
};

/// The process's event counters.
pub fn counters() -> &'static Counters {
    &COUNTERS
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Totals of client requests, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTotals {
    /// `Get` requests answered.
    pub reads: u64,
    /// `Get` requests that failed.
    pub read_errors: u64,
    /// `Put`, `Delete` and `BatchPut` requests answered.
    pub writes: u64,
    /// Write requests that failed.
    pub write_errors: u64,
    /// Requests refused because `limits.max_concurrent_requests` were in flight.
    pub shed: u64,
}

impl Counters {
    /// Requests of `op` at consistency index `c` with outcome index `o`.
    fn request_slot(op: usize, c: usize, o: usize) -> usize {
        (op * CONSISTENCIES.len() + c) * OUTCOMES.len() + o
    }

    /// Client requests counted so far, by operation, consistency and outcome.
    pub fn request_count(&self, op: usize, c: usize, o: usize) -> u64 {
        load(&self.requests[Self::request_slot(op, c, o)])
    }

    /// A client request refused by the in-flight limit.
    pub fn request_shed(&self) {
        add(&self.shed, 1);
    }

    /// A request of `op` missed its quorum; `failed` replicas answered with an error out
    /// of `replicas` (of the smallest set), `needed` acknowledgements were required.
    pub fn quorum_failure(&self, op: CoordinatorOp, failed: usize, replicas: usize, needed: usize) {
        let hopeless = failed + needed > replicas;
        add(
            &self.quorum_failures[op as usize * 2 + usize::from(hopeless)],
            1,
        );
    }

    /// Quorum failures of `op` (index into [`COORDINATOR_OPS`]) by cause index.
    pub fn quorum_failure_count(&self, op: usize, cause: usize) -> u64 {
        load(&self.quorum_failures[op * 2 + cause])
    }

    /// A read repair sent to `replicas` stale replicas; `ok` when all applied it.
    pub fn read_repair(&self, replicas: usize, ok: bool) {
        add(&self.read_repairs[usize::from(!ok)], 1);
        add(&self.read_repair_replicas, replicas as u64);
    }

    /// A read repair skipped because too many were running.
    pub fn read_repair_skipped(&self) {
        add(&self.read_repairs[2], 1);
    }

    /// Writes kept as hints for a replica that did not acknowledge.
    pub fn hints_stored(&self, n: usize) {
        add(&self.hints_stored, n as u64);
    }

    /// Hints delivered to their target and removed.
    pub fn hints_delivered(&self, n: usize) {
        add(&self.hints_delivered, n as u64);
    }

    /// Writes that should have become hints but could not be stored.
    pub fn hints_dropped(&self, n: usize) {
        add(&self.hints_dropped, n as u64);
    }

    /// Read and write totals, for `status`.
    pub fn totals(&self) -> RequestTotals {
        let mut t = RequestTotals {
            shed: load(&self.shed),
            ..RequestTotals::default()
        };
        for op in 0..OPS.len() {
            for c in 0..CONSISTENCIES.len() {
                for o in 0..OUTCOMES.len() {
                    let n = self.request_count(op, c, o);
                    let (all, errors) = if op == Op::Get as usize {
                        (&mut t.reads, &mut t.read_errors)
                    } else {
                        (&mut t.writes, &mut t.write_errors)
                    };
                    *all += n;
                    if o != 0 {
                        *errors += n;
                    }
                }
            }
        }
        t
    }
}

/// Which side of the coordinator a figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorOp {
    /// Reads (`Get`).
    Read = 0,
    /// Writes (`Put`, `Delete`, each entry of `BatchPut`, read repairs).
    Write = 1,
}

/// Histogram handles, registered once with the installed recorder.
pub struct Histograms {
    latency: Vec<Histogram>,
    fanout: [Histogram; 2],
}

static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();

impl Histograms {
    fn register() -> Self {
        let mut latency = Vec::with_capacity(OPS.len() * CONSISTENCIES.len());
        for op in OPS {
            for c in CONSISTENCIES {
                latency.push(
                    metrics::histogram!(CLIENT_REQUEST_DURATION, "op" => op, "consistency" => c),
                );
            }
        }
        Histograms {
            latency,
            fanout: COORDINATOR_OPS.map(|op| metrics::histogram!(COORDINATOR_FANOUT, "op" => op)),
        }
    }
}

/// The histogram handles (no-ops when no recorder was installed before the first call).
pub fn histograms() -> &'static Histograms {
    HISTOGRAMS.get_or_init(Histograms::register)
}

/// Records one client request: its outcome, and its latency since `started`.
pub fn client_request(op: Op, c: Consistency, started: Instant, error: Option<&NodeError>) {
    let ci = consistency_index(c);
    add(
        &COUNTERS.requests[Counters::request_slot(op as usize, ci, outcome_index(error))],
        1,
    );
    histograms().latency[op as usize * CONSISTENCIES.len() + ci]
        .record(started.elapsed().as_secs_f64());
}

/// Records how many replicas a coordinator request was sent to.
pub fn fanout(op: CoordinatorOp, replicas: usize) {
    histograms().fanout[op as usize].record(replicas as f64);
}

/// Latency buckets (seconds) of every `*_seconds` histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const FANOUT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0];

static EXPORTER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle) and registers every metric, so that `/metrics` lists them all from the start.
/// Call it before the node serves: handles taken earlier stay no-ops.
pub fn install_exporter() -> Result<PrometheusHandle, String> {
    if let Some(h) = EXPORTER.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(COORDINATOR_FANOUT.into()), FANOUT_BUCKETS)
        })
        .map_err(|e| format!("cannot configure the Prometheus exporter: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| {
        format!("cannot install the Prometheus recorder ({e}): another metrics recorder is installed in this process")
    })?;
    names::describe_all();
    histograms();
    Ok(EXPORTER.get_or_init(|| handle).clone())
}
