//! `sanctum-gateway` end to end on loopback: the real binary between a real HTTP
//! client and the stand-in provider, with keys and tokens minted here.

mod gateway_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use gateway_support::*;
use http_body_util::Full;
use sanctum_testkit::{Provider, ProviderConfig, Usage};
use serde_json::json;

async fn provider(config: ProviderConfig) -> Provider {
    Provider::start_tcp("127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

fn assert_never_retry(a: &Answer) {
    assert_eq!(a.header("x-should-retry"), Some("false"), "{} {}", a.status, a.text());
}

#[tokio::test]
async fn forwards_with_the_org_key_and_nothing_else() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &["--metrics-tenant-labels"]).await;
    let (svid, trat) = (s.svid("run-1"), s.trat("run-1", "txn-1"));

    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 100, "hi")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["usage"]["output_tokens"], 12);
    let seen = p.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.target, "/v1/messages?beta=true");
    assert_eq!(r.header("x-api-key"), Some(ORG_KEY));
    assert_eq!(r.count("x-api-key"), 1);
    assert_eq!(r.count("authorization"), 0);
    assert_eq!(r.count("txn-token"), 0);
    assert!(!r.any_header_contains("gateway-injected"));
    assert!(!r.any_header_contains(&svid) && !r.any_header_contains(&trat));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));

    // Streaming: the SSE events pass through and usage is settled.
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(true, 100, "hi")).await;
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/event-stream"));
    let text = a.text();
    assert!(text.contains("event: message_start") && text.contains("event: message_stop"));

    let audit = audit_lines(&s.path("audit.log"), 2).await;
    assert_eq!(audit.len(), 2);
    for line in &audit {
        assert_eq!(line["status"], 200);
        assert_eq!(line["txn"], "txn-1");
        assert_eq!(line["run"], "run-1");
        assert_eq!(line["org"], ORG);
        assert_eq!(line["spiffe_id"], spiffe("run-1"));
        assert_eq!(line["input_tokens"], 25);
        assert_eq!(line["output_tokens"], 12);
        let raw = line.to_string();
        assert!(!raw.contains(&svid[..40]) && !raw.contains(&trat[..40]) && !raw.contains(ORG_KEY));
        assert!(!raw.contains("\"hi\""), "no body in the audit log");
    }
    assert_eq!(audit[1]["stream"], true);
    let m = gw.metrics().await;
    assert!(m.contains("sanctum_gateway_org_tokens_total{org=\"acme\",kind=\"input\"} 50"), "{m}");
    assert!(m.contains(
        "sanctum_gateway_run_tokens_total{txn=\"txn-1\",org=\"acme\",kind=\"output\"} 24"
    ));
    // Without --metrics-tenant-labels, /metrics names no org and no run (issue 12 item 17).
    let quiet = s.gateway(&p.url().unwrap(), &[]).await;
    let a = call(&quiet, Some(&svid), Some(&trat), messages_body(false, 100, "hi")).await;
    assert_eq!(a.status, 200);
    let m = quiet.metrics().await;
    assert!(m.contains("sanctum_gateway_tokens_total{kind=\"input\"} 25"), "{m}");
    assert!(!m.contains("acme") && !m.contains("txn-1") && !m.contains("run-1"), "{m}");
    // HEAD / is answered without credentials and reveals nothing.
    let head = send(http::Request::head(gw.url("/")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn the_full_matrix_of_bad_tokens() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &["--trat-issuer", "sanctum-operator"]).await;
    let run = "run-1";
    let good_svid = s.svid(run);
    let good_trat = s.trat(run, "txn-1");
    let other = EcKey::new("spire-1"); // same kid, different key
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none_token = |claims: &serde_json::Value, kid: &str| {
        format!("{}.{}.", b64(&json!({"alg": "none", "kid": kid})), b64(claims))
    };
    let hs_confusion = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("spire-1".into());
        jsonwebtoken::encode(
            &h,
            &svid_claims(run),
            &jsonwebtoken::EncodingKey::from_secret(s.svid_key.jwk.to_string().as_bytes()),
        )
        .unwrap()
    };
    let with = |base: serde_json::Value, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base;
        f(&mut v);
        v
    };
    // (name, svid, trat, status, reason fragment in the message)
    type Case = (&'static str, Option<String>, Option<String>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("no Authorization", None, Some(good_trat.clone()), 401, "missing 'Authorization"),
        ("no Txn-Token", Some(good_svid.clone()), None, 401, "missing 'Txn-Token'"),
        ("garbage svid", Some("not.a.jwt".into()), Some(good_trat.clone()), 401, "well-formed"),
        (
            "svid by another key",
            Some(other.sign(&svid_claims(run))),
            Some(good_trat.clone()),
            401,
            "invalid signature",
        ),
        (
            "svid unknown kid",
            Some(s.svid_key.sign_as("nope", &svid_claims(run))),
            Some(good_trat.clone()),
            401,
            "key id 'nope'",
        ),
        (
            "svid alg none",
            Some(none_token(&svid_claims(run), "spire-1")),
            Some(good_trat.clone()),
            401,
            "JWT-SVID",
        ),
        ("svid HS256 confusion", Some(hs_confusion), Some(good_trat.clone()), 401, "algorithm"),
        (
            "svid expired",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| v["exp"] = json!(now() - 120)))),
            Some(good_trat.clone()),
            401,
            "expired",
        ),
        (
            "svid not yet valid",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| v["nbf"] = json!(now() + 600)))),
            Some(good_trat.clone()),
            401,
            "not valid before",
        ),
        (
            "svid wrong audience",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| v["aud"] = json!("other")))),
            Some(good_trat.clone()),
            401,
            "audience",
        ),
        (
            "svid no exp",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| {
                v.as_object_mut().unwrap().remove("exp");
            }))),
            Some(good_trat.clone()),
            401,
            "exp",
        ),
        (
            "svid subject not allowed",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| {
                v["sub"] = json!("spiffe://sage-sanctum.local/admin/x")
            }))),
            Some(good_trat.clone()),
            403,
            "does not allow",
        ),
        (
            "svid other trust domain",
            Some(s.svid_key.sign(&with(svid_claims(run), &|v| {
                v["sub"] = json!("spiffe://evil.example/scanner/run-1")
            }))),
            Some(good_trat.clone()),
            403,
            "does not allow",
        ),
        (
            "svid signed by the TraT key",
            Some(s.trat_key.sign(&svid_claims(run))),
            Some(good_trat.clone()),
            401,
            "key id 'operator-1'",
        ),
        ("trat garbage", Some(good_svid.clone()), Some("x.y.z".into()), 401, "TraT"),
        (
            "trat signed by the SVID key",
            Some(good_svid.clone()),
            Some(s.svid_key.sign(&trat_claims(run, "t"))),
            401,
            "key id 'spire-1'",
        ),
        (
            "trat alg none",
            Some(good_svid.clone()),
            Some(none_token(&trat_claims(run, "t"), "operator-1")),
            401,
            "TraT",
        ),
        (
            "trat expired",
            Some(good_svid.clone()),
            Some(s.trat_key.sign(&with(trat_claims(run, "t"), &|v| v["exp"] = json!(now() - 120)))),
            401,
            "expired",
        ),
        (
            "trat wrong audience",
            Some(good_svid.clone()),
            Some(s.trat_key.sign(&with(trat_claims(run, "t"), &|v| v["aud"] = json!(["x"])))),
            401,
            "audience",
        ),
        (
            "trat wrong issuer",
            Some(good_svid.clone()),
            Some(s.trat_key.sign(&with(trat_claims(run, "t"), &|v| v["iss"] = json!("mallory")))),
            401,
            "issued by 'mallory'",
        ),
        (
            "trat missing scope",
            Some(good_svid.clone()),
            Some(
                s.trat_key
                    .sign(&with(trat_claims(run, "t"), &|v| v["scope"] = json!("llm.models"))),
            ),
            403,
            "scope 'llm.messages'",
        ),
        (
            "trat no tctx",
            Some(good_svid.clone()),
            Some(s.trat_key.sign(&with(trat_claims(run, "t"), &|v| {
                v.as_object_mut().unwrap().remove("tctx");
            }))),
            401,
            "tctx",
        ),
        (
            "trat of another run",
            Some(good_svid.clone()),
            Some(s.trat("run-2", "txn-2")),
            403,
            "not bound to this caller",
        ),
        (
            "unknown org",
            Some(good_svid.clone()),
            Some(
                s.trat_key
                    .sign(&with(trat_claims(run, "t"), &|v| v["tctx"]["org_id"] = json!("globex"))),
            ),
            403,
            "no provider key for org 'globex'",
        ),
        (
            "org path traversal",
            Some(good_svid.clone()),
            Some(s.trat_key.sign(&with(trat_claims(run, "t"), &|v| {
                v["tctx"]["org_id"] = json!("../keys/acme")
            }))),
            403,
            "cannot name a key file",
        ),
    ];
    for (name, svid, trat, status, fragment) in cases {
        let a = call(&gw, svid.as_deref(), trat.as_deref(), messages_body(false, 10, "hi")).await;
        assert_eq!(a.status, status, "{name}: {}", a.text());
        let msg = a.message();
        assert!(msg.contains(fragment), "{name}: message {msg:?} lacks {fragment:?}");
        assert_eq!(a.json()["type"], "error", "{name}");
        for token in [&svid, &trat].into_iter().flatten() {
            if token.len() > 20 {
                assert!(!a.text().contains(token.as_str()), "{name}: token echoed");
            }
        }
        if !name.contains("expired") && !name.contains("not yet valid") {
            assert_never_retry(&a);
        } else if name.starts_with("svid") {
            assert!(a.header("retry-after").is_some(), "{name}: a rotation may fix it");
        }
    }
    assert_eq!(p.requests().len(), 0, "no bad request reached the provider");
    // The gateway still serves.
    let a = call(&gw, Some(&good_svid), Some(&good_trat), messages_body(false, 10, "hi")).await;
    assert_eq!(a.status, 200);
    let m = gw.metrics().await;
    for reason in
        ["svid_missing", "svid_signature", "svid_expired", "trat_not_bound", "unknown_org"]
    {
        assert!(m.contains(&format!("reason=\"{reason}\"")), "metrics lack {reason}");
    }
}

