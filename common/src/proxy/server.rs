//! The one server shell of every Sanctum listener: the proxy data ports (bridge,
//! forwarder), the gateway, the operator's webhook and every admin port.
//!
//! [`Server`] owns everything between the socket and a [`Handler`]: the accept loop with
//! its connection cap ([`crate::accept`]), an optional TLS handshake (in the connection's
//! task, under a deadline, counted against the cap), the header-read deadline, the
//! [`HeadGuard`] on the raw bytes, hop-by-hop removal before the handler sees a request,
//! the lingering close, metrics, and the graceful shutdown.
//!
//! HTTP/1.1 always; HTTP/2 as well on a TLS listener built with [`Server::http2`], chosen
//! by the client through ALPN (RFC 7301; `h2` preferred, `http/1.1` still offered). An h2
//! connection gets the h2 counterparts of the HTTP/1 protections
//! ([`crate::accept::http2_server`]: keep-alive ping, header-block cap, stream cap) and
//! the same cap, drain, hop-by-hop removal, `CONNECT` refusal and metrics; the head guard
//! and the lingering close are HTTP/1 matters (h2 frames its messages itself) and apply to
//! HTTP/1 connections only.
//!
//! Per request: the guard's verdict is checked (a refused head is answered with 400 and
//! `Connection: close`, and never reaches the handler; so is `CONNECT`, with 405), the
//! hop-by-hop headers are removed, the handler runs, and the metrics (when given) count the
//! status, the time to the response head and the request as in flight until its response
//! body is finished or dropped.
//!
//! Generic, not boxed: each listener's handler and body type are monomorphized into its
//! loop, so the per-request path allocates nothing beyond what the handler does.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::accept::{ConnCap, accept};
use crate::error::ApiError;
use crate::proxy::guard::HeadGuard;
use crate::proxy::hop::strip_hop_by_hop;
use crate::proxy::limits::Limits;
use crate::proxy::metrics::{InFlight, ProxyMetrics};

/// Re-exported: the listeners [`Server::serve`] accepts from (TCP, Unix), shared with every
/// other accept loop through [`crate::accept`].
pub use crate::accept::Listener;

/// Turns one request into one response. Implement it with an `async fn`.
///
/// The request arrives after the head guard accepted it, with its hop-by-hop headers
/// already removed (RFC 9110 §7.6.1), so headers the handler adds are safe from a client's
/// `Connection: <name>`. Its body is hyper's [`Incoming`]: wrap it with `ProxyBody::from`
/// to stream it on. Errors are answered, not returned: build them with
/// [`ApiError::to_response`].
pub trait Handler: Send + Sync + 'static {
    /// The response body: [`crate::proxy::ProxyBody`] for a proxy, `Full<Bytes>` for a
    /// small server, the gateway's metered body. `From<Bytes>` so the shell can answer the
    /// requests it refuses itself in the same type.
    type Body: Body<Data = Bytes, Error: Into<Box<dyn StdError + Send + Sync>>>
        + From<Bytes>
        + Send
        + 'static;

    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Self::Body>> + Send;

    /// Told of every request the shell answered itself (the handler never saw it), e.g. to
    /// count it in the handler's own metrics. Does nothing by default.
    fn refused(&self, _refusal: Refusal) {}
}

/// A request the shell answered itself instead of passing it to the [`Handler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The [`HeadGuard`] found the head ambiguous or malformed: 400, connection closed.
    MalformedHead,
    /// `CONNECT`: every Sanctum listener is an origin or reverse proxy, never a tunnel: 405.
    Connect,
}

impl Refusal {
    /// The status the client got.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedHead => StatusCode::BAD_REQUEST,
            Self::Connect => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short label for metrics: `malformed_head` or `connect`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MalformedHead => "malformed_head",
            Self::Connect => "connect",
        }
    }
}

/// One listener's serving: a name (in log lines), a handler, the [`Limits`] it applies,
/// and optionally [`ProxyMetrics`] and TLS. Built once at start; [`Server::serve`] runs it.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sanctum_common::proxy::{Limits, server::{Handler, Server}};
/// # async fn run<H: Handler>(handler: Arc<H>, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// Server::new("webhook", handler, Limits::default())
///     .tls(acceptor)
///     .serve(listener, sanctum_common::proxy::server::shutdown_signal())
///     .await;
/// # Ok(()) }
/// ```
pub struct Server<H> {
    name: &'static str,
    handler: Arc<H>,
    limits: Limits,
    metrics: Option<Arc<ProxyMetrics>>,
    tls: Option<TlsAcceptor>,
    http2: bool,
}

/// The protocol names offered by ALPN (RFC 7301) when HTTP/2 is on, preferred first.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

impl<H: Handler> Server<H> {
    /// Plain HTTP/1.1 with `limits`: [`Limits::max_connections`] open at once,
    /// [`Limits::header_read_timeout`] per head, [`Limits::max_header_bytes`] per head,
    /// [`Limits::grace_period`] to drain at shutdown. `name` labels its log lines.
    pub fn new(name: &'static str, handler: Arc<H>, limits: Limits) -> Self {
        Self { name, handler, limits, metrics: None, tls: None, http2: false }
    }

