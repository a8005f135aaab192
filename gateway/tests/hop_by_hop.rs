//! The gateway's listener runs on the shared server shell: a client's hop-by-hop headers are
//! removed before the gateway adds its own, so a `Connection` header naming `x-api-key` or
//! `accept-encoding` cannot strip the provider key or the `identity` encoding the usage
//! metering relies on (RFC 9110 §7.6.1). Real binary, real sockets, raw HTTP/1.1 bytes.

mod gateway_support;

use std::time::Duration;

use gateway_support::*;
use sanctum_testkit::{Provider, ProviderConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` + `body` on a fresh connection and reads until the gateway closes it.
async fn raw(gw: &Gateway, head: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_connection_header_cannot_remove_what_the_gateway_adds() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    let (svid, trat) = (s.svid("run-1"), s.trat("run-1", "txn-1"));
    let body = messages_body(false, 100, "hi");
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nauthorization: Bearer {svid}\r\ntxn-token: {trat}\r\n\
         x-api-key: gateway-injected\r\naccept-encoding: gzip, br\r\n\
         connection: close, x-api-key, accept-encoding\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let answer = raw(&gw, &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let seen = p.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.header("x-api-key"), Some(ORG_KEY), "the provider got the org's key");
    assert_eq!(r.count("x-api-key"), 1);
    assert_eq!(r.header("accept-encoding"), Some("identity"), "metering needs plain bytes");
    assert_eq!(r.count("connection"), 0, "the client's Connection header is not forwarded");
    assert!(!r.any_header_contains("gateway-injected"));
    // Metered as usual: the usage of the identity-encoded answer was read.
    let audit = audit_lines(&s.path("audit.log"), 1).await;
    assert_eq!(audit[0]["status"], 200);
    assert_eq!(audit[0]["output_tokens"], 12);
}

#[tokio::test]
async fn malformed_heads_are_refused_by_the_shell_and_counted_by_the_gateway() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    // Both Content-Length and Transfer-Encoding: ambiguous framing, never forwarded.
    let head = "POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-length: 5\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let answer = raw(&gw, head, "0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let connect =
        raw(&gw, "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", "").await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    assert!(p.requests().is_empty());
    let m = gw.metrics().await;
    assert!(m.contains("sanctum_gateway_rejections_total{reason=\"malformed_head\"} 1"), "{m}");
    assert!(m.contains("sanctum_gateway_rejections_total{reason=\"connect\"} 1"), "{m}");
    assert!(m.contains("sanctum_gateway_proxy_requests_total{status=\"400\"} 1"), "{m}");
    assert!(m.contains("sanctum_gateway_proxy_requests_total{status=\"405\"} 1"), "{m}");
}