#[tokio::test]
async fn dlp_blocks_without_echo_and_redacts_on_request() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    let (svid, trat) = (s.svid("run-1"), s.trat("run-1", "txn-1"));
    let secret = format!("ghp_{}", "a1B2c3D4e5".repeat(4).chars().take(36).collect::<String>());
    let a =
        call(&gw, Some(&svid), Some(&trat), messages_body(false, 10, &format!("token {secret}")))
            .await;
    assert_eq!(a.status, 400);
    assert_never_retry(&a);
    assert!(a.message().contains("github-token"), "{}", a.message());
    assert!(!a.text().contains(&secret));
    assert_eq!(p.requests().len(), 0);
    let audit = audit_lines(&s.path("audit.log"), 1).await;
    assert_eq!(audit[0]["rejected"], "dlp_block");
    assert_eq!(audit[0]["dlp_rules"][0], "github-token");
    assert!(!audit[0].to_string().contains(&secret));

    let redacting = s.gateway(&p.url().unwrap(), &["--dlp-action", "redact"]).await;
    let a = call(
        &redacting,
        Some(&svid),
        Some(&trat),
        messages_body(false, 10, &format!("token {secret} end")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = p.requests();
    let body = String::from_utf8(seen[0].body.to_vec()).unwrap();
    assert!(body.contains("token [REDACTED:github-token] end"), "{body}");
    assert!(!body.contains(&secret));
}

#[tokio::test]
async fn budget_holds_across_concurrent_streams() {
    let s = Setup::new();
    let usage = Usage {
        input_tokens: 300,
        output_tokens: 150,
        cache_creation_input_tokens: 40,
        cache_read_input_tokens: 10,
    };
    let p = provider(ProviderConfig {
        usage,
        event_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let gw = Arc::new(s.gateway(&p.url().unwrap(), &["--rate-limit-per-minute", "0"]).await);
    let svid = s.svid("run-b");
    let mut claims = trat_claims("run-b", "txn-b");
    claims["tctx"]["budget_tokens"] = json!(1000);
    let trat = s.trat_key.sign(&claims);

    // Five concurrent streams of max_tokens 400 against 1000 tokens: only two fit.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (gw, svid, trat) = (gw.clone(), svid.clone(), trat.clone());
        tasks.push(tokio::spawn(async move {
            call(&gw, Some(&svid), Some(&trat), messages_body(true, 400, "go")).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => {
                assert!(a.text().contains("message_stop"));
                ok += 1;
            }
            429 => {
                assert_eq!(a.json()["error"]["type"], "rate_limit_error");
                assert!(a.header("retry-after").is_some(), "busy is transient: {}", a.text());
            }
            other => panic!("unexpected {other}: {}", a.text()),
        }
    }
    assert_eq!(ok, 2, "reservations must keep concurrent requests within the budget");
    // Two settled at 500 each (input + output + both cache kinds): the budget is spent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(true, 10, "more")).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_never_retry(&a);
    assert!(a.message().contains("spent its token budget (1000 of 1000"), "{}", a.message());
    let audit = audit_lines(&s.path("audit.log"), 6).await;
    let settled: Vec<_> = audit.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(settled.len(), 2);
    assert_eq!(settled[0]["cache_creation_input_tokens"], 40);
    assert_eq!(settled[0]["cache_read_input_tokens"], 10);

    // A request that could not fit even alone says so, without retry.
    let mut claims = trat_claims("run-b", "txn-c");
    claims["tctx"]["budget_tokens"] = json!(100);
    let small = s.trat_key.sign(&claims);
    let a = call(&gw, Some(&svid), Some(&small), messages_body(false, 400, "x")).await;
    assert_eq!(a.status, 429);
    assert_never_retry(&a);
    assert!(a.message().contains("lower max_tokens"));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s
        .gateway(&p.url().unwrap(), &["--rate-limit-per-minute", "6", "--rate-limit-burst", "2"])
        .await;
    let (svid, trat) = (s.svid("run-r"), s.trat("run-r", "txn-r"));
    for _ in 0..2 {
        assert_eq!(
            call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await.status,
            200
        );
    }
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 429);
    let secs: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&secs), "{secs}");
    assert!(a.header("x-should-retry").is_none());
    // Another run has its own rate.
    let (svid2, trat2) = (s.svid("run-q"), s.trat("run-q", "txn-q"));
    assert_eq!(
        call(&gw, Some(&svid2), Some(&trat2), messages_body(false, 5, "x")).await.status,
        200
    );
}

/// A tiny revoked-list server whose content the test changes.
async fn revoked_server() -> (String, Arc<std::sync::Mutex<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = Arc::new(std::sync::Mutex::new(r#"{"revoked":[]}"#.to_string()));
    let served = doc.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let doc = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = doc.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/revoked"), doc)
}

#[tokio::test]
async fn revocation_applies_within_one_poll_interval() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let (url, doc) = revoked_server().await;
    let gw =
        s.gateway(&p.url().unwrap(), &["--revoked-url", &url, "--revoked-poll-secs", "1"]).await;
    let (svid, trat) = (s.svid("run-v"), s.trat("run-v", "txn-v"));
    assert_eq!(call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await.status, 200);
    *doc.lock().unwrap() = json!({"revoked": [{"txn": "txn-v", "exp": now() + 600}]}).to_string();
    // One poll interval (1 s) plus slack.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.message().contains("revoked"));
    assert_never_retry(&a);
    // Other runs are unaffected.
    let (svid2, trat2) = (s.svid("run-w"), s.trat("run-w", "txn-w"));
    assert_eq!(
        call(&gw, Some(&svid2), Some(&trat2), messages_body(false, 5, "x")).await.status,
        200
    );
}

#[tokio::test]
async fn provider_key_and_jwks_rotate_on_disk() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    let (svid, trat) = (s.svid("run-k"), s.trat("run-k", "txn-k"));
    assert_eq!(call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await.status, 200);
    // A Secret volume update: new file renamed over the old one.
    let keys = s.path("keys");
    std::fs::write(keys.join(".new"), "sk-provider-acme-0002\n").unwrap();
    std::fs::rename(keys.join(".new"), keys.join(ORG)).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await.status, 200);
    let seen = p.requests();
    assert_eq!(seen[0].header("x-api-key"), Some(ORG_KEY));
    assert_eq!(seen[1].header("x-api-key"), Some("sk-provider-acme-0002"));

    // SVID issuer rotates: the new key joins the JWKS file, then the old one leaves.
    let new_key = EcKey::new("spire-2");
    std::fs::write(s.path("svid-jwks.json"), jwks(&[&s.svid_key, &new_key])).unwrap();
    let new_svid = new_key.sign(&svid_claims("run-k"));
    let a = call(&gw, Some(&new_svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 200, "unknown kid triggers a reload: {}", a.text());
    std::fs::write(s.path("svid-jwks.json"), jwks(&[&new_key])).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 401, "a withdrawn key's tokens, even cached, are refused: {}", a.text());
}

