//! Calls to peers, counted by peer, call and outcome, with their latency: a
//! [`Transport`] that wraps another and records every call it passes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use distkv_network::{peer_request, peer_response, request_name, NodeInfo, PeerError, Transport};
use metrics::Histogram;
use parking_lot::RwLock;

use super::names::{PEER_CALLS, PEER_CALL_DURATION};

/// Label values of `outcome` of a peer call: `ok`, then [`PeerError::kind`]s.
const PEER_OUTCOMES: [&str; 6] = [
    "ok",
    "unreachable",
    "timeout",
    "refused",
    "too_large",
    "failed",
];

fn outcome_index(error: Option<&PeerError>) -> usize {
    match error.map(PeerError::kind) {
        None => 0,
        Some(kind) => PEER_OUTCOMES
            .iter()
            .position(|o| *o == kind)
            .unwrap_or(PEER_OUTCOMES.len() - 1),
    }
}

/// Figures of one kind of call to one peer.
struct CallFigures {
    outcomes: [AtomicU64; PEER_OUTCOMES.len()],
    latency: Histogram,
}

/// The calls to one peer, by call name (a handful: looked up by a linear scan).
type PeerCalls = RwLock<Vec<(&'static str, Arc<CallFigures>)>>;

/// Every peer this process called, by peer id.
static PEERS: LazyLock<DashMap<String, PeerCalls>> = LazyLock::new(DashMap::new);

fn figures(peer: &str, call: &'static str) -> Arc<CallFigures> {
    if let Some(calls) = PEERS.get(peer) {
        if let Some((_, f)) = calls.read().iter().find(|(name, _)| *name == call) {
            return f.clone();
        }
    }
    // First call of this kind to this peer: register its handles (allocates, once).
    let calls = PEERS.entry(peer.to_string()).or_default();
    let mut calls = calls.write();
    if let Some((_, f)) = calls.iter().find(|(name, _)| *name == call) {
        return f.clone();
    }
    let f = Arc::new(CallFigures {
        outcomes: Default::default(),
        latency: metrics::histogram!(PEER_CALL_DURATION, "peer" => peer.to_string(), "call" => call),
    });
    calls.push((call, f.clone()));
    f
}

/// Copies the peer call counters into the recorder (at scrape time).
pub(super) fn export() {
    for entry in PEERS.iter() {
        for (call, f) in entry.value().read().iter() {
            for (i, outcome) in PEER_OUTCOMES.iter().enumerate() {
                let n = f.outcomes[i].load(Ordering::Relaxed);
                metrics::counter!(PEER_CALLS, "peer" => entry.key().clone(), "call" => *call, "outcome" => *outcome)
                    .absolute(n);
            }
        }
    }
}

/// A transport that records every call it passes to the one it wraps.
pub struct MeteredTransport<T> {
    inner: T,
}

impl<T: Transport> MeteredTransport<T> {
    /// Records the calls made through `inner`.
    pub fn new(inner: T) -> Self {
        MeteredTransport { inner }
    }
}

#[async_trait]
impl<T: Transport> Transport for MeteredTransport<T> {
    fn local_id(&self) -> &str {
        self.inner.local_id()
    }

    async fn send(
        &self,
        to: &NodeInfo,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, PeerError> {
        let call = request_name(&body);
        let started = Instant::now();
        let result = self.inner.send(to, body, timeout).await;
        let f = figures(&to.id, call);
        f.outcomes[outcome_index(result.as_ref().err())].fetch_add(1, Ordering::Relaxed);
        f.latency.record(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_error_kind_has_its_outcome() {
        let timeout = PeerError::Timeout {
            peer: "b".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(PEER_OUTCOMES[outcome_index(Some(&timeout))], "timeout");
        let refused = PeerError::Refused {
            peer: "b".into(),
            reason: "no".into(),
        };
        assert_eq!(PEER_OUTCOMES[outcome_index(Some(&refused))], "refused");
        assert_eq!(outcome_index(None), 0);
    }

    #[test]
    fn calls_are_counted_per_peer_and_call() {
        let f = figures("peer-under-test", "ping");
        f.outcomes[0].fetch_add(2, Ordering::Relaxed);
        let again = figures("peer-under-test", "ping");
        assert_eq!(again.outcomes[0].load(Ordering::Relaxed), 2);
        assert!(!Arc::ptr_eq(&f, &figures("peer-under-test", "read")));
    }
}
