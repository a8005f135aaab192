//! The per-org request policy (issue 12 item 14), end to end: the real gateway with a
//! `--config` file, the stand-in provider recording what reaches it.

mod gateway_support;

use bytes::Bytes;
use gateway_support::*;
use http_body_util::Full;
use sanctum_testkit::{Provider, ProviderConfig};
use serde_json::{Value, json};

async fn post(
    gw: &Gateway,
    target: &str,
    svid: &str,
    trat: &str,
    beta: Option<&str>,
    body: &Value,
) -> Answer {
    let mut req = http::Request::post(gw.url(target))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {svid}"))
        .header("txn-token", trat);
    if let Some(b) = beta {
        req = req.header("anthropic-beta", b);
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

fn body(model: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn refused(a: &Answer, reason_words: &str) {
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.header("x-should-retry"), Some("false"));
    assert_eq!(a.json()["error"]["type"], "permission_error");
    assert!(a.message().contains(reason_words), "{}", a.message());
}

#[tokio::test]
async fn models_betas_and_provider_side_tools_follow_the_org_policy() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let config = s.path("gateway.yaml");
    std::fs::write(
        &config,
        "default:\n  models: ['claude-sonnet-4-5*', 'claude-haiku-4-5*']\n  betas: ['claude-code-*', 'interleaved-thinking-*']\n\
         orgs:\n  research:\n    serverTools: [web_search]\n",
    )
    .unwrap();
    // A listed org needs its key for the gateway to be ready.
    std::fs::write(s.path("keys").join("research"), "sk-research").unwrap();
    let gw = s.gateway(&p.url().unwrap(), &["--config", config.to_str().unwrap()]).await;
    let (svid, trat) = (s.svid("run-p"), s.trat("run-p", "txn-p"));

    // Allowed: the model and betas of the policy, client tools. The query string is cut to
    // `beta=true`.
    let tools = json!([{"name": "Bash", "input_schema": {"type": "object"}},
                       {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]);
    let a = post(
        &gw,
        "/v1/messages?beta=true&upstream=http://evil",
        &svid,
        &trat,
        Some("claude-code-20250219,interleaved-thinking-2025-05-14"),
        &body("claude-sonnet-4-5-20250929", json!({"tools": tools})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = post(&gw, "/v1/messages?x=1", &svid, &trat, None, &body("claude-haiku-4-5", json!({})))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = p.requests();
    assert_eq!(seen[0].target, "/v1/messages?beta=true");
    assert_eq!(seen[1].target, "/v1/messages");

    refused(
        &post(&gw, "/v1/messages", &svid, &trat, None, &body("claude-opus-4-1", json!({}))).await,
        "model 'claude-opus-4-1' is not allowed for org 'acme'",
    );
    refused(
        &post(
            &gw,
            "/v1/messages",
            &svid,
            &trat,
            Some("claude-code-20250219, mcp-client-2025-04-04"),
            &body("claude-sonnet-4-5", json!({})),
        )
        .await,
        "anthropic-beta 'mcp-client-2025-04-04'",
    );
    for (extra, tool) in [
        (
            json!({"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]}),
            "mcp_servers",
        ),
        (
            json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
            "web_fetch_20250910",
        ),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "web_search_20250305",
        ),
    ] {
        let a =
            post(&gw, "/v1/messages", &svid, &trat, None, &body("claude-sonnet-4-5", extra)).await;
        refused(&a, &format!("provider-side tool '{tool}'"));
    }
    // An escaped field name is the same field to the provider.
    let escaped = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[],"mcp\u005fservers":[{"url":"u"}]}"#;
    let req = http::Request::post(gw.url("/v1/messages"))
        .header("authorization", format!("Bearer {svid}"))
        .header("txn-token", &trat)
        .body(Full::new(Bytes::from(escaped)))
        .unwrap();
    refused(&send(req).await, "mcp_servers");
    assert_eq!(p.requests().len(), 2, "no refused request reached the provider");

    // Another org's entry allows what it names.
    let mut claims = trat_claims("run-r", "txn-r");
    claims["tctx"]["org_id"] = json!("research");
    let (svid_r, trat_r) = (s.svid("run-r"), s.trat_key.sign(&claims));
    let search = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let a =
        post(&gw, "/v1/messages", &svid_r, &trat_r, None, &body("claude-sonnet-4-5", search)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let audit = audit_lines(&s.path("audit.log"), 9).await;
    assert!(audit.iter().any(|l| l["rejected"] == "policy_server_tool"));
    assert!(audit.iter().any(|l| l["rejected"] == "policy_model"));
}

#[tokio::test]
async fn without_a_config_provider_side_tools_are_refused_and_bad_configs_stop_the_gateway() {
    let s = Setup::new();
    let p = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let gw = s.gateway(&p.url().unwrap(), &[]).await;
    let (svid, trat) = (s.svid("run-d"), s.trat("run-d", "txn-d"));
    let a = post(&gw, "/v1/messages", &svid, &trat, None, &body("any-model", json!({}))).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let search = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    refused(
        &post(&gw, "/v1/messages", &svid, &trat, None, &body("any-model", search)).await,
        "web_search",
    );

    let bad = s.path("bad.yaml");
    std::fs::write(&bad, "default:\n  model: ['x']\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--svid-jwks",
            "x",
            "--trat-jwks",
            "x",
            "--keys-dir",
            "x",
            "--config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("unknown field"), "{err}");
}