    /// Counts every request in `metrics` (status, time to response head, in flight).
    #[must_use]
    pub fn metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves HTTPS: each connection first completes a TLS handshake with `acceptor`
    /// within [`Limits::tls_handshake_timeout`], in its own task (a slow client delays
    /// only itself) and holding its place under the connection cap.
    #[must_use]
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Offers HTTP/2 besides HTTP/1.1 on a TLS listener: ALPN then lists `h2` first and
    /// `http/1.1` (replacing the acceptor's own list), and a client that picks `h2` has its
    /// requests multiplexed on one connection (what the API server's webhook client does,
    /// instead of opening a TLS connection per concurrent review). No effect without
    /// [`Server::tls`]: a plain listener stays HTTP/1.1 (no h2c).
    #[must_use]
    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// [`Server::tls`] when `acceptor` is set.
    #[must_use]
    pub fn maybe_tls(self, acceptor: Option<TlsAcceptor>) -> Self {
        match acceptor {
            Some(acceptor) => self.tls(acceptor),
            None => self,
        }
    }

    /// Accepts on `listener` until `shutdown` completes, then stops accepting and gives
    /// in-flight requests (streams included) [`Limits::grace_period`] to finish before the
    /// remaining connections are closed. At most [`Limits::max_connections`] connections
    /// are open at once (from accept, through the TLS handshake, to close); more are closed
    /// at accept.
    pub async fn serve<L: Listener>(self, listener: L, shutdown: impl Future<Output = ()> + Send) {
        let Self { name, handler, limits, metrics, tls, http2 } = self;
        let tls = match tls {
            Some(acceptor) if http2 => Some(with_h2_alpn(&acceptor)),
            other => other,
        };
        let graceful = GracefulShutdown::new();
        let cap = ConnCap::new(name, limits.max_connections);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (io, slot) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept(&listener, &cap) => accepted,
            };
            let (handler, metrics) = (handler.clone(), metrics.clone());
            match &tls {
                None => {
                    let connection = serve_http1(io, handler, &limits, metrics, graceful.watcher());
                    tokio::spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io));
                    // Taken now: a drain waits for a handshake in progress (bounded by
                    // its deadline), then closes that connection before its first request.
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        match handshake.await {
                            Ok(Ok(io)) if io.get_ref().1.alpn_protocol() == Some(ALPN_H2) => {
                                serve_http2(io, handler, &limits, metrics, watcher).await;
                            }
                            Ok(Ok(io)) => {
                                serve_http1(io, handler, &limits, metrics, watcher).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(listener = name, %error, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(listener = name, "TLS handshake timed out"),
                        }
                        drop(slot);
                    });
                }
            }
        }
        drop(listener);
        tracing::info!(
            listener = name,
            grace_secs = limits.grace_period.as_secs_f64(),
            "shutting down: waiting for in-flight requests"
        );
        if tokio::time::timeout(limits.grace_period, graceful.shutdown()).await.is_err() {
            tracing::warn!(listener = name, "grace period over: closing the remaining connections");
        }
    }
}

