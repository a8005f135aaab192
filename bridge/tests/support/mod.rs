//! What the bridge's integration tests share: a temp dir with token files, the stand-in
//! provider on a real Unix socket, and the real `sanctum-bridge` binary in a child process.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use sanctum_testkit::{Provider, ProviderConfig, jwt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PLACEHOLDER: &str = "gateway-injected";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub provider: Option<Provider>,
    pub bridge: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub jwt: String,
    pub trat: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
    }
}

impl Env {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("llm.sock")
    }
    pub fn jwt_file(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }
    pub fn trat_file(&self) -> PathBuf {
        self.dir.path().join("trat.jwt")
    }
    pub fn provider(&self) -> &Provider {
        self.provider.as_ref().expect("this test runs a provider")
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

/// Token files, the provider (unless `provider` is None) and the bridge.
pub async fn start(provider: Option<ProviderConfig>) -> Env {
    start_with(provider, &[]).await
}

pub async fn start_with(provider: Option<ProviderConfig>, extra_args: &[&str]) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwt = jwt::expiring_in("spiffe://sage-sanctum.local/scanner/run-1", 3600);
    let trat = jwt::unsigned(
        &serde_json::json!({"sub": "spiffe://sage-sanctum.local/scanner/run-1", "txn": "t-1", "exp": 4102444800u64}),
    );
    std::fs::write(dir.path().join("jwt"), format!("{jwt}\n")).expect("write jwt");
    std::fs::write(dir.path().join("trat.jwt"), &trat).expect("write trat");
    let socket = dir.path().join("llm.sock");
    let provider = match provider {
        Some(cfg) => Some(Provider::start_unix(&socket, cfg).await.expect("start provider")),
        None => None,
    };
    let (bridge, listen, admin) = spawn_bridge(dir.path(), extra_args);
    Env { dir, provider, bridge, listen, admin, jwt, trat }
}

/// Starts the real binary on free loopback ports and waits for its "ready" log line.
pub fn spawn_bridge(dir: &Path, extra_args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    sanctum_testkit::bridge::spawn(Path::new(env!("CARGO_BIN_EXE_sanctum-bridge")), dir, extra_args)
}

/// Sends raw bytes on a new connection and reads until the server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal HTTP/1.1 response reader: status, lower-cased headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply { status, headers, body: body.to_owned() }
}

/// One request with `Connection: close`, answer parsed (chunked bodies are left framed;
/// tests that need the decoded body use Content-Length answers or `curl`-like parsing).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    parse_reply(&raw(addr, &bytes).await)
}

/// Decodes a chunked body (for SSE answers read with [`raw`]).
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

pub fn body_json(stream: bool) -> Vec<u8> {
    serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}]
    })
    .to_string()
    .into_bytes()
}
