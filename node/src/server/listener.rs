//! The listening socket's defences against floods: at most `max_connections` open at
//! once (a connection beyond it is accepted and closed at once, so the kernel's backlog
//! and the process's file descriptors never fill up), and a connection that sends
//! nothing for `idle_timeout` is closed (silent, half-open and abandoned connections).
//! Live clients are never idle that long: the server pings every HTTP/2 connection more
//! often than that, and their acknowledgements count as traffic.
//!
//! With TLS, each accepted connection does its handshake in its own task (bounded by the
//! same connection slots and by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never
//! holds up the others; a failed handshake is logged (at most ten a second per listener)
//! and the connection closed. A plaintext HTTP/2 client on a TLS port is recognised by its
//! first bytes and refused with a log line saying so.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use distkv_network::tls::Reloadable;
use futures::Stream;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake is done, waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Bounds on the connections of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A connection that sends no byte for this long is closed.
    pub idle_timeout: Duration,
}

/// The accepted connections of `listener`, within `limits`, over TLS with the
/// configuration `tls` holds when each connection arrives (plaintext without one). `port`
/// names the listener in log lines ("client" or "peer").
pub fn serve_incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    port: &'static str,
) -> impl Stream<Item = io::Result<ServedConnection>> + Send + 'static {
    use futures::StreamExt;
    let plain = incoming(listener, limits);
    match tls {
        None => plain.map(|c| c.map(ServedConnection::Plain)).left_stream(),
        Some(tls) => tls_incoming(Box::pin(plain), tls, port).right_stream(),
    }
}

/// Handshakes each accepted connection in a task of its own; yields the ones that
/// succeed. Ends when the server drops the stream.
fn tls_incoming(
    mut plain: Pin<Box<dyn Stream<Item = io::Result<BoundedConnection>> + Send>>,
    tls: Arc<Reloadable<rustls::ServerConfig>>,
    port: &'static str,
) -> impl Stream<Item = io::Result<ServedConnection>> + Send + 'static {
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel::<ServedConnection>(READY_QUEUE);
    let throttle = Arc::new(Throttle::default());
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = tx.closed() => return,
                next = plain.next() => match next {
                    Some(Ok(conn)) => conn,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let throttle = throttle.clone();
            tokio::spawn(async move {
                let peer = conn.stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(ServedConnection::Tls(Box::new(tls))).await;
                    }
                    Ok(Err(e)) => throttle.warn(port, peer, &e),
                    Err(_) => throttle.warn(
                        port,
                        peer,
                        &format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                    ),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    })
}

/// Refuses a plaintext HTTP/2 client with a clear log line, then does the TLS handshake.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    conn: BoundedConnection,
) -> Result<tokio_rustls::server::TlsStream<BoundedConnection>, String> {
    let mut first = [0u8; 4];
    let n = conn
        .stream
        .peek(&mut first)
        .await
        .map_err(|e| format!("connection failed before the handshake: {e}"))?;
    if n > 0 && b"PRI "[..n] == first[..n] {
        return Err(
            "a plaintext HTTP/2 client connected to this TLS port and was refused (it should use TLS: distkv-client --tls-enabled --tls-ca-file ...)"
                .to_string(),
        );
    }
    acceptor
        .accept(conn)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// Refused connections logged per listener in one second; the rest are counted and the
/// count is logged with the next line.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// Logs at most [`REFUSALS_LOGGED_PER_SECOND`] refused connections a second per listener,
/// with the count of the ones not logged.
#[derive(Default)]
struct Throttle {
    /// Start of the current second, lines logged in it, refusals not logged.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl Throttle {
    fn warn(&self, port: &str, peer: Option<std::net::SocketAddr>, why: &dyn std::fmt::Display) {
        let mut state = self.state.lock();
        if state
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            state.0 = Some(Instant::now());
            state.1 = 0;
        }
        if state.1 >= REFUSALS_LOGGED_PER_SECOND {
            state.2 += 1;
            return;
        }
        state.1 += 1;
        let suppressed = std::mem::take(&mut state.2);
        drop(state);
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(port, %peer, suppressed, "connection refused: {why}");
    }
}

/// A connection as the server sees it: plaintext or TLS.
pub enum ServedConnection {
    /// Plaintext.
    Plain(BoundedConnection),
    /// After a TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<BoundedConnection>>),
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServedConnection::Plain(c) => Pin::new(c).poll_read(cx, buf),
            ServedConnection::Tls(c) => Pin::new(c.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServedConnection::Plain(c) => Pin::new(c).poll_write(cx, buf),
            ServedConnection::Tls(c) => Pin::new(c.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServedConnection::Plain(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            ServedConnection::Tls(c) => Pin::new(c.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServedConnection::Plain(c) => c.is_write_vectored(),
            ServedConnection::Tls(c) => c.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServedConnection::Plain(c) => Pin::new(c).poll_flush(cx),
            ServedConnection::Tls(c) => Pin::new(c.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServedConnection::Plain(c) => Pin::new(c).poll_shutdown(cx),
            ServedConnection::Tls(c) => Pin::new(c.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for ServedConnection {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            ServedConnection::Plain(c) => c.connect_info(),
            ServedConnection::Tls(c) => c.get_ref().0.connect_info(),
        }
    }
}

/// The accepted connections of `listener`, within `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<BoundedConnection>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let state = (listener, slots, limits, None::<Instant>);
    futures::stream::unfold(state, |(listener, slots, limits, mut warned)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a transient error: wait a little rather
                    // than spin, and keep serving the connections already open.
                    tracing::warn!(error = %e, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    let conn = BoundedConnection::new(stream, permit, limits.idle_timeout);
                    return Some((Ok(conn), (listener, slots, limits, warned)));
                }
                Err(_) => {
                    drop(stream);
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            %peer,
                            max_connections = limits.max_connections,
                            "connection refused: the listener is at limits.max_connections"
                        );
                    }
                }
            }
        }
    })
}

/// An accepted connection holding one of the listener's slots until it closes, and
/// closing itself after `idle` without a byte read.
pub struct BoundedConnection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl BoundedConnection {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        BoundedConnection {
            stream,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl AsyncRead for BoundedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past limits.idle_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for BoundedConnection {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_idle_ones_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
        };
        let mut conns = Box::pin(incoming(listener, limits));
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut served_a = conns.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _served_b = conns.next().await.unwrap().unwrap();
        // A third is accepted and closed at once: its reads end.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::spawn(async move {
            let next = conns.next().await;
            drop(next);
        });
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the refused connection is closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without data");
        // An active connection stays open past the idle timeout; a silent one does not.
        for _ in 0..3 {
            a.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            served_a.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let started = Instant::now();
        let err = served_a.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "timed out early"
        );
        accept_more.abort();
    }
}