/// `acceptor` with its ALPN list set to `h2`, `http/1.1` (the rest of its configuration,
/// certificate resolver included, shared).
fn with_h2_alpn(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::clone(acceptor.config());
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// The proxy data port in one call: [`Server`] named `data`, plain HTTP, counting in
/// `metrics`. See [`Server::serve`].
pub async fn serve<L: Listener, H: Handler>(
    listener: L,
    handler: Arc<H>,
    limits: Limits,
    metrics: Arc<ProxyMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    Server::new("data", handler, limits).metrics(metrics).serve(listener, shutdown).await;
}

pin_project! {
    /// A connection whose read side also feeds the head guard, and whose shutdown is a
    /// lingering close (RFC 9112 §9.6). [`Server`] wraps every connection in it.
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

pin_project! {
    /// A response body that keeps the request counted as in flight until it is finished
    /// or dropped (a stream counts for its whole length). Adds no allocation.
    struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn refuse<B: From<Bytes>>(error: ApiError, http1: bool) -> Response<B> {
    let mut response: Response<B> = error.to_response();
    // After a framing problem nothing else on this connection can be trusted. (HTTP/2 has
    // no such header: RFC 9113 §8.2.2; its streams do not share framing.)
    if http1 {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// One request: `guard` is the HTTP/1 connection's head guard, `None` on HTTP/2.
async fn one_request<H: Handler>(
    handler: &H,
    guard: Option<&Mutex<HeadGuard>>,
    metrics: Option<&ProxyMetrics>,
    req: Request<Incoming>,
) -> Response<Tracked<H::Body>> {
    let start = Instant::now();
    let in_flight = metrics.map(ProxyMetrics::start);
    let verdict =
        guard.map_or(Ok(()), |g| g.lock().unwrap_or_else(PoisonError::into_inner).next_verdict());
    let http1 = guard.is_some();
    let response = match verdict {
        Err(error) => {
            tracing::warn!(%error, method = %req.method(), "refused an ambiguous request head");
            handler.refused(Refusal::MalformedHead);
            refuse(
                ApiError::bad_request(format!(
                    "request refused: {error}; send a well-formed HTTP/1.1 request"
                )),
                http1,
            )
        }
        Ok(()) if req.method() == Method::CONNECT => {
            handler.refused(Refusal::Connect);
            refuse(
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    crate::error::ErrorKind::InvalidRequestError,
                    "CONNECT is not supported: send requests to this server directly",
                )
                .retry(crate::error::Retry::Never),
                http1,
            )
        }
        Ok(()) => {
            // Before the handler: a client's `Connection: <name>` must not be able to remove
            // a header the handler adds (the tokens, the provider key) when it is forwarded.
            let mut req = req;
            strip_hop_by_hop(req.headers_mut());
            handler.handle(req).await
        }
    };
    if let Some(metrics) = metrics {
        metrics.record(response.status(), start.elapsed());
    }
    response.map(|inner| Tracked { inner, in_flight })
}

/// Serves one accepted (and, for TLS, handshaken) HTTP/1 connection until it closes: head
/// guard, header-read deadline, per-request handling, lingering close, registered with the
/// shutdown through `watcher`.
fn serve_http1<I, H>(
    io: I,
    handler: Arc<H>,
    limits: &Limits,
    metrics: Option<Arc<ProxyMetrics>>,
    watcher: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let guard = Arc::new(Mutex::new(HeadGuard::new(limits.max_header_bytes)));
    let io = TokioIo::new(GuardedIo::new(io, guard.clone(), limits));
    let service = service_fn(move |req| {
        let (handler, guard, metrics) = (handler.clone(), guard.clone(), metrics.clone());
        async move {
            Ok::<_, Infallible>(one_request(&*handler, Some(&guard), metrics.as_deref(), req).await)
        }
    });
    let connection = watcher.watch(
        crate::accept::http1_server(limits.header_read_timeout, limits.max_header_bytes)
            .serve_connection(io, service),
    );
    async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "client connection ended with an error");
        }
    }
}

/// Serves one HTTP/2 connection (negotiated by ALPN) until it closes: the h2 limits of
/// [`crate::accept::http2_server`], per-request handling on each stream, registered with
/// the shutdown through `watcher` (a drain sends GOAWAY and lets open streams finish).
fn serve_http2<I, H>(
    io: I,
    handler: Arc<H>,
    limits: &Limits,
    metrics: Option<Arc<ProxyMetrics>>,
    watcher: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |req| {
        let (handler, metrics) = (handler.clone(), metrics.clone());
        async move { Ok::<_, Infallible>(one_request(&*handler, None, metrics.as_deref(), req).await) }
    });
    let connection = watcher.watch(
        crate::accept::http2_server(limits.header_read_timeout, limits.max_header_bytes)
            .serve_connection(TokioIo::new(io), service),
    );
    async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "client HTTP/2 connection ended with an error");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use http_body_util::Full;
    use tokio::io::AsyncReadExt as _;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::{TcpListener, TcpStream};

    /// Adds a header, as the bridge and the gateway do, and answers with the header names
    /// it holds then, one per line.
    #[derive(Default)]
    struct Echo {
        refused: AtomicU64,
    }

    impl Handler for Echo {
        type Body = Full<Bytes>;
        async fn handle(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
            req.headers_mut().insert("x-api-key", HeaderValue::from_static("added"));
            let mut names: Vec<String> =
                req.headers().iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect();
            names.sort_unstable();
            Response::new(Full::new(Bytes::from(names.join("\n"))))
        }
        fn refused(&self, _refusal: Refusal) {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn start(handler: Arc<Echo>, metrics: Arc<ProxyMetrics>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new("test", handler, Limits::default()).metrics(metrics);
        tokio::spawn(server.serve(listener, std::future::pending()));
        addr
    }

    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    #[tokio::test]
    async fn hop_by_hop_headers_are_gone_before_the_handler_adds_its_own() {
        let metrics = Arc::new(ProxyMetrics::new("t"));
        let addr = start(Arc::default(), metrics.clone()).await;
        let answer = exchange(
            addr,
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close, x-api-key, accept\r\n\
             x-api-key: client\r\naccept: */*\r\nkeep-alive: 5\r\nx-kept: 1\r\n\r\n",
        )
        .await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(body, "host=x\nx-api-key=added\nx-kept=1");
        assert_eq!(metrics.requests_with_status(200), 1);
        // The response body was finished: nothing counts as in flight any more.
        assert_eq!(metrics.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_shell_answers_malformed_heads_and_connect_and_tells_the_handler() {
        let metrics = Arc::new(ProxyMetrics::new("t"));
        let echo = Arc::new(Echo::default());
        let addr = start(echo.clone(), metrics.clone()).await;
        let smuggle = exchange(
            addr,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
        assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
        assert!(smuggle.contains("connection: close"), "{smuggle}");
        let connect = exchange(addr, "CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n").await;
        assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
        assert_eq!(echo.refused.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.requests_with_status(400), 1);
        assert_eq!(metrics.requests_with_status(405), 1);
    }
}
