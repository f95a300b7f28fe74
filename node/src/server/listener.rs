//! The listening socket's defences against floods: at most `max_connections` open at
//! once (a connection beyond it is accepted and closed at once, so the kernel's backlog
//! and the process's file descriptors never fill up), and a connection that sends
//! nothing for `idle_timeout` is closed (silent, half-open and abandoned connections).
//! Live clients are never idle that long: the server pings every HTTP/2 connection more
//! often than that, and their acknowledgements count as traffic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bounds on the connections of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A connection that sends no byte for this long is closed.
    pub idle_timeout: Duration,
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
