//! The real clients of `tests/clients/` (installed by its `install.sh`), run isolated as
//! `shared/CLIENTS.md` says — clean environment, `HOME` and `TMPDIR` in a temp dir, a time
//! limit — with the checks every test of them makes on what the client printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::DEFAULT_ANSWER;

/// The key the pod's agent holds: worth nothing, and never to reach a provider.
pub const PLACEHOLDER_KEY: &str = "gateway-injected";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

/// The client's path, or `None` after a loud SKIP line; a failure under `SANCTUM_REQUIRE_ALL=1`.
pub fn installed(relative: &str, what: &str) -> Option<PathBuf> {
    let path = dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let message =
        format!("{what} is not installed at {}: run tests/clients/install.sh", path.display());
    assert!(
        std::env::var("SANCTUM_REQUIRE_ALL").as_deref() != Ok("1"),
        "SANCTUM_REQUIRE_ALL=1 and {message}"
    );
    eprintln!("\n!!!!!!!!!! SKIPPED real-client test: {message} !!!!!!!!!!\n");
    None
}

/// Claude Code 2.1.112, the last JavaScript build (runs on Node).
pub fn claude_cli() -> Option<PathBuf> {
    installed("node_modules/.bin/claude", "the Claude Code CLI (npm @anthropic-ai/claude-code)")
}

/// The native Claude Code binary users install today (npm `@anthropic-ai/claude-code-linux-x64`).
pub fn claude_native() -> Option<PathBuf> {
    installed(
        "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        "the native Claude Code CLI (npm @anthropic-ai/claude-code-linux-x64)",
    )
}

/// The Python interpreter of the venv that holds `claude-agent-sdk` (with its bundled CLI).
pub fn agent_sdk() -> Option<PathBuf> {
    installed(".venv/bin/python", "the Python Agent SDK (PyPI claude-agent-sdk)")
}

pub fn python_sdk() -> Option<PathBuf> {
    installed(".venv/bin/python", "the anthropic Python SDK (PyPI anthropic)")
}

async fn run_isolated(program: &Path, configure: impl FnOnce(&mut Command)) -> Output {
    let home = std::env::temp_dir().join(format!(
        "sanctum-client-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    ));
    std::fs::create_dir_all(&home).expect("client home");
    let mut cmd = Command::new(program);
    // Nothing of the test runner's environment (no real ANTHROPIC_* variable).
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("LANG", "C.UTF-8")
        .current_dir(&home);
    configure(&mut cmd);
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(cmd).kill_on_drop(true).output(),
    )
    .await
    .expect("client did not finish in 120 s")
    .expect("run client");
    let _ = std::fs::remove_dir_all(&home);
    out
}

/// `claude -p "Say hello" --output-format json` against `base_url` with the placeholder
/// key; checks it succeeded with the stand-in's answer and returns its result object.
pub async fn run_claude(claude: &Path, base_url: &str) -> serde_json::Value {
    let out = run_isolated(claude, |cmd| {
        cmd.args(["-p", "Say hello", "--output-format", "json"])
            .env("ANTHROPIC_BASE_URL", base_url)
            .env("ANTHROPIC_API_KEY", PLACEHOLDER_KEY)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", "1");
    })
    .await;
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
    result
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

/// The anthropic SDK against `base_url`: one plain and one streaming `messages` call with
/// the placeholder key; checks both got the stand-in's answer and the usage it reports.
pub async fn run_python_sdk(python: &Path, base_url: &str) {
    let out = run_isolated(python, |cmd| {
        cmd.args(["-c", PYTHON_CLIENT, base_url]);
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("JSON:{DEFAULT_ANSWER}\n")), "{stdout}");
    assert!(stdout.contains(&format!("STREAM:{DEFAULT_ANSWER}\n")), "{stdout}");
    assert!(stdout.contains("USAGE:25/12"), "{stdout}");
}

/// The tool the Agent SDK test offers, served in-process by the SDK (an SDK MCP server).
pub const AGENT_SDK_TOOL: &str = "mcp__tickets__lookup_ticket";

const AGENT_SDK_CLIENT: &str = r#"
import asyncio, sys
from claude_agent_sdk import (ClaudeAgentOptions, ResultMessage, create_sdk_mcp_server, query, tool)

@tool("lookup_ticket", "Look up a ticket by its id", {"id": str})
async def lookup_ticket(args):
    return {"content": [{"type": "text", "text": "ticket %s is open" % args["id"]}]}

async def main():
    options = ClaudeAgentOptions(
        mcp_servers={"tickets": create_sdk_mcp_server(name="tickets", version="1.0.0", tools=[lookup_ticket])},
        allowed_tools=["mcp__tickets__lookup_ticket"],
        max_turns=2,
        env={
            "ANTHROPIC_BASE_URL": sys.argv[1],
            "ANTHROPIC_API_KEY": "gateway-injected",
            # Newer CLIs hide MCP tools behind a tool-search tool otherwise.
            "ENABLE_TOOL_SEARCH": "false",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        },
    )
    async for message in query(prompt="Say hello", options=options):
        if isinstance(message, ResultMessage):
            print("RESULT:%s" % message.result)
            print("ERROR:%s" % message.is_error)

asyncio.run(main())
"#;

/// The Python Agent SDK (`claude-agent-sdk`, which runs its bundled native CLI) against
/// `base_url`: `query()` with an in-process MCP tool offered; checks it got the stand-in's
/// answer with no error.
pub async fn run_agent_sdk(python: &Path, base_url: &str) {
    let out = run_isolated(python, |cmd| {
        cmd.args(["-c", AGENT_SDK_CLIENT, base_url]);
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Agent SDK failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("RESULT:{DEFAULT_ANSWER}\n")), "{stdout}");
    assert!(stdout.contains("ERROR:False\n"), "{stdout}");
}
