//! Measurements: latency histograms per operation, error counts by kind, and the final
//! report (text on stdout, optional JSON or CSV file).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::workload::Op;

/// Highest latency a histogram tracks, in microseconds (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What one client (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of successful operations, in microseconds, indexed by [`Op::index`].
    latency: [Histogram<u64>; 3],
    /// Failed operations, indexed by [`Op::index`].
    errors_by_op: [u64; 3],
    /// Reads (and the read half of updates) that found no value.
    pub not_found: u64,
    /// Reads that returned more than one sibling.
    pub siblings: u64,
    /// Failures by kind, e.g. `UNAVAILABLE quorum not reached`.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        let h = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid")
        };
        Stats {
            latency: [h(), h(), h()],
            errors_by_op: [0; 3],
            not_found: 0,
            siblings: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Records a successful operation that took `elapsed`.
    pub fn success(&mut self, op: Op, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[op.index()].saturating_record(us.max(1));
    }

    /// Records a failed operation of class `kind` (see [`error_kind`] and [`classify`]).
    pub fn failure(&mut self, op: Op, kind: &str) {
        self.errors_by_op[op.index()] += 1;
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_string(), 1);
            }
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            // Same bounds on both sides, so adding cannot fail.
            mine.add(theirs).expect("histograms with equal bounds");
        }
        for (mine, theirs) in self.errors_by_op.iter_mut().zip(other.errors_by_op) {
            *mine += theirs;
        }
        self.not_found += other.not_found;
        self.siblings += other.siblings;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_insert(0) += n;
        }
    }

    /// Successful operations of kind `op`.
    pub fn successes(&self, op: Op) -> u64 {
        self.latency[op.index()].len()
    }

    /// All failed operations.
    pub fn total_errors(&self) -> u64 {
        self.errors_by_op.iter().sum()
    }

    /// All operations, successful or not.
    pub fn total_ops(&self) -> u64 {
        Op::ALL.iter().map(|&op| self.successes(op)).sum::<u64>() + self.total_errors()
    }
}

/// Upper-case gRPC name of a status code, as in the gRPC specification.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A short, stable class of a gRPC error for counting: the gRPC code and the message up
/// to its first `:` `;` `(` or newline, digits folded to `N`, at most 48 characters; e.g.
/// `UNAVAILABLE quorum not reached` for "quorum not reached: 1 of 2 acknowledged; ...".
pub fn error_kind(status: &tonic::Status) -> String {
    classify(code_name(status.code()), status.message())
}

/// `prefix` and the head of `message` (up to its first `:` `;` `(` or newline, digits
/// folded to `N`, at most 48 characters), or `prefix` alone if that head is empty.
pub fn classify(prefix: &str, message: &str) -> String {
    let head = message.split([':', ';', '(', '\n']).next().unwrap_or("");
    let mut class = String::new();
    let mut last_digit = false;
    for c in head.trim().chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                class.push('N');
            }
            last_digit = true;
        } else {
            class.push(c);
            last_digit = false;
        }
        if class.chars().count() >= 48 {
            break;
        }
    }
    let class = class.trim();
    if class.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix} {class}")
    }
}

/// The figures of one operation kind in the final report.
#[derive(Clone, Debug, PartialEq)]
pub struct OpSummary {
    /// `read`, `update` or `insert`.
    pub op: &'static str,
    /// Successful operations.
    pub count: u64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations per second of the measured phase.
    pub ops_per_sec: f64,
    /// Latency percentiles and extremes in microseconds: p50, p95, p99, p999, max, mean.
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// The whole run, ready to print or save.
#[derive(Clone, Debug)]
pub struct Report {
    /// Settings of the run, echoed into the JSON output.
    pub settings: Value,
    /// Length of the measured phase.
    pub elapsed: Duration,
    /// Merged measurements.
    pub stats: Stats,
}

impl Report {
    /// Per-operation summaries, for the kinds that ran.
    pub fn summaries(&self) -> Vec<OpSummary> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Op::ALL
            .iter()
            .filter_map(|&op| {
                let h = &self.stats.latency[op.index()];
                let errors = self.stats.errors_by_op[op.index()];
                if h.is_empty() && errors == 0 {
                    return None;
                }
                Some(OpSummary {
                    op: op.name(),
                    count: h.len(),
                    errors,
                    ops_per_sec: h.len() as f64 / secs,
                    p50_us: h.value_at_quantile(0.50),
                    p95_us: h.value_at_quantile(0.95),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                    mean_us: h.mean(),
                })
            })
            .collect()
    }

