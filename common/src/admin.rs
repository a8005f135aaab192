//! The admin server of every long-running binary: `/healthz` (the process is alive),
//! `/readyz` (it can do its job now), `/metrics` (Prometheus text), plus routes a binary
//! adds (the operator serves its JWKS and revoked list here). Kept apart from the data port
//! so probes and scrapes never compete with, or expose, the request path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a binary tells its admin server.
pub trait AdminState: Send + Sync + 'static {
    /// `Ok` when ready to serve; otherwise a reason a person can act on.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Appends the Prometheus text exposition of the binary's metrics.
    fn metrics(&self, out: &mut String);
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
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            state.metrics(&mut out);
            text(StatusCode::OK, out, "text/plain; version=0.0.4; charset=utf-8")
        }
        path => state
            .route(path)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n", "text/plain")),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&*state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
