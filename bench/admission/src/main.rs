//! Admission handling over loopback HTTPS: the real webhook server (`server::serve`, TLS,
//! the pure decision, the JSONPatch) in this process, and an open-loop client that sends
//! AdmissionReviews of an annotated two-container pod (the injecting path, the slowest) at
//! a fixed rate over keep-alive connections, like the API server does. Latency is measured
//! from the moment a request is sent to the end of its answer, and also from its
//! *scheduled* send time, so a stalled server cannot hide its queue (no coordinated
//! omission; that figure also carries the timer's 1 ms granularity). Then a closed-loop
//! run finds the throughput ceiling. Before both, the decision alone
//! (`admission::review`: parse, inject, patch, answer) runs in a loop on one thread and its
//! CPU time per review is read from the kernel (`/proc/thread-self/schedstat`), which
//! isolates the webhook's own work from TLS, HTTP and the client on a shared machine.
//! `--http2` makes the client negotiate HTTP/2 by ALPN (as the API server does) instead of
//! HTTP/1.1.
//! Loopback only; bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::webhook::server::{self, WebhookState};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "sanctum-admission-bench")]
struct Args {
    /// Reviews per second in the open-loop run.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of the open-loop run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Keep-alive connections (the API server keeps a few per webhook).
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Seconds of the closed-loop (as fast as possible) run; 0 skips it.
    #[arg(long, default_value_t = 10)]
    max_seconds: u64,
    /// Worker threads of the server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Seconds of the decision-only loop (CPU per review of `admission::review`); 0 skips it.
    #[arg(long, default_value_t = 3)]
    decide_seconds: u64,
    /// Negotiate HTTP/2 by ALPN on each connection (the API server's client does) instead
    /// of HTTP/1.1.
    #[arg(long)]
    http2: bool,
}

/// One client connection, HTTP/1.1 or HTTP/2.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// CPU time this thread has run, from the scheduler's accounting (nanoseconds; Linux).
fn thread_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("cannot read /proc/thread-self/schedstat (Linux only)")?;
    let ns: u64 = stat.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// The decision alone, on this thread, for `seconds`: (reviews, CPU per review).
fn decide_cpu(body: &Bytes, ca_pem: &str, seconds: u64) -> anyhow::Result<(u64, Duration)> {
    use sanctum_operator::webhook::admission::{self, OptIn, Settings};
    let mut config = OperatorConfig::default();
    config.identity.source = sanctum_operator::crd::IdentitySource::ServiceAccountToken;
    let settings = Settings { ca_bundle: Some(ca_pem.to_owned()) };
    let run = |n: u64| -> anyhow::Result<()> {
        for _ in 0..n {
            let answer = admission::review(body, OptIn::Annotation, &config, &settings)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(answer.outcome == "injected", "outcome {}", answer.outcome);
            std::hint::black_box(serde_json::to_vec(&answer.review)?);
        }
        Ok(())
    };
    run(200)?;
    let (start, cpu0) = (Instant::now(), thread_cpu()?);
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        run(100)?;
        n += 100;
    }
    Ok((n, (thread_cpu()? - cpu0) / u32::try_from(n.max(1))?))
}

