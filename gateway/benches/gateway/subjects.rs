//! The subjects measured against the stand-in: `sanctum-gateway` (this build, or an older
//! binary given as the baseline) with the memory or the Redis state, and the LiteLLM proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::json;

use crate::load::{self, Target};
use crate::procs::{Proc, free_port};

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes the two JWKS files and the org key into `dir`; returns the headers a pod's bridge
/// would add (a JWT-SVID and a TraT signed by those keys, valid for an hour, an unbounded
/// budget). Every gateway of the run shares them.
pub fn credentials(dir: &Path) -> Vec<(&'static str, String)> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut jwks = Vec::new();
    let mut tokens = Vec::new();
    // The TraT carries `typ: txntoken+jwt` (draft-ietf-oauth-transaction-tokens), as the
    // operator's does; the gateway refuses a TraT without it.
    for (kid, typ, claims) in [
        (
            "spire-1",
            "JWT",
            json!({"sub": "spiffe://sage-sanctum.local/scanner/bench", "aud": "sanctum-gateway", "exp": now() + 3600}),
        ),
        (
            "operator-1",
            "txntoken+jwt",
            json!({"iss": "op", "aud": "sanctum-gateway", "iat": now(), "exp": now() + 3600, "txn": "txn-bench",
            "sub": "spiffe://sage-sanctum.local/scanner/bench", "scope": "llm.messages",
            "tctx": {"run_id": "bench", "org_id": "acme", "budget_tokens": 1u64 << 50}}),
        ),
    ] {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        jwks.push(json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))}]}));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        header.typ = Some(typ.into());
        let der = key.to_pkcs8_der().expect("PKCS#8 of a fresh key");
        let enc = EncodingKey::from_ec_der(der.as_bytes());
        tokens.push(jsonwebtoken::encode(&header, &claims, &enc).expect("sign a token"));
    }
    std::fs::write(dir.join("svid.json"), jwks[0].to_string()).expect("write svid.json");
    std::fs::write(dir.join("trat.json"), jwks[1].to_string()).expect("write trat.json");
    std::fs::create_dir_all(dir.join("keys")).expect("create keys/");
    std::fs::write(dir.join("keys/acme"), "sk-bench-org-key\n").expect("write keys/acme");
    vec![("authorization", format!("Bearer {}", tokens[0])), ("txn-token", tokens[1].clone())]
}

