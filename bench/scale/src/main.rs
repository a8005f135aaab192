//! The operator beside kube-controller-manager's Job controller, on one control plane
//! without a node (pods stay Pending): a burst of N ScannerRuns, then a burst of N Jobs,
//! each timed from the create request to the pod's first appearance on a watch; then every
//! pod "finishes" at once (the bench writes pod status, as the e2e suite plays the kubelet)
//! and the time until every ScannerRun shows its result / every Job is Complete.
//!
//! API requests per run come from the API server's own `apiserver_request_total` (deltas
//! over each phase, minus the requests this bench made itself). Not a test: a command.
//! See bench/scale/README.md.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use sanctum_operator::crd::{Phase, ScannerRun};
use sanctum_scale_bench::{
    cpu_seconds, fresh_namespace, http_get, install_crd, median, percentile, until,
};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    about = "ScannerRuns through sanctum-operator beside Jobs through kube-controller-manager"
)]
struct Args {
    /// Burst sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    runs: Vec<usize>,
    /// Rounds per burst size (each round measures both subjects).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The operator binary (release build).
    #[arg(long, default_value = "target/release/sanctum-operator")]
    operator: PathBuf,
    /// The control plane's state dir (for kube-controller-manager's pid).
    #[arg(long, env = "SANCTUM_CLUSTER_DIR")]
    cluster_dir: PathBuf,
    /// Create requests in flight during a burst (the same for both subjects).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Give up waiting for a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Admin port of the operator.
    #[arg(long, default_value_t = 48080)]
    admin_port: u16,
}

const SUMMARY: &str = r#"{"findings":{"critical":1,"high":2,"medium":0,"low":3,"note":0},"costUsd":0.37,"sarif":"/output/results.sarif"}"#;
const OPERATOR_NS: &str = "sanctum-system";

/// Requests this bench made itself, by `verb resource[/subresource]`, subtracted from the
/// API server's counts.
#[derive(Default, Clone)]
struct Own(Arc<Mutex<BTreeMap<String, f64>>>);
impl Own {
    fn add(&self, key: &str, n: usize) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(key.into()).or_default() +=
            n as f64;
    }
    fn take(&self) -> BTreeMap<String, f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `apiserver_request_total` summed by `VERB resource[/subresource]`.
async fn request_counts(client: &Client) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await.context("GET /metrics")?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            let pat = format!("{k}=\"");
            labels.find(&pat).map(|i| {
                let rest = &labels[i + pat.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
        };
        let (verb, resource) = (label("verb").unwrap_or_default(), label("resource"));
        let Some(resource) = resource.filter(|r| !r.is_empty()) else { continue };
        let sub = label("subresource").filter(|s| !s.is_empty());
        let key = match sub {
            Some(s) => format!("{verb} {resource}/{s}"),
            None => format!("{verb} {resource}"),
        };
        *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// One figure read from a round's measurements.
type Figure<'a> = dyn Fn(&Figures) -> f64 + 'a;

fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    own: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut d = BTreeMap::new();
    for (k, v) in after {
        let x = v - before.get(k).copied().unwrap_or(0.0) - own.get(k).copied().unwrap_or(0.0);
        // Watches are long-lived and counted when they end; leave them out.
        if x.abs() >= 0.5 && !k.starts_with("WATCH") {
            d.insert(k.clone(), x);
        }
    }
    d
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Samples VmRSS every 50 ms until stopped; returns the largest (MiB).
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}
impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(status_kib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        });
        Self { stop, task }
    }
    async fn finish(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or(0) as f64 / 1024.0
    }
}

/// First time each object of `api` was seen on a watch (by name), and the latest version.
#[derive(Clone)]
struct Seen<K> {
    first: Arc<Mutex<HashMap<String, Instant>>>,
    latest: Arc<Mutex<HashMap<String, K>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}
impl<K> Seen<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    fn watch(api: Api<K>) -> Self {
        let first = Arc::new(Mutex::new(HashMap::new()));
        let latest = Arc::new(Mutex::new(HashMap::new()));
        let (f, l) = (first.clone(), latest.clone());
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let obj = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    _ => continue,
                };
                let now = Instant::now();
                let name = obj.name_any();
                f.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_insert(now);
                l.lock().unwrap_or_else(|p| p.into_inner()).insert(name, obj);
            }
        });
        Self { first, latest, task: Arc::new(task) }
    }
    fn first(&self, name: &str) -> Option<Instant> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied()
    }
    fn count(&self, pred: impl Fn(&K) -> bool) -> usize {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|o| pred(o)).count()
    }
    fn stop(&self) {
        self.task.abort();
    }
}

