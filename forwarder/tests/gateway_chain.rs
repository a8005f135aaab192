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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway_support::*;
use sanctum_testkit::{Provider, ProviderConfig, clients};

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

/// Starts the bridge on free loopback ports; returns it with its listen address.
fn spawn_bridge(bridge: &Path, dir: &Path) -> (Kill, SocketAddr) {
    let (child, listen, _admin) = sanctum_testkit::bridge::spawn(bridge, dir, &[]);
    (Kill(child), listen)
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

/// Starts the chain, or returns `None` (after a SKIP line) when the bridge is not built.
async fn chain() -> Option<Chain> {
    let bridge = sibling_binary("sanctum-bridge");
    if !bridge.exists() {
        skip_or_fail(&format!(
            "{} is not built: run `cargo build -p sanctum-bridge`",
            bridge.display()
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
    let Some(claude) = clients::claude_cli() else { return };
    let Some(c) = chain().await else { return };
    clients::run_claude(&claude, &format!("http://{}", c.bridge_addr)).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_through_the_whole_chain() {
    let Some(python) = clients::python_sdk() else { return };
    let Some(c) = chain().await else { return };
    clients::run_python_sdk(&python, &format!("http://{}", c.bridge_addr)).await;
    assert_eq!(c.assert_provider_saw_only_the_org_key(), 2);
    let ok = c.assert_audited(2).await;
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|l| l["input_tokens"] == 25 && l["output_tokens"] == 12), "{ok:?}");
}
