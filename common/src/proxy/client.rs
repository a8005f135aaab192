//! [`UpstreamClient`]: a pooled keep-alive HTTP/1.1 client to the next hop — a Unix socket
//! (bridge → forwarder) or an `http://`/`https://` URL (forwarder → gateway, gateway →
//! provider) with rustls, the system's root certificates and an optional extra CA file.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::UnixStream;

use crate::error::{ApiError, Retry};
use crate::proxy::body::ProxyBody;
use crate::proxy::hop::strip_hop_by_hop;
use crate::proxy::limits::Limits;
use crate::proxy::metrics::{ProxyMetrics, UpstreamErrorKind};
use crate::proxy::upstream_io::{ConnMark, TrackConnector};

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

/// Connects to one Unix socket whatever the request URI says, with a connect timeout.
#[derive(Clone)]
struct UnixConnector {
    path: Arc<Path>,
    timeout: std::time::Duration,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (path, timeout) = (self.path.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, UnixStream::connect(&*path)).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        })
    }
}

enum Kind {
    Unix(Client<TrackConnector<UnixConnector>, ProxyBody>),
    Url(Client<TrackConnector<HttpsConnector<HttpConnector>>, ProxyBody>),
}

/// Most request-body bytes kept for a second try (see [`UpstreamClient::send`]). A request
/// that never left cannot have had more read than hyper buffers before its first write
/// (twice the head limit), so this loses no retry; it only bounds the memory.
const REPLAY_CAP: usize = 256 * 1024;

/// A pooled HTTP/1.1 client to one upstream. Cheap to share (`Arc` it or clone the
/// [`Client`] inside); connections are kept alive and reused.
pub struct UpstreamClient {
    kind: Kind,
    upstream: Upstream,
    target: String,
    host: Option<HeaderValue>,
    limits: Limits,
    metrics: Arc<ProxyMetrics>,
}

impl UpstreamClient {
    /// Builds the client (for `https`, loads the system roots and the CA file now, so that
    /// a bad CA file fails at start-up, not on the first request).
    pub fn new(
        upstream: Upstream,
        limits: &Limits,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<Self, UpstreamError> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(limits.pool_idle_timeout)
            .pool_max_idle_per_host(limits.pool_max_idle)
            .http1_max_buf_size(limits.max_header_bytes.max(8192) * 2)
            .set_host(false);
        let (kind, host) = match &upstream {
            Upstream::Unix(path) => {
                let connector = UnixConnector {
                    path: Arc::from(path.as_path()),
                    timeout: limits.connect_timeout,
                };
                (Kind::Unix(builder.build(TrackConnector(connector))), None)
            }
            Upstream::Url { authority, ca, .. } => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(limits.connect_timeout));
                let tls = tls_config(ca.as_ref())?;
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    UpstreamError::Tls("the upstream host is not a valid header".into())
                })?;
                (Kind::Url(builder.build(TrackConnector(https))), Some(host))
            }
        };
        let target = upstream.describe();
        Ok(Self { kind, upstream, target, host, limits: *limits, metrics })
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
        *req.uri_mut() = self.upstream_uri(req.uri())?;
        if let Some(host) = &self.host {
            req.headers_mut().insert(HOST, host.clone());
        }
        let idle = self.limits.body_idle_timeout;
        let (parts, body) = req.into_parts();
        let (body, replay) = body.idle_timeout(idle).replayable(REPLAY_CAP);
        let (method, uri, version, headers) =
            (parts.method.clone(), parts.uri.clone(), parts.version, parts.headers.clone());
        let deadline = tokio::time::Instant::now() + self.limits.response_head_timeout;
        let mut result = self.send_once(Request::from_parts(parts, body), deadline).await;
        if let Err((_, true)) = &result
            && let Some(body) = replay.restart()
        {
            tracing::debug!(target = %self.target, "reused connection was closed before the request left; sending it again on a new one");
            let mut again = Request::new(body);
            *again.method_mut() = method;
            *again.uri_mut() = uri;
            *again.version_mut() = version;
            *again.headers_mut() = headers;
            result = self.send_once(again, deadline).await;
        }
        replay.release();
        match result.map_err(|(error, _)| error) {
            Ok(response) => {
                let mut response = response.map(|b| ProxyBody::from(b).idle_timeout(idle));
                if response.headers().contains_key(http::header::TRANSFER_ENCODING) {
                    response.headers_mut().remove(http::header::CONTENT_LENGTH);
                }
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Err(error) => {
                self.metrics.upstream_error(error.kind());
                Err(error)
            }
        }
    }

    /// One try; the error comes with `true` when the request provably never left (a
    /// reused connection found closed before its first byte).
    async fn send_once(
        &self,
        mut req: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<hyper::body::Incoming>, (UpstreamError, bool)> {
        let capture = hyper_util::client::legacy::connect::capture_connection(&mut req);
        let future = match &self.kind {
            Kind::Unix(client) => client.request(req),
            Kind::Url(client) => client.request(req),
        };
        match tokio::time::timeout_at(deadline, future).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                let mut extras = http::Extensions::new();
                if let Some(connected) = capture.connection_metadata().as_ref() {
                    connected.get_extras(&mut extras);
                }
                let unsent = extras.get::<ConnMark>().is_some_and(|mark| mark.0.unsent());
                Err((self.classify(&error), unsent))
            }
            Err(_) => Err((
                UpstreamError::ResponseTimeout {
                    target: self.target.clone(),
                    secs: self.limits.response_head_timeout.as_secs(),
                },
                false,
            )),
        }
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, UpstreamError> {
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut parts = http::uri::Parts::default();
        match &self.upstream {
            Upstream::Unix(_) => {
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(Authority::from_static("localhost"));
                parts.path_and_query =
                    uri.path_and_query().cloned().or(Some(PathAndQuery::from_static("/")));
            }
            Upstream::Url { scheme, authority, prefix, .. } => {
                parts.scheme = Some(scheme.clone());
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(if prefix.is_empty() {
                    uri.path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"))
                } else {
                    PathAndQuery::try_from(format!("{prefix}{path}")).map_err(|_| {
                        UpstreamError::Protocol {
                            target: self.target.clone(),
                            why: "the request path cannot be joined to the upstream prefix".into(),
                        }
                    })?
                });
            }
        }
        Uri::from_parts(parts).map_err(|e| UpstreamError::Protocol {
            target: self.target.clone(),
            why: format!("cannot build the upstream URI: {e}"),
        })
    }

    fn classify(&self, error: &hyper_util::client::legacy::Error) -> UpstreamError {
        let target = self.target.clone();
        let io = std::iter::successors(std::error::Error::source(error), |e| e.source())
            .find_map(|e| e.downcast_ref::<io::Error>());
        if error.is_connect() {
            return match io.map(io::Error::kind) {
                Some(io::ErrorKind::NotFound) => UpstreamError::SocketMissing { target },
                Some(io::ErrorKind::ConnectionRefused) => UpstreamError::Refused { target },
                Some(io::ErrorKind::TimedOut) => UpstreamError::ConnectTimeout {
                    target,
                    secs: self.limits.connect_timeout.as_secs(),
                },
                _ => UpstreamError::Connect { target, why: error_chain(error) },
            };
        }
        UpstreamError::Protocol { target, why: error_chain(error) }
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
}
