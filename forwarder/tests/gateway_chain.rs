//! The whole chain, every part real: the Claude Code CLI → `sanctum-bridge` (loopback TCP) →
//! Unix socket → `sanctum-forwarder forward` → `sanctum-forwarder gateway` → the stand-in
//! provider, which accepts only the org's key and refuses anything that carries the
//! placeholder key or either pod token. A CLI that prints the provider's answer proves the
//! exchange; the provider's record proves what crossed the last hop.
//!
//! The anthropic Python SDK takes the same path (JSON and streaming).
//!
//! Needs the real clients (`tests/clients/install.sh`) and the `sanctum-bridge` binary built
//! next to this one (`cargo build -p sanctum-bridge`, done by any workspace test run).
//! Without them: a loud SKIP line, or a failure when `SANCTUM_REQUIRE_ALL=1`.

mod gateway_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway_support::*;
use sanctum_testkit::{DEFAULT_ANSWER, Provider, ProviderConfig};

const PLACEHOLDER: &str = "gateway-injected";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sanctum-forwarder")).with_file_name(name)
}

fn claude_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/node_modules/.bin/claude")
}

/// Starts the bridge on free loopback ports; returns it with its listen address.
fn spawn_bridge(bridge: &Path, dir: &Path) -> (Kill, SocketAddr) {
    let mut child = Command::new(bridge)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--upstream-socket")
        .arg(dir.join("llm.sock"))
        .arg("--jwt-file")
        .arg(dir.join("jwt"))
        .arg("--trat-file")
        .arg(dir.join("trat.jwt"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sanctum-bridge");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut listen = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "sanctum-bridge ready"
        {
            listen = v["listen"].as_str().and_then(|a| a.parse().ok());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Kill(child), listen.expect("sanctum-bridge exited before it was ready"))
}

/// The chain, running: provider ← gateway ← forwarder ← bridge.
struct Chain {
    s: Setup,
    provider: Provider,
    gw: Gateway,
    _forwarder: Kill,
    _bridge: Kill,
    bridge_addr: SocketAddr,
    svid: String,
    trat: String,
}

const RUN: &str = "run-chain";

/// Starts the chain, or returns `None` (after a SKIP line) when a part is not installed.
async fn chain(client: &Path, client_what: &str) -> Option<Chain> {
    let bridge = sibling_binary("sanctum-bridge");
    if !bridge.exists() {
        skip_or_fail(&format!(
            "{} is not built: run `cargo build -p sanctum-bridge`",
            bridge.display()
        ));
        return None;
    }
    if !client.exists() {
        skip_or_fail(&format!(
            "{client_what} is not installed at {}: run tests/clients/install.sh",
            client.display()
        ));
        return None;
    }
    let s = Setup::new();
    let (svid, trat) = (s.svid(RUN), s.trat(RUN, "txn-chain"));
    std::fs::write(s.path("jwt"), format!("{svid}\n")).unwrap();
    std::fs::write(s.path("trat.jwt"), &trat).unwrap();

    // The provider takes the org's key and nothing else of ours.
    let provider = Provider::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        ProviderConfig {
            require: vec![("x-api-key".into(), ORG_KEY.into())],
            forbid_values: vec![PLACEHOLDER.into(), svid.clone(), trat.clone()],
            ..ProviderConfig::default()
        },
    )
    .await
    .unwrap();
    let gw = s.gateway(&provider.url().unwrap(), &[]).await;

    let socket = s.path("llm.sock");
    let forwarder = Kill(
        Command::new(env!("CARGO_BIN_EXE_sanctum-forwarder"))
            .args(["forward", "--admin-listen", "127.0.0.1:0", "--upstream"])
            .arg(gw.url(""))
            .arg("--listen-socket")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sanctum-forwarder forward"),
    );
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (bridge, bridge_addr) = spawn_bridge(&bridge, s.tmp.path());
    Some(Chain { s, provider, gw, _forwarder: forwarder, _bridge: bridge, bridge_addr, svid, trat })
}

/// A client process with a clean environment (no real ANTHROPIC_* variable), HOME and
/// TMPDIR in a temp dir, run with a time limit.
async fn run_isolated(
    program: &Path,
    home: &Path,
    configure: impl FnOnce(&mut Command),
) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("LANG", "C.UTF-8")
        .current_dir(home);
    configure(&mut cmd);
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(cmd).kill_on_drop(true).output(),
    )
    .await
    .expect("client did not finish in 120 s")
    .expect("run client")
}

impl Chain {
    /// What reached the provider: the org's key, once, and no credential of the pod.
    fn assert_provider_saw_only_the_org_key(&self) -> usize {
        let seen = self.provider.requests();
        let calls: Vec<_> = seen.iter().filter(|r| r.target.starts_with("/v1/messages")).collect();
        assert!(!calls.is_empty(), "no Messages API call arrived: {seen:?}");
        for r in &calls {
            assert_eq!(r.header("x-api-key"), Some(ORG_KEY));
            assert_eq!(r.count("authorization"), 0);
            assert_eq!(r.count("txn-token"), 0);
            assert_eq!(r.count("proxy-authorization"), 0);
            assert!(!r.any_header_contains(PLACEHOLDER));
            assert!(!r.any_header_contains(&self.svid) && !r.any_header_contains(&self.trat));
        }
        calls.len()
    }

    /// The gateway's audit names the run and counted the tokens.
    async fn assert_audited(&self, calls: usize) -> Vec<serde_json::Value> {
        let audit = audit_lines(&self.s.path("audit.log"), calls).await;
        let ok: Vec<_> = audit.iter().filter(|l| l["status"] == 200).cloned().collect();
        assert!(!ok.is_empty(), "{audit:?}");
        for l in &ok {
            assert_eq!(l["txn"], "txn-chain");
            assert_eq!(l["spiffe_id"], spiffe(RUN));
            assert_eq!(l["org"], ORG);
        }
        ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_through_bridge_forwarder_and_gateway() {
    let claude = claude_cli();
    let Some(c) = chain(&claude, "the Claude Code CLI (npm @anthropic-ai/claude-code)").await
    else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let base = format!("http://{}", c.bridge_addr);
    let out = run_isolated(&claude, home.path(), |cmd| {
        cmd.args(["-p", "Say hello", "--output-format", "json"])
            .env("ANTHROPIC_BASE_URL", &base)
            .env("ANTHROPIC_API_KEY", PLACEHOLDER)
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

    let calls = c.assert_provider_saw_only_the_org_key();
    let seen = c.provider.requests();
    assert!(
        seen.iter().any(|r| r.header("user-agent").unwrap_or_default().starts_with("claude-cli/")
            && serde_json::from_slice::<serde_json::Value>(&r.body)
                .is_ok_and(|b| b["stream"] == true)),
        "claude -p streams its answer"
    );
    let ok = c.assert_audited(calls).await;
    assert!(ok.iter().any(|l| l["stream"] == true && l["output_tokens"].as_u64() > Some(0)));
    drop(c.gw);
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
async fn anthropic_python_sdk_through_the_whole_chain() {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/.venv/bin/python");
    let Some(c) = chain(&python, "the anthropic Python SDK (PyPI anthropic)").await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let base = format!("http://{}", c.bridge_addr);
    let out = run_isolated(&python, home.path(), |cmd| {
        cmd.args(["-c", PYTHON_CLIENT, &base]);
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
    assert_eq!(c.assert_provider_saw_only_the_org_key(), 2);
    let ok = c.assert_audited(2).await;
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|l| l["input_tokens"] == 25 && l["output_tokens"] == 12), "{ok:?}");
}
