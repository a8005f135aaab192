//! What the gateway's integration tests share: keys and tokens minted here, the real
//! `sanctum-gateway` binary in a child process, the stand-in provider, and a small
//! HTTP client. Real sockets, real HTTP; nothing mocked inside the gateway.
#![allow(dead_code)] // each test file uses a different part

pub mod chain;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

pub const TD: &str = "sage-sanctum.local";
pub const AUD: &str = "sanctum-gateway";
pub const ORG: &str = "acme";
pub const ORG_KEY: &str = "sk-provider-acme-0001";

pub fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// Whether the test must fail (CI) or may skip when an external program is missing.
pub fn require_all() -> bool {
    std::env::var("SANCTUM_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

pub fn skip_or_fail(what: &str) {
    if require_all() {
        panic!("SANCTUM_REQUIRE_ALL=1 but {what}");
    }
    eprintln!("\n**** SKIPPED: {what} (set SANCTUM_REQUIRE_ALL=1 to make this a failure) ****\n");
}

/// A P-256 signing key with its JWK.
pub struct EcKey {
    pub kid: String,
    /// JOSE `typ` of everything this key signs (`JWT` unless set).
    pub typ: Option<String>,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl EcKey {
    pub fn new(kid: &str) -> Self {
        let signing = SigningKey::random(&mut rand_core::OsRng);
        let der = signing.to_pkcs8_der().unwrap();
        let point = signing.verifying_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        Self { kid: kid.into(), typ: None, encoding: EncodingKey::from_ec_der(der.as_bytes()), jwk }
    }

    /// A key that signs transaction tokens (`typ: txntoken+jwt`), as the operator's does.
    pub fn trat_issuer(kid: &str) -> Self {
        Self { typ: Some("txntoken+jwt".into()), ..Self::new(kid) }
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        if let Some(typ) = &self.typ {
            header.typ = Some(typ.clone());
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn jwks(keys: &[&EcKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn spiffe(run: &str) -> String {
    format!("spiffe://{TD}/scanner/{run}")
}

pub fn svid_claims(run: &str) -> Value {
    json!({"sub": spiffe(run), "aud": [AUD], "exp": now() + 600, "iat": now()})
}

pub fn trat_claims(run: &str, txn: &str) -> Value {
    json!({"iss": "sanctum-operator", "aud": AUD, "iat": now(), "exp": now() + 600, "txn": txn,
        "sub": spiffe(run), "scope": "llm.messages",
        "tctx": {"run_id": run, "org_id": ORG, "repo": "acme/app"}})
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running gateway process and the files it reads.
pub struct Gateway {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub args: Vec<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys, files and the provider a test's gateways share.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub svid_key: EcKey,
    pub trat_key: EcKey,
}

impl Setup {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let svid_key = EcKey::new("spire-1");
        let trat_key = EcKey::trat_issuer("operator-1");
        std::fs::write(tmp.path().join("svid-jwks.json"), jwks(&[&svid_key])).unwrap();
        std::fs::write(tmp.path().join("trat-jwks.json"), jwks(&[&trat_key])).unwrap();
        std::fs::create_dir(tmp.path().join("keys")).unwrap();
        std::fs::write(tmp.path().join("keys").join(ORG), format!("{ORG_KEY}\n")).unwrap();
        Self { tmp, svid_key, trat_key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn svid(&self, run: &str) -> String {
        self.svid_key.sign(&svid_claims(run))
    }

    pub fn trat(&self, run: &str, txn: &str) -> String {
        self.trat_key.sign(&trat_claims(run, txn))
    }

    /// Starts a gateway in front of `upstream` with the default files plus `extra` flags;
    /// waits until `/readyz` answers 200.
    pub async fn gateway(&self, upstream: &str, extra: &[&str]) -> Gateway {
        let mut gw = self.spawn(upstream, extra);
        wait_ready(&mut gw).await;
        gw
    }

    /// [`Setup::gateway`] without waiting for readiness (for tests of an unready gateway).
    pub fn spawn(&self, upstream: &str, extra: &[&str]) -> Gateway {
        let listen = free_port();
        let admin = free_port();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--upstream".into(),
            upstream.into(),
            "--keys-dir".into(),
            self.path("keys").display().to_string(),
            "--audit-log".into(),
            self.path("audit.log").display().to_string(),
            "--log-format".into(),
            "text".into(),
        ];
        // Default JWKS files unless the test names its own sources.
        for (flag, file) in [("--svid-jwks", "svid-jwks.json"), ("--trat-jwks", "trat-jwks.json")] {
            if !extra.contains(&flag) {
                args.push(flag.into());
                args.push(self.path(file).display().to_string());
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn_gateway(args, listen, admin, self.tmp.path())
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn start_gateway(
    args: Vec<String>,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
) -> Gateway {
    let mut gw = spawn_gateway(args, listen, admin, dir);
    wait_ready(&mut gw).await;
    gw
}

/// Starts the gateway binary without waiting for it.
pub fn spawn_gateway(
    args: Vec<String>,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
) -> Gateway {
    let child = Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sanctum-gateway");
    Gateway { child, listen, admin, dir: dir.to_owned(), args }
}

pub async fn wait_ready(gw: &mut Gateway) {
    let client = client();
    for _ in 0..200 {
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!("gateway exited early: {status}");
        }
        let uri = format!("http://{}/readyz", gw.admin);
        let req = http::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        if let Ok(Ok(resp)) =
            tokio::time::timeout(Duration::from_secs(2), client.request(req)).await
            && resp.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not become ready");
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub async fn metrics(&self) -> String {
        let resp = send(
            http::Request::get(format!("http://{}/metrics", self.admin))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        String::from_utf8(resp.body.to_vec()).unwrap()
    }

    /// Stops and starts the same gateway (same flags and ports).
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let child = Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = child;
        wait_ready(self).await;
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(req: http::Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body timed out")
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body }
}

pub fn messages_body(stream: bool, max_tokens: u64, text: &str) -> String {
    json!({"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": text}]})
    .to_string()
}

/// POST /v1/messages with the given tokens (None: header left out).
pub async fn call(gw: &Gateway, svid: Option<&str>, trat: Option<&str>, body: String) -> Answer {
    let mut req = http::Request::post(gw.url("/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "gateway-injected");
    if let Some(s) = svid {
        req = req.header("authorization", format!("Bearer {s}"));
    }
    if let Some(t) = trat {
        req = req.header("txn-token", t);
    }
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

/// Reads the audit log lines written so far (waits briefly for the writer).
pub async fn audit_lines(path: &Path, at_least: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines
}
