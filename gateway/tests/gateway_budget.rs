//! Budgets are hard limits (issue 12 items 7 and 8), end to end on loopback: the real
//! gateway process, the stand-in provider, clients that misbehave on purpose.

mod gateway_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_support::*;
use http_body_util::{BodyExt, Full};
use sanctum_testkit::{Provider, ProviderConfig, Usage};
use serde_json::json;

async fn provider(config: ProviderConfig) -> Provider {
    Provider::start_tcp("127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

fn budget_trat(s: &Setup, run: &str, txn: &str, budget: u64) -> String {
    let mut claims = trat_claims(run, txn);
    claims["tctx"]["budget_tokens"] = json!(budget);
    s.trat_key.sign(&claims)
}

/// Sends a streaming request and reads until `needle` arrived, then drops the connection,
/// as an agent that closes each stream before the final `message_delta` does. The status.
async fn read_until_then_hang_up(
    gw: &Gateway,
    svid: &str,
    trat: &str,
    body: String,
    needle: &str,
) -> u16 {
    let req = http::Request::post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {svid}"))
        .header("txn-token", trat)
        // The stand-in sends message_start, then holds the stream open until we leave.
        .header("x-standin-hang", "1")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("head timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    if status != 200 {
        return status;
    }
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("stream stalled")
            .expect("stream ended")
            .expect("stream broke");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    status
}

/// Item 7: an agent hangs up after `message_start` (which reports the input and one output
/// token) on every answer. The gateway did not see the usage in full, so each request is
/// settled at its reservation, and the run stops inside its budget.
#[tokio::test]
async fn streams_closed_before_the_final_usage_are_settled_at_their_reservation() {
    let s = Setup::new();
    let usage = Usage { input_tokens: 10, output_tokens: 1000, ..Default::default() };
    let p = provider(ProviderConfig { usage, ..Default::default() }).await;
    let gw = s.gateway(&p.url().unwrap(), &["--rate-limit-per-minute", "0"]).await;
    let svid = s.svid("run-cut");
    let trat = budget_trat(&s, "run-cut", "txn-cut", 5000);
    let mut admitted = 0;
    let mut refused = None;
    for _ in 0..12 {
        let body = messages_body(true, 1000, "write a long essay");
        match read_until_then_hang_up(&gw, &svid, &trat, body, "message_start").await {
            200 => admitted += 1,
            other => {
                refused = Some(other);
                break;
            }
        }
        // Settlement runs when the gateway notices the client left.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted <= 5, "{admitted} answers of max_tokens 1000 ran on a 5,000-token budget");
    assert_eq!(refused, Some(429), "the run must be refused once its reservations are spent");
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 1000, "more")).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.header("x-should-retry"), Some("false"), "{}", a.text());
    let audit = audit_lines(&s.path("audit.log"), admitted + 1).await;
    let cut: Vec<_> = audit.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(cut.len(), admitted);
    for line in cut {
        assert_eq!(line["incomplete"], true, "{line}");
        assert!(line["charged_tokens"].as_u64().unwrap() >= 1000, "{line}");
    }
}

/// Item 8: a burst of `max_tokens: 1` requests with large prompts. The input is bounded from
/// the body size before admission, so none of them fits a 1,000-token budget; a small one
/// is admitted and settled to the usage the provider reports.
#[tokio::test]
async fn large_prompts_reserve_their_input_and_settle_to_the_reported_usage() {
    let s = Setup::new();
    let usage = Usage { input_tokens: 7500, output_tokens: 1, ..Default::default() };
    let p = provider(ProviderConfig { usage, ..Default::default() }).await;
    let gw = Arc::new(s.gateway(&p.url().unwrap(), &["--rate-limit-per-minute", "0"]).await);
    let svid = s.svid("run-burst");
    let trat = budget_trat(&s, "run-burst", "txn-burst", 1000);
    let prompt = "lorem ipsum dolor sit amet ".repeat(1200); // ~32 KB
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (gw, svid, trat, body) =
            (gw.clone(), svid.clone(), trat.clone(), messages_body(false, 1, &prompt));
        tasks.push(tokio::spawn(async move { call(&gw, Some(&svid), Some(&trat), body).await }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 429, "a 32 KB prompt cannot fit a 1,000-token budget: {}", a.text());
        assert_eq!(a.header("x-should-retry"), Some("false"));
        assert!(
            a.message().contains("input tokens"),
            "the message names the input bound: {}",
            a.message()
        );
    }
    assert_eq!(p.requests().len(), 0, "nothing reached the provider");

    // A small request fits, and is settled to what the provider reported.
    let small = provider(ProviderConfig {
        usage: Usage { input_tokens: 40, output_tokens: 20, ..Default::default() },
        ..Default::default()
    })
    .await;
    let gw2 = s.gateway(&small.url().unwrap(), &["--rate-limit-per-minute", "0"]).await;
    let trat2 = budget_trat(&s, "run-burst", "txn-small", 1000);
    for _ in 0..3 {
        let a = call(&gw2, Some(&svid), Some(&trat2), messages_body(false, 100, "hi")).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let audit = audit_lines(&s.path("audit.log"), 23).await;
    let ok: Vec<_> = audit.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(ok.len(), 3);
    for line in ok {
        assert_eq!(line["charged_tokens"], 60, "{line}");
        assert!(line.get("incomplete").is_none(), "a complete JSON answer: {line}");
    }
}
