//! Real clients through the real bridge: the Claude Code CLI (`claude -p`, isolated as
//! shared/CLIENTS.md says) and the `anthropic` Python SDK (streaming and not), talking to the
//! stand-in provider on a real Unix socket. The provider refuses any request that lacks the
//! pod's JWT-SVID and TraT or that carries the placeholder key, so a client that prints the
//! provider's answer proves the whole exchange.
//!
//! The clients are installed by `tests/clients/install.sh`. Without them these tests print
//! a loud SKIP line — or fail, when `SANCTUM_REQUIRE_ALL=1` (the project's test script).

mod support;

use sanctum_testkit::{ProviderConfig, clients};
use support::*;

/// The provider of these tests: only the pod's tokens are accepted, never the placeholder.
async fn start_env() -> Env {
    // Tokens are known only after start, so the provider is configured in two steps:
    // start without requirements, then restart it with them on the same socket.
    let env = start(None).await;
    let cfg = ProviderConfig {
        require: vec![
            ("authorization".into(), format!("Bearer {}", env.jwt)),
            ("txn-token".into(), env.trat.clone()),
        ],
        forbid_values: vec![PLACEHOLDER.into()],
        ..ProviderConfig::default()
    };
    let mut env = env;
    env.provider =
        Some(sanctum_testkit::Provider::start_unix(&env.socket(), cfg).await.expect("provider"));
    env
}

fn assert_provider_saw_only_pod_credentials(env: &Env) {
    let seen = env.provider().requests();
    assert!(
        seen.iter().any(|r| r.method == "POST" && r.target.starts_with("/v1/messages")),
        "no Messages API call arrived: {seen:?}"
    );
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", env.jwt).as_str()),
            "{} {}",
            r.method,
            r.target
        );
        assert_eq!(r.header("txn-token"), Some(env.trat.as_str()));
        assert!(!r.any_header_contains(PLACEHOLDER), "the placeholder key reached the provider");
        assert_eq!(r.count("x-api-key"), 0);
    }
}

async fn claude_code_through_the_bridge(claude: &std::path::Path) {
    let env = start_env().await;
    clients::run_claude(claude, &env.url("")).await;
    assert_provider_saw_only_pod_credentials(&env);
    let streamed = env.provider().requests().iter().any(|r| {
        serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|b| b["stream"] == true)
    });
    assert!(streamed, "claude -p is expected to stream its answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_cli_through_the_bridge() {
    let Some(claude) = clients::claude_cli() else { return };
    claude_code_through_the_bridge(&claude).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_claude_code_through_the_bridge() {
    let Some(claude) = clients::claude_native() else { return };
    claude_code_through_the_bridge(&claude).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_through_the_bridge() {
    let Some(python) = clients::python_sdk() else { return };
    let env = start_env().await;
    clients::run_python_sdk(&python, &env.url("")).await;
    assert_provider_saw_only_pod_credentials(&env);
    let seen = env.provider().requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-stainless-helper-method"), Some("stream"));
}