/// How to run a gateway binary: `program args… --listen …` (`args` is `["gateway"]` for the
/// `sanctum-forwarder gateway` of commits before the gateway had its own crate).
#[derive(Clone, Debug)]
pub struct Binary {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Binary {
    /// The baseline from `BENCH_BASELINE_GATEWAY` (absolute, or relative to the repository
    /// root) and `BENCH_BASELINE_ARGS` (whitespace separated; unset: `gateway` when the file
    /// name contains `forwarder`, else nothing).
    pub fn baseline_from_env() -> Result<Option<Self>, String> {
        let Some(program) = std::env::var_os("BENCH_BASELINE_GATEWAY").filter(|p| !p.is_empty())
        else {
            return Ok(None);
        };
        // cargo runs a bench in its package's directory: a relative path is taken from the
        // repository root (where the command was most likely typed) unless it exists here.
        let mut program = PathBuf::from(program);
        if program.is_relative() && !program.is_file() {
            program = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(program);
        }
        if !program.is_file() {
            return Err(format!(
                "BENCH_BASELINE_GATEWAY={} is not a file (build one: see bench/gateway/README.md)",
                program.display()
            ));
        }
        let args = match std::env::var("BENCH_BASELINE_ARGS") {
            Ok(a) => a.split_whitespace().map(str::to_owned).collect(),
            Err(_) => {
                let name = program.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_some_and(|n| n.contains("forwarder")) {
                    vec!["gateway".to_owned()]
                } else {
                    Vec::new()
                }
            }
        };
        Ok(Some(Self { program, args }))
    }
}

/// Starts a gateway with every check on (both tokens, DLP, budget, audit log) and `state`
/// (`memory` or `redis://…`), `threads` tokio worker threads (`TOKIO_WORKER_THREADS`: both
/// the current and the older binaries build a default multi-thread runtime), and waits until
/// it answers a Messages call 200.
pub async fn gateway(
    label: &str,
    bin: &Binary,
    dir: &Path,
    upstream: &str,
    state: &str,
    threads: usize,
    headers: &[(&'static str, String)],
) -> Result<(Proc, Target), String> {
    let (listen, admin) = (free_port(), free_port());
    let file = label.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let mut cmd = Command::new(&bin.program);
    cmd.args(&bin.args)
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
        .args(["--upstream", upstream, "--rate-limit-per-minute", "0", "--log-format", "json"])
        .args(["--state", state])
        .arg("--svid-jwks")
        .arg(dir.join("svid.json"))
        .arg("--trat-jwks")
        .arg(dir.join("trat.json"))
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .arg("--audit-log")
        .arg(dir.join(format!("audit-{file}.log")))
        .env("RUST_LOG", "warn")
        .env("TOKIO_WORKER_THREADS", threads.to_string());
    let mut proc_ = Proc::spawn(label, &mut cmd, Some(&dir.join(format!("{file}.stderr"))))?;
    let target = Target { addr: listen, headers: headers.to_vec() };
    let what = format!("{label} ({} {})", bin.program.display(), bin.args.join(" "));
    proc_
        .wait_listening(listen, Duration::from_secs(20))
        .await
        .map_err(|e| format!("{what} {e}"))?;
    if let Err(why) = load::until_ok(&target, &load::body(300), Duration::from_secs(20)).await {
        let status = proc_.exited().unwrap_or_else(|| "still running".into());
        return Err(format!(
            "{what} is not ready: {why}; process {status}; its standard error: {}",
            proc_.stderr_tail()
        ));
    }
    Ok((proc_, target))
}

/// The LiteLLM proxy installed by bench/gateway/setup.sh, if it is.
pub fn litellm_bin() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/gateway/.venv/bin/litellm");
    p.exists().then_some(p)
}

/// LiteLLM proxy passing Anthropic Messages to the stand-in with the org key added, under a
/// budget (no database here, so the budget is the proxy-wide `max_budget`; per-key budgets
/// need LiteLLM's Postgres-backed virtual keys). One worker process.
pub async fn litellm(bin: &Path, dir: &Path, upstream: &str) -> Result<(Proc, Target), String> {
    let listen = free_port();
    let config = format!(
        "model_list:\n  - model_name: claude-sonnet-4-5\n    litellm_params:\n      model: anthropic/claude-sonnet-4-5\n      api_base: {upstream}\n      api_key: sk-bench-org-key\nlitellm_settings:\n  max_budget: 1000000\n  budget_duration: 30d\n  drop_params: true\ngeneral_settings:\n  master_key: sk-litellm-master\n"
    );
    std::fs::write(dir.join("litellm.yaml"), config)
        .map_err(|e| format!("cannot write litellm.yaml: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(dir.join("litellm.yaml"))
        .args(["--host", "127.0.0.1", "--port", &listen.port().to_string(), "--num_workers", "1"])
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("DISABLE_SCHEMA_UPDATE", "True");
    let mut proc_ = Proc::spawn("LiteLLM proxy", &mut cmd, Some(&dir.join("litellm.stderr")))?;
    let target = Target {
        addr: listen,
        headers: vec![("authorization", "Bearer sk-litellm-master".to_string())],
    };
    proc_
        .wait_listening(listen, Duration::from_secs(120))
        .await
        .map_err(|e| format!("LiteLLM {e}"))?;
    if let Err(why) = load::until_ok(&target, &load::body(200), Duration::from_secs(30)).await {
        let status = proc_.exited().unwrap_or_else(|| "still running".into());
        return Err(format!("LiteLLM answered no Messages call 200 ({why}; process {status})"));
    }
    Ok((proc_, target))
}

/// nginx (Debian package `nginx`), if installed: the floor, a bare HTTP proxy hop.
pub fn nginx_bin() -> Option<&'static str> {
    ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|n| Command::new(n).arg("-v").output().is_ok_and(|o| o.status.success()))
}

/// nginx as a zero-logic reverse proxy to the stand-in: the floor a proxy hop costs on this
/// machine (the load generator, the stand-in and the proxy share the cores). `workers` worker
/// processes (the gateway's thread count), keep-alive to the upstream, buffering off, no
/// access log; the same headers as direct.
pub async fn nginx(
    bin: &str,
    dir: &Path,
    upstream: std::net::SocketAddr,
    workers: usize,
) -> Result<(Proc, Target), String> {
    let listen = free_port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let conf = d.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&d, listen, upstream, workers))
        .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf).arg("-p").arg(&d);
    let mut proc_ = Proc::spawn("nginx", &mut cmd, Some(&d.join("stderr")))?;
    let target = Target { addr: listen, headers: vec![("x-api-key", "sk-bench-org-key".into())] };
    proc_
        .wait_listening(listen, Duration::from_secs(20))
        .await
        .map_err(|e| format!("nginx {e}"))?;
    if let Err(why) = load::until_ok(&target, &load::body(300), Duration::from_secs(20)).await {
        return Err(format!("nginx answered no Messages call 200 ({why})"));
    }
    Ok((proc_, target))
}

/// The nginx configuration: foreground (`daemon off`) so its master stays the process group
/// leader the benchmark kills; every path under `dir`.
fn nginx_config(
    dir: &Path,
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    workers: usize,
) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # Keep benchmark connections open (the defaults close after 1000 requests / 75 s).
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream standin {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://standin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
"#
    )
}
