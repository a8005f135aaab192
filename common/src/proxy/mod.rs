//! The streaming HTTP/1 proxy plumbing that `sanctum-bridge`, `sanctum-forwarder forward`
//! and `sanctum-gateway` share, and the one server shell ([`Server`]) every listener of
//! every binary runs on (the admin ports and the operator's webhook too). One concept per
//! module:
//!
//! | module | what it is |
//! |---|---|
//! | [`guard`] | a strict, passive check of every request head *before* it is forwarded: bare LF, obs-fold, `Content-Length` together with `Transfer-Encoding`, conflicting lengths, non-chunked codings, oversized heads. Ambiguous requests get a 400 and are never forwarded. |
//! | [`hop`] | hop-by-hop header removal (RFC 9110 §7.6.1), for requests and responses |
//! | [`body`] | [`ProxyBody`]: the one body type on both sides, streaming frame by frame with an idle (not total) timeout |
//! | [`limits`] | [`Limits`]: every size cap and timeout in one place, with the defaults the binaries use |
//! | [`client`] | [`UpstreamClient`]: a pooled keep-alive hyper client over a Unix socket or over TCP/TLS (rustls, system roots plus an optional CA file) |
//! | [`upstream_io`] | the wrapper around each upstream connection: an early answer is read even when the server stopped reading the body; a reused connection the server closed is detected before the request leaves, so it can be sent again |
//! | [`server`] | [`Server`]: the accept loop (TCP or Unix, plain or TLS) with the connection cap, header-read deadline, head guard, hop-by-hop removal, metrics and graceful shutdown, generic over the [`Handler`]'s response body; [`serve`] for a plain proxy data port; [`server::shutdown_signal`] |
//! | [`metrics`] | [`ProxyMetrics`]: requests by status, upstream errors, in-flight, latency histogram: `prometheus-client` families for the process's registry ([`crate::metrics`]) |
//! | [`listen`] | binding helpers: loopback-only TCP, owner-only Unix sockets replacing a stale one |
//!
//! A proxy binary implements [`Handler`] (turn one request into one response, usually by
//! editing the headers and calling [`UpstreamClient::send`]) and calls [`serve`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use sanctum_common::proxy::{self, Handler, Limits, ProxyBody, ProxyMetrics, UpstreamClient, Upstream};
//!
//! struct Pass { client: UpstreamClient }
//!
//! impl Handler for Pass {
//!     type Body = ProxyBody;
//!     async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<ProxyBody> {
//!         match self.client.send(req.map(ProxyBody::from)).await {
//!             Ok(resp) => resp,
//!             Err(e) => e.to_api_error("the upstream").to_response(),
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limits = Limits::default();
//! let metrics = Arc::new(ProxyMetrics::new("sanctum_example"));
//! let client = UpstreamClient::new(Upstream::unix("/run/sage/llm.sock"), &limits, metrics.clone())?;
//! let listener = proxy::listen::loopback_tcp("127.0.0.1:8082".parse()?, false).await?;
//! proxy::serve(listener, Arc::new(Pass { client }), limits, metrics, std::future::pending()).await;
//! # Ok(()) }
//! ```

pub mod body;
pub mod client;
pub mod guard;
pub mod hop;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod server;
pub mod upstream_io;

pub use body::{BodyError, ProxyBody, Replay};
pub use client::{ExtraCa, Upstream, UpstreamClient, UpstreamError};
pub use guard::{HeadError, HeadGuard};
pub use limits::Limits;
pub use metrics::ProxyMetrics;
pub use server::{Handler, Refusal, Server, serve};
