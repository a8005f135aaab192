//! An org whose provider is Amazon Bedrock (issue 14 item 4), end to end: the real gateway
//! binary with a `--config` naming Bedrock for the org, in front of the testkit's stand-in
//! Bedrock (SigV4 verified independently of the gateway's libraries). The agent's side is
//! the Messages API throughout: JSON, SSE, errors, metering and the audit line.

mod gateway_support;

use bytes::Bytes;
use gateway_support::*;
use http_body_util::Full;
use std::time::Duration;

use sanctum_testkit::bedrock::{Bedrock, BedrockConfig, EXAMPLE_KEY_ID, EXAMPLE_SECRET, StsConfig};
use serde_json::{Value, json};

const MODEL_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// A gateway whose org `acme` uses the stand-in; `secret` is the Secret's secret key.
async fn setup(standin: &Bedrock, secret: &str) -> (Setup, Gateway) {
    let s = Setup::new();
    let aws = s.path("aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(aws.join("aws_access_key_id"), format!("{EXAMPLE_KEY_ID}\n")).unwrap();
    std::fs::write(aws.join("aws_secret_access_key"), format!("{secret}\n")).unwrap();
    let credentials = format!("secretDir: {}", aws.display());
    let gw = start(&s, standin, &credentials).await;
    (s, gw)
}

/// Starts the gateway with org `acme` on the stand-in, `credentials` its YAML (one line).
async fn start(s: &Setup, standin: &Bedrock, credentials: &str) -> Gateway {
    start_with(s, standin, credentials, "").await
}

/// [`start`], with `extra` (whole lines, indented 6) added to the org's `bedrock:`.
async fn start_with(s: &Setup, standin: &Bedrock, credentials: &str, extra: &str) -> Gateway {
    let config = s.path("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "orgs:\n  {ORG}:\n    provider: bedrock\n    bedrock:\n      region: us-east-1\n      \
             endpoint: {}\n      modelIds:\n        claude-sonnet-4-5: '{MODEL_ID}'\n      \
             credentials: {{{credentials}}}\n{extra}",
            standin.url(),
        ),
    )
    .unwrap();
    // --upstream is Anthropic's, unused by this org: a closed port proves it.
    s.gateway("http://127.0.0.1:9", &["--config", config.to_str().unwrap()]).await
}

