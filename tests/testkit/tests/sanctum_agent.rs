//! The `sanctum-agent` entrypoint with the real native Claude Code CLI against the stand-in
//! provider: one `-p` turn, the run summary in the termination log, exit 0; and a refused
//! provider gives exit 1 with `error` in the summary.

use std::process::Command;

use sanctum_testkit::clients::{PLACEHOLDER_KEY, installed};
use sanctum_testkit::{Provider, ProviderConfig, Refuse};
use serde_json::Value;

const NATIVE: &str = "node_modules/@anthropic-ai/claude-code-linux-x64/claude";

/// Runs the agent as the pod does: a clean environment, HOME/TMPDIR on a scratch dir.
fn run_agent(claude: &std::path::Path, base_url: &str) -> (std::process::ExitStatus, Value) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let status = Command::new(env!("CARGO_BIN_EXE_sanctum-agent"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", PLACEHOLDER_KEY)
        .env("SANCTUM_CLAUDE", claude)
        .env("SANCTUM_TERMINATION_LOG", &log)
        .env("SANCTUM_PROMPT", "Say ready.")
        .status()
        .expect("run sanctum-agent");
    let text = std::fs::read_to_string(&log).expect("the summary is written");
    assert!(text.len() <= 4096);
    (status, serde_json::from_str(&text).expect("the summary is JSON"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_the_native_cli_once_and_writes_the_summary() {
    let Some(claude) = installed(NATIVE, "the native Claude Code CLI") else { return };
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let url = provider.url().unwrap();
    let (status, summary) =
        tokio::task::spawn_blocking(move || run_agent(&claude, &url)).await.unwrap();
    assert!(status.success(), "exit status {status}, summary {summary}");
    assert_eq!(summary["findings"]["critical"], 0);
    assert_eq!(summary["sarif"], "");
    assert!(summary["turns"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["costUsd"].as_f64().is_some(), "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");
    assert!(provider.served() >= 1, "the CLI reached the stand-in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_run_exits_1_with_the_error_in_the_summary() {
    let Some(claude) = installed(NATIVE, "the native Claude Code CLI") else { return };
    let config =
        ProviderConfig { refuse: Some(Refuse::budget_spent()), ..ProviderConfig::default() };
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
    let url = provider.url().unwrap();
    let (status, summary) =
        tokio::task::spawn_blocking(move || run_agent(&claude, &url)).await.unwrap();
    assert_eq!(status.code(), Some(1), "summary {summary}");
    assert!(summary["error"].as_str().is_some_and(|e| !e.is_empty()), "{summary}");
}
