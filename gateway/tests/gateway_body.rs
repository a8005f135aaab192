//! Request bodies cannot pin the shared gateway's memory (issue 12 item 10): a read
//! deadline, and a cap on the body bytes each run has in flight. Raw TCP clients that send
//! part of a body and stall, against the real gateway process.

mod gateway_support;

use std::time::{Duration, Instant};

use gateway_support::*;
use sanctum_testkit::{Provider, ProviderConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a request head promising `declared` body bytes and then `sent` of them, and keeps
/// the connection open.
async fn stall(gw: &Gateway, svid: &str, trat: &str, declared: usize, sent: usize) -> TcpStream {
    let mut conn = TcpStream::connect(gw.listen).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         authorization: Bearer {svid}\r\ntxn-token: {trat}\r\ncontent-length: {declared}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut body =
        br#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":""#
            .to_vec();
    body.resize(sent, b'x');
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// The status line and body of the answer on `conn`, within `within`.
async fn answer(conn: &mut TcpStream, within: Duration) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n")
            && text[end + 4..].ends_with('}')
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn stalled_bodies_time_out_and_each_run_has_a_cap_in_flight() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--body-read-timeout-secs",
                "2",
                "--run-body-bytes-in-flight",
                "1500000",
                "--max-body-bytes",
                "2000000",
            ],
        )
        .await;
    let (svid, trat) = (s.svid("run-slow"), s.trat("run-slow", "txn-slow"));

    // Most of a 1 MB body, then silence: the run now holds 1 MB of its 1.5 MB.
    let started = Instant::now();
    let mut first = stall(&gw, &svid, &trat, 1_000_000, 900_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.metrics().await.contains("sanctum_gateway_body_bytes_in_flight 1000000"));

    // A second body of the same run does not fit beside it: refused at once, retry later.
    let mut second = stall(&gw, &svid, &trat, 1_000_000, 1000).await;
    let (status, text) = answer(&mut second, Duration::from_secs(1)).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("retry-after"), "{text}");
    assert!(text.contains("in flight"), "{text}");
    // Another run is not affected.
    let other = call(
        &gw,
        Some(&s.svid("run-other")),
        Some(&s.trat("run-other", "txn-other")),
        messages_body(false, 5, "hi"),
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.text());

    // The stalled body is cut off at its deadline with an Anthropic-shaped 408.
    let (status, text) = answer(&mut first, Duration::from_secs(5)).await;
    assert_eq!(status, 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(text.contains("\"type\":\"error\"") && text.contains("did not arrive within 2 s"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gw.metrics().await.contains("sanctum_gateway_body_bytes_in_flight 0"));
    // And the run may send again.
    let again = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "hi")).await;
    assert_eq!(again.status, 200, "{}", again.text());
    drop(first);
}
