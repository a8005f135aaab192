//! The admin server of every long-running binary: `/healthz` (the process is alive),
//! `/readyz` (it can do its job now), `/metrics` (the process's one metrics registry,
//! OpenMetrics text, see [`crate::metrics`]), plus routes a binary
//! adds (the operator serves its JWKS and revoked list here). Kept apart from the data port
//! so probes and scrapes never compete with, or expose, the request path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::metrics::{self, Registry};
use crate::proxy::{Handler, Limits, Server};

/// What a binary tells its admin server.
pub trait AdminState: Send + Sync + 'static {
    /// `Ok` when ready to serve; otherwise a reason a person can act on.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// The process's one metrics registry, encoded on every `/metrics` scrape.
    fn metrics(&self) -> &Registry;
    /// Extra GET routes; `None` means 404.
    fn route(&self, _path: &str) -> Option<Response<Full<Bytes>>> {
        None
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response for [`AdminState::route`] implementations.
pub fn json_response(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    text(StatusCode::OK, body, "application/json")
}

async fn handle<S: AdminState>(state: &S, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n", "text/plain");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => match state.ready().await {
            Ok(()) => text(StatusCode::OK, "ok\n", "text/plain"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(StatusCode::OK, metrics::encode(state.metrics()), metrics::CONTENT_TYPE),
        path => state
            .route(path)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n", "text/plain")),
    }
}

/// The admission rules of an admin port. Kept small on purpose: the admin port is reached
/// by the kubelet's probes and a metrics scraper, a few connections at a time, and must never
/// be able to use up the file descriptors the data port needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Most connections open at once; more are closed at accept. Default 32.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head after it opens (and between
    /// keep-alive requests) before it is closed. Default 10 s (a probe sends its request at
    /// once).
    pub header_read_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self { max_connections: 32, header_read_timeout: Duration::from_secs(10) }
    }
}

/// Largest admin request head: the routes take no input beyond a path.
const ADMIN_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The admin port's handler for the shared [`Server`] shell.
struct Admin<S>(Arc<S>);

impl<S: AdminState> Handler for Admin<S> {
    type Body = Full<Bytes>;
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        handle(&*self.0, req).await
    }
}

impl AdminLimits {
    /// The [`Limits`] of the shared server shell for an admin port: these, a 16 KiB head
    /// cap, and a short drain at shutdown (probes and scrapes are quick).
    fn server_limits(self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: ADMIN_MAX_HEADER_BYTES,
            grace_period: ADMIN_GRACE_PERIOD,
            ..Limits::default()
        }
    }
}

/// How long open admin requests may finish after shutdown.
const ADMIN_GRACE_PERIOD: Duration = Duration::from_secs(2);

/// Serves the admin endpoints on `listener` until `shutdown` completes, with the default
/// [`AdminLimits`].
pub async fn serve<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_with(listener, state, AdminLimits::default(), shutdown).await;
}

/// [`serve`] with explicit [`AdminLimits`], on the shared server shell
/// ([`crate::proxy::Server`]): connection cap, header-read deadline, head guard.
pub async fn serve_with<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    Server::new("admin", Arc::new(Admin(state)), limits.server_limits())
        .serve(listener, shutdown)
        .await;
}

/// Binds `addr` with a message that says which flag to change when it is taken.
pub async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({e}); choose another address with {flag}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ready(Registry);
    impl AdminState for Ready {
        async fn ready(&self) -> Result<(), String> {
            Ok(())
        }
        fn metrics(&self) -> &Registry {
            &self.0
        }
    }

    async fn start(limits: AdminLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(
            listener,
            Arc::new(Ready(Registry::default())),
            limits,
            std::future::pending(),
        ));
        addr
    }

    async fn healthz(addr: SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn metrics_are_the_registry_in_openmetrics_text() {
        let addr = start(AdminLimits::default()).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(&format!("content-type: {}", metrics::CONTENT_TYPE)), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    /// Closed: the peer answered end of stream (or reset), within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn an_idle_connection_that_sends_nothing_is_closed_after_the_deadline() {
        let deadline = Duration::from_millis(500);
        let addr =
            start(AdminLimits { header_read_timeout: deadline, ..AdminLimits::default() }).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let started = std::time::Instant::now();
        assert!(
            closed_within(&mut idle, Duration::from_secs(5)).await,
            "idle connection kept open"
        );
        assert!(closed_within(&mut half, Duration::from_secs(5)).await, "half a head kept open");
        assert!(started.elapsed() >= deadline - Duration::from_millis(100));
        assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_probes_answer_once_a_place_frees() {
        let addr =
            start(AdminLimits { max_connections: 4, header_read_timeout: Duration::from_secs(30) })
                .await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept all four before the fifth arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut beyond = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut beyond, Duration::from_secs(5)).await, "fifth connection kept");
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    }
}
