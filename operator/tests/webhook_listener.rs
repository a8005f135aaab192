//! The webhook's listener on the shared server shell, over real TLS on loopback: a
//! connection that never finishes its TLS handshake, or never sends a request head after
//! it, is closed at its deadline; connections beyond the cap are closed at once (a
//! connection in its handshake holds its place), and the webhook answers again once a
//! place frees.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::webhook::server::{self, WebhookState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed serving certificate for 127.0.0.1: (cert_pem, key_pem).
fn cert() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Webhook {
    addr: SocketAddr,
    cert: String,
    _dir: tempfile::TempDir,
}

async fn start(max_connections: usize, deadline: Duration) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert();
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    let tls = server::bind(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let addr = tls.listener.local_addr().unwrap();
    let state = Arc::new(WebhookState::new(OperatorConfig::default(), None, None));
    let limits = sanctum_common::proxy::Limits {
        max_connections,
        header_read_timeout: deadline,
        tls_handshake_timeout: deadline,
        ..server::default_limits()
    };
    tokio::spawn(server::serve_with(tls, state, limits, std::future::pending()));
    Webhook { addr, cert, _dir: dir }
}

fn connector(cert: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(w: &Webhook) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(w.addr).await.unwrap();
    connector(&w.cert).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
}

/// `GET /healthz` on a new TLS connection: the status, or `None` when refused or closed.
async fn healthz(w: &Webhook) -> Option<u16> {
    let tcp = TcpStream::connect(w.addr).await.ok()?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector(&w.cert).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp),
    )
    .await
    .ok()?
    .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/healthz")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// Closed: end of stream (or a reset, or a TLS close) within `within`.
async fn closed_within<S: AsyncReadExt + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn handshake_and_header_deadlines_close_silent_connections() {
    let deadline = Duration::from_millis(600);
    let w = start(64, deadline).await;
    let started = Instant::now();
    // Never starts the TLS handshake.
    let mut silent = TcpStream::connect(w.addr).await.unwrap();
    // Finishes the handshake, then sends half a request head.
    let mut half = tls_connect(&w).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    half.flush().await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "no handshake, kept open");
    assert!(closed_within(&mut half, Duration::from_secs(5)).await, "half a head, kept open");
    assert!(started.elapsed() >= deadline - Duration::from_millis(100), "closed before deadline");
    assert_eq!(healthz(&w).await, Some(200));
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_webhook_answers_once_a_place_frees() {
    let w = start(2, Duration::from_secs(30)).await;
    // One connection mid-handshake (TCP only) and one established: both hold a place.
    let in_handshake = TcpStream::connect(w.addr).await.unwrap();
    let established = tls_connect(&w).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut beyond = TcpStream::connect(w.addr).await.unwrap();
    assert!(closed_within(&mut beyond, Duration::from_secs(5)).await, "third connection kept");
    assert_eq!(healthz(&w).await, None, "no place while both are held");
    drop(in_handshake);
    drop(established);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(healthz(&w).await, Some(200));
}
