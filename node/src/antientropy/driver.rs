//! The anti-entropy driver: the thin async shell around [`Exchange`]. One pass compares
//! every token range this node replicates with each of the range's other replicas that
//! is not dead, over the `AntiEntropy` peer call, and pulls the keys found differing
//! with the peer `Read` call, merging them here as repairs.
//!
//! Keys only this node holds ([`DiffKind::MissingThere`]) are not pushed: the peer's own
//! driver finds them missing on its side and pulls them. Diverged keys are pulled and
//! merged here; the peer pulls the merged version in its own pass.
//!
//! Bounds: one pass at a time per node (a second `repair` waits, a background pass
//! that finds one running is skipped); one request in flight per pass; at most
//! [`MAX_ROUNDS`] rounds per (range, peer) and pass, and no more once two rounds in a
//! row pulled nothing, each round bounded by the exchange's limits; pulls in reads of [`PULL_BATCH`] keys; every byte moved is paced by
//! `antientropy.max_bytes_per_sec`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use distkv_engine::StorageEngine;
use distkv_network::{Liveness, Membership, NodeInfo, Transport, TransportExt};
use distkv_proto::v1::PeerReadRequest;
use parking_lot::Mutex;

use super::exchange::{DiffKind, Exchange, ExchangeLimits, RoundReport, Suspects};
use super::tree::HashTree;
use super::wire;
use crate::coordinator::now_micros;
use crate::placement::{Partitioner, Placement, TokenRange};
use crate::replica::checks::{self, PeerLimits};
use crate::replica::{Origin, ReplicaStore};
use crate::util::blocking;

/// Most comparison rounds with one peer for one range in one pass. Rounds alternate:
/// one finds suspects, the next confirms and pulls them (a round finds at most
/// `ExchangeLimits::max_differences_per_round` keys), a last one finds the range clean.
pub const MAX_ROUNDS: usize = 64;
/// Keys read from a peer per `Read` call when pulling.
pub const PULL_BATCH: usize = 256;
/// Most keys remembered as suspects per (peer, range).
pub const MAX_SUSPECTS: usize = 20_000;
/// Bytes the throttle lets through at once after an idle time (one second's worth at
/// most).
const BURST: Duration = Duration::from_secs(1);

/// The `[antientropy]` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AntiEntropySettings {
    /// Run a pass every `interval`.
    pub enabled: bool,
    /// Time between the starts of two background passes.
    pub interval: Duration,
    /// Most bytes per second a pass moves.
    pub max_bytes_per_sec: u64,
}

impl Default for AntiEntropySettings {
    fn default() -> Self {
        AntiEntropySettings {
            enabled: true,
            interval: Duration::from_secs(60),
            max_bytes_per_sec: 8 << 20,
        }
    }
}

/// The numbers of one pass (or of one range in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Keys covered by the comparisons.
    pub keys_compared: u64,
    /// Keys found differing, once per round that found them.
    pub keys_differing: u64,
    /// Keys pulled from a peer and merged here.
    pub keys_repaired: u64,
    /// Bytes of comparison messages and pulled records, both ways.
    pub bytes_moved: u64,
    /// Ranges compared.
    pub ranges: u64,
    /// Ranges whose last round with every live peer found nothing differing.
    pub ranges_clean: u64,
    /// Comparisons that failed (the next pass retries them).
    pub failures: u64,
}

impl PassReport {
    fn add(&mut self, other: &PassReport) {
        self.keys_compared += other.keys_compared;
        self.keys_differing += other.keys_differing;
        self.keys_repaired += other.keys_repaired;
        self.bytes_moved += other.bytes_moved;
        self.ranges += other.ranges;
        self.ranges_clean += other.ranges_clean;
        self.failures += other.failures;
    }
}

/// What the node knows of one range after its last pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeStats {
    /// When a pass last found the range equal on every live replica (milliseconds
    /// since the Unix epoch).
    pub last_clean_ms: Option<u64>,
    /// The numbers of the last pass over the range.
    pub last_pass: PassReport,
}