/// A provider that starts an SSE answer and then drops the connection.
async fn dying_provider() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the head and the (small) body.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n";
                let partial = "event: content_block_delta\ndata: {\"type\":\"content_blo";
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                let _ = stream
                    .write_all(format!("{head}{}{}", chunk(start), chunk(partial)).as_bytes())
                    .await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Gone, mid-event, without the terminating chunk.
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn upstream_dying_mid_stream_ends_with_an_sse_error_event() {
    let s = Setup::new();
    let upstream = dying_provider().await;
    let gw = s.gateway(&upstream, &[]).await;
    let (svid, trat) = (s.svid("run-d"), s.trat("run-d", "txn-d"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(true, 50, "x")).await;
    assert_eq!(a.status, 200);
    let text = a.text();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(!text.contains("content_blo\n"), "the half event is not passed on: {text}");
    assert!(text.trim_end().ends_with('}'), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let data: serde_json::Value =
        serde_json::from_str(last.trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!(data["type"], "error");
    let audit = audit_lines(&s.path("audit.log"), 1).await;
    assert_eq!(audit[0]["incomplete"], true);
    assert_eq!(audit[0]["input_tokens"], 7);
}

#[tokio::test]
async fn bad_bodies_and_paths() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &["--max-body-bytes", "1000"]).await;
    let (svid, trat) = (s.svid("run-x"), s.trat("run-x", "txn-x"));
    let a = call(&gw, Some(&svid), Some(&trat), "{not json".into()).await;
    assert_eq!(a.status, 400);
    assert!(a.message().contains("not well-formed JSON"), "{}", a.message());
    // A second max_tokens (parsers disagree on which wins) cannot dodge the budget.
    let dup = r#"{"model":"m","max_tokens":1,"messages":[],"max_tokens":100000}"#;
    let a = call(&gw, Some(&svid), Some(&trat), dup.into()).await;
    assert_eq!(a.status, 400);
    assert!(a.message().contains("'max_tokens' twice"), "{}", a.message());
    let a = call(&gw, Some(&svid), Some(&trat), json!({"model": "m", "messages": []}).to_string())
        .await;
    assert_eq!(a.status, 400);
    assert!(a.message().contains("max_tokens"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, &"x".repeat(2000))).await;
    assert_eq!(a.status, 413);
    assert_never_retry(&a);
    let a =
        send(http::Request::post(gw.url("/v1/files")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("only POST /v1/messages"));
    // count_tokens passes (no budget reservation).
    let req = http::Request::post(gw.url("/v1/messages/count_tokens"))
        .header("authorization", format!("Bearer {svid}"))
        .header("txn-token", &trat)
        .body(Full::new(Bytes::from(json!({"model": "m", "messages": []}).to_string())))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(p.requests().len(), 1);
}

#[tokio::test]
async fn serves_tls_and_reloads_the_certificate() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        skip_or_fail("openssl is not installed (Debian: apt-get install openssl)");
        return;
    }
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let mint = |name: &str| mint_cert(&s, name);
    let (cert1, key1) = mint("one");
    std::fs::copy(&cert1, s.path("tls.crt")).unwrap();
    std::fs::copy(&key1, s.path("tls.key")).unwrap();
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--tls-cert-file",
                s.path("tls.crt").to_str().unwrap(),
                "--tls-key-file",
                s.path("tls.key").to_str().unwrap(),
            ],
        )
        .await;
    let (svid, trat) = (s.svid("run-t"), s.trat("run-t", "txn-t"));
    let tls_call = |ca: std::path::PathBuf| {
        let (svid, trat, listen) = (svid.clone(), trat.clone(), gw.listen);
        async move {
            use sanctum_common::proxy::{
                Limits, ProxyBody, ProxyMetrics, Upstream, UpstreamClient,
            };
            let up = Upstream::url(&format!("https://{listen}")).unwrap().with_ca_file(ca);
            let client =
                UpstreamClient::new(up, &Limits::default(), Arc::new(ProxyMetrics::new("t")))
                    .unwrap();
            let req = http::Request::post("/v1/messages")
                .header("authorization", format!("Bearer {svid}"))
                .header("txn-token", trat)
                .header("content-type", "application/json")
                .body(ProxyBody::full(messages_body(false, 5, "tls")))
                .unwrap();
            client.send(req).await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        }
    };
    assert_eq!(tls_call(cert1.clone()).await, Ok(200));
    let (cert2, key2) = mint("two");
    std::fs::copy(&key2, s.path("tls.key")).unwrap();
    std::fs::copy(&cert2, s.path("tls.crt")).unwrap();
    let mut reloaded = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tls_call(cert2.clone()).await == Ok(200) {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new certificate is served after the files change");
    assert!(tls_call(cert1).await.is_err(), "the old certificate is gone");
}

