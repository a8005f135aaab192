//! Admission of connections, the same for every listener of every binary (the proxy data
//! ports, the gateway, the admin ports, the operator's webhook and token service):
//!
//! - a **connection cap** ([`ConnCap`]): at most `max` connections open at once per
//!   listener; one beyond it is accepted and closed at once (so the client sees a close,
//!   not a hang in the backlog), with a rate-limited log line. Without it, idle
//!   connections to one port (the admin port, reachable from the whole cluster) use up the
//!   process's file descriptors and the other ports stop accepting.
//! - a **header-read deadline** ([`http1_server`]): a connection must send a complete
//!   request head within the deadline after it opens, and after each response; one that
//!   sends nothing is closed.
//! - accept errors (`EMFILE` and the like) back off instead of spinning ([`accept`]).
//!
//! HTTP/2 ([`http2_server`], offered by ALPN on TLS listeners that opt in) has no request
//! head to time: its counterparts are a keep-alive ping (a peer that stops answering is
//! dropped), a cap on each header block and a cap on concurrent streams per connection.
//!
//! [`crate::proxy::Server`], the shell every listener runs on, applies all three.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A listener [`accept`] (and [`crate::proxy::Server`]) can take connections from.
pub trait Listener: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Small writes (SSE events) must leave at once, not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// How long an accept loop waits after a failed accept (out of file descriptors, most
/// often) before trying again: retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Least time between two "at its cap" log lines of one listener: a flood of connections
/// must not become a flood of log lines.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// The cap on open connections of one listener. Clones share the count.
#[derive(Clone, Debug)]
pub struct ConnCap {
    inner: Arc<CapInner>,
}

#[derive(Debug)]
struct CapInner {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// One open connection's place under its [`ConnCap`]; dropping it frees the place. Keep it
/// alive as long as the connection (move it into the connection's task).
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnCap {
    /// A cap of `max` open connections (at least 1) for the listener named `listener` in
    /// log lines (e.g. `"admin"`, `"gateway"`).
    pub fn new(listener: &'static str, max: usize) -> Self {
        let max = max.max(1);
        Self {
            inner: Arc::new(CapInner {
                listener,
                max,
                slots: Arc::new(Semaphore::new(max)),
                refused: AtomicU64::new(0),
                last_log: Mutex::new(None),
            }),
        }
    }

    /// A place for a connection just accepted, or `None` when `max` are open: the caller
    /// then closes the connection. Logs the refusal (at most once every 5 s per listener).
    pub fn admit(&self) -> Option<Slot> {
        if let Ok(permit) = self.inner.slots.clone().try_acquire_owned() {
            return Some(Slot(permit));
        }
        let refused = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self.inner.last_log.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY) {
            *last = Some(now);
            tracing::warn!(
                listener = self.inner.listener,
                max_connections = self.inner.max,
                refused_total = refused,
                "connection cap reached: closed a new connection; find the client holding \
                 connections open, or raise this listener's connection cap"
            );
        }
        None
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// Connections closed at accept because the cap was reached, since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }
}

/// The next connection on `listener` that fits under `cap`, with its [`Slot`]. Connections
/// beyond the cap are closed here; accept errors are logged and retried after a pause.
/// Cancel-safe: no connection is lost when the future is dropped (use it in `select!`).
pub async fn accept<L: Listener>(listener: &L, cap: &ConnCap) -> (L::Io, Slot) {
    loop {
        match listener.accept().await {
            Ok(io) => match cap.admit() {
                Some(slot) => return (io, slot),
                None => drop(io),
            },
            Err(error) => {
                tracing::warn!(listener = cap.inner.listener, %error, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The HTTP/1 server settings every listener uses: a client must send a complete request
/// head within `header_read_timeout` of the connection opening (or of the last response,
/// on keep-alive), else the connection is closed; heads are capped at `max_header_bytes`.
pub fn http1_server(
    header_read_timeout: Duration,
    max_header_bytes: usize,
) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Without a timer hyper silently ignores the header-read timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(max_header_bytes.max(8192) * 2)
        .max_header_size(max_header_bytes);
    builder
}

/// Most concurrent requests (streams) one HTTP/2 connection may carry: the least RFC 9113
/// §6.5.2 recommends. A client that wants more opens another connection, which counts
/// against the connection cap.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// The HTTP/2 server settings matching [`http1_server`]'s: a ping every
/// `header_read_timeout` while the peer is silent, the connection closed when one goes
/// unanswered for as long; header blocks (decoded, as RFC 9113 §6.5.2 counts them) capped
/// at `max_header_bytes` (a larger one is answered 431 by the `h2` crate and never reaches
/// the handler); at most [`H2_MAX_CONCURRENT_STREAMS`] requests at once per connection.
pub fn http2_server(
    header_read_timeout: Duration,
    max_header_bytes: usize,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        // Without a timer hyper silently ignores the keep-alive settings.
        .timer(TokioTimer::new())
        .keep_alive_interval(header_read_timeout)
        .keep_alive_timeout(header_read_timeout)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn cap_closes_connections_beyond_it_and_frees_places() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cap = ConnCap::new("test", 2);
        let mut clients = Vec::new();
        let mut slots = Vec::new();
        for _ in 0..2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            slots.push(accept(&listener, &cap).await);
        }
        assert_eq!(cap.open(), 2);
        // The third is accepted and closed at once: its client reads end of stream.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let next = tokio::spawn(async move {
            let got = accept(&listener, &cap).await;
            (got, cap)
        });
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the connection beyond the cap is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // A place frees up: the next connection is served.
        drop(slots.pop());
        let _fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ((_io, _slot), cap) =
            tokio::time::timeout(Duration::from_secs(5), next).await.unwrap().unwrap();
        assert!(cap.refused() >= 1, "refused {}", cap.refused());
        assert_eq!(cap.open(), 2);
    }
}
