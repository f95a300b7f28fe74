//! gRPC transport over tonic: one lazily connected, multiplexed HTTP/2 channel per peer,
//! and the server side that hands calls to a [`PeerHandler`]. Every call is one
//! `distkv.v1.Peer/Call` with a [`PeerRequest`] envelope.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use distkv_proto::v1::peer_client::PeerClient;
use distkv_proto::v1::peer_server::{Peer, PeerServer};
use distkv_proto::v1::{peer_request, peer_response, PeerRequest, PeerResponse};
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::tls::{Reloadable, TlsConnector};
use crate::transport::DEFAULT_MAX_MESSAGE_BYTES;
use crate::{HandlerError, NodeInfo, PeerError, PeerHandler, Transport};

/// Calls peers over gRPC: one lazily connected, multiplexed channel per peer, which
/// reconnects by itself. After a peer is found unreachable, calls to it fail at once for
/// a back-off period (50 ms, doubling per consecutive failure, at most 1 s) instead of
/// each paying for a connection attempt; the first call after the period tries again.
/// The per-call timeout bounds every call, connection set-up included. A request whose
/// encoded envelope exceeds the message limit (64 MiB unless set) fails with
/// [`PeerError::TooLarge`] without being sent; a response over it fails the same way.
pub struct GrpcTransport {
    local_id: String,
    channels: DashMap<String, Channel>,
    backoff: DashMap<String, Backoff>,
    connect_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    max_message_bytes: usize,
    tls: Option<Arc<Reloadable<rustls::ClientConfig>>>,
}

/// Consecutive connection failures of one peer and when to try it again.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    retry_at: Instant,
}

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Metadata key the server sets on statuses that come from the handler, so the client can
/// tell a handler's UNAVAILABLE from a transport's.
const HANDLER_ORIGIN: &str = "distkv-handler-error";

impl GrpcTransport {
    /// A transport for node `local_id` with no open channel yet.
    pub fn new(local_id: impl Into<String>, connect_timeout: Duration) -> Self {
        GrpcTransport {
            local_id: local_id.into(),
            channels: DashMap::new(),
            backoff: DashMap::new(),
            connect_timeout: Some(connect_timeout),
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
        }
    }

