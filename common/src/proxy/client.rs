//! [`UpstreamClient`]: a pooled keep-alive HTTP/1.1 client to the next hop — a Unix socket
//! (bridge → forwarder) or an `http://`/`https://` URL (forwarder → gateway, gateway →
//! provider) with rustls, the system's root certificates and an optional extra CA file.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{ApiError, Retry};
use crate::proxy::body::ProxyBody;
use crate::proxy::hop::strip_hop_by_hop;
use crate::proxy::limits::Limits;
use crate::proxy::metrics::{ProxyMetrics, UpstreamErrorKind};
use crate::proxy::upstream_io::{ConnFacts, track};

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A Unix socket; the request's `Host` header is passed on as it came.
    Unix(PathBuf),
    /// An `http` or `https` base URL; `Host` is set to its authority, and a path in the URL
    /// (`https://gw/prefix`) is put before every request path.
    Url { scheme: Scheme, authority: Authority, prefix: String, ca: Option<ExtraCa> },
}

/// CA certificates trusted for an https upstream besides the system roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraCa {
    /// A PEM file, read when the client is built.
    File(PathBuf),
    /// PEM text, e.g. from the environment of a container that has no config volume.
    Pem(String),
}

impl Upstream {
    /// A Unix socket upstream.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::Unix(path.into())
    }

    /// Parses an `http://` or `https://` URL (no query, no user info).
    pub fn url(url: &str) -> Result<Self, UpstreamError> {
        let invalid =
            |why: &str| UpstreamError::InvalidUrl { url: url.to_owned(), why: why.to_owned() };
        let uri: Uri = url.parse().map_err(|_| invalid("it is not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid("it has no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid("the scheme must be http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info in the URL is not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not supported"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self::Url { scheme, authority, prefix, ca: None })
    }

    /// Trusts the PEM certificates in `path` besides the system roots (`https` only).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Self::Url { ca, .. } = &mut self {
            *ca = Some(ExtraCa::File(path.into()));
        }
        self
    }

    /// Trusts the CA certificates in `pem` (PEM text) besides the system roots.
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        if let Self::Url { ca, .. } = &mut self {
            *ca = Some(ExtraCa::Pem(pem.into()));
        }
        self
    }

    fn describe(&self) -> String {
        match self {
            Self::Unix(path) => format!("Unix socket {}", path.display()),
            Self::Url { scheme, authority, prefix, .. } => {
                format!("{scheme}://{authority}{prefix}")
            }
        }
    }
}

/// Why the upstream could not be used. Messages name the socket or URL, never a header.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("invalid upstream URL '{url}': {why}")]
    InvalidUrl { url: String, why: String },
    #[error("cannot read the CA file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("{target} does not exist")]
    SocketMissing { target: String },
    #[error("{target} refused the connection")]
    Refused { target: String },
    #[error("connecting to {target} took longer than {secs} s")]
    ConnectTimeout { target: String, secs: u64 },
    #[error("cannot connect to {target}: {why}")]
    Connect { target: String, why: String },
    #[error("{target} sent no response head within {secs} s")]
    ResponseTimeout { target: String, secs: u64 },
    #[error("{target} closed the connection or sent an invalid response: {why}")]
    Protocol { target: String, why: String },
}

impl UpstreamError {
    /// The metric kind of this failure.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            Self::ConnectTimeout { .. } | Self::ResponseTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            Self::Protocol { .. } => UpstreamErrorKind::Protocol,
            _ => UpstreamErrorKind::Connect,
        }
    }

    /// The answer for the client: 504 for a response timeout, 502 otherwise, both with
    /// `retry-after: 1`. `hint` says what to check, e.g. "is the forwarder sidecar running?".
    pub fn to_api_error(&self, hint: &str) -> ApiError {
        let message = if hint.is_empty() { self.to_string() } else { format!("{self}; {hint}") };
        match self {
            Self::ResponseTimeout { .. } => ApiError::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                crate::error::ErrorKind::ApiError,
                message,
            )
            .retry(Retry::After(1)),
            _ => ApiError::bad_gateway(message),
        }
    }
}

