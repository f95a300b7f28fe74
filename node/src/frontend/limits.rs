//! Limits on client requests, as one tower layer on the client API
//! (`/distkv.v1.KeyValue/*`; peer calls pass through, their queues bound them):
//!
//! * at most `limits.max_concurrent_requests` client requests in flight; one beyond is
//!   answered `RESOURCE_EXHAUSTED` at once (logged at most once a second) instead of
//!   queueing without bound;
//! * tonic refuses a message over the server's decoding limit with `OUT_OF_RANGE` and a
//!   message naming only its byte limit; that answer becomes `INVALID_ARGUMENT` naming
//!   the settings the limit comes from, so the client learns what to change.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tonic::codegen::http::{self, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tower_layer::Layer;

/// The gRPC path prefix of the client API.
const CLIENT_API: &str = "/distkv.v1.KeyValue/";

/// The size limits a too-large request is explained with.
#[derive(Clone, Copy, Debug)]
pub struct SizeLimits {
    /// `limits.max_key_bytes`.
    pub max_key_bytes: usize,
    /// `limits.max_value_bytes`.
    pub max_value_bytes: usize,
    /// `limits.max_batch_entries`.
    pub max_batch_entries: usize,
}

impl SizeLimits {
    /// The message that replaces tonic's for a request of `found` bytes over `limit`.
    fn message(&self, found: &str, limit: &str) -> String {
        format!(
            "request of {found} bytes is over the {limit}-byte request limit, which this node derives from limits.max_value_bytes = {} and limits.max_key_bytes = {}: a value may be at most {} bytes; split larger data over several keys and large batches over several requests (at most limits.max_batch_entries = {} entries each)",
            self.max_value_bytes, self.max_key_bytes, self.max_value_bytes, self.max_batch_entries
        )
    }
}

/// The client API's limits (see the module docs).
#[derive(Clone, Debug)]
pub struct ClientLimitsLayer {
    sizes: SizeLimits,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    /// When the last "shedding" warning was logged.
    warned: Arc<Mutex<Option<Instant>>>,
}

impl ClientLimitsLayer {
    /// At most `max_in_flight` client requests at once; too-large requests explained
    /// with `sizes`.
    pub fn new(sizes: SizeLimits, max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        ClientLimitsLayer {
            sizes,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            warned: Arc::default(),
        }
    }

    fn warn_shedding(&self) {
        crate::observe::counters().request_shed();
        let mut warned = self.warned.lock();
        if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *warned = Some(Instant::now());
            tracing::warn!(
                max = self.max_in_flight,
                "client requests shed with RESOURCE_EXHAUSTED: limits.max_concurrent_requests reached"
            );
        }
    }
}

impl<S> Layer<S> for ClientLimitsLayer {
    type Service = ClientLimits<S>;
    fn layer(&self, inner: S) -> ClientLimits<S> {
        ClientLimits {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ClientLimitsLayer`].
#[derive(Clone, Debug)]
pub struct ClientLimits<S> {
    inner: S,
    layer: ClientLimitsLayer,
}

impl<S, B, R> Service<http::Request<B>> for ClientLimits<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(CLIENT_API) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(slot) = self.layer.slots.clone().try_acquire_owned() else {
            self.layer.warn_shedding();
            let max = self.layer.max_in_flight;
            return Box::pin(async move { Ok(overloaded(max)) });
        };
        let response = self.inner.call(request);
        let sizes = self.layer.sizes;
        Box::pin(async move {
            let mut response = response.await?;
            drop(slot);
            rewrite(&sizes, response.headers_mut());
            Ok(response)
        })
    }
}

/// Replaces an OUT_OF_RANGE "decoded message length too large" status in `headers`.
fn rewrite(sizes: &SizeLimits, headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").is_none_or(|s| s != "11") {
        return;
    }
    let Some(message) = headers.get("grpc-message").and_then(|m| m.to_str().ok()) else {
        return;
    };
    // tonic percent-encodes the message: "found%20N%20bytes,%20the%20limit%20is:%20M%20bytes".
    let decoded = message.replace("%20", " ");
    if !decoded.contains("decoded message length too large") {
        return;
    }
    let number_after = |marker: &str| -> String {
        decoded
            .split_once(marker)
            .map(|(_, rest)| {
                rest.trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = sizes.message(&number_after("found "), &number_after("the limit is:"));
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert("grpc-message", value);
    }
}

/// A trailers-only gRPC answer: RESOURCE_EXHAUSTED, naming the limit.
fn overloaded<R: Default>(max: usize) -> http::Response<R> {
    let mut response = http::Response::new(R::default());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(message) = HeaderValue::from_str(&format!(
        "node overloaded: {max} client requests in flight (limits.max_concurrent_requests); back off and retry, or spread requests over more nodes"
    )) {
        headers.insert("grpc-message", message);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_becomes_invalid_argument_naming_the_settings() {
        let layer = SizeLimits {
            max_key_bytes: 65536,
            max_value_bytes: 16 << 20,
            max_batch_entries: 10_000,
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%20104857612%20bytes,%20the%20limit%20is:%2067108864%20bytes",
            ),
        );
        rewrite(&layer, &mut headers);
        assert_eq!(headers["grpc-status"], "3");
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(message.contains("request of 104857612 bytes"), "{message}");
        assert!(message.contains("67108864-byte"), "{message}");
        assert!(
            message.contains("limits.max_value_bytes = 16777216"),
            "{message}"
        );

        // Other statuses are left alone.
        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("14"));
        other.insert("grpc-message", HeaderValue::from_static("quorum"));
        rewrite(&layer, &mut other);
        assert_eq!(other["grpc-status"], "14");
    }
}

#[cfg(test)]
mod shed_tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

    /// A service whose answers wait until `release` fires.
    #[derive(Clone)]
    struct Held(tokio::sync::watch::Receiver<bool>);

    impl Service<http::Request<()>> for Held {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut release = self.0.clone();
            Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
                Ok(http::Response::new("served".to_string()))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn requests_beyond_the_bound_are_shed_at_once_and_peers_are_not() {
        let (release, held) = tokio::sync::watch::channel(false);
        let sizes = SizeLimits {
            max_key_bytes: 1,
            max_value_bytes: 1,
            max_batch_entries: 1,
        };
        let mut svc = ClientLimitsLayer::new(sizes, 2).layer(Held(held));
        let first = tokio::spawn(svc.call(request("/distkv.v1.KeyValue/Put")));
        let second = tokio::spawn(svc.call(request("/distkv.v1.KeyValue/Get")));
        let shed = svc.call(request("/distkv.v1.KeyValue/Get")).await.unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8");
        let message = shed.headers()["grpc-message"].to_str().unwrap();
        assert!(
            message.contains("limits.max_concurrent_requests"),
            "{message}"
        );
        // Peer calls are bounded elsewhere and pass.
        let peer = tokio::spawn(svc.call(request("/distkv.v1.Peer/Call")));
        release.send(true).unwrap();
        for held in [first, second, peer] {
            assert_eq!(held.await.unwrap().unwrap().body(), "served");
        }
        // Slots come back when requests finish.
        let again = svc.call(request("/distkv.v1.KeyValue/Get")).await.unwrap();
        assert_eq!(again.body(), "served");
    }
}
