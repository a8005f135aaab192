//! [`UpstreamIo`]: what [`UpstreamClient`](crate::proxy::UpstreamClient) wraps around every
//! upstream connection (Unix socket, TCP, or TLS: it sits above TLS), for two failures that
//! hyper alone turns into a 502:
//!
//! - **An early answer while the body is still going out.** A server may answer from the
//!   head alone (413, 401) and close without reading the rest of the body. Our next write
//!   then fails (broken pipe, reset) although the answer is already on its way to us;
//!   hyper would fail the request on the write error. Once part of a request was sent, a
//!   write error therefore *ends sending* — later writes are discarded — and hyper goes on
//!   to read the answer. If there is none, reading fails and the request fails as before.
//! - **A reused connection that the server already closed** (its keep-alive idle timeout).
//!   Before the first byte of a request on a connection that already carried one, we
//!   check whether the server has closed it; if so, or if that first write fails, the
//!   connection is marked [`ConnFacts::unsent`] and the write fails. Nothing of the request
//!   reached the server, so [`UpstreamClient::send`](crate::proxy::UpstreamClient::send)
//!   may send it again on a new connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Facts about one upstream connection that outlive a failed request on it; the client
/// keeps an `Arc` of them beside the connection's `SendRequest`.
#[derive(Debug, Default)]
pub struct ConnFacts {
    unsent: AtomicBool,
}

impl ConnFacts {
    /// True when a request on this reused connection failed before any byte of it was
    /// written: the server had closed the connection, so it cannot have seen the request.
    pub fn unsent(&self) -> bool {
        self.unsent.load(Ordering::Acquire)
    }
}

/// A connection as hyper sees it: `T` is a tokio socket, or TLS over one; see the module
/// docs for what the wrapper changes.
pub type Tracked<T> = TokioIo<UpstreamIo<T>>;

/// Wraps a new connection (see [`Tracked`]); the facts are also reachable through
/// [`UpstreamIo::facts`].
pub fn track<T>(io: T) -> Tracked<T> {
    TokioIo::new(UpstreamIo {
        inner: io,
        facts: Arc::new(ConnFacts::default()),
        answered: false,
        sent_since_answer: 0,
        peeked: Vec::new(),
        sending_ended: false,
    })
}

/// The tokio-level wrapper inside [`Tracked`] (tokio's `ReadBuf` shows how much was read).
pub struct UpstreamIo<T> {
    inner: T,
    facts: Arc<ConnFacts>,
    /// Something was read: the connection carried a response, so the next request reuses it.
    answered: bool,
    /// Bytes written since the last read: 0 means the next write starts a new request.
    sent_since_answer: u64,
    /// Bytes read by the closed-connection check, handed to the next read.
    peeked: Vec<u8>,
    /// A write failed after part of a request went out: later writes are discarded.
    sending_ended: bool,
}

fn closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

impl<T> UpstreamIo<T> {
    /// This connection's facts, shared with whoever holds the `Arc`.
    pub fn facts(&self) -> &Arc<ConnFacts> {
        &self.facts
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> UpstreamIo<T> {
    fn unsent(&self, why: &str) -> io::Error {
        self.facts.unsent.store(true, Ordering::Release);
        io::Error::new(io::ErrorKind::BrokenPipe, why.to_owned())
    }

    /// Before the first byte of a request on a reused connection: has the server closed it?
    /// `Ok(())` means go ahead (nothing to read yet, or bytes kept for the next read).
    fn check_reused(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.answered || self.sent_since_answer > 0 || !self.peeked.is_empty() {
            return Ok(());
        }
        let mut scratch = [0u8; 512];
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                Err(self.unsent("the upstream closed this idle connection"))
            }
            Poll::Ready(Ok(())) => {
                self.peeked.extend_from_slice(buf.filled());
                Ok(())
            }
            Poll::Ready(Err(e)) if closed_by_peer(&e) => {
                Err(self.unsent("the upstream reset this idle connection"))
            }
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    /// The outcome of a write of `len` bytes that returned `result`.
    fn after_write(&mut self, len: usize, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Ok(n) => {
                self.sent_since_answer += n as u64;
                Ok(n)
            }
            Err(e) if closed_by_peer(&e) && self.sent_since_answer == 0 && self.answered => {
                Err(self.unsent("the upstream closed this idle connection"))
            }
            Err(e) if closed_by_peer(&e) && self.sent_since_answer > 0 => {
                // The server stopped reading mid-request; its answer may be on the way.
                tracing::debug!(error = %e, "upstream stopped reading the request; reading its answer");
                self.sending_ended = true;
                Ok(len)
            }
            Err(e) => Err(e),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for UpstreamIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            this.answered = true;
            this.sent_since_answer = 0;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.answered = true;
            this.sent_since_answer = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UpstreamIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.sending_ended {
            return Poll::Ready(Ok(buf.len()));
        }
        this.check_reused(cx)?;
        let result = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        Poll::Ready(this.after_write(buf.len(), result))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.sending_ended {
            return Poll::Ready(Ok(len));
        }
        this.check_reused(cx)?;
        let result = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs));
        Poll::Ready(this.after_write(len, result))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sending_ended {
            return Poll::Ready(Ok(()));
        }
        match ready!(Pin::new(&mut self.inner).poll_flush(cx)) {
            Err(e) if closed_by_peer(&e) && self.sent_since_answer > 0 => {
                self.sending_ended = true;
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sending_ended {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// A second request on a connection the server closed while it was idle fails before
    /// its first byte, and the connection says so (the request may be sent again).
    #[tokio::test]
    async fn a_closed_idle_connection_is_found_before_the_request_leaves() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut io = track(client);
        let facts = io.inner().facts.clone();
        io.inner_mut().write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0);
        server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let n = io.inner_mut().read(&mut buf).await.unwrap();
        assert!(n > 0);
        drop(server); // the server's keep-alive timeout
        let error = io.inner_mut().write_all(b"POST / HTTP/1.1\r\n").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        assert!(facts.unsent(), "nothing of the second request left");
    }

    /// A server that stops reading mid-body: later writes are discarded, and its answer
    /// (already sent) can still be read.
    #[tokio::test]
    async fn after_the_server_stops_reading_its_answer_is_still_read() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut io = track(client);
        let facts = io.inner().facts.clone();
        io.inner_mut()
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n")
            .await
            .unwrap();
        server.write_all(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..64 {
            io.inner_mut().write_all(&chunk).await.expect("writes after the close are discarded");
        }
        // One read: the reset that follows may fail the next one, as it does in hyper
        // after a complete answer (which is fine then).
        let mut answer = [0u8; 256];
        let n = io.inner_mut().read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(!facts.unsent(), "part of this request had left: it must not be sent again");
    }
}