/// Latency figures of one burst, in milliseconds.
#[derive(Debug, Clone, Default)]
struct Burst {
    p50: f64,
    p99: f64,
    last: f64,
    failed: usize,
}

fn burst_figures(
    sent: &HashMap<String, Instant>,
    seen: impl Fn(&str) -> Option<Instant>,
    failed: usize,
    t0: Instant,
) -> Burst {
    let mut lat: Vec<f64> = Vec::new();
    let mut last: f64 = 0.0;
    for (name, t) in sent {
        if let Some(s) = seen(name) {
            lat.push(s.saturating_duration_since(*t).as_secs_f64() * 1e3);
            last = last.max(s.saturating_duration_since(t0).as_secs_f64() * 1e3);
        }
    }
    lat.sort_by(f64::total_cmp);
    Burst { p50: percentile(&lat, 50.0), p99: percentile(&lat, 99.0), last, failed }
}

/// Sends `n` creates with `concurrency` in flight; returns send times by name and failures.
async fn burst<F, Fut>(n: usize, concurrency: usize, create: F) -> (HashMap<String, Instant>, usize)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let results: Vec<(String, Instant, bool)> = futures::stream::iter((0..n).map(|i| {
        let name = format!("r{i:05}");
        let fut = create(name.clone());
        async move {
            let t = Instant::now();
            let ok = fut.await.map_err(|e| eprintln!("create {name}: {e}")).is_ok();
            (name, t, ok)
        }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await;
    let failed = results.iter().filter(|r| !r.2).count();
    (results.into_iter().filter(|r| r.2).map(|r| (r.0, r.1)).collect(), failed)
}

fn run_object(name: &str, ns: &str) -> Result<ScannerRun> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "ghcr.io/sanctum-dev/claude-scanner:1.0.0", "orgId": "acme",
            "source": {"volume": {"claimName": "repo"}},
            "agent": {"model": "claude-sonnet-4-5", "prompt": "review"},
            "identity": {"source": "serviceAccountToken"},
            "timeoutSeconds": 600
        }
    }))?)
}

fn job_object(name: &str, ns: &str) -> Result<Job> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": 600,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "scanner", "image": "ghcr.io/sanctum-dev/claude-scanner:1.0.0",
                    "args": ["review"]}]
            }}
        }
    }))?)
}

fn terminated_status(image: &str) -> Value {
    json!({"status": {"phase": "Succeeded", "startTime": "2026-11-22T10:00:00Z",
        "containerStatuses": [{"name": "scanner", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": SUMMARY,
                "startedAt": "2026-11-22T10:00:05Z", "finishedAt": "2026-11-22T10:04:00Z"}}}]}})
}

