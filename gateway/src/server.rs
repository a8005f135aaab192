//! The gateway on the shared server shell ([`sanctum_common::proxy::Server`]): every request
//! goes to [`Gateway::handle`], the pipeline ([`crate::pipeline`]).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use sanctum_common::proxy::{Handler, Limits, Refusal, Server};
use tokio::net::TcpListener;

pub use super::gateway::{Gateway, Settings, now_unix};
pub use super::metered::GatewayBody;

/// The gateway as a [`Handler`] of the shared server shell; the requests the shell answers
/// itself (malformed heads, CONNECT) count in the gateway's own metrics too.
struct Serving(Arc<Gateway>);

impl Handler for Serving {
    type Body = GatewayBody;

    async fn handle(&self, req: Request<Incoming>) -> Response<GatewayBody> {
        self.0.handle(req).await
    }

    fn refused(&self, refusal: Refusal) {
        self.0.metrics.rejection(refusal.reason());
    }
}

/// Serves on `listener` (TLS when `tls` is set) on the shared server shell until
/// `shutdown`, then drains for `limits.grace_period`. At most `limits.max_connections`
/// connections are open at once (more are closed at accept); a connection has
/// `limits.tls_handshake_timeout` for its TLS handshake and `limits.header_read_timeout`
/// for each request head; hop-by-hop headers are gone before [`Gateway::handle`] runs.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let metrics = gw.proxy_metrics.clone();
    Server::new("gateway", Arc::new(Serving(gw)), limits)
        .metrics(metrics)
        .maybe_tls(tls)
        .serve(listener, shutdown)
        .await;
}