/// How a new connection is opened.
enum Connect {
    /// A Unix socket, whatever the request URI says.
    Unix(PathBuf),
    /// TCP to `host:port` (every resolved address in turn), with TLS when `tls` is set.
    Tcp { host: String, port: u16, tls: Option<(TlsConnector, ServerName<'static>)> },
}

/// An open upstream connection: a Unix socket, TCP, or TLS over TCP.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, b),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Unix(s) => s.is_write_vectored(),
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

impl Connect {
    /// Opens a connection: the socket (and the TLS handshake), all within `timeout`.
    async fn open(&self, timeout: Duration) -> io::Result<Stream> {
        let opening = async {
            match self {
                Self::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
                Self::Tcp { host, port, tls } => {
                    let tcp = connect_tcp(host, *port).await?;
                    tcp.set_nodelay(true)?;
                    match tls {
                        None => Ok(Stream::Tcp(tcp)),
                        Some((connector, name)) => {
                            let tls = connector.connect(name.clone(), tcp).await?;
                            Ok(Stream::Tls(Box::new(tls)))
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, opening).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
}

/// TCP to every address `host` resolves to, in turn; the last error if none answers.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{host} resolves to no address"))
    }))
}

/// One pooled keep-alive connection: hyper's sender, and the facts [`upstream_io`] keeps
/// about the connection (the connection itself is driven by its own task).
///
/// [`upstream_io`]: crate::proxy::upstream_io
struct Conn {
    sender: SendRequest<ProxyBody>,
    facts: Arc<ConnFacts>,
    /// When it went back to the pool.
    idle_since: Instant,
}

/// Idle connections, most recently used last (taken LIFO: the warmest connection, and the
/// least used ones age out).
struct Pool {
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is neither past the idle timeout nor
    /// closed; older ones met on the way are dropped (which closes them).
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(conn) = idle.pop() {
            if now.duration_since(conn.idle_since) < self.idle_timeout && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Drops (closes) the connections idle past the timeout.
    fn evict_expired(&self) {
        let now = Instant::now();
        self.lock().retain(|c| now.duration_since(c.idle_since) < self.idle_timeout);
    }

    /// Closes idle connections once they pass the timeout, checking every `idle_timeout`
    /// (so a connection closes between one and two timeouts after its last use), as long
    /// as the pool lives. Besides freeing the upstream's sockets, the timer keeps the
    /// runtime's next wake-up within the idle timeout, so that a server's header-read timer
    /// (longer) registered on every request does not wake the runtime's driver each time.
    /// Without a runtime (a client built outside one) idle connections are only dropped
    /// when the pool is next used.
    fn spawn_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.idle_timeout.is_zero() {
            return; // nothing is kept idle
        }
        let pool = Arc::downgrade(self);
        let every = self.idle_timeout;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.evict_expired(),
                    None => return,
                }
            }
        });
    }

    /// Keeps `conn` for the next request, unless the pool is full. Connections idle past
    /// the timeout are dropped here and in [`Pool::take`]: the idle timeout is enforced
    /// whenever the pool is used, with no timer of its own.
    fn put(&self, mut conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = self.lock();
        if idle
            .first()
            .is_some_and(|c| conn.idle_since.duration_since(c.idle_since) >= self.idle_timeout)
        {
            let timeout = self.idle_timeout;
            let now = conn.idle_since;
            idle.retain(|c| now.duration_since(c.idle_since) < timeout);
        }
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// A connection lent to one request, handed back to the pool when the response body has
/// been read to its end ([`ProxyBody`] calls [`Checkin::done`]); dropped otherwise, which
/// closes it (an unfinished HTTP/1 exchange cannot be reused).
pub(crate) struct Checkin {
    pool: Arc<Pool>,
    conn: Conn,
}

impl Checkin {
    /// The response body was read to its end. hyper has then normally finished the
    /// exchange already and the connection goes straight back; if not (the request body
    /// is still being sent after an early answer), a task puts it back once it is ready.
    pub(crate) fn done(self) {
        let Self { pool, mut conn } = self;
        if conn.sender.is_ready() {
            pool.put(conn);
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if conn.sender.ready().await.is_ok() {
                    pool.put(conn);
                }
            });
        }
    }
}

/// Most request-body bytes kept for a second try (see [`UpstreamClient::send`]). A request
/// that never left cannot have had more read than hyper buffers before its first write
/// (twice the head limit), so this loses no retry; it only bounds the memory.
const REPLAY_CAP: usize = 256 * 1024;

