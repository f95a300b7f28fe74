//! The admin HTTP port (`admin_address`): `GET /metrics` (Prometheus text format),
//! `GET /health/live` and `GET /health/ready`, for Prometheus, load balancers and
//! Kubernetes probes. Plain HTTP/1.1; keep it on a trusted network.
//!
//! * `/health/live` answers 200 while the process serves HTTP at all (from before
//!   storage is opened until the process exits): a failing liveness probe means the
//!   process is wedged and should be restarted.
//! * `/health/ready` answers 200 when storage is open, the client port serves, and at
//!   least max(R, W) members of the cluster (this node included) are alive in the
//!   failure detector's view, so that requests at the default consistency can succeed;
//!   otherwise 503 with a JSON `reason` (starting, shutting down, too few live members).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use distkv_network::Liveness;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::StartupError;
use crate::config::Config;
use crate::observe::{self, NodeProbe};
use distkv_network::tls::Reloadable;

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

struct AdminState {
    phase: AtomicU8,
    node: OnceLock<Arc<dyn NodeProbe>>,
    exporter: PrometheusHandle,
}

/// Longest an admin client may take over its TLS handshake. Handshakes on the admin port
/// are done one at a time (scrapers and probes connect rarely), so this bounds how long
/// one silent client holds up the next.
const ADMIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The admin port's listener with TLS: each accepted connection does its handshake with
/// the configuration current at that moment; a failed one is logged and dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: Arc<Reloadable<rustls::ServerConfig>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin port: accept failed; retrying in 50 ms");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current());
            match tokio::time::timeout(ADMIN_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "admin port: TLS handshake failed")
                }
                Err(_) => tracing::warn!(%peer, "admin port: no TLS handshake within 5 s"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The admin port of a node: absent when `admin_address` is empty.
pub struct AdminPort {
    addr: Option<std::net::SocketAddr>,
    state: Option<Arc<AdminState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AdminPort {
    /// Installs the metrics exporter, binds the admin address and serves it (readiness
    /// says "starting" until [`AdminPort::attach`]). Does nothing when the port is off.
    /// With `tls`, it serves HTTPS with that configuration (the node's certificate).
    pub async fn start(
        config: &Config,
        tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    ) -> Result<AdminPort, StartupError> {
        let addr = match config.admin_listen_addr() {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                return Ok(AdminPort {
                    addr: None,
                    state: None,
                    tasks: Vec::new(),
                })
            }
            Err(why) => {
                return Err(StartupError(format!(
                    "invalid setting admin_address: {why}"
                )))
            }
        };
        let exporter = observe::install_exporter().map_err(StartupError)?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            StartupError(format!(
                "cannot listen on {addr} (setting admin_address, the admin HTTP port): {e}; choose a free port with --admin-address, or turn the port off with --admin-address \"\""
            ))
        })?;
        let state = Arc::new(AdminState {
            phase: AtomicU8::new(STARTING),
            node: OnceLock::new(),
            exporter: exporter.clone(),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .with_state(state.clone());
        let serve = tokio::spawn(async move {
            let served = match tls {
                None => axum::serve(listener, app).await,
                Some(tls) => axum::serve(TlsListener { tcp: listener, tls }, app).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "admin HTTP port failed; /metrics and /health no longer answer");
            }
        });
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                exporter.run_upkeep();
            }
        });
        Ok(AdminPort {
            addr: Some(addr),
            state: Some(state),
            tasks: vec![serve, upkeep],
        })
    }

    /// The node is assembled and about to serve clients: readiness now follows it.
    pub fn attach(&self, node: Arc<dyn NodeProbe>) {
        if let Some(s) = &self.state {
            let _ = s.node.set(node);
            s.phase.store(SERVING, Ordering::Release);
        }
        // Logged here rather than at bind time, so that a node refused at start-up (data
        // directory in use, wrong format) says only why.
        if let Some(addr) = self.addr {
            tracing::info!(address = %addr, "admin HTTP port listening (/metrics, /health/live, /health/ready)");
        }
    }

    /// `shutdown`, which also turns readiness off the moment it completes (before the
    /// node drains its in-flight requests), so load balancers stop sending at once.
    pub fn watch_shutdown(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        async move {
            shutdown.await;
            if let Some(s) = state {
                s.phase.store(STOPPING, Ordering::Release);
            }
        }
    }
}

impl Drop for AdminPort {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why the node is not ready, or `None` when it is. Pure: `alive` counts live members,
/// this node included.
fn not_ready(phase: u8, alive: usize, read_quorum: usize, write_quorum: usize) -> Option<String> {
    match phase {
        STARTING => Some("starting: storage is being opened or the node is not serving yet".into()),
        STOPPING => Some("shutting down: finishing in-flight requests".into()),
        _ => {
            let needed = read_quorum.max(write_quorum);
            (alive < needed).then(|| {
                format!("only {alive} live members (this node included); reads need R = {read_quorum} and writes W = {write_quorum}: start or repair the other nodes")
            })
        }
    }
}

fn readiness(state: &AdminState) -> (bool, serde_json::Value) {
    let phase = state.phase.load(Ordering::Acquire);
    let Some(node) = state.node.get().filter(|_| phase != STARTING) else {
        let reason = not_ready(
            if phase == STOPPING {
                STOPPING
            } else {
                STARTING
            },
            0,
            0,
            0,
        );
        return (false, json!({ "ready": false, "reason": reason }));
    };
    let (_, r, w) = node.quorums();
    let members = node.members();
    let alive = members
        .iter()
        .filter(|(_, l)| l.liveness == Liveness::Alive)
        .count();
    let base = json!({
        "node_id": node.node_id(),
        "members": members.len(),
        "alive": alive,
        "read_quorum": r,
        "write_quorum": w,
    });
    let mut doc = base;
    match not_ready(phase, alive, r, w) {
        None => {
            doc["ready"] = json!(true);
            (true, doc)
        }
        Some(reason) => {
            doc["ready"] = json!(false);
            doc["reason"] = json!(reason);
            (false, doc)
        }
    }
}

async fn live() -> Response {
    (StatusCode::OK, Json(json!({ "live": true }))).into_response()
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let (ok, doc) = readiness(&state);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(doc)).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let (ok, _) = readiness(&state);
    let node = state.node.get().cloned();
    let exporter = state.exporter.clone();
    // Reading engine figures and /proc may block briefly: keep it off the reactor.
    let text =
        tokio::task::spawn_blocking(move || observe::render(&exporter, node.as_deref(), ok)).await;
    match text {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the metrics failed: {e}; see the node's log\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_phase_and_the_live_members() {
        assert!(not_ready(STARTING, 3, 2, 2)
            .unwrap()
            .starts_with("starting"));
        assert!(not_ready(STOPPING, 3, 2, 2)
            .unwrap()
            .starts_with("shutting down"));
        assert_eq!(not_ready(SERVING, 2, 2, 2), None);
        assert_eq!(not_ready(SERVING, 1, 1, 1), None);
        let why = not_ready(SERVING, 1, 2, 1).unwrap();
        assert!(
            why.contains("only 1 live members") && why.contains("R = 2"),
            "{why}"
        );
    }
}
