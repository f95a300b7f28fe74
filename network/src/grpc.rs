//! gRPC transport over tonic: one lazily connected, multiplexed HTTP/2 channel per peer,
//! and the server side that hands calls to a [`PeerHandler`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use distkv_proto::v1::peer_client::PeerClient;
use distkv_proto::v1::peer_server::{Peer, PeerServer};
use distkv_proto::v1::{
    PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    ReplicateResponse,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::{NodeInfo, PeerHandler, Transport, TransportError};

/// Calls peers over gRPC: one lazily connected, multiplexed channel per peer, which
/// reconnects by itself. After a peer is found unreachable, calls to it fail at once for
/// a back-off period (50 ms, doubling per consecutive failure, at most 5 s) instead of
/// each paying for a connection attempt; the first call after the period tries again.
/// The per-call timeout bounds every call, connection set-up included.
pub struct GrpcTransport {
    channels: DashMap<String, Channel>,
    backoff: DashMap<String, Backoff>,
    connect_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
}

/// Consecutive connection failures of one peer and when to try it again.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    retry_at: Instant,
}

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl GrpcTransport {
    /// A transport with no open channel yet.
    pub fn new(connect_timeout: Duration) -> Self {
        GrpcTransport {
            channels: DashMap::new(),
            backoff: DashMap::new(),
            connect_timeout: Some(connect_timeout),
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
        }
    }

    /// The same transport with another back-off: `base` after the first failure,
    /// doubling per consecutive failure up to `max`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Fails at once while `to` is backing off.
    fn check_backoff(&self, to: &NodeInfo) -> Result<(), TransportError> {
        if let Some(b) = self.backoff.get(&to.address) {
            let now = Instant::now();
            if now < b.retry_at {
                return Err(TransportError::Unreachable {
                    peer: to.address.clone(),
                    reason: format!(
                        "backing off after {} failed attempt(s); next try in {} ms",
                        b.failures,
                        (b.retry_at - now).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records the outcome of a call to `to` for the back-off.
    fn record<T>(&self, to: &NodeInfo, result: &Result<T, TransportError>) {
        match result {
            Err(TransportError::Unreachable { .. }) => {
                let mut entry = self.backoff.entry(to.address.clone()).or_insert(Backoff {
                    failures: 0,
                    retry_at: Instant::now(),
                });
                entry.failures = entry.failures.saturating_add(1);
                let delay = self
                    .backoff_base
                    .saturating_mul(1u32 << (entry.failures - 1).min(16))
                    .min(self.backoff_max);
                entry.retry_at = Instant::now() + delay;
            }
            Ok(_) => {
                self.backoff.remove(&to.address);
            }
            Err(_) => {}
        }
    }

    fn client(&self, to: &NodeInfo) -> Result<PeerClient<Channel>, TransportError> {
        if let Some(ch) = self.channels.get(&to.address) {
            return Ok(PeerClient::new(ch.clone()));
        }
        let mut endpoint =
            Endpoint::from_shared(format!("http://{}", to.address)).map_err(|e| {
                TransportError::Unreachable {
                    peer: to.address.clone(),
                    reason: e.to_string(),
                }
            })?;
        endpoint = endpoint.tcp_nodelay(true).http2_adaptive_window(true);
        if let Some(t) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(t);
        }
        let channel = endpoint.connect_lazy();
        self.channels.insert(to.address.clone(), channel.clone());
        Ok(PeerClient::new(channel))
    }
}

fn classify(peer: &NodeInfo, timeout: Duration, status: Status) -> TransportError {
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => TransportError::Timeout {
            peer: peer.address.clone(),
            timeout,
        },
        Code::Unavailable | Code::Unknown if status.message().contains("transport") => {
            TransportError::Unreachable {
                peer: peer.address.clone(),
                reason: status.message().to_string(),
            }
        }
        Code::Unavailable => TransportError::Unreachable {
            peer: peer.address.clone(),
            reason: status.message().to_string(),
        },
        _ => TransportError::Remote {
            peer: peer.address.clone(),
            message: status.message().to_string(),
        },
    }
}

macro_rules! call_peer {
    ($self:ident, $to:ident, $timeout:ident, $method:ident, $req:ident) => {{
        $self.check_backoff($to)?;
        let result = call_peer!(@call $self, $to, $timeout, $method, $req);
        $self.record($to, &result);
        result
    }};
    (@call $self:ident, $to:ident, $timeout:ident, $method:ident, $req:ident) => {{
        let mut client = $self.client($to)?;
        let mut request = Request::new($req);
        request.set_timeout($timeout);
        match tokio::time::timeout($timeout, client.$method(request)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(classify($to, $timeout, status)),
            Err(_) => Err(TransportError::Timeout {
                peer: $to.address.clone(),
                timeout: $timeout,
            }),
        }
    }};
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn replicate(
        &self,
        to: &NodeInfo,
        request: ReplicateRequest,
        timeout: Duration,
    ) -> Result<ReplicateResponse, TransportError> {
        call_peer!(self, to, timeout, replicate, request)
    }

    async fn read(
        &self,
        to: &NodeInfo,
        request: PeerReadRequest,
        timeout: Duration,
    ) -> Result<PeerReadResponse, TransportError> {
        call_peer!(self, to, timeout, read, request)
    }

    async fn ping(
        &self,
        to: &NodeInfo,
        request: PingRequest,
        timeout: Duration,
    ) -> Result<PingResponse, TransportError> {
        call_peer!(self, to, timeout, ping, request)
    }
}

/// The gRPC `distkv.v1.Peer` service in front of a [`PeerHandler`].
pub struct PeerService<H: PeerHandler> {
    handler: Arc<H>,
}

impl<H: PeerHandler> PeerService<H> {
    /// The tonic server for `handler`, ready to add to a router.
    pub fn server(handler: Arc<H>) -> PeerServer<Self> {
        PeerServer::new(PeerService { handler })
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
    }
}

#[async_trait]
impl<H: PeerHandler> Peer for PeerService<H> {
    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        self.handler
            .replicate(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::internal)
    }

    async fn read(
        &self,
        request: Request<PeerReadRequest>,
    ) -> Result<Response<PeerReadResponse>, Status> {
        self.handler
            .read(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::internal)
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        self.handler
            .ping(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_peer_is_backed_off_then_retried() {
        // A port nothing listens on: bind, note it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let peer = NodeInfo {
            id: "p".into(),
            address: format!("127.0.0.1:{port}"),
        };
        let base = Duration::from_millis(300);
        let t =
            GrpcTransport::new(Duration::from_secs(1)).with_backoff(base, Duration::from_secs(5));
        let ping = || PingRequest {
            from_node: "me".into(),
        };
        let first = t
            .ping(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(first, TransportError::Unreachable { .. }),
            "{first}"
        );
        assert!(!first.to_string().contains("backing off"), "{first}");
        let second = t
            .ping(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            second
                .to_string()
                .contains("backing off after 1 failed attempt"),
            "{second}"
        );
        tokio::time::sleep(base + Duration::from_millis(20)).await;
        let third = t
            .ping(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            !third.to_string().contains("backing off"),
            "the period ended, so it tried again: {third}"
        );
        let fourth = t
            .ping(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            fourth.to_string().contains("after 2 failed attempt"),
            "{fourth}"
        );
    }
}
