//! Gateway benchmark (issue 7): `sanctum-gateway` (both token checks, DLP, budget,
//! audit log) against direct calls to the stand-in provider and against the LiteLLM proxy,
//! in one run, on loopback. Reports added latency p50/p99 (small and 100 KB bodies),
//! throughput at saturation and RSS. Every phase is bounded in requests and time.
//!
//! `bench/gateway/run.sh` reproduces bench/gateway/README.md (it installs LiteLLM first);
//! `cargo bench -p sanctum-gateway --bench gateway` runs without LiteLLM when it is absent.
//! Settings by environment: BENCH_ROUNDS (3), BENCH_REQUESTS (1000), BENCH_LARGE (300),
//! BENCH_SECS (3), BENCH_CONNS (32).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use sanctum_testkit::{Provider, ProviderConfig};
use serde_json::json;

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// SIGSTOP/SIGCONT: only the subject being measured runs, so an idle peer's background
/// work (LiteLLM's event loop) never steals CPU from another's measurement.
fn signal(pid: Option<u32>, sig: &str) {
    if let Some(pid) = pid {
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A target: where to send, and the headers that authenticate there.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    headers: Vec<(&'static str, String)>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(t: &Target, body: &Bytes) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post("/v1/messages")
        .header("host", t.addr.to_string())
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    for (k, v) in &t.headers {
        req = req.header(*k, v);
    }
    req.body(Full::new(body.clone())).unwrap()
}

async fn one(sender: &mut Sender, t: &Target, body: &Bytes) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(request(t, body)).await {
        Ok(resp) => {
            let ok = resp.status() == 200;
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

fn body(size: usize) -> Bytes {
    let filler = "Refactor the handler so the retry policy is applied once. ".repeat(size / 58 + 1);
    let mut text = filler;
    text.truncate(size.saturating_sub(120));
    Bytes::from(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
            .to_string(),
    )
}

/// p50 and p99 of `n` sequential requests on one keep-alive connection, in µs.
async fn latency(t: &Target, body: &Bytes, n: usize) -> (f64, f64, usize) {
    let mut sender = connect(t.addr).await;
    for _ in 0..(n / 10).max(5) {
        one(&mut sender, t, body).await; // warm up
    }
    let mut us = Vec::with_capacity(n);
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        let start = Instant::now();
        if !one(&mut sender, t, body).await {
            failed += 1;
            sender = connect(t.addr).await;
        }
        us.push(start.elapsed().as_secs_f64() * 1e6);
        if Instant::now() > deadline {
            break;
        }
    }
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| us[((us.len() as f64 - 1.0) * p) as usize];
    (pct(0.5), pct(0.99), failed)
}

/// Completed requests per second with `conns` connections for `secs`.
async fn throughput(t: &Target, body: &Bytes, conns: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (t, body) = (t.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await;
            let mut ok = 0u64;
            while Instant::now() < deadline {
                if one(&mut sender, &t, &body).await {
                    ok += 1;
                } else {
                    sender = connect(t.addr).await;
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn wait_port(addr: SocketAddr, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// Starts the gateway with minted keys; returns it and the headers a pod's bridge would add.
async fn start_gateway(dir: &Path, upstream: &str) -> (Kill, Target) {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut jwks = Vec::new();
    let mut tokens = Vec::new();
    for (kid, claims) in [
        (
            "spire-1",
            json!({"sub": "spiffe://sage-sanctum.local/scanner/bench", "aud": "sanctum-gateway", "exp": now() + 3600}),
        ),
        (
            "operator-1",
            json!({"iss": "op", "aud": "sanctum-gateway", "iat": now(), "exp": now() + 3600, "txn": "txn-bench",
            "sub": "spiffe://sage-sanctum.local/scanner/bench", "scope": "llm.messages",
            "tctx": {"run_id": "bench", "org_id": "acme", "budget_tokens": 1u64 << 50}}),
        ),
    ] {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        jwks.push(json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}]}));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let enc = EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes());
        tokens.push(jsonwebtoken::encode(&header, &claims, &enc).unwrap());
    }
    std::fs::write(dir.join("svid.json"), jwks[0].to_string()).unwrap();
    std::fs::write(dir.join("trat.json"), jwks[1].to_string()).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/acme"), "sk-bench-org-key\n").unwrap();
    let (listen, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sanctum-gateway"))
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
        .args(["--upstream", upstream, "--rate-limit-per-minute", "0", "--log-format", "json"])
        .arg("--svid-jwks")
        .arg(dir.join("svid.json"))
        .arg("--trat-jwks")
        .arg(dir.join("trat.json"))
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .arg("--audit-log")
        .arg(dir.join("audit.log"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the gateway");
    assert!(wait_port(listen, 20).await, "gateway did not start");
    let target = Target {
        addr: listen,
        headers: vec![
            ("authorization", format!("Bearer {}", tokens[0])),
            ("txn-token", tokens[1].clone()),
        ],
    };
    (Kill(child), target)
}

fn litellm_bin() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/gateway/.venv/bin/litellm");
    p.exists().then_some(p)
}

/// LiteLLM proxy passing Anthropic Messages to the stand-in with the org key added, under a
/// budget (no database here, so the budget is the proxy-wide `max_budget`; per-key budgets
/// need LiteLLM's Postgres-backed virtual keys).
async fn start_litellm(bin: &Path, dir: &Path, upstream: &str) -> Option<(Kill, Target)> {
    let listen = free_port();
    let config = format!(
        "model_list:\n  - model_name: claude-sonnet-4-5\n    litellm_params:\n      model: anthropic/claude-sonnet-4-5\n      api_base: {upstream}\n      api_key: sk-bench-org-key\nlitellm_settings:\n  max_budget: 1000000\n  budget_duration: 30d\n  drop_params: true\ngeneral_settings:\n  master_key: sk-litellm-master\n"
    );
    std::fs::write(dir.join("litellm.yaml"), config).unwrap();
    let child = Command::new(bin)
        .args(["--config"])
        .arg(dir.join("litellm.yaml"))
        .args(["--host", "127.0.0.1", "--port", &listen.port().to_string(), "--num_workers", "1"])
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("DISABLE_SCHEMA_UPDATE", "True")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = Kill(child);
    if !wait_port(listen, 120).await {
        eprintln!("LiteLLM did not start within 120 s; skipped");
        return None;
    }
    let target = Target {
        addr: listen,
        headers: vec![("authorization", "Bearer sk-litellm-master".to_string())],
    };
    // Readiness: the first call must succeed.
    let mut sender = connect(listen).await;
    for _ in 0..50 {
        if one(&mut sender, &target, &body(200)).await {
            return Some((child, target));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender = connect(listen).await;
    }
    eprintln!("LiteLLM answered no Messages call successfully; skipped");
    None
}

#[derive(Default, Clone)]
struct Row {
    p50: Vec<f64>,
    p99: Vec<f64>,
    p50_large: Vec<f64>,
    p99_large: Vec<f64>,
    rps: Vec<f64>,
    rss_idle: u64,
    rss_load: u64,
    failed: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_num("BENCH_ROUNDS", 3.0) as usize;
    let n = env_num("BENCH_REQUESTS", 1000.0) as usize;
    let n_large = env_num("BENCH_LARGE", 300.0) as usize;
    let secs = env_num("BENCH_SECS", 3.0);
    let conns = env_num("BENCH_CONNS", 32.0) as usize;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        ProviderConfig { record: false, ..ProviderConfig::default() },
    )
    .await
    .unwrap();
    let upstream = provider.url().unwrap();
    let provider_addr: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();

    let direct =
        Target { addr: provider_addr, headers: vec![("x-api-key", "sk-bench-org-key".into())] };
    let (gw_proc, gw) = start_gateway(dir.path(), &upstream).await;
    let litellm = match litellm_bin() {
        Some(bin) => start_litellm(&bin, dir.path(), &upstream).await,
        None => {
            eprintln!("LiteLLM not installed (bash bench/gateway/setup.sh); measuring without it");
            None
        }
    };
    let mut subjects: Vec<(&str, Target, Option<u32>)> = vec![
        ("direct (stand-in provider)", direct, None),
        ("sanctum gateway", gw, Some(gw_proc.0.id())),
    ];
    if let Some((p, t)) = &litellm {
        subjects.push(("LiteLLM proxy", t.clone(), Some(p.0.id())));
    }
    let small = body(300);
    let large = body(100 * 1024);
    let mut rows = vec![Row::default(); subjects.len()];
    for (i, (_, _, pid)) in subjects.iter().enumerate() {
        rows[i].rss_idle = pid.map_or(0, rss_kib);
    }
    let pids: Vec<Option<u32>> = subjects.iter().map(|s| s.2).collect();
    for round in 0..rounds {
        for (i, (name, target, pid)) in subjects.iter().enumerate() {
            for (j, other) in pids.iter().enumerate() {
                signal(*other, if i == j { "-CONT" } else { "-STOP" });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            // LiteLLM is two orders of magnitude slower: fewer requests keep the run bounded.
            let scale = if name.starts_with("LiteLLM") { 5 } else { 1 };
            let (p50, p99, f1) = latency(target, &small, n / scale).await;
            let (p50l, p99l, f2) = latency(target, &large, n_large / scale).await;
            let rps = throughput(target, &small, conns, secs).await;
            let r = &mut rows[i];
            r.p50.push(p50);
            r.p99.push(p99);
            r.p50_large.push(p50l);
            r.p99_large.push(p99l);
            r.rps.push(rps);
            r.failed += f1 + f2;
            r.rss_load = r.rss_load.max(pid.map_or(0, rss_kib));
            eprintln!("round {}/{rounds} {name}: p50 {p50:.0} µs, {rps:.0} req/s", round + 1);
        }
    }
    // Added latency: per round, subject minus direct measured in the same round; then the
    // median over rounds (robust to a noisy round on a shared machine).
    let added = |r: &Row, pick: fn(&Row) -> &Vec<f64>| -> f64 {
        let base = pick(&rows[0]);
        median(&pick(r).iter().zip(base).map(|(v, b)| v - b).collect::<Vec<_>>())
    };
    println!(
        "\nGateway benchmark: {rounds} rounds (medians), {n} small / {n_large} 100 KB sequential requests, \
         throughput {conns} connections × {secs} s, loopback, {} CPUs\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| subject | small p50 / p99 µs | added p50 / p99 µs | 100 KB p50 / p99 µs | added 100 KB p50 / p99 µs | req/s | RSS idle / loaded MiB | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, ((name, _, _), r)) in subjects.iter().zip(&rows).enumerate() {
        let (p50, p99, p50l, p99l) =
            (median(&r.p50), median(&r.p99), median(&r.p50_large), median(&r.p99_large));
        let add = |pick: fn(&Row) -> &Vec<f64>| {
            if i == 0 { "—".to_string() } else { format!("{:.0}", added(r, pick)) }
        };
        println!(
            "| {name} | {p50:.0} / {p99:.0} | {} / {} | {p50l:.0} / {p99l:.0} | {} / {} | {:.0} | {} | {} |",
            add(|r| &r.p50),
            add(|r| &r.p99),
            add(|r| &r.p50_large),
            add(|r| &r.p99_large),
            median(&r.rps),
            if r.rss_idle == 0 {
                "—".into()
            } else {
                format!("{:.1} / {:.1}", r.rss_idle as f64 / 1024.0, r.rss_load as f64 / 1024.0)
            },
            r.failed,
        );
    }
    if rows.len() > 2 {
        println!(
            "\nsanctum gateway / LiteLLM throughput: {:.1}×",
            median(&rows[1].rps) / median(&rows[2].rps)
        );
    }
    drop(litellm);
    drop(gw_proc);
}