/// A self-signed serving certificate for 127.0.0.1 and localhost, from openssl.
fn mint_cert(s: &Setup, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (s.path(&format!("{name}.crt")), s.path(&format!("{name}.key")));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    (cert, key)
}

/// A small HTTP server on loopback whose `answer` gives each request's status and body;
/// over TLS when `tls` is given. Its base URL.
async fn serve_answers<F>(tls: Option<tokio_rustls::TlsAcceptor>, answer: F) -> String
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> (u16, String) + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, tls) = (answer.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (status, body) = answer(&req);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else { return };
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await
                    }
                    None => http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await,
                };
            });
        }
    });
    format!("{scheme}://{addr}")
}

/// Serves documents by path (an OIDC issuer, an operator admin port).
async fn docs_server(
    docs: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
) -> String {
    serve_answers(None, move |req| match docs.lock().unwrap().get(req.uri().path()) {
        Some(d) => (200, d.clone()),
        None => (404, String::new()),
    })
    .await
}

#[tokio::test]
async fn jwks_from_an_oidc_issuer_and_the_operator_url() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let docs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let base = docs_server(docs.clone()).await;
    {
        let mut d = docs.lock().unwrap();
        // SPIRE's OIDC discovery provider / a Kubernetes issuer: discovery, then jwks_uri.
        d.insert(
            "/.well-known/openid-configuration".to_string(),
            json!({"issuer": base, "jwks_uri": format!("{base}/keys")}).to_string(),
        );
        d.insert("/keys".to_string(), jwks(&[&s.svid_key]));
        // The operator's admin port: the JWKS itself.
        d.insert("/.well-known/jwks.json".to_string(), jwks(&[&s.trat_key]));
        d.insert("/revoked".to_string(), r#"{"revoked":[]}"#.to_string());
    }
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--svid-jwks",
                &format!("{base}/.well-known/openid-configuration"),
                "--trat-jwks",
                &format!("{base}/.well-known/jwks.json"),
                "--revoked-url",
                &format!("{base}/revoked"),
            ],
        )
        .await;
    let (svid, trat) = (s.svid("run-u"), s.trat("run-u", "txn-u"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // The issuer rotates: a token with a new kid makes the gateway fetch again.
    let rotated = EcKey::new("spire-2");
    docs.lock().unwrap().insert("/keys".to_string(), jwks(&[&s.svid_key, &rotated]));
    let a = call(
        &gw,
        Some(&rotated.sign(&svid_claims("run-u"))),
        Some(&trat),
        messages_body(false, 5, "x"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

/// The Kubernetes service-account issuer's JWKS: https, only with a bearer token, and only
/// as `application/jwk-set+json`.
async fn authenticated_tls_jwks_server(
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    jwks: Arc<std::sync::Mutex<String>>,
    token: Arc<std::sync::Mutex<String>>,
) -> String {
    let reloading = Arc::new(sanctum_common::tls::ReloadingCert::new(cert, key).unwrap());
    let acceptor = sanctum_common::tls::acceptor(reloading).unwrap();
    serve_answers(Some(acceptor), move |req| {
        let want = format!("Bearer {}", token.lock().unwrap());
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        // Like the API server: only application/jwk-set+json, else 406.
        if header("authorization") != Some(want.as_str()) {
            (401, String::new())
        } else if !header("accept").is_some_and(|v| v.contains("application/jwk-set+json")) {
            (406, String::new())
        } else if req.uri().path() == "/openid/v1/jwks" {
            (200, jwks.lock().unwrap().clone())
        } else {
            (404, String::new())
        }
    })
    .await
}

#[tokio::test]
async fn svid_jwks_with_a_rotating_bearer_token() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        skip_or_fail("openssl is not installed (Debian: apt-get install openssl)");
        return;
    }
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let (cert, key) = mint_cert(&s, "issuer");
    let keys = Arc::new(std::sync::Mutex::new(jwks(&[&s.svid_key])));
    let token = Arc::new(std::sync::Mutex::new("sa-token-1".to_string()));
    let base = authenticated_tls_jwks_server(cert.clone(), key, keys.clone(), token.clone()).await;
    let token_file = s.path("sa-token");
    std::fs::write(&token_file, "sa-token-1\n").unwrap();
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--svid-jwks",
                &format!("{base}/openid/v1/jwks"),
                "--svid-jwks-token-file",
                token_file.to_str().unwrap(),
                "--ca-file",
                cert.to_str().unwrap(),
            ],
        )
        .await;
    let (svid, trat) = (s.svid("run-k"), s.trat("run-k", "txn-k"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // The kubelet rotates the gateway's token and the issuer rotates its key: the next
    // fetch reads the new token from the file.
    *token.lock().unwrap() = "sa-token-2".to_string();
    std::fs::write(&token_file, "sa-token-2\n").unwrap();
    let rotated = EcKey::new("k8s-2");
    *keys.lock().unwrap() = jwks(&[&s.svid_key, &rotated]);
    let a = call(
        &gw,
        Some(&rotated.sign(&svid_claims("run-k"))),
        Some(&trat),
        messages_body(false, 5, "x"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn revoked_list_unreachable_fails_closed() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let docs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    docs.lock().unwrap().insert("/revoked".to_string(), r#"{"revoked":[]}"#.to_string());
    let base = docs_server(docs.clone()).await;
    let gw = s
        .gateway(
            &p.url().unwrap(),
            &[
                "--revoked-url",
                &format!("{base}/revoked"),
                "--revoked-poll-secs",
                "1",
                "--revoked-max-age-secs",
                "2",
            ],
        )
        .await;
    let (svid, trat) = (s.svid("run-f"), s.trat("run-f", "txn-f"));
    assert_eq!(call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await.status, 200);
    docs.lock().unwrap().clear(); // the operator's list now answers 404
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "x")).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.message().contains("revoked list"), "{}", a.message());
    assert!(a.header("retry-after").is_some());
}

#[tokio::test]
async fn dlp_rules_file_and_bad_configuration() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    std::fs::write(
        s.path("dlp.yaml"),
        "disable: [jwt]\nrules:\n  - id: acme-internal\n    description: ACME internal token\n    regex: 'acme_[a-z0-9]{16}'\n",
    )
    .unwrap();
    let gw =
        s.gateway(&p.url().unwrap(), &["--dlp-rules", s.path("dlp.yaml").to_str().unwrap()]).await;
    let (svid, trat) = (s.svid("run-l"), s.trat("run-l", "txn-l"));
    let a = call(
        &gw,
        Some(&svid),
        Some(&trat),
        messages_body(false, 5, "use acme_0123456789abcdef now"),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.message().contains("ACME internal token (rule 'acme-internal')"), "{}", a.message());
    // The disabled built-in no longer blocks.
    let jwt_like = format!("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.{}", "s1gnature_".repeat(3));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, &jwt_like)).await;
    assert_eq!(a.status, 200, "{}", a.text());

    // Bad configuration: the gateway refuses to start, with a one-line reason.
    std::fs::write(s.path("bad.yaml"), "rules:\n  - id: broken\n    regex: '(unclosed'\n").unwrap();
    let listen = free_port().to_string();
    for (args, want) in [
        (
            vec!["--dlp-rules", s.path("bad.yaml").to_str().unwrap()],
            "DLP rule 'broken' has an invalid regex",
        ),
        (vec!["--state", "mysql://x"], "not a state URL"),
        (vec!["--allowed-sub", "spiffe://td/**"], "'**' is not supported"),
        (vec!["--upstream", "ftp://x"], "invalid --upstream"),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"));
        cmd.args(["--listen", &listen, "--admin-listen", "127.0.0.1:0"])
            .args(["--svid-jwks", s.path("svid-jwks.json").to_str().unwrap()])
            .args(["--trat-jwks", s.path("trat-jwks.json").to_str().unwrap()])
            .args(["--keys-dir", s.path("keys").to_str().unwrap()]);
        if !args.contains(&"--upstream") {
            cmd.args(["--upstream", "http://127.0.0.1:1"]);
        }
        let out = cmd.args(&args).env("RUST_LOG", "off").output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Issue 12 item 2: in ServiceAccount mode a ScannerRun's TraT carries the ServiceAccount
/// `sub`, which every pod of that ServiceAccount shares. The TraT names the run's pod, and
/// the gateway takes it only from that pod's bound token. The audit record names the
/// namespace (item 1).
#[tokio::test]
async fn service_account_trat_is_bound_to_its_pod() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw =
        s.gateway(&p.url().unwrap(), &["--allowed-sub", "system:serviceaccount:team-a:*"]).await;
    let sub = "system:serviceaccount:team-a:default";
    let sa_token = |pod: Option<&str>| {
        let mut claims = json!({"sub": sub, "aud": [AUD], "exp": now() + 600, "iat": now()});
        if let Some(pod) = pod {
            claims["kubernetes.io"] = json!({"namespace": "team-a",
                "pod": {"name": pod, "uid": format!("uid-{pod}")},
                "serviceaccount": {"name": "default", "uid": "sa-uid"}});
        }
        s.svid_key.sign(&claims)
    };
    let mut claims = trat_claims("run-1", "txn-1");
    claims["sub"] = json!(sub);
    claims["tctx"]["namespace"] = json!("team-a");
    claims["tctx"]["pod_name"] = json!("run-1-scanner");
    let trat = s.trat_key.sign(&claims);

    let own = sa_token(Some("run-1-scanner"));
    let a = call(&gw, Some(&own), Some(&trat), messages_body(false, 10, "hi")).await;
    assert_eq!(a.status, 200, "{}", a.text());

    for (name, token, fragment) in [
        (
            "another pod of the ServiceAccount",
            sa_token(Some("intruder")),
            "belongs to pod 'intruder'",
        ),
        ("a token bound to no pod", sa_token(None), "not bound to a pod"),
    ] {
        let a = call(&gw, Some(&token), Some(&trat), messages_body(false, 10, "hi")).await;
        assert_eq!(a.status, 403, "{name}: {}", a.text());
        let msg = a.message();
        assert!(
            msg.contains("bound to pod 'run-1-scanner'") && msg.contains(fragment),
            "{name}: {msg}"
        );
        assert_never_retry(&a);
    }
    assert_eq!(p.requests().len(), 1, "only the run's own pod reached the provider");
    let audit = audit_lines(&s.path("audit.log"), 3).await;
    assert!(audit.iter().all(|l| l["namespace"] == "team-a"), "{audit:?}");
}