async fn post(gw: &Gateway, s: &Setup, target: &str, beta: Option<&str>, body: &Value) -> Answer {
    let mut req = http::Request::post(gw.url(target))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("authorization", format!("Bearer {}", s.svid("run-b")))
        .header("txn-token", s.trat("run-b", "txn-b"));
    if let Some(b) = beta {
        req = req.header("anthropic-beta", b);
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

fn body(stream: bool, model: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn json_and_stream_answers_come_back_as_the_messages_api_and_are_metered() {
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup(&standin, EXAMPLE_SECRET).await;

    let a = post(
        &gw,
        &s,
        "/v1/messages?beta=true",
        Some("claude-code-20250219"),
        &body(false, "claude-sonnet-4-5"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["type"], "message", "{}", a.text());
    assert_eq!(a.json()["usage"]["input_tokens"], 25);

    let a = post(&gw, &s, "/v1/messages", None, &body(true, "claude-sonnet-4-5")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let text = a.text();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains("event: message_stop\n"), "{text}");

    // What reached Bedrock: its path and body, signed (the stand-in checked the signature).
    let seen = standin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke");
    assert_eq!(
        seen[1].target,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    );
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(sent["anthropic_beta"], json!(["claude-code-20250219"]));
    assert!(sent.get("model").is_none() && sent.get("stream").is_none(), "{sent}");
    for r in &seen {
        assert!(r.header("authorization").is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 ")));
        assert!(r.headers.get("txn-token").is_none() && r.headers.get("x-api-key").is_none());
    }

    // Metered like any answer: usage in the audit line, complete.
    let lines = audit_lines(&s.path("audit.log"), 2).await;
    for line in &lines[..2] {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["input_tokens"], 25, "{line}");
        assert_eq!(line["output_tokens"], 12, "{line}");
        assert!(line.get("incomplete").is_none(), "{line}");
    }
}

#[tokio::test]
async fn refusals_in_the_messages_api_shape() {
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup(&standin, EXAMPLE_SECRET).await;

    let a = post(&gw, &s, "/v1/messages", None, &body(false, "claude-opus-4-1")).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"]["type"], "permission_error");
    let a =
        post(&gw, &s, "/v1/messages/count_tokens", None, &body(false, "claude-sonnet-4-5")).await;
    assert_eq!(a.status, 404, "{}", a.text());
    assert!(standin.requests().is_empty());
    let m = gw.metrics().await;
    assert!(m.contains("sanctum_gateway_rejections_total{reason=\"provider_model\"} 1"), "{m}");
    assert!(
        m.contains("sanctum_gateway_rejections_total{reason=\"provider_unsupported\"} 1"),
        "{m}"
    );

    // Bedrock's own refusal (a wrong secret: the signature does not match) in Anthropic's shape.
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup(&standin, "not-the-secret").await;
    let a = post(&gw, &s, "/v1/messages", None, &body(false, "claude-sonnet-4-5")).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["type"], "error", "{}", a.text());
    assert_eq!(a.json()["error"]["type"], "permission_error", "{}", a.text());
    assert!(!a.text().contains("not-the-secret"));
}

#[tokio::test]
async fn a_stream_exception_becomes_an_sse_error_event() {
    let cfg = BedrockConfig {
        stream_exception: Some(("throttlingException".into(), "Too many tokens".into())),
        ..BedrockConfig::default()
    };
    let standin = Bedrock::start(cfg).await.unwrap();
    let (s, gw) = setup(&standin, EXAMPLE_SECRET).await;
    let a = post(&gw, &s, "/v1/messages", None, &body(true, "claude-sonnet-4-5")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let text = a.text();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains("event: error\n"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    // Not seen whole: charged at least the reservation, marked incomplete.
    let lines = audit_lines(&s.path("audit.log"), 1).await;
    assert_eq!(lines[0]["incomplete"], true, "{}", lines[0]);
    assert!(lines[0]["charged_tokens"].as_u64().unwrap() >= 100, "{}", lines[0]);
}

#[tokio::test]
async fn web_identity_credentials_come_from_sts_and_sign_with_their_session_token() {
    let role = "arn:aws:iam::123456789012:role/sanctum-bedrock-acme";
    let cfg = BedrockConfig {
        keys: Vec::new(), // only what STS hands out is accepted
        sts: Some(StsConfig {
            role_arn: role.into(),
            token: "projected-sa-token".into(),
            lifetime: Duration::from_secs(3600),
        }),
        ..BedrockConfig::default()
    };
    let standin = Bedrock::start(cfg).await.unwrap();
    let s = Setup::new();
    std::fs::write(s.path("sa-token"), "projected-sa-token\n").unwrap();
    let credentials = format!(
        "webIdentity: {{roleArn: '{role}', tokenFile: {}, stsEndpoint: '{}'}}",
        s.path("sa-token").display(),
        standin.url()
    );
    let gw = start(&s, &standin, &credentials).await;
    // The refresher calls STS at start; until it answers, requests are 503 and retried.
    let mut a = post(&gw, &s, "/v1/messages", None, &body(false, "claude-sonnet-4-5")).await;
    for _ in 0..50 {
        if a.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        a = post(&gw, &s, "/v1/messages", None, &body(false, "claude-sonnet-4-5")).await;
    }
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(standin.sts_calls(), 1);
    let invoke = standin.requests().into_iter().find(|r| r.target.starts_with("/model/")).unwrap();
    assert!(invoke.header("x-amz-security-token").is_some(), "{:?}", invoke.headers);
}

/// Claude Code 2.1.332's `anthropic-beta` (CLIENTS.md): Anthropic-only names among them.
const CLAUDE_CODE_BETAS: &str = "claude-code-20250219,interleaved-thinking-2025-05-14,\
    context-management-2025-06-27,per-turn-control-2026-07-01,\
    mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,\
    advanced-tool-use-2025-11-20,effort-2025-11-24";

/// A gateway whose org `acme` has `bedrock.betas: <betas>` (`None`: the key left out).
async fn setup_betas(standin: &Bedrock, betas: Option<&str>) -> (Setup, Gateway) {
    let s = Setup::new();
    let aws = s.path("aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(aws.join("aws_access_key_id"), format!("{EXAMPLE_KEY_ID}\n")).unwrap();
    std::fs::write(aws.join("aws_secret_access_key"), format!("{EXAMPLE_SECRET}\n")).unwrap();
    let credentials = format!("secretDir: {}", aws.display());
    let extra = betas.map(|b| format!("      betas: {b}\n")).unwrap_or_default();
    let gw = start_with(&s, standin, &credentials, &extra).await;
    (s, gw)
}

#[tokio::test]
async fn betas_bedrock_does_not_take_are_left_out_not_refused() {
    // The stand-in refuses beta names outside its own (AWS-documented) list, as Bedrock does.
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup_betas(&standin, None).await;
    let a =
        post(&gw, &s, "/v1/messages", Some(CLAUDE_CODE_BETAS), &body(false, "claude-sonnet-4-5"))
            .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = standin.requests();
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        sent["anthropic_beta"],
        json!([
            "claude-code-20250219",
            "interleaved-thinking-2025-05-14",
            "context-management-2025-06-27",
            "effort-2025-11-24"
        ])
    );
    let lines = audit_lines(&s.path("audit.log"), 1).await;
    assert_eq!(lines[0]["status"], 200, "{}", lines[0]);

    // The org's own list.
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup_betas(&standin, Some("[interleaved-thinking-2025-05-14]")).await;
    let a =
        post(&gw, &s, "/v1/messages", Some(CLAUDE_CODE_BETAS), &body(true, "claude-sonnet-4-5"))
            .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let sent: Value = serde_json::from_slice(&standin.requests()[0].body).unwrap();
    assert_eq!(sent["anthropic_beta"], json!(["interleaved-thinking-2025-05-14"]));

    // `'*'` passes every name: what Bedrock then says, in Anthropic's shape.
    let standin = Bedrock::start(BedrockConfig::default()).await.unwrap();
    let (s, gw) = setup_betas(&standin, Some("['*']")).await;
    let a =
        post(&gw, &s, "/v1/messages", Some(CLAUDE_CODE_BETAS), &body(false, "claude-sonnet-4-5"))
            .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["error"]["type"], "invalid_request_error", "{}", a.text());
    assert!(a.text().contains("invalid beta flag"), "{}", a.text());
}
