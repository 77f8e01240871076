//! A TCP listener that counts connections for `/metrics`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::ServerMetrics;

/// Wraps a [`TcpListener`]: each accepted stream increments the open-connections gauge until it
/// is dropped.
#[derive(Debug)]
pub(crate) struct CountingListener {
    inner: TcpListener,
    metrics: Arc<ServerMetrics>,
}

impl CountingListener {
    pub(crate) fn new(inner: TcpListener, metrics: Arc<ServerMetrics>) -> Self {
        CountingListener { inner, metrics }
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small request/response messages: do not wait for Nagle.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%err, "cannot set TCP_NODELAY");
                    }
                    self.metrics.connections_accepted.inc();
                    self.metrics.connections_open.inc();
                    let stream = CountedStream {
                        inner: stream,
                        metrics: Arc::clone(&self.metrics),
                        rewritten: None,
                    };
                    return (stream, addr);
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted TCP stream that decrements the open-connections gauge when dropped, and gives
/// hyper's own error answers a JSON body ([`crate::http::hyper_errors`]).
#[derive(Debug)]
pub(crate) struct CountedStream {
    inner: TcpStream,
    metrics: Arc<ServerMetrics>,
    /// A rewritten answer being written in place of the caller's buffer: the bytes, how many
    /// are written, and the caller's buffer length (reported once all are written).
    rewritten: Option<(Vec<u8>, usize, usize)>,
}

impl CountedStream {
    /// Writes `buf`, or its JSON-bodied replacement. A replacement is reported as `buf.len()`
    /// bytes written once all of it is out; until then the caller sees `Pending` or partial
    /// progress is hidden, and calls again with the same buffer (hyper does).
    fn write_maybe_rewritten(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.rewritten.is_none() {
            let replacement = crate::http::hyper_errors::rewrite(buf)?;
            self.rewritten = Some((replacement, 0, buf.len()));
        }
        let (bytes, written, reported) = self.rewritten.as_mut()?;
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    self.rewritten = None;
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(err)) => {
                    self.rewritten = None;
                    return Some(Poll::Ready(Err(err)));
                }
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let reported = *reported;
        self.rewritten = None;
        Some(Poll::Ready(Ok(reported)))
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(done) = self.write_maybe_rewritten(cx, buf) {
            return done;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Hyper's own answer is a head alone: one non-empty slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && let Some(done) = self.write_maybe_rewritten(cx, only)
        {
            return done;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
