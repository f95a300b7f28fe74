//! gRPC transport over tonic: one lazily connected, multiplexed HTTP/2 channel per peer,
//! and the server side that hands calls to a [`PeerHandler`].

use std::sync::Arc;
use std::time::Duration;

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

/// Calls peers over gRPC. Channels reconnect by themselves (tonic backs off between
/// attempts); the per-call timeout bounds every call, connection set-up included.
#[derive(Default)]
pub struct GrpcTransport {
    channels: DashMap<String, Channel>,
    connect_timeout: Option<Duration>,
}

impl GrpcTransport {
    /// A transport with no open channel yet.
    pub fn new(connect_timeout: Duration) -> Self {
        GrpcTransport {
            channels: DashMap::new(),
            connect_timeout: Some(connect_timeout),
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