    /// The same transport calling peers over TLS with the configuration `config` holds
    /// when each connection is made (so a reloaded certificate serves new connections).
    /// Set it before the first call.
    pub fn with_tls(mut self, config: Arc<Reloadable<rustls::ClientConfig>>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The same transport with another back-off: `base` after the first failure,
    /// doubling per consecutive failure up to `max`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The same transport with another message limit, in bytes of an encoded envelope,
    /// for requests sent and responses received. Set it before the first call: channels
    /// opened earlier keep the old limit.
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Fails at once while `to` is backing off.
    fn check_backoff(&self, to: &NodeInfo) -> Result<(), PeerError> {
        if let Some(b) = self.backoff.get(&to.address) {
            let now = Instant::now();
            if now < b.retry_at {
                return Err(PeerError::Unreachable {
                    peer: to.id.clone(),
                    reason: format!(
                        "{} is backing off after {} failed attempt(s); next try in {} ms",
                        to.address,
                        b.failures,
                        (b.retry_at - now).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records the outcome of a call to `to` for the back-off.
    fn record<T>(&self, to: &NodeInfo, result: &Result<T, PeerError>) {
        match result {
            Err(PeerError::Unreachable { .. }) => {
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

    fn client(&self, to: &NodeInfo) -> Result<PeerClient<Channel>, PeerError> {
        let channel = match self.channels.get(&to.address) {
            Some(ch) => ch.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(format!("http://{}", to.address))
                    .map_err(|e| PeerError::Unreachable {
                        peer: to.id.clone(),
                        reason: format!("invalid address {:?}: {e}", to.address),
                    })?;
                endpoint = endpoint.tcp_nodelay(true).http2_adaptive_window(true);
                if let Some(t) = self.connect_timeout {
                    endpoint = endpoint.connect_timeout(t);
                }
                let channel = match &self.tls {
                    Some(config) => {
                        endpoint.connect_with_connector_lazy(TlsConnector::new(config.clone()))
                    }
                    None => endpoint.connect_lazy(),
                };
                self.channels.insert(to.address.clone(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    async fn call_once(
        &self,
        to: &NodeInfo,
        envelope: PeerRequest,
        timeout: Duration,
    ) -> Result<peer_response::Body, PeerError> {
        let mut client = self.client(to)?;
        let mut request = Request::new(envelope);
        request.set_timeout(timeout);
        let response = match tokio::time::timeout(timeout, client.call(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(classify(to, timeout, self.max_message_bytes, status)),
            Err(_) => {
                return Err(PeerError::Timeout {
                    peer: to.id.clone(),
                    timeout,
                })
            }
        };
        response.body.ok_or_else(|| PeerError::Failed {
            peer: to.id.clone(),
            message: "answered an envelope with no body (is the peer running an older \
                      version?)"
                .to_string(),
        })
    }
}

/// Reads "found N bytes, the limit is: M bytes" (tonic's and [`HandlerError::TooLarge`]'s
/// wording) out of a status message.
fn sizes_in(message: &str) -> (Option<usize>, Option<usize>) {
    let number_after = |marker: &str| {
        let rest = &message[message.find(marker)? + marker.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    (number_after("found "), number_after("the limit is:"))
}

/// The caller's view of a status from `peer`.
fn classify(peer: &NodeInfo, timeout: Duration, limit: usize, status: Status) -> PeerError {
    let from_handler = status.metadata().get(HANDLER_ORIGIN).is_some();
    let id = peer.id.clone();
    let message = status.message().to_string();
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => PeerError::Timeout { peer: id, timeout },
        Code::Unavailable if !from_handler => PeerError::Unreachable {
            peer: id,
            reason: format!("{}: {message}", peer.address),
        },
        Code::Unknown if !from_handler && message.contains("transport") => PeerError::Unreachable {
            peer: id,
            reason: format!("{}: {message}", peer.address),
        },
        Code::ResourceExhausted | Code::OutOfRange => {
            let (bytes, their_limit) = sizes_in(&message);
            PeerError::TooLarge {
                peer: id,
                bytes: bytes.unwrap_or(0),
                limit: their_limit.unwrap_or(limit),
            }
        }
        Code::Unimplemented if !from_handler => PeerError::Refused {
            peer: id,
            reason: format!(
                "{} does not serve the peer service ({message}): it is probably a client port; \
                 the seed list and advertised peer addresses must name peer ports \
                 (--peer-address, default: the client port + 1000)",
                peer.address
            ),
        },
        Code::InvalidArgument | Code::FailedPrecondition => PeerError::Refused {
            peer: id,
            reason: message,
        },
        _ => PeerError::Failed { peer: id, message },
    }
}

/// The status a handler's error travels as.
fn status_of(error: HandlerError) -> Status {
    let code = match &error {
        HandlerError::Refused(_) => Code::FailedPrecondition,
        HandlerError::TooLarge { .. } => Code::ResourceExhausted,
        HandlerError::Unavailable(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    status.metadata_mut().insert(
        HANDLER_ORIGIN,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

#[async_trait]
impl Transport for GrpcTransport {
    fn local_id(&self) -> &str {
        &self.local_id
    }

    async fn send(
        &self,
        to: &NodeInfo,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, PeerError> {
        let envelope = PeerRequest {
            from_node: self.local_id.clone(),
            body: Some(body),
        };
        let bytes = envelope.encoded_len();
        if bytes > self.max_message_bytes {
            return Err(PeerError::TooLarge {
                peer: to.id.clone(),
                bytes,
                limit: self.max_message_bytes,
            });
        }
        self.check_backoff(to)?;
        let result = self.call_once(to, envelope, timeout).await;
        self.record(to, &result);
        result
    }
}

/// The gRPC `distkv.v1.Peer` service in front of a [`PeerHandler`].
pub struct PeerService<H: PeerHandler + ?Sized> {
    handler: Arc<H>,
}

impl<H: PeerHandler + ?Sized> PeerService<H> {
    /// The tonic server for `handler`, ready to add to a router. Requests and responses
    /// over `max_message_bytes` (encoded) are refused with RESOURCE_EXHAUSTED /
    /// OUT_OF_RANGE, which callers see as [`PeerError::TooLarge`].
    pub fn server(handler: Arc<H>, max_message_bytes: usize) -> PeerServer<Self> {
        PeerServer::new(PeerService { handler })
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[async_trait]
impl<H: PeerHandler + ?Sized> Peer for PeerService<H> {
    async fn call(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let PeerRequest { from_node, body } = request.into_inner();
        let Some(body) = body else {
            return Err(status_of(HandlerError::Refused(format!(
                "the request from {from_node:?} has no body: the caller may be running a newer \
                 version that sends a call this node does not know; upgrade this node"
            ))));
        };
        match self.handler.handle(&from_node, body).await {
            Ok(body) => Ok(Response::new(PeerResponse { body: Some(body) })),
            Err(e) => Err(status_of(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransportExt;
    use bytes::Bytes;
    use distkv_proto::v1::{
        KeyRecord, PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    };

    /// Pings answer with the caller's id; reads answer a record of `value_len` bytes per
    /// key; replicates are refused.
    struct TestHandler {
        value_len: usize,
    }

    #[async_trait]
    impl PeerHandler for TestHandler {
        async fn handle(
            &self,
            from: &str,
            request: peer_request::Body,
        ) -> Result<peer_response::Body, HandlerError> {
            match request {
                peer_request::Body::Ping(_) => Ok(peer_response::Body::Ping(PingResponse {
                    node_id: format!("server saw {from}"),
                    generation: 0,
                })),
                peer_request::Body::Read(r) => Ok(peer_response::Body::Read(PeerReadResponse {
                    records: r
                        .keys
                        .into_iter()
                        .map(|key| KeyRecord {
                            key,
                            record: Bytes::from(vec![7u8; self.value_len]),
                        })
                        .collect(),
                })),
                peer_request::Body::Replicate(_) => {
                    Err(HandlerError::Refused("wrong cluster \"blue\"".into()))
                }
                _ => Err(HandlerError::Unavailable("not in this test".into())),
            }
        }
    }

    async fn serve(handler: TestHandler, limit: usize) -> NodeInfo {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = incoming.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerService::server(Arc::new(handler), limit))
                .serve_with_incoming(incoming),
        );
        NodeInfo {
            id: "server".into(),
            address,
        }
    }

    #[tokio::test]
    async fn calls_round_trip_and_errors_arrive_typed() {
        let peer = serve(TestHandler { value_len: 4096 }, 1 << 20).await;
        let t =
            GrpcTransport::new("client", Duration::from_secs(2)).with_max_message_bytes(64 * 1024);
        let timeout = Duration::from_secs(5);
        assert_eq!(t.local_id(), "client");

        let pong = t.call(&peer, PingRequest {}, timeout).await.unwrap();
        assert_eq!(pong.node_id, "server saw client");

        // Refused by the handler: its reason arrives.
        let err = t
            .call(&peer, ReplicateRequest::default(), timeout)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PeerError::Refused {
                peer: "server".into(),
                reason: "wrong cluster \"blue\"".into()
            }
        );

        // A handler's UNAVAILABLE is the peer failing, not the peer being unreachable.
        let err = t
            .call(
                &peer,
                distkv_proto::v1::RangePullRequest::default(),
                timeout,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "failed", "{err}");
        assert!(err.to_string().contains("not in this test"), "{err}");

        // A request over our limit is refused here, before sending.
        let big = ReplicateRequest {
            records: vec![KeyRecord {
                key: Bytes::from_static(b"k"),
                record: Bytes::from(vec![0u8; 100 * 1024]),
            }],
        };
        match t.call(&peer, big, timeout).await {
            Err(PeerError::TooLarge { peer, bytes, limit }) => {
                assert_eq!(peer, "server");
                assert!(bytes > 100 * 1024, "{bytes}");
                assert_eq!(limit, 64 * 1024);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }

        // A response over our limit: 32 keys of 4 KiB records is 128 KiB.
        let read = PeerReadRequest {
            keys: (0..32u8).map(|i| Bytes::from(vec![i])).collect(),
        };
        let err = t.call(&peer, read, timeout).await.unwrap_err();
        assert!(
            matches!(err, PeerError::TooLarge { limit: 65536, .. }),
            "{err:?}"
        );
        // The channel still works after that.
        assert!(t.call(&peer, PingRequest {}, timeout).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_over_the_servers_limit_is_too_large() {
        let peer = serve(TestHandler { value_len: 1 }, 16 * 1024).await;
        let t = GrpcTransport::new("client", Duration::from_secs(2));
        let big = ReplicateRequest {
            records: vec![KeyRecord {
                key: Bytes::from_static(b"k"),
                record: Bytes::from(vec![0u8; 32 * 1024]),
            }],
        };
        let err = t
            .call(&peer, big, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");
    }

    #[test]
    fn statuses_are_classified() {
        let peer = NodeInfo {
            id: "p".into(),
            address: "h:1".into(),
        };
        let t = Duration::from_secs(1);
        let kind = |s: Status| classify(&peer, t, 100, s).kind();
        assert_eq!(kind(Status::deadline_exceeded("late")), "timeout");
        assert_eq!(kind(Status::cancelled("gone")), "timeout");
        assert_eq!(
            kind(Status::unavailable("connection refused")),
            "unreachable"
        );
        assert_eq!(
            kind(status_of(HandlerError::Unavailable("x".into()))),
            "failed"
        );
        assert_eq!(kind(Status::invalid_argument("bad")), "refused");
        assert_eq!(
            kind(status_of(HandlerError::Refused("x".into()))),
            "refused"
        );
        assert_eq!(kind(Status::internal("disk")), "failed");
        assert_eq!(
            kind(status_of(HandlerError::Failed("disk".into()))),
            "failed"
        );
        let tonic_limit = Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        );
        assert_eq!(
            classify(&peer, t, 100, tonic_limit),
            PeerError::TooLarge {
                peer: "p".into(),
                bytes: 5000,
                limit: 4096
            }
        );
        assert_eq!(
            classify(
                &peer,
                t,
                100,
                status_of(HandlerError::TooLarge { bytes: 9, limit: 8 })
            ),
            PeerError::TooLarge {
                peer: "p".into(),
                bytes: 9,
                limit: 8
            }
        );
        assert_eq!(
            classify(&peer, t, 100, Status::resource_exhausted("busy")),
            PeerError::TooLarge {
                peer: "p".into(),
                bytes: 0,
                limit: 100
            }
        );
    }

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
        let t = GrpcTransport::new("me", Duration::from_secs(1))
            .with_backoff(base, Duration::from_secs(5));
        let ping = || PingRequest {};
        let first = t
            .call(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(first, PeerError::Unreachable { .. }), "{first}");
        assert!(!first.to_string().contains("backing off"), "{first}");
        let second = t
            .call(&peer, ping(), Duration::from_secs(2))
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
            .call(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            !third.to_string().contains("backing off"),
            "the period ended, so it tried again: {third}"
        );
        let fourth = t
            .call(&peer, ping(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            fourth.to_string().contains("after 2 failed attempt"),
            "{fourth}"
        );
    }
}
