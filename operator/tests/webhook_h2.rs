//! The webhook offers HTTP/2 by ALPN over real TLS on loopback, as the API server's webhook
//! client (Go net/http) negotiates it: reviews multiplexed on one h2 connection are
//! answered with their patch; an HTTP/1.1 client still is; a header block over the
//! listener's cap is refused before it reaches the handler, and the connection's other
//! streams and the listener keep serving.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::crd::IdentitySource;
use sanctum_operator::webhook::server::{self, WebhookState};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

struct Webhook {
    addr: SocketAddr,
    cert: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    let tls = server::bind(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let addr = tls.listener.local_addr().unwrap();
    let mut config = OperatorConfig::default();
    config.identity.source = IdentitySource::ServiceAccountToken;
    let state = Arc::new(WebhookState::new(config, None, None));
    tokio::spawn(server::serve(tls, state, std::future::pending()));
    Webhook { addr, cert: cert.pem(), _dir: dir }
}

/// A TLS connection offering `alpn` (what the API server offers: `h2`, `http/1.1`).
async fn connect(w: &Webhook, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(w.cert.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(w.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

fn review(uid: &str) -> Bytes {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "team-a",
                     "annotations": {"sanctum.dev/inject": "true"}},
        "spec": {"containers": [{"name": "claude", "image": "claude-code:1"}]}
    });
    Bytes::from(
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE",
                "userInfo": {"username": "test"},
                "object": pod
            }
        })
        .to_string(),
    )
}

fn post(body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post("https://127.0.0.1/mutate")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// The review's uid and the number of operations of its patch, from an answer body.
fn patched(body: &[u8]) -> (String, usize) {
    let answer: Value = serde_json::from_slice(body).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    (response["uid"].as_str().unwrap().to_owned(), ops.len())
}

#[tokio::test]
async fn an_h2_client_gets_its_reviews_answered_on_one_connection() {
    let w = start().await;
    let tls = connect(&w, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 not negotiated");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Concurrent reviews, one stream each, as the API server sends them in a burst.
    let reviews = (0..8).map(|i| {
        let mut sender = sender.clone();
        async move {
            let resp = sender.send_request(post(review(&format!("uid-{i}")))).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (i, patched(&body))
        }
    });
    for (i, (uid, ops)) in futures::future::join_all(reviews).await {
        assert_eq!(uid, format!("uid-{i}"));
        assert!(ops > 0, "empty patch");
    }
}

#[tokio::test]
async fn an_http1_client_still_gets_its_review_answered() {
    let w = start().await;
    let offers: [&[&[u8]]; 2] = [&[b"http/1.1"], &[]];
    for alpn in offers {
        let tls = connect(&w, alpn).await;
        assert_ne!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = post(review("uid-h1"));
        req.headers_mut().insert("host", http::HeaderValue::from_static("127.0.0.1"));
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(patched(&body).0, "uid-h1");
    }
}

#[tokio::test]
async fn an_oversized_h2_header_block_is_refused_before_the_handler() {
    let w = start().await;
    let tls = connect(&w, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Over the webhook's 64 KiB head cap, in one header (under the cap of one field, so
    // it is the list cap that refuses it).
    let mut req = post(review("uid-big"));
    let big = "x".repeat(80 * 1024);
    req.headers_mut().insert("x-padding", http::HeaderValue::from_str(&big).unwrap());
    match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.unwrap() {
        // The h2 crate answers 431 and resets the stream (RFC 9113 §10.5.1), where the
        // handler would have answered 200 with a patch ...
        Ok(resp) => assert_eq!(resp.status(), 431),
        // ... or the client sees the stream (or the connection) refused.
        Err(error) => assert!(!error.is_user(), "the client refused to send: {error}"),
    }
    // The listener keeps serving (on a new connection: the refusal may close this one).
    let tls = connect(&w, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(post(review("uid-after"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(patched(&body).0, "uid-after");
}