/// Paces bytes to `rate` per second: a sans-IO token bucket that says until when to
/// wait.
#[derive(Debug)]
pub(crate) struct Throttle {
    rate: f64,
    next_free: Option<Instant>,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            rate: bytes_per_sec.max(1) as f64,
            next_free: None,
        }
    }

    /// Charges `bytes` at `now`; returns when the caller may go on (None: at once).
    fn charge(&mut self, bytes: u64, now: Instant) -> Option<Instant> {
        let start = match self.next_free {
            Some(t) if t > now => t,
            _ => now,
        };
        let next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        self.next_free = Some(next);
        (next > now + BURST).then(|| next - BURST)
    }

    pub(crate) async fn pace(&mut self, bytes: u64) {
        if let Some(until) = self.charge(bytes, distkv_network::now()) {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// State carried from pass to pass, held by the pass in progress.
struct PassState {
    suspects: HashMap<(String, TokenRange), Suspects>,
    throttle: Throttle,
}

/// The anti-entropy driver of one node (see the module docs).
pub struct AntiEntropy<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    store: Arc<ReplicaStore<S>>,
    tree: Arc<Mutex<HashTree>>,
    membership: Arc<M>,
    placement: Arc<Placement<P>>,
    transport: Arc<T>,
    replicas: usize,
    timeout: Duration,
    limits: PeerLimits,
    settings: AntiEntropySettings,
    started: Instant,
    pass: tokio::sync::Mutex<PassState>,
    ranges: Mutex<BTreeMap<TokenRange, RangeStats>>,
}

/// The parts the driver works with.
pub struct DriverParts<S: StorageEngine + ?Sized, M, P, T> {
    /// This node's records.
    pub store: Arc<ReplicaStore<S>>,
    /// The tree the store keeps current.
    pub tree: Arc<Mutex<HashTree>>,
    /// Who is alive.
    pub membership: Arc<M>,
    /// Which ranges this node replicates, and their other replicas.
    pub placement: Arc<Placement<P>>,
    /// How peers are called.
    pub transport: Arc<T>,
}

/// Why a comparison with one peer failed.
type RoundError = String;

impl<S, M, P, T> AntiEntropy<S, M, P, T>
where
    S: StorageEngine + ?Sized + 'static,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// The driver over `parts`, for N = `replicas`, each peer call bounded by
    /// `timeout`, checking pulled records against `limits`.
    pub fn new(
        parts: DriverParts<S, M, P, T>,
        replicas: usize,
        timeout: Duration,
        limits: PeerLimits,
        settings: AntiEntropySettings,
    ) -> Self {
        AntiEntropy {
            store: parts.store,
            tree: parts.tree,
            membership: parts.membership,
            placement: parts.placement,
            transport: parts.transport,
            replicas,
            timeout,
            limits,
            settings,
            started: distkv_network::now(),
            pass: tokio::sync::Mutex::new(PassState {
                suspects: HashMap::new(),
                throttle: Throttle::new(settings.max_bytes_per_sec),
            }),
            ranges: Mutex::new(BTreeMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> AntiEntropySettings {
        self.settings
    }

    /// Each range's numbers from its last pass, in token order.
    pub fn range_stats(&self) -> Vec<(TokenRange, RangeStats)> {
        self.ranges.lock().iter().map(|(r, s)| (*r, *s)).collect()
    }

    /// Runs one pass now, after the pass in progress if any.
    pub async fn pass(&self) -> PassReport {
        let mut state = self.pass.lock().await;
        self.run_pass(&mut state).await
    }

    /// Runs one pass now unless one is in progress (then `None`).
    pub async fn pass_unless_running(&self) -> Option<PassReport> {
        let mut state = self.pass.try_lock().ok()?;
        Some(self.run_pass(&mut state).await)
    }

    async fn run_pass(&self, state: &mut PassState) -> PassReport {
        let began = distkv_network::now();
        let local = self.membership.local().clone();
        let snapshot = self.placement.current();
        let (ranges, _) = snapshot.ranges_of(&local.id, self.replicas);
        if !self.tree.lock().is_ready() {
            tracing::info!(
                ranges = ranges.len(),
                "anti-entropy pass skipped: this node's tree is still being rebuilt from storage; the next pass compares"
            );
            return PassReport {
                ranges: ranges.len() as u64,
                failures: ranges.len() as u64,
                ..PassReport::default()
            };
        }
        // Forget what concerns ranges this node no longer replicates (bounded state).
        let held: std::collections::BTreeSet<TokenRange> = ranges.iter().copied().collect();
        state.suspects.retain(|(_, r), _| held.contains(r));
        self.ranges.lock().retain(|r, _| held.contains(r));
        let mut total = PassReport::default();
        for range in ranges {
            let others: Vec<NodeInfo> = snapshot
                .ring()
                .replicas_of_range(range, self.replicas)
                .into_iter()
                .filter(|p| p.id != local.id)
                .collect();
            let peers: Vec<&NodeInfo> = others
                .iter()
                .filter(|p| self.membership.liveness(&p.id).liveness != Liveness::Dead)
                .collect();
            let mut report = PassReport {
                ranges: 1,
                ..PassReport::default()
            };
            // A range with a dead replica is not known clean: it was not compared.
            let mut clean = peers.len() == others.len();
            for peer in peers {
                match self.sync_range(state, peer, range, &mut report).await {
                    Ok(peer_clean) => clean &= peer_clean,
                    Err(error) => {
                        clean = false;
                        report.failures += 1;
                        tracing::debug!(peer = %peer.id, start = range.start, end = range.end, %error, "anti-entropy comparison failed; the next pass retries it");
                    }
                }
            }
            let mut stats = self.ranges.lock();
            let entry = stats.entry(range).or_default();
            if clean {
                report.ranges_clean = 1;
                entry.last_clean_ms = Some(wall_ms());
            }
            entry.last_pass = report;
            drop(stats);
            total.add(&report);
        }
        let level = if total.keys_repaired > 0 || total.failures > 0 {
            tracing::Level::INFO
        } else {
            tracing::Level::DEBUG
        };
        if level == tracing::Level::INFO {
            tracing::info!(
                ranges = total.ranges,
                ranges_clean = total.ranges_clean,
                keys_compared = total.keys_compared,
                keys_differing = total.keys_differing,
                keys_repaired = total.keys_repaired,
                bytes_moved = total.bytes_moved,
                failures = total.failures,
                took_ms = began.elapsed().as_millis() as u64,
                "anti-entropy pass done"
            );
        } else {
            tracing::debug!(
                ranges = total.ranges,
                keys_compared = total.keys_compared,
                bytes_moved = total.bytes_moved,
                took_ms = began.elapsed().as_millis() as u64,
                "anti-entropy pass done, every range equal"
            );
        }
        total
    }

    /// Compares `range` with `peer` until it is clean (true), nothing more can be
    /// pulled here (two rounds in a row pulled nothing), or [`MAX_ROUNDS`] rounds ran
    /// (false).
    async fn sync_range(
        &self,
        state: &mut PassState,
        peer: &NodeInfo,
        range: TokenRange,
        report: &mut PassReport,
    ) -> Result<bool, RoundError> {
        let PassState { suspects, throttle } = state;
        let suspects = suspects
            .entry((peer.id.clone(), range))
            .or_insert_with(|| Suspects::new(MAX_SUSPECTS));
        let mut idle_rounds = 0;
        for _ in 0..MAX_ROUNDS {
            let outcome = self.round(peer, range, suspects, throttle).await?;
            report.keys_compared += outcome.stats.keys_compared;
            report.keys_differing += outcome.stats.differing;
            report.bytes_moved += outcome.stats.bytes_sent + outcome.stats.bytes_received;
            if outcome.stats.differing == 0 && outcome.complete {
                return Ok(true);
            }
            let wanted: Vec<Vec<u8>> = outcome
                .to_pull
                .into_iter()
                .filter(|d| d.kind != DiffKind::MissingThere)
                .map(|d| d.key)
                .collect();
            let pulled = self.pull(peer, wanted, throttle, report).await?;
            // Go on while rounds make progress: a round that only found suspects is
            // followed by one that pulls them; two idle rounds in a row mean what is left
            // differing cannot be pulled from here (the peer lacks it and pulls it itself).
            idle_rounds = if pulled == 0 { idle_rounds + 1 } else { 0 };
            if idle_rounds >= 2 {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// One comparison round with `peer`.
    async fn round(
        &self,
        peer: &NodeInfo,
        range: TokenRange,
        suspects: &mut Suspects,
        throttle: &mut Throttle,
    ) -> Result<RoundReport, RoundError> {
        let limits = ExchangeLimits::default();
        let mut exchange =
            Exchange::new(range, &self.tree.lock(), limits).map_err(|e| e.to_string())?;
        while let Some(request) = exchange.poll() {
            throttle.pace(request.approx_bytes()).await;
            let answer = self
                .transport
                .call(peer, wire::request_to_wire(&request), self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            let response = wire::response_from_wire(answer, self.limits.max_key_bytes)
                .map_err(|e| format!("peer {}'s anti-entropy answer refused: {e}", peer.id))?;
            throttle.pace(response.approx_bytes()).await;
            let (tree, store) = (self.tree.clone(), self.store.clone());
            // Key pages read local storage: off the async workers.
            exchange = blocking(move || {
                let local = tree.lock();
                let result = exchange.on_response(&local, &*store, response);
                drop(local);
                Ok(result.map(|()| exchange))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        Ok(exchange.finish(suspects, now_ms))
    }

    /// Reads `keys` from `peer` and merges what it holds here as repairs; returns how
    /// many records were merged.
    async fn pull(
        &self,
        peer: &NodeInfo,
        keys: Vec<Vec<u8>>,
        throttle: &mut Throttle,
        report: &mut PassReport,
    ) -> Result<u64, RoundError> {
        let mut merged = 0;
        for batch in keys.chunks(PULL_BATCH) {
            let asked: u64 = batch.iter().map(|k| k.len() as u64 + 2).sum();
            throttle.pace(asked).await;
            let response = self
                .transport
                .call(
                    peer,
                    PeerReadRequest {
                        keys: batch.iter().map(|k| k.clone().into()).collect(),
                    },
                    self.timeout,
                )
                .await
                .map_err(|e| e.to_string())?;
            if response.records.len() > batch.len() {
                return Err(format!(
                    "peer {} answered {} records to a read of {} keys",
                    peer.id,
                    response.records.len(),
                    batch.len()
                ));
            }
            let now = now_micros();
            let mut entries = Vec::with_capacity(response.records.len());
            let mut bytes = 0u64;
            for (i, kr) in response.records.iter().enumerate() {
                bytes += (kr.key.len() + kr.record.len()) as u64 + 4;
                if kr.record.is_empty() {
                    continue; // gone there since the comparison
                }
                if !batch.iter().any(|k| k[..] == kr.key[..]) {
                    return Err(format!(
                        "peer {} answered record {i} for a key that was not asked for",
                        peer.id
                    ));
                }
                let record =
                    checks::accept_record(&kr.key, &kr.record, Origin::Repair, &self.limits, now)
                        .map_err(|e| {
                        format!(
                        "record {i} pulled from peer {} refused, nothing of the batch merged: {e}",
                        peer.id
                    )
                    })?;
                entries.push((kr.key.to_vec(), record));
            }
            throttle.pace(bytes).await;
            report.bytes_moved += asked + bytes;
            merged += entries.len() as u64;
            if !entries.is_empty() {
                self.store
                    .merge_repairs(entries)
                    .await
                    .map_err(|e| format!("merging records pulled from {} failed: {e}", peer.id))?;
            }
        }
        report.keys_repaired += merged;
        Ok(merged)
    }
}

/// One anti-entropy pass on demand (the `Repair` RPC), whatever the driver's types.
#[async_trait::async_trait]
pub trait RepairPass: Send + Sync + 'static {
    /// Runs a pass now, after the one in progress if any.
    async fn pass(&self) -> PassReport;
    /// Runs a pass now unless one is in progress (then `None`).
    async fn pass_unless_running(&self) -> Option<PassReport>;
    /// Each range's numbers from its last pass, in token order.
    fn range_stats(&self) -> Vec<(TokenRange, RangeStats)>;
}

#[async_trait::async_trait]
impl<S, M, P, T> RepairPass for AntiEntropy<S, M, P, T>
where
    S: StorageEngine + ?Sized + 'static,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    async fn pass(&self) -> PassReport {
        AntiEntropy::pass(self).await
    }

    async fn pass_unless_running(&self) -> Option<PassReport> {
        AntiEntropy::pass_unless_running(self).await
    }

    fn range_stats(&self) -> Vec<(TokenRange, RangeStats)> {
        AntiEntropy::range_stats(self)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_a_second_of_bytes_through_then_paces() {
        let now = Instant::now();
        let mut t = Throttle::new(1000);
        // Up to a second's worth at once: no wait.
        assert_eq!(t.charge(500, now), None);
        assert_eq!(t.charge(500, now), None);
        // Beyond it: wait until the excess is paid for.
        let until = t.charge(500, now).expect("over the burst");
        assert_eq!(until, now + Duration::from_millis(500));
        // After an idle time the debt is gone.
        let later = now + Duration::from_secs(10);
        assert_eq!(t.charge(900, later), None);
    }
}
