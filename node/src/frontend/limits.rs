//! Oversized client requests: tonic refuses a message over the server's decoding limit
//! with `OUT_OF_RANGE` and a message naming only its byte limit. This layer turns that
//! answer, on the client API only, into `INVALID_ARGUMENT` naming the settings the limit
//! comes from, so the client learns what to change.

use std::task::{Context, Poll};

use tonic::codegen::http::{self, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tower_layer::Layer;

/// The gRPC path prefix of the client API.
const CLIENT_API: &str = "/distkv.v1.KeyValue/";

/// Rewrites tonic's "message too large" refusals of client requests.
#[derive(Clone, Debug)]
pub struct OversizeLayer {
    max_key_bytes: usize,
    max_value_bytes: usize,
    max_batch_entries: usize,
}

impl OversizeLayer {
    /// The layer for a node with these limits.
    pub fn new(max_key_bytes: usize, max_value_bytes: usize, max_batch_entries: usize) -> Self {
        OversizeLayer {
            max_key_bytes,
            max_value_bytes,
            max_batch_entries,
        }
    }

    /// The message that replaces tonic's for a request of `found` bytes over `limit`.
    fn message(&self, found: &str, limit: &str) -> String {
        format!(
            "request of {found} bytes is over the {limit}-byte request limit, which this node derives from limits.max_value_bytes = {} and limits.max_key_bytes = {}: a value may be at most {} bytes; split larger data over several keys and large batches over several requests (at most limits.max_batch_entries = {} entries each)",
            self.max_value_bytes, self.max_key_bytes, self.max_value_bytes, self.max_batch_entries
        )
    }
}

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`OversizeLayer`].
#[derive(Clone, Debug)]
pub struct Oversize<S> {
    inner: S,
    layer: OversizeLayer,
}

impl<S, B, R> Service<http::Request<B>> for Oversize<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client_api = request.uri().path().starts_with(CLIENT_API);
        let response = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut response = response.await?;
            if client_api {
                rewrite(&layer, response.headers_mut());
            }
            Ok(response)
        })
    }
}

/// Replaces an OUT_OF_RANGE "decoded message length too large" status in `headers`.
fn rewrite(layer: &OversizeLayer, headers: &mut http::HeaderMap) {
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
    let text = layer.message(&number_after("found "), &number_after("the limit is:"));
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert("grpc-message", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_becomes_invalid_argument_naming_the_settings() {
        let layer = OversizeLayer::new(65536, 16 << 20, 10_000);
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
