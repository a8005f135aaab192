//! Real clients through the real bridge: the Claude Code CLI (`claude -p`, isolated as
//! shared/CLIENTS.md says) and the `anthropic` Python SDK (streaming and not), talking to the
//! stand-in provider on a real Unix socket. The provider refuses any request that lacks the
//! pod's JWT-SVID and TraT or that carries the placeholder key, so a client that prints the
//! provider's answer proves the whole exchange.
//!
//! The clients are installed by `tests/clients/install.sh`. Without them these tests print
//! a loud SKIP line — or fail, when `SANCTUM_REQUIRE_ALL=1` (the project's test script).

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use sanctum_testkit::{DEFAULT_ANSWER, ProviderConfig};
use support::*;

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

/// The client's path, or `None` after printing why the test is skipped.
fn installed(relative: &str, what: &str) -> Option<PathBuf> {
    let path = clients_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let message =
        format!("{what} is not installed at {}: run tests/clients/install.sh", path.display());
    if std::env::var("SANCTUM_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("SANCTUM_REQUIRE_ALL=1 and {message}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED real-client test: {message} !!!!!!!!!!\n");
    None
}

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

/// A client command with a clean environment: nothing of the test runner's (no real
/// ANTHROPIC_* variable), HOME and TMPDIR in a temp dir.
fn isolated(program: PathBuf, home: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("LANG", "C.UTF-8")
        .current_dir(home);
    cmd
}

/// Runs a client process with a time limit.
async fn run_isolated(cmd: Command) -> Output {
    let child = tokio::process::Command::from(cmd).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("client did not finish in 120 s")
        .expect("run client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_cli_through_the_bridge() {
    let Some(claude) = installed(
        "node_modules/.bin/claude",
        "the Claude Code CLI (npm @anthropic-ai/claude-code)",
    ) else {
        return;
    };
    let env = start_env().await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = isolated(claude, home.path());
    cmd.args(["-p", "Say hello", "--output-format", "json"])
        .env("ANTHROPIC_BASE_URL", env.url(""))
        .env("ANTHROPIC_API_KEY", PLACEHOLDER)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1");
    let out = run_isolated(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "claude failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(result["is_error"], false, "{stdout}");
    assert_eq!(result["result"], DEFAULT_ANSWER, "{stdout}");
    assert_provider_saw_only_pod_credentials(&env);
    let streamed = env.provider().requests().iter().any(|r| {
        serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|b| b["stream"] == true)
    });
    assert!(streamed, "claude -p is expected to stream its answer");
}

const PYTHON_CLIENT: &str = r#"
import sys, anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="gateway-injected", max_retries=0)
args = dict(model="claude-sonnet-4-5", max_tokens=256, messages=[{"role": "user", "content": "Say hello"}])
message = client.messages.create(**args)
print("JSON:" + message.content[0].text)
with client.messages.stream(**args) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print("STREAM:" + text)
print("USAGE:%d/%d" % (final.usage.input_tokens, final.usage.output_tokens))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_through_the_bridge() {
    let Some(python) = installed(".venv/bin/python", "the anthropic Python SDK (PyPI anthropic)")
    else {
        return;
    };
    let env = start_env().await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = isolated(python, home.path());
    cmd.args(["-c", PYTHON_CLIENT, &env.url("")]);
    let out = run_isolated(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("JSON:{DEFAULT_ANSWER}\n")), "{stdout}");
    assert!(stdout.contains(&format!("STREAM:{DEFAULT_ANSWER}\n")), "{stdout}");
    assert!(stdout.contains("USAGE:25/12"), "{stdout}");
    assert_provider_saw_only_pod_credentials(&env);
    let seen = env.provider().requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-stainless-helper-method"), Some("stream"));
}