    /// All operations (including failed ones) per second.
    pub fn total_ops_per_sec(&self) -> f64 {
        self.stats.total_ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let (Some(store), Some(note)) = (
            self.settings["store"].as_str(),
            self.settings["store_note"].as_str(),
        ) {
            out.push_str(&format!("store {store}: {note}\n"));
        }
        out.push_str(&format!(
            "{} ops in {:.2} s: {:.0} ops/s, {} errors, {} reads not found, {} reads with siblings\n",
            self.stats.total_ops(),
            self.elapsed.as_secs_f64(),
            self.total_ops_per_sec(),
            self.stats.total_errors(),
            self.stats.not_found,
            self.stats.siblings,
        ));
        out.push_str(&format!(
            "{:<7} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "count", "errors", "ops/s", "p50 us", "p95 us", "p99 us", "p999 us", "max us"
        ));
        for s in self.summaries() {
            out.push_str(&format!(
                "{:<7} {:>9} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                s.op,
                s.count,
                s.errors,
                s.ops_per_sec,
                s.p50_us,
                s.p95_us,
                s.p99_us,
                s.p999_us,
                s.max_us
            ));
        }
        for (kind, n) in &self.stats.errors {
            out.push_str(&format!("error {kind}: {n}\n"));
        }
        out
    }

    /// Machine-readable report.
    pub fn json(&self) -> Value {
        let ops: serde_json::Map<String, Value> = self
            .summaries()
            .into_iter()
            .map(|s| {
                (
                    s.op.to_string(),
                    json!({
                        "count": s.count,
                        "errors": s.errors,
                        "ops_per_sec": s.ops_per_sec,
                        "latency_us": {
                            "p50": s.p50_us,
                            "p95": s.p95_us,
                            "p99": s.p99_us,
                            "p999": s.p999_us,
                            "max": s.max_us,
                            "mean": s.mean_us,
                        },
                    }),
                )
            })
            .collect();
        json!({
            "settings": self.settings,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "total_ops": self.stats.total_ops(),
            "ops_per_sec": self.total_ops_per_sec(),
            "errors_total": self.stats.total_errors(),
            "errors": self.stats.errors,
            "not_found": self.stats.not_found,
            "reads_with_siblings": self.stats.siblings,
            "operations": ops,
        })
    }

    /// CSV: a header and one row per operation kind that ran.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "op,count,errors,ops_per_sec,p50_us,p95_us,p99_us,p999_us,max_us,mean_us\n",
        );
        for s in self.summaries() {
            out.push_str(&format!(
                "{},{},{},{:.1},{},{},{},{},{},{:.1}\n",
                s.op,
                s.count,
                s.errors,
                s.ops_per_sec,
                s.p50_us,
                s.p95_us,
                s.p99_us,
                s.p999_us,
                s.max_us,
                s.mean_us
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_short_and_stable() {
        let s = tonic::Status::unavailable("quorum not reached: 1 of 2 acknowledged; n2: timeout");
        assert_eq!(error_kind(&s), "UNAVAILABLE quorum not reached");
        let s = tonic::Status::deadline_exceeded("");
        assert_eq!(error_kind(&s), "DEADLINE_EXCEEDED");
        let s = tonic::Status::internal("disk 12 failed after 345 ms");
        assert_eq!(error_kind(&s), "INTERNAL disk N failed after N ms");
        assert_eq!(classify("REDIS Io", ""), "REDIS Io");
        assert_eq!(
            classify("REDIS Server(ResponseError)", "OOM used memory > 1024: x"),
            "REDIS Server(ResponseError) OOM used memory > N"
        );
    }

    #[test]
    fn merged_report_counts_everything() {
        let mut a = Stats::default();
        a.success(Op::Read, Duration::from_micros(100));
        a.success(Op::Read, Duration::from_micros(300));
        a.not_found += 1;
        let mut b = Stats::default();
        b.success(Op::Update, Duration::from_micros(1000));
        b.failure(
            Op::Update,
            &error_kind(&tonic::Status::unavailable("quorum not reached: 0 of 2")),
        );
        a.merge(&b);
        let report = Report {
            settings: json!({}),
            elapsed: Duration::from_secs(2),
            stats: a,
        };
        assert_eq!(report.stats.total_ops(), 4);
        let j = report.json();
        assert_eq!(j["total_ops"], 4);
        assert_eq!(j["errors"]["UNAVAILABLE quorum not reached"], 1);
        assert_eq!(j["operations"]["read"]["count"], 2);
        assert_eq!(j["operations"]["read"]["ops_per_sec"], 1.0);
        assert_eq!(j["operations"]["update"]["errors"], 1);
        assert!(j["operations"].get("insert").is_none());
        let max = j["operations"]["read"]["latency_us"]["max"]
            .as_u64()
            .unwrap();
        assert!((300..=301).contains(&max), "{max}");
        assert_eq!(report.csv().lines().count(), 3);
    }
}