fn review_body() -> Bytes {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "reviewer-7d9c-", "namespace": "team-a",
            "labels": {"app": "reviewer", "pod-template-hash": "7d9c"},
            "annotations": {"sanctum.dev/inject": "true", "sanctum.dev/containers": "claude",
                            "sanctum.dev/model": "claude-sonnet-4-5"}},
        "spec": {
            "serviceAccountName": "reviewer",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {"name": "claude", "image": "ghcr.io/example/claude-code:2.0.0",
                 "args": ["-p", "review the repository"],
                 "env": [{"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}},
                         {"name": "HOME", "value": "/home/claude"}],
                 "envFrom": [{"secretRef": {"name": "settings"}}],
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                 "volumeMounts": [{"name": "repo", "mountPath": "/repo"}],
                 "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}},
                {"name": "git-sync", "image": "registry.k8s.io/git-sync/git-sync:v4.4.0",
                 "args": ["--repo=https://github.com/example/app", "--root=/repo"],
                 "volumeMounts": [{"name": "repo", "mountPath": "/repo"}]}
            ],
            "volumes": [{"name": "repo", "emptyDir": {}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    Bytes::from(review.to_string())
}

async fn connect(addr: SocketAddr, ca: &str, http2: bool) -> anyhow::Result<Sender> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // What the API server's Go client offers; without `h2` the server picks HTTP/1.1.
    config.alpn_protocols =
        if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    anyhow::ensure!(negotiated_h2 == http2, "ALPN: asked h2 {http2}, got h2 {negotiated_h2}");
    if http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await?;
        tokio::spawn(conn);
        Ok(Sender::Http2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Sender::Http1(sender))
    }
}

async fn send(sender: &mut Sender, body: &Bytes) -> anyhow::Result<()> {
    let resp = match sender {
        Sender::Http1(sender) => {
            sender.ready().await?;
            let req = http::Request::post("/mutate")
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))?;
            sender.send_request(req).await?
        }
        Sender::Http2(sender) => {
            sender.ready().await?;
            let req = http::Request::post("https://127.0.0.1/mutate")
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))?;
            sender.send_request(req).await?
        }
    };
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let bytes = resp.into_body().collect().await?.to_bytes();
    // Every answer must carry the patch, or the run measured the wrong path.
    anyhow::ensure!(bytes.windows(9).any(|w| w == b"\"patch\":\""), "no patch in the answer");
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Certificates and the server, on a runtime of their own.
    let dir = tempfile::tempdir()?;
    let (ca_pem, cert, key) = sanctum_testkit::tls::ca_and_cert("sanctum admission bench")?;
    std::fs::write(dir.path().join("tls.crt"), cert)?;
    std::fs::write(dir.path().join("tls.key"), key)?;
    std::fs::write(dir.path().join("ca.crt"), &ca_pem)?;
    if args.decide_seconds > 0 {
        let (n, per_review) = decide_cpu(&review_body(), &ca_pem, args.decide_seconds)?;
        println!(
            "decision only (admission::review + answer encoding, one thread): {n} reviews, {:.1} µs CPU per review",
            per_review.as_secs_f64() * 1e6
        );
    }

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.max(1))
        .enable_all()
        .build()?;
    let addr = server_rt.block_on(async {
        let tls = server::bind(
            "127.0.0.1:0".parse()?,
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            Duration::from_secs(2),
        )
        .await?;
        let addr = tls.listener.local_addr()?;
        let mut config = OperatorConfig::default();
        config.identity.source = sanctum_operator::crd::IdentitySource::ServiceAccountToken;
        let state = Arc::new(WebhookState::new(config, Some(dir.path().join("ca.crt")), None));
        tokio::spawn(server::serve(tls, state, std::future::pending()));
        anyhow::Ok(addr)
    })?;

    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    client_rt.block_on(async move {
        let body = review_body();
        // Warm-up: connections, TLS sessions, allocator.
        let mut senders = Vec::new();
        for _ in 0..args.connections.max(1) {
            senders.push(connect(addr, &ca_pem, args.http2).await.context("cannot connect")?);
        }
        for s in &mut senders {
            for _ in 0..50 {
                send(s, &body).await?;
            }
        }

        // Open loop at a fixed rate, spread over the connections.
        let per_conn = f64::from(args.rate) / senders.len() as f64;
        let period = Duration::from_secs_f64(1.0 / per_conn);
        let total = (per_conn * args.seconds as f64) as usize;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, mut sender) in senders.into_iter().enumerate() {
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                // Stagger the connections across one period.
                let offset = period.mul_f64(i as f64 / f64::from(args.connections.max(1)));
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut lat = Vec::with_capacity(total);
                let mut late = Vec::with_capacity(total);
                for _ in 0..total {
                    let scheduled = tick.tick().await;
                    let start = tokio::time::Instant::now();
                    send(&mut sender, &body).await?;
                    let done = tokio::time::Instant::now();
                    lat.push(done - start);
                    late.push(done - scheduled);
                }
                anyhow::Ok((lat, late, sender))
            }));
        }
        let mut lat = Vec::new();
        let mut late = Vec::new();
        let mut senders = Vec::new();
        for t in tasks {
            let (l, k, s) = t.await??;
            lat.extend(l);
            late.extend(k);
            senders.push(s);
        }
        late.sort();
        let elapsed = started.elapsed();
        lat.sort();
        let n = lat.len();
        println!(
            "open loop: target {} reviews/s over {} connections for {} s: {} reviews, {:.0} reviews/s achieved",
            args.rate,
            args.connections,
            args.seconds,
            n,
            n as f64 / elapsed.as_secs_f64()
        );
        println!(
            "  latency: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.90)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 0.999)),
            ms(*lat.last().unwrap_or(&Duration::ZERO))
        );
        // The same, measured from each request's scheduled send time: includes any queue
        // behind a slow answer, and the tokio timer's 1 ms granularity.
        println!(
            "  from schedule: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(percentile(&late, 0.50)),
            ms(percentile(&late, 0.99)),
            ms(*late.last().unwrap_or(&Duration::ZERO))
        );

        if args.max_seconds > 0 {
            let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for mut sender in senders {
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        send(&mut sender, &body).await?;
                        lat.push(t.elapsed());
                    }
                    anyhow::Ok(lat)
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await??);
            }
            lat.sort();
            println!(
                "closed loop ({} connections, as fast as possible for {} s): {:.0} reviews/s; p50 {:.3} ms  p99 {:.3} ms",
                args.connections,
                args.max_seconds,
                lat.len() as f64 / started.elapsed().as_secs_f64(),
                ms(percentile(&lat, 0.50)),
                ms(percentile(&lat, 0.99))
            );
        }
        anyhow::Ok(())
    })?;
    drop(server_rt);
    Ok(())
}
