//! The whole chain, every part real: the Claude Code CLI → `sanctum-bridge` (loopback TCP) →
//! Unix socket → `sanctum-forwarder forward` → `sanctum-gateway` → the stand-in
//! provider, which accepts only the org's key and refuses anything that carries the
//! placeholder key or either pod token. A CLI that prints the provider's answer proves the
//! exchange; the provider's record proves what crossed the last hop.
//!
//! The native Claude Code binary, the anthropic Python SDK (JSON and streaming) and the Python
//! Agent SDK (`query()` with an in-process MCP tool) take the same path.
//!
//! Needs the real clients (`tests/clients/install.sh`) and the `sanctum-bridge` binary built
//! next to this one (`cargo build -p sanctum-bridge`, done by any workspace test run).
//! Without them: a loud SKIP line, or a failure when `SANCTUM_REQUIRE_ALL=1`.

mod gateway_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gateway_support::chain::{PodSide, bridge_binary, pod_side, pod_tokens};
use gateway_support::*;
use sanctum_testkit::{Provider, ProviderConfig, clients};

const PLACEHOLDER: &str = "gateway-injected";

/// The chain, running: provider ← gateway ← forwarder ← bridge.
struct Chain {
    s: Setup,
    provider: Provider,
    gw: Gateway,
    _pod: PodSide,
    bridge_addr: SocketAddr,
    svid: String,
    trat: String,
}

const RUN: &str = "run-chain";

/// Starts the chain, or returns `None` (after a SKIP line) when the bridge is not built.
async fn chain() -> Option<Chain> {
    let bridge = bridge_binary()?;
    let s = Setup::new();
    let (svid, trat) = pod_tokens(&s, RUN, "txn-chain");

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
    let pod = pod_side(&bridge, &s, &gw).await;
    let bridge_addr = pod.bridge_addr;
    Some(Chain { s, provider, gw, _pod: pod, bridge_addr, svid, trat })
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

/// `claude -p` through the chain: it streams its answer, only the org's key reaches the
/// provider, and the gateway audits the streamed usage.
async fn claude_code_through_the_chain(claude: &Path) {
    let Some(c) = chain().await else { return };
    clients::run_claude(claude, &format!("http://{}", c.bridge_addr)).await;

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
async fn claude_code_through_bridge_forwarder_and_gateway() {
    let Some(claude) = clients::claude_cli() else { return };
    claude_code_through_the_chain(&claude).await;
}

/// The native binary users install today, not only the last JavaScript build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_claude_code_through_bridge_forwarder_and_gateway() {
    let Some(claude) = clients::claude_native() else { return };
    claude_code_through_the_chain(&claude).await;
}

/// The Python Agent SDK: `query()` with an in-process MCP tool, through the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_sdk_through_the_whole_chain() {
    let Some(python) = clients::agent_sdk() else { return };
    let Some(c) = chain().await else { return };
    clients::run_agent_sdk(&python, &format!("http://{}", c.bridge_addr)).await;
    let calls = c.assert_provider_saw_only_the_org_key();
    let offered = c.provider.requests().iter().any(|r| {
        serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|b| {
            b["tools"]
                .as_array()
                .is_some_and(|tools| tools.iter().any(|t| t["name"] == clients::AGENT_SDK_TOOL))
        })
    });
    assert!(
        offered,
        "the SDK's in-process tool {} was offered to the model",
        clients::AGENT_SDK_TOOL
    );
    c.assert_audited(calls).await;
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

/// One client try: writes a `len`-byte Messages body to `addr` while it reads the answer,
/// as a client that stops caring about its upload once answered does. Returns the status
/// and body of the answer; a write error after the answer is fine, no answer is not.
async fn upload_and_read(addr: SocketAddr, len: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the bridge");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         anthropic-version: 2023-06-01\r\ncontent-length: {len}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let answer = loop {
        let n = match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("reading the answer failed after {} bytes: {e}", got.len()),
            Err(_) => panic!("no complete answer in 30 s: {:?}", String::from_utf8_lossy(&got)),
        };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let body = &text[end + 4..];
            if length.is_some_and(|l| body.len() >= l) || (n == 0 && length.is_none()) {
                let status = text[9..12].parse().unwrap();
                break (status, body.to_owned());
            }
        }
        assert!(n > 0, "the connection closed before a complete answer: {text:?}");
    };
    writer.abort();
    answer
}

const BIG_BODY: usize = 33 << 20;

/// Issue 13 item 1: a 33 MiB body that the gateway refuses from the head alone (over its
/// 32 MiB limit) reaches the client as the gateway's 413, every time — never a retryable
/// 502 made of a broken pipe while the bridge or the forwarder was still sending the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_reaches_the_client_unchanged() {
    let Some(c) = chain().await else { return };
    for attempt in 0..10 {
        let (status, body) = upload_and_read(c.bridge_addr, BIG_BODY).await;
        assert_eq!(status, 413, "try {attempt}: {body}");
        assert!(body.contains("request_too_large") && body.contains("limit"), "{body}");
    }
    // The same for a refusal of the credentials: a token signed by a key the gateway does
    // not know is refused (401) before the body is read.
    let stranger = EcKey::new("unknown-key");
    std::fs::write(c.s.path("jwt"), stranger.sign(&svid_claims(RUN))).unwrap();
    for attempt in 0..10 {
        let (status, body) = upload_and_read(c.bridge_addr, BIG_BODY).await;
        assert_eq!(status, 401, "try {attempt}: {body}");
        assert!(body.contains("authentication_error"), "{body}");
    }
    assert!(c.provider.requests().is_empty(), "nothing reached the provider");
}
