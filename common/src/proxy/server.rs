//! [`serve`]: the accept loop shared by every proxy listener, TCP or Unix.
//!
//! Per connection: the raw bytes pass through the [`HeadGuard`] on their way into hyper's
//! HTTP/1 parser; per request: the guard's verdict is checked (a refused head is answered
//! with 400 and `Connection: close`, and never reaches the [`Handler`]), the handler runs,
//! and the metrics count the status, the time to the response head and the request as in
//! flight until its response body is finished or dropped.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use http::header::CONNECTION;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
/// Re-exported for [`serve_connection`] callers.
pub use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::accept::{ConnCap, accept};
use crate::error::ApiError;
use crate::proxy::body::ProxyBody;
use crate::proxy::guard::HeadGuard;
use crate::proxy::hop::strip_hop_by_hop;
use crate::proxy::limits::Limits;
use crate::proxy::metrics::ProxyMetrics;

/// Turns one request into one response. Implement it with an `async fn`.
///
/// The request arrives with its hop-by-hop headers already removed (so headers the handler
/// adds are safe from a client's `Connection: <name>`), after the head guard accepted it.
/// Its body is hyper's [`Incoming`]: wrap it with `ProxyBody::from` to stream it on.
/// Errors are answered, not returned: build them with [`ApiError::to_response`].
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Re-exported: the listeners [`serve`] accepts from (TCP, Unix), shared with every other
/// accept loop through [`crate::accept`].
pub use crate::accept::Listener;

pin_project! {
    /// A connection whose read side also feeds the head guard, and whose shutdown is a
    /// lingering close (RFC 9112 §9.6). [`serve_connection`] wraps every connection in it;
    /// a server with its own accept loop (the gateway) uses [`GuardedIo::new`].
    ///
    /// Why the lingering close: when we answer before reading the whole request body (a
    /// 413 or 401 decided from the head), closing the socket with unread bytes in it makes
    /// the kernel send a reset, and the client — still writing its body — gets a broken
    /// pipe or a reset instead of our answer. So on shutdown we half-close (the client
    /// reads our answer, then end of stream) and read and discard what it still sends,
    /// until it closes, [`Limits::linger_timeout`] passes or
    /// [`Limits::linger_max_bytes`] were discarded.
    pub struct GuardedIo<T> {
        #[pin]
        inner: T,
        guard: Arc<Mutex<HeadGuard>>,
        linger: Option<Pin<Box<tokio::time::Sleep>>>,
        linger_for: std::time::Duration,
        linger_left: u64,
    }
}

impl<T> GuardedIo<T> {
    /// Wraps `inner`: every byte read is fed to `guard`; the lingering close follows
    /// `limits` ([`Limits::linger_timeout`], [`Limits::linger_max_bytes`]).
    pub fn new(inner: T, guard: Arc<Mutex<HeadGuard>>, limits: &Limits) -> Self {
        Self {
            inner,
            guard,
            linger: None,
            linger_for: limits.linger_timeout,
            linger_left: limits.linger_max_bytes,
        }
    }
}

impl<T: AsyncRead> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.guard.lock().unwrap_or_else(PoisonError::into_inner).feed(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.linger.is_none() {
            ready!(this.inner.as_mut().poll_shutdown(cx))?;
            *this.linger = Some(Box::pin(tokio::time::sleep(*this.linger_for)));
        }
        // Drain until the client closes, the time is up or enough was discarded.
        let mut scratch = [0u8; 8192];
        loop {
            if *this.linger_left == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match this.inner.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    *this.linger_left = this.linger_left.saturating_sub(buf.filled().len() as u64);
                }
                // A reset or any other error: the client is gone, nothing left to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let timer = this.linger.as_mut().expect("set above");
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

fn refuse(error: ApiError) -> Response<ProxyBody> {
    let mut response: Response<ProxyBody> = error.to_response();
    // After a framing problem nothing else on this connection can be trusted.
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn one_request<H: Handler>(
    handler: &H,
    guard: &Mutex<HeadGuard>,
    metrics: &ProxyMetrics,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let in_flight = metrics.start();
    let verdict = guard.lock().unwrap_or_else(PoisonError::into_inner).next_verdict();
    let response = match verdict {
        Err(error) => {
            tracing::warn!(%error, method = %req.method(), "refused an ambiguous request head");
            refuse(ApiError::bad_request(format!(
                "request refused before forwarding: {error}; send a well-formed HTTP/1.1 request"
            )))
        }
        Ok(()) if req.method() == Method::CONNECT => refuse(
            ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                crate::error::ErrorKind::InvalidRequestError,
                "CONNECT is not supported: this is a reverse proxy; send requests to it directly",
            )
            .retry(crate::error::Retry::Never),
        ),
        Ok(()) => {
            // Before the handler: a client's `Connection: <name>` must not be able to remove
            // a header the handler adds (the tokens, the provider key) when it is forwarded.
            let mut req = req;
            strip_hop_by_hop(req.headers_mut());
            handler.handle(req).await
        }
    };
    metrics.record(response.status(), start.elapsed());
    response.map(|body| body.track(in_flight))
}

fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    crate::accept::http1_server(limits.header_read_timeout, limits.max_header_bytes)
}

/// Serves one connection that the caller accepted itself — e.g. after a TLS handshake,
/// which must not run inside the accept loop. Same per-request behaviour as [`serve`]
/// (head guard, CONNECT refused, metrics). The connection is registered with `graceful`
/// now, so the caller's shutdown drains it; the returned future (spawn it) ends when the
/// connection closes.
pub fn serve_connection<I, H>(
    io: I,
    handler: Arc<H>,
    limits: &Limits,
    metrics: Arc<ProxyMetrics>,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let guard = Arc::new(Mutex::new(HeadGuard::new(limits.max_header_bytes)));
    let io = TokioIo::new(GuardedIo::new(io, guard.clone(), limits));
    let service = service_fn(move |req| {
        let (handler, guard, metrics) = (handler.clone(), guard.clone(), metrics.clone());
        async move { Ok::<_, Infallible>(one_request(&*handler, &guard, &metrics, req).await) }
    });
    let connection = graceful.watch(http1_builder(limits).serve_connection(io, service));
    async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "client connection ended with an error");
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then stops accepting and
/// gives in-flight requests (streams included) [`Limits::grace_period`] to finish. At most
/// [`Limits::max_connections`] connections are open at once; more are closed at accept.
pub async fn serve<L: Listener, H: Handler>(
    listener: L,
    handler: Arc<H>,
    limits: Limits,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    let cap = ConnCap::new("data", limits.max_connections);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, slot) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &cap) => accepted,
        };
        let connection = serve_connection(io, handler.clone(), &limits, metrics.clone(), &graceful);
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        grace_secs = limits.grace_period.as_secs(),
        "shutting down: waiting for in-flight requests"
    );
    if tokio::time::timeout(limits.grace_period, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over: closing the remaining connections");
    }
}

/// Completes on SIGTERM or SIGINT (what Kubernetes and a terminal send).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::warn!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
