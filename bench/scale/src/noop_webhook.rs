//! The peer of the burst bench: a mutating webhook that admits every pod unchanged, served by
//! the same server shell as Sanctum's (TLS, HTTP/2 by ALPN), so what it costs the API server
//! is what having any webhook costs; the difference to Sanctum's is Sanctum's decision and patch.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use sanctum_common::proxy::{Handler, Limits, Server};
use serde_json::{Value, json};

struct Admit;

impl Handler for Admit {
    type Body = Full<Bytes>;

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let uid = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let answer = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": true}
        });
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap_or_default()
    }
}

/// Serves the no-op webhook on `listener` over TLS until the process ends.
pub fn spawn(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    let server =
        Server::new("noop-webhook", Arc::new(Admit), Limits::default()).tls(acceptor).http2(true);
    tokio::spawn(server.serve(listener, std::future::pending()));
}