async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss.delete(name, &DeleteParams::background()).await;
    let deadline = Instant::now() + timeout;
    while nss.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("namespace {name} still there after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The garbage collector and the scheduler still work off the deletions for a while;
    // let them finish before the next phase counts requests.
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

struct OperatorProc {
    child: Child,
}
impl OperatorProc {
    fn start(bin: &Path, dir: &Path, port: u16) -> Result<Self> {
        let key = dir.join("signing-key.pem");
        std::fs::write(&key, sanctum_operator::tokens::Signer::generate_pem()?)?;
        let config = dir.join("operator.yaml");
        std::fs::write(
            &config,
            format!(
                "trat:\n  signingKeyFile: {}\npod:\n  seccompLocalhostProfile: null\ntenancy:\n  defaultOrg: acme\n",
                key.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .arg(format!("--admin-listen=127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "the operator exited at start ({status}); see {}/operator.log",
                    dir.display()
                );
            }
            if http_get(port, "/readyz").is_some_and(|r| r.0) {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("the operator is not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}
impl Drop for OperatorProc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One subject's figures in one round.
#[derive(Debug, Clone, Default)]
struct Figures {
    create: Burst,
    /// create → controller done (run Pending with its pod recorded / Job active), ms to last.
    settled_ms: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    requests: BTreeMap<String, f64>,
    finish: Burst,
    finish_requests: BTreeMap<String, f64>,
    revoked_entries: usize,
    revoked_bytes: usize,
    revoked_get_ms: f64,
}

fn per_run_total(r: &BTreeMap<String, f64>, n: usize) -> f64 {
    r.values().sum::<f64>() / n as f64
}

async fn sanctum_round(
    client: &Client,
    args: &Args,
    n: usize,
    round: usize,
    own: &Own,
) -> Result<Figures> {
    let ns = format!("scale-sr-{n}-{round}");
    fresh_namespace(client, &ns).await?;
    let dir = tempfile::tempdir()?;
    let op = OperatorProc::start(&args.operator, dir.path(), args.admin_port)?;
    let pid = op.pid();
    let timeout = Duration::from_secs(args.timeout);
    let pods = Seen::watch(Api::<Pod>::namespaced(client.clone(), &ns));
    let runs_seen = Seen::watch(Api::<ScannerRun>::namespaced(client.clone(), &ns));
    tokio::time::sleep(Duration::from_millis(500)).await;
    own.take();
    let before = request_counts(client).await?;
    let cpu0 = cpu_seconds(pid);
    let rss = RssSampler::start(pid);
    let api: Api<ScannerRun> = Api::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    let (sent, failed) = burst(n, args.concurrency, |name| {
        let api = api.clone();
        let obj = run_object(&name, &ns);
        async move {
            api.create(&PostParams::default(), &obj.map_err(|e| kube::Error::Service(e.into()))?)
                .await
                .map(|_| ())
        }
    })
    .await;
    own.add("POST scannerruns", n);
    until("every run's pod", timeout, || {
        sent.keys().all(|k| pods.first(&format!("{k}-scanner")).is_some())
    })
    .await?;
    let create = burst_figures(&sent, |k| pods.first(&format!("{k}-scanner")), failed, t0);
    let settled = until("every run Pending with its pod", timeout, || {
        runs_seen.count(|r| r.status.as_ref().is_some_and(|s| s.pod_name.is_some())) >= sent.len()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = request_counts(client).await?;
    let cpu1 = cpu_seconds(pid);
    let mut f = Figures {
        create,
        settled_ms: settled.duration_since(t0).as_secs_f64() * 1e3,
        requests: delta(&before, &after, &own.take()),
        ..Default::default()
    };

    // Every pod finishes at once.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = terminated_status("ghcr.io/sanctum-dev/claude-scanner:1.0.0");
    let before = request_counts(client).await?;
    let done_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let watch_done = {
        let done_at = done_at.clone();
        let runs_seen = runs_seen.clone();
        tokio::spawn(async move {
            loop {
                for (name, r) in runs_seen.latest.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    if r.phase() == Some(Phase::Succeeded)
                        && r.status.as_ref().is_some_and(|s| s.result.is_some())
                    {
                        done_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(name.clone())
                            .or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let t1 = Instant::now();
    let (patched, pfailed) = burst(sent.len(), args.concurrency, |name| {
        let pod_api = pod_api.clone();
        let status = status.clone();
        let pod = format!("{}-scanner", name);
        async move {
            pod_api
                .patch_status(&pod, &PatchParams::default(), &Patch::Merge(status))
                .await
                .map(|_| ())
        }
    })
    .await;
    own.add("PATCH pods/status", sent.len());
    let _ = until("every run's result", timeout, || {
        done_at.lock().unwrap_or_else(|p| p.into_inner()).len() >= patched.len()
    })
    .await;
    watch_done.abort();
    f.finish = {
        let d = done_at.lock().unwrap_or_else(|p| p.into_inner()).clone();
        burst_figures(
            &patched,
            |k| d.get(k).copied(),
            pfailed + patched.len().saturating_sub(d.len()),
            t1,
        )
    };
    // The revoked list is saved to its ConfigMap within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = request_counts(client).await?;
    f.finish_requests = delta(&before, &after, &own.take());
    let mut gets = Vec::new();
    for _ in 0..21 {
        if let Some((true, body, secs)) = http_get(args.admin_port, "/revoked") {
            f.revoked_bytes = body.len();
            f.revoked_entries = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("revoked").and_then(|r| {
                        r.as_array().map(Vec::len).or_else(|| r.as_object().map(|o| o.len()))
                    })
                })
                .unwrap_or(0);
            gets.push(secs * 1e3);
        }
    }
    f.revoked_get_ms = median(gets);
    f.cpu_s = cpu1 - cpu0;
    f.peak_rss_mib = rss.finish().await.max(status_kib(pid, "VmHWM:") as f64 / 1024.0);
    pods.stop();
    runs_seen.stop();
    // The operator removes its finalizers, so it runs until the namespace is gone.
    delete_namespace(client, &ns, timeout).await?;
    drop(op);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NS);
    let _ = cms.delete(sanctum_operator::revoked::CONFIGMAP, &DeleteParams::default()).await;
    Ok(f)
}

fn kcm_pid(dir: &Path) -> Result<u32> {
    let p = dir.join("pids/kube-controller-manager.pid");
    Ok(std::fs::read_to_string(&p).with_context(|| p.display().to_string())?.trim().parse()?)
}

async fn job_round(
    client: &Client,
    args: &Args,
    n: usize,
    round: usize,
    own: &Own,
) -> Result<Figures> {
    let ns = format!("scale-job-{n}-{round}");
    fresh_namespace(client, &ns).await?;
    let pid = kcm_pid(&args.cluster_dir)?;
    let timeout = Duration::from_secs(args.timeout);
    let pods = Seen::watch(Api::<Pod>::namespaced(client.clone(), &ns));
    let jobs_seen = Seen::watch(Api::<Job>::namespaced(client.clone(), &ns));
    tokio::time::sleep(Duration::from_millis(500)).await;
    own.take();
    let before = request_counts(client).await?;
    let cpu0 = cpu_seconds(pid);
    let rss = RssSampler::start(pid);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    let (sent, failed) = burst(n, args.concurrency, |name| {
        let api = api.clone();
        let obj = job_object(&name, &ns);
        async move {
            api.create(&PostParams::default(), &obj.map_err(|e| kube::Error::Service(e.into()))?)
                .await
                .map(|_| ())
        }
    })
    .await;
    own.add("POST jobs", n);
    // Job pods are named <job>-<random>; map them back by the job-name label.
    let job_pods = || -> HashMap<String, String> {
        pods.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|p| {
                Some((p.labels().get("batch.kubernetes.io/job-name")?.clone(), p.name_any()))
            })
            .collect()
    };
    until("every Job's pod", timeout, || job_pods().len() >= sent.len()).await?;
    let by_job = job_pods();
    let create = burst_figures(&sent, |k| by_job.get(k).and_then(|p| pods.first(p)), failed, t0);
    let settled = until("every Job active", timeout, || {
        jobs_seen.count(|j| j.status.as_ref().and_then(|s| s.active) == Some(1)) >= sent.len()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = request_counts(client).await?;
    let cpu1 = cpu_seconds(pid);
    let mut f = Figures {
        create,
        settled_ms: settled.duration_since(t0).as_secs_f64() * 1e3,
        requests: delta(&before, &after, &own.take()),
        ..Default::default()
    };

    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = terminated_status("ghcr.io/sanctum-dev/claude-scanner:1.0.0");
    let before = request_counts(client).await?;
    let done_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let watch_done = {
        let done_at = done_at.clone();
        let jobs_seen = jobs_seen.clone();
        tokio::spawn(async move {
            loop {
                for (name, j) in jobs_seen.latest.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let complete = j.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    });
                    if complete {
                        done_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(name.clone())
                            .or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let t1 = Instant::now();
    let (patched, pfailed) = burst(sent.len(), args.concurrency, |name| {
        let pod_api = pod_api.clone();
        let status = status.clone();
        let pod = by_job.get(&name).cloned().unwrap_or_default();
        async move {
            pod_api
                .patch_status(&pod, &PatchParams::default(), &Patch::Merge(status))
                .await
                .map(|_| ())
        }
    })
    .await;
    own.add("PATCH pods/status", sent.len());
    let _ = until("every Job Complete", timeout, || {
        done_at.lock().unwrap_or_else(|p| p.into_inner()).len() >= patched.len()
    })
    .await;
    watch_done.abort();
    f.finish = {
        let d = done_at.lock().unwrap_or_else(|p| p.into_inner()).clone();
        burst_figures(
            &patched,
            |k| d.get(k).copied(),
            pfailed + patched.len().saturating_sub(d.len()),
            t1,
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = request_counts(client).await?;
    f.finish_requests = delta(&before, &after, &own.take());
    f.cpu_s = cpu1 - cpu0;
    f.peak_rss_mib = rss.finish().await;
    pods.stop();
    jobs_seen.stop();
    delete_namespace(client, &ns, timeout).await?;
    Ok(f)
}

fn print_requests(label: &str, r: &BTreeMap<String, f64>, n: usize) {
    let parts: Vec<String> = r.iter().map(|(k, v)| format!("{k} {:.2}", v / n as f64)).collect();
    println!("    {label}: {:.2}/run  [{}]", per_run_total(r, n), parts.join(", "));
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::try_default().await.context("KUBECONFIG")?;
    install_crd(&client).await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(OPERATOR_NS).await?.is_none() {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": OPERATOR_NS}}))?,
        )
        .await?;
    }
    let own = Own::default();
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    for &n in &args.runs {
        let mut rows: Vec<(Figures, Figures)> = Vec::new();
        for round in 0..args.rounds {
            let s = sanctum_round(&client, &args, n, round, &own).await?;
            let j = job_round(&client, &args, n, round, &own).await?;
            println!("N={n} round {round}:");
            for (name, f) in [("sanctum", &s), ("jobs", &j)] {
                println!(
                    "  {name:8} create→pod p50 {:.0} ms p99 {:.0} ms last {:.0} ms (failed {}), controller settled {:.0} ms, cpu {:.2} s, peak RSS {:.1} MiB",
                    f.create.p50,
                    f.create.p99,
                    f.create.last,
                    f.create.failed,
                    f.settled_ms,
                    f.cpu_s,
                    f.peak_rss_mib
                );
                print_requests("requests (create phase)", &f.requests, n);
                println!(
                    "    finish→result p50 {:.0} ms p99 {:.0} ms last {:.0} ms (not done {})",
                    f.finish.p50, f.finish.p99, f.finish.last, f.finish.failed
                );
                print_requests("requests (finish phase)", &f.finish_requests, n);
            }
            println!(
                "  revoked list: {} entries, {} bytes, GET /revoked median {:.2} ms",
                s.revoked_entries, s.revoked_bytes, s.revoked_get_ms
            );
            rows.push((s, j));
        }
        // Ratios per round, then the median of the ratios.
        let ratio =
            |g: &dyn Fn(&Figures) -> f64| median(rows.iter().map(|(s, j)| g(s) / g(j)).collect());
        let med = |g: &dyn Fn(&Figures) -> f64, sanctum: bool| {
            median(rows.iter().map(|(s, j)| g(if sanctum { s } else { j })).collect())
        };
        let figures: [(&str, &Figure<'_>); 10] = [
            ("create→pod p50 ms", &|f| f.create.p50),
            ("create→pod p99 ms", &|f| f.create.p99),
            ("create→last pod ms", &|f| f.create.last),
            ("create→controller settled ms", &|f| f.settled_ms),
            ("CPU s", &|f| f.cpu_s),
            ("peak RSS MiB", &|f| f.peak_rss_mib),
            ("API requests/run (create)", &|f| per_run_total(&f.requests, n)),
            ("finish→result p50 ms", &|f| f.finish.p50),
            ("finish→last result ms", &|f| f.finish.last),
            ("API requests/run (finish)", &|f| per_run_total(&f.finish_requests, n)),
        ];
        println!(
            "\nN={n}: medians over {} rounds; ratio = median of per-round Sanctum/Job",
            args.rounds
        );
        println!("  {:32} {:>10} {:>10} {:>8}", "figure", "sanctum", "jobs", "ratio");
        for (label, g) in figures {
            println!(
                "  {label:32} {:>10.1} {:>10.1} {:>7.2}×",
                med(g, true),
                med(g, false),
                ratio(g)
            );
        }
        println!(
            "  failed creates: sanctum {}, jobs {}; revoked entries {} ({} bytes), GET /revoked {:.2} ms\n",
            rows.iter().map(|r| r.0.create.failed).sum::<usize>(),
            rows.iter().map(|r| r.1.create.failed).sum::<usize>(),
            rows.last().map_or(0, |r| r.0.revoked_entries),
            rows.last().map_or(0, |r| r.0.revoked_bytes),
            med(&|f| f.revoked_get_ms, true)
        );
    }
    Ok(())
}