/// Issue 12 item 16: when the SVID key set also holds the operator's key (one JWKS for
/// both, or an operator key added by mistake), the signature cannot tell the two tokens
/// apart; their `typ` does. A TraT where the JWT-SVID goes, or the reverse, is a 401.
#[tokio::test]
async fn a_trat_and_an_svid_cannot_swap_places_under_a_shared_key_set() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    // One key set holding both issuers' keys, for both tokens.
    std::fs::write(s.path("both.json"), jwks(&[&s.svid_key, &s.trat_key])).unwrap();
    let both = s.path("both.json").display().to_string();
    let gw = s.gateway(&p.url().unwrap(), &["--svid-jwks", &both, "--trat-jwks", &both]).await;
    let (svid, trat) = (s.svid("run-1"), s.trat("run-1", "txn-1"));
    let a = call(&gw, Some(&svid), Some(&trat), messages_body(false, 10, "hi")).await;
    assert_eq!(a.status, 200, "{}", a.text());

    // The TraT key signs SVID-shaped claims: a TraT-typed token in Authorization.
    let trat_as_svid = s.trat_key.sign(&svid_claims("run-1"));
    // The SVID key signs TraT claims: a JWT-typed token in Txn-Token.
    let svid_as_trat = s.svid_key.sign(&trat_claims("run-1", "txn-1"));
    for (name, svid, trat, fragment) in [
        (
            "TraT as the JWT-SVID",
            &trat_as_svid,
            &trat,
            "is a transaction token (typ 'txntoken+jwt'), not a JWT-SVID",
        ),
        ("JWT-SVID as the TraT", &svid, &svid_as_trat, "has typ 'JWT', not 'txntoken+jwt'"),
        ("both swapped", &trat, &svid, "is a transaction token"),
    ] {
        let a = call(&gw, Some(svid), Some(trat), messages_body(false, 10, "hi")).await;
        assert_eq!(a.status, 401, "{name}: {}", a.text());
        assert!(a.message().contains(fragment), "{name}: {}", a.message());
        assert_never_retry(&a);
    }
    assert_eq!(p.requests().len(), 1, "no swapped token reached the provider");
}

/// Issue 12 item 15: a key written with JSON escapes is the key to the provider, which
/// decodes them; the gateway's DLP sees it too, and names its place in the body as sent.
#[tokio::test]
async fn dlp_sees_secrets_written_with_json_escapes() {
    let s = Setup::new();
    let p = provider(ProviderConfig::default()).await;
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    let (svid, trat) = (s.svid("run-e"), s.trat("run-e", "txn-e"));
    let tail = "aB3dE5gH7jK9mN1pQ2sT4vW6yZ8".repeat(3);
    for spelled in
        [format!(r"\u0073k-ant-api03-{tail}"), format!(r"sk\u002dant\u002dapi03\u002d{tail}")]
    {
        let body = format!(
            r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"key {spelled}"}}]}}"#
        );
        let a = call(&gw, Some(&svid), Some(&trat), body).await;
        assert_eq!(a.status, 400, "{}", a.text());
        assert_never_retry(&a);
        assert!(a.message().contains("anthropic-api-key"), "{}", a.message());
        assert!(!a.text().contains(&tail), "the secret is not echoed");
    }
    assert_eq!(p.requests().len(), 0);
}