/// A pooled HTTP/1.1 client to one upstream (`Arc` it to share): hyper's connection-level
/// client (`hyper::client::conn::http1`), one task per connection, and a small LIFO pool
/// of idle connections of its own; a request takes a connection, and its response body
/// gives it back when read to the end.
pub struct UpstreamClient {
    connect: Connect,
    http1: hyper::client::conn::http1::Builder,
    pool: Arc<Pool>,
    upstream: Upstream,
    target: String,
    host: Option<HeaderValue>,
    limits: Limits,
    metrics: Arc<ProxyMetrics>,
}

/// Why one try failed.
enum TryError {
    /// Opening a new connection failed.
    Connect(io::Error),
    /// The exchange failed; `unsent` when the request provably never left (a reused
    /// connection found closed before its first byte).
    Http { error: hyper::Error, unsent: bool },
    /// The connection closed before hyper took the request: it comes back whole.
    NotTaken(Box<(hyper::Error, Request<ProxyBody>)>),
    /// No response head before the deadline.
    Timeout,
}

impl UpstreamClient {
    /// Builds the client (for `https`, loads the system roots and the CA file now, so that
    /// a bad CA file fails at start-up, not on the first request).
    pub fn new(
        upstream: Upstream,
        limits: &Limits,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<Self, UpstreamError> {
        let mut http1 = hyper::client::conn::http1::Builder::new();
        http1.max_buf_size(limits.max_header_bytes.max(8192) * 2);
        let (connect, host) = match &upstream {
            Upstream::Unix(path) => (Connect::Unix(path.clone()), None),
            Upstream::Url { scheme, authority, ca, .. } => {
                // `[::1]` is bracketed in a URL, not for the resolver or the TLS name.
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                let https = *scheme == Scheme::HTTPS;
                let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
                let tls = if https {
                    let mut config = tls_config(ca.as_ref())?;
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                        UpstreamError::Tls(format!("'{host}' is not a valid TLS server name"))
                    })?;
                    Some((TlsConnector::from(Arc::new(config)), name))
                } else {
                    None
                };
                let value = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    UpstreamError::Tls("the upstream host is not a valid header".into())
                })?;
                (Connect::Tcp { host: host.to_owned(), port, tls }, Some(value))
            }
        };
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: limits.pool_max_idle,
            idle_timeout: limits.pool_idle_timeout,
        });
        pool.spawn_reaper();
        let target = upstream.describe();
        Ok(Self { connect, http1, pool, upstream, target, host, limits: *limits, metrics })
    }

    /// The upstream, as given.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Sends `req` and returns the response head as soon as it arrives; both bodies stream.
    ///
    /// Hop-by-hop headers are removed from the request and the response (remove them from
    /// the request yourself *before* adding headers, or let the [`Server`](crate::proxy::Server)
    /// do it: a `Connection` header names fields to drop); the method, path,
    /// query, other headers and body pass unchanged, except that for a URL upstream the
    /// path gets the URL's prefix and `Host` becomes the upstream's authority. Bodies get
    /// the idle timeout of the [`Limits`]. Failures are counted in the metrics.
    ///
    /// A response framed with `Transfer-Encoding` loses any `Content-Length` it also
    /// carries (RFC 9112 §6.3: the transfer coding wins, and a length passed on would make
    /// the next hop cut the stream short).
    ///
    /// Sent once more, on a new connection, when it failed on a reused connection before
    /// any byte of it was written (the server had closed the idle connection: it cannot
    /// have seen the request), as long as at most 256 KiB of its body had been read.
    /// If the server answers while the body is still being sent and stops reading it, the
    /// rest of the body is discarded and the answer returned (see [`upstream_io`]).
    ///
    /// [`upstream_io`]: crate::proxy::upstream_io
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        strip_hop_by_hop(req.headers_mut());
        self.set_upstream_uri(req.uri_mut())?;
        if let Some(host) = &self.host {
            req.headers_mut().insert(HOST, host.clone());
        }
        let idle = self.limits.body_idle_timeout;
        let deadline = Instant::now() + self.limits.response_head_timeout;
        let result = tokio::time::timeout_at(deadline, self.exchange(req, idle))
            .await
            .unwrap_or(Err(TryError::Timeout));
        match result {
            Ok(response) => Ok(response),
            Err(error) => {
                let error = self.classify(error);
                self.metrics.upstream_error(error.kind());
                Err(error)
            }
        }
    }

    /// The request on a pooled connection, or a new one; on a reused connection that
    /// turns out closed before the request left, once more on a new connection.
    async fn exchange(
        &self,
        req: Request<ProxyBody>,
        idle: Duration,
    ) -> Result<Response<ProxyBody>, TryError> {
        let req = req.map(|body| body.idle_timeout(idle));
        let pooled = loop {
            match self.pool.take() {
                // Pooled connections were ready when put back, so this returns at once; an
                // error means the connection closed meanwhile: nothing was sent on it.
                Some(mut conn) => match conn.sender.ready().await {
                    Ok(()) => break Some(conn),
                    Err(_) => continue,
                },
                None => break None,
            }
        };
        let result = match pooled {
            // A fresh connection cannot have been closed while idle: no copy to resend.
            None => self.send_fresh(req).await,
            Some(conn) => {
                // Kept for the one resend: the head (cheap, reference-counted values) and
                // the body frames read before the connection was found closed.
                let (parts, body) = req.into_parts();
                let (body, replay) = body.replayable(REPLAY_CAP);
                let head =
                    (parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone());
                let result = match self.send_on(conn, Request::from_parts(parts, body)).await {
                    Err(TryError::NotTaken(failed)) => self.send_fresh(failed.1).await,
                    other => other,
                };
                let result = match result {
                    Err(TryError::Http { unsent: true, .. }) => match replay.restart() {
                        Some(body) => {
                            tracing::debug!(target = %self.target, "reused connection was closed before the request left; sending it again on a new one");
                            let mut again = Request::new(body);
                            (
                                *again.method_mut(),
                                *again.uri_mut(),
                                *again.version_mut(),
                                *again.headers_mut(),
                            ) = head;
                            self.send_fresh(again).await
                        }
                        None => result,
                    },
                    other => other,
                };
                replay.release();
                result
            }
        };
        result.map(|(response, checkin)| {
            let mut response =
                response.map(|b| ProxyBody::from(b).idle_timeout(idle).with_checkin(checkin));
            if response.headers().contains_key(http::header::TRANSFER_ENCODING) {
                response.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            strip_hop_by_hop(response.headers_mut());
            response
        })
    }

    /// The request on a new connection.
    async fn send_fresh(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Checkin), TryError> {
        let stream =
            self.connect.open(self.limits.connect_timeout).await.map_err(TryError::Connect)?;
        let io = track(stream);
        let facts = io.inner().facts().clone();
        let (sender, connection) = self
            .http1
            .handshake(io)
            .await
            .map_err(|error| TryError::Http { error, unsent: false })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        let conn = Conn { sender, facts, idle_since: Instant::now() };
        self.send_on(conn, req).await
    }

    /// The request on `conn`, ready to send.
    async fn send_on(
        &self,
        mut conn: Conn,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Checkin), TryError> {
        match conn.sender.try_send_request(req).await {
            Ok(response) => Ok((response, Checkin { pool: self.pool.clone(), conn })),
            Err(mut failed) => match failed.take_message() {
                // hyper found the connection closed before it took the request.
                Some(req) => Err(TryError::NotTaken(Box::new((failed.into_error(), req)))),
                None => {
                    Err(TryError::Http { error: failed.into_error(), unsent: conn.facts.unsent() })
                }
            },
        }
    }

    /// Puts `uri` in origin form (`/path?query`, what an HTTP/1.1 request line carries to
    /// a server), after the URL's prefix if any. Unchanged when already so (the usual case).
    fn set_upstream_uri(&self, uri: &mut Uri) -> Result<(), UpstreamError> {
        let prefix = match &self.upstream {
            Upstream::Url { prefix, .. } => prefix.as_str(),
            Upstream::Unix(_) => "",
        };
        let origin_form = uri.scheme().is_none() && uri.authority().is_none();
        if origin_form && prefix.is_empty() && uri.path().starts_with('/') {
            return Ok(());
        }
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path = if path.starts_with('/') { path } else { "/" };
        let joined = if prefix.is_empty() {
            Uri::try_from(path)
        } else {
            Uri::try_from(format!("{prefix}{path}"))
        };
        *uri = joined.map_err(|_| UpstreamError::Protocol {
            target: self.target.clone(),
            why: "the request path cannot be joined to the upstream prefix".into(),
        })?;
        Ok(())
    }

    fn classify(&self, error: TryError) -> UpstreamError {
        let target = self.target.clone();
        match error {
            TryError::Timeout => UpstreamError::ResponseTimeout {
                target,
                secs: self.limits.response_head_timeout.as_secs(),
            },
            TryError::Connect(io) => match io.kind() {
                io::ErrorKind::NotFound if matches!(self.connect, Connect::Unix(_)) => {
                    UpstreamError::SocketMissing { target }
                }
                io::ErrorKind::ConnectionRefused => UpstreamError::Refused { target },
                io::ErrorKind::TimedOut => UpstreamError::ConnectTimeout {
                    target,
                    secs: self.limits.connect_timeout.as_secs(),
                },
                _ => UpstreamError::Connect { target, why: error_chain(&io) },
            },
            TryError::Http { error, .. } => {
                UpstreamError::Protocol { target, why: error_chain(&error) }
            }
            TryError::NotTaken(failed) => {
                UpstreamError::Protocol { target, why: error_chain(&failed.0) }
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// rustls with the system roots plus optional PEM certificates; `ring` as the crypto provider.
fn tls_config(ca: Option<&ExtraCa>) -> Result<rustls::ClientConfig, UpstreamError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: an explicit CA file may be all we need.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        let (what, parsed) = match ca {
            ExtraCa::File(path) => {
                (path.clone(), CertificateDer::pem_file_iter(path).map(|i| i.collect::<Vec<_>>()))
            }
            ExtraCa::Pem(pem) => (
                PathBuf::from("(inline PEM)"),
                Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Vec<_>>()),
            ),
        };
        let ca_error = |why: String| UpstreamError::CaFile { path: what.clone(), why };
        let certs: Vec<CertificateDer<'static>> = parsed
            .map_err(|e| ca_error(e.to_string()))?
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("it holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let Upstream::Url { scheme, authority, prefix, .. } =
            Upstream::url("https://gw.scan-infra:8443/v/").unwrap()
        else {
            panic!("not a URL upstream")
        };
        assert_eq!(
            (scheme.as_str(), authority.as_str(), prefix.as_str()),
            ("https", "gw.scan-infra:8443", "/v")
        );
        for bad in ["ftp://x", "gw:80", "http://u:p@x/", "http://x/?a=1", "not a url"] {
            assert!(matches!(Upstream::url(bad), Err(UpstreamError::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn timeout_is_504_others_502() {
        let t = UpstreamError::ResponseTimeout { target: "x".into(), secs: 1 };
        assert_eq!(t.to_api_error("").status, http::StatusCode::GATEWAY_TIMEOUT);
        let m = UpstreamError::SocketMissing { target: "Unix socket /s".into() };
        let e = m.to_api_error("is the forwarder running?");
        assert_eq!(e.status, http::StatusCode::BAD_GATEWAY);
        assert_eq!(e.message, "Unix socket /s does not exist; is the forwarder running?");
    }

    /// A connection back in the pool is reused by the next request, and closed by the
    /// pool's timer once idle past the timeout, without a request to notice it: the
    /// upstream's socket is freed (issue 13 item 2: the pool lets go before the server).
    #[tokio::test]
    async fn the_pool_reuses_a_connection_then_closes_it_when_idle() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for _ in 0..2 {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /x HTTP/1.1"));
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            }
            let idle = Instant::now();
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
            (read.expect("the pool closes the idle connection").unwrap(), idle.elapsed())
        });
        let limits = Limits { pool_idle_timeout: Duration::from_millis(100), ..Limits::default() };
        let upstream = Upstream::url(&format!("http://{addr}")).unwrap();
        let client =
            UpstreamClient::new(upstream, &limits, Arc::new(ProxyMetrics::new("t"))).unwrap();
        for _ in 0..2 {
            let request = Request::get("/x").body(ProxyBody::empty()).unwrap();
            // The server accepts one connection: a second one would never be answered.
            let response = tokio::time::timeout(Duration::from_secs(5), client.send(request))
                .await
                .expect("answered on the pooled connection")
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        let (read, idle) = server.await.unwrap();
        assert_eq!(read, 0, "the connection was closed");
        assert!(idle >= Duration::from_millis(100), "closed after {idle:?}, before the timeout");
    }
}
