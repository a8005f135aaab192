//! Issue 15 item 3: the admission webhook under a pod burst. On a control plane without a
//! node, a Deployment of annotated pods is scaled from 0 to N, so kube-controller-manager's
//! ReplicaSet controller creates N pods as fast as the API server takes them; once in a
//! namespace the shipped webhook configuration and policy (`manifests/webhook.yaml`) cover,
//! served by a real `sanctum-operator run` over TLS, and once in a namespace they do not.
//!
//! A third namespace has a no-op mutating webhook instead (`noop_webhook`: it admits every pod
//! unchanged, on the same server shell), the peer that shows what any webhook costs.
//!
//! Figures come from the API server's own histograms (deltas over each burst): the webhook
//! call as the API server times it (`apiserver_admission_webhook_admission_duration_seconds`)
//! and the pod create request end to end (`apiserver_request_duration_seconds`), plus the
//! time until the last pod exists, the operator's CPU seconds, and how many TCP connections
//! the API server opened to the webhook (each one a TLS handshake). Ratios are webhook ÷ no
//! webhook, per round, then the median. Not a test: a command (bench/scale/README.md).

mod noop_webhook;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use sanctum_scale_bench::{cpu_seconds, fresh_namespace, http_get, install_crd, median, until};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    about = "Admission under a pod burst: a Deployment scaled from 0, with and without the webhook"
)]
struct Args {
    /// Pods per burst (the Deployment's replicas).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Rounds (each round bursts both namespaces, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The operator binary (release build).
    #[arg(long, default_value = "target/release/sanctum-operator")]
    operator: PathBuf,
    /// Give up waiting for a burst after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Admin port of the operator.
    #[arg(long, default_value_t = 48081)]
    admin_port: u16,
    /// Webhook (and token service) port of the operator, on 127.0.0.1.
    #[arg(long, default_value_t = 48443)]
    webhook_port: u16,
    /// Port of the no-op peer webhook, on 127.0.0.1.
    #[arg(long, default_value_t = 48444)]
    noop_port: u16,
    /// The control plane's state dir (for the API server's pid).
    #[arg(long, env = "SANCTUM_CLUSTER_DIR")]
    cluster_dir: PathBuf,
}

const HOOK_NS: &str = "burst-webhook";
const PLAIN_NS: &str = "burst-plain";
const NOOP_NS: &str = "burst-noop";
const NOOP: &str = "sanctum-burst-bench-noop";
const NOOP_WEBHOOK: &str = "noop.burst.sanctum.dev";
const WEBHOOK: &str = "annotated.inject.sanctum.dev";
const NAME: &str = "sanctum-burst-bench";

/// `sanctum-operator run` with its webhook on `127.0.0.1:webhook_port`.
struct Operator(Child);
impl Operator {
    fn start(args: &Args, dir: &Path, ca: &str, cert: &str, key: &str) -> Result<Self> {
        for (file, pem) in [("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)] {
            std::fs::write(dir.join(file), pem)?;
        }
        let signing = dir.join("signing-key.pem");
        std::fs::write(&signing, sanctum_operator::tokens::Signer::generate_pem()?)?;
        let port = args.webhook_port;
        let config = dir.join("operator.yaml");
        std::fs::write(
            &config,
            format!(
                "trat:\n  signingKeyFile: {signing}\nidentity:\n  source: serviceAccountToken\n\
                 pod:\n  seccompLocalhostProfile: null\ntenancy:\n  defaultOrg: acme\n\
                 webhook:\n  listen: 127.0.0.1:{port}\n  tlsCertFile: {d}/tls.crt\n  tlsKeyFile: {d}/tls.key\n  \
                 caBundleFile: {d}/ca.crt\n  tokenServiceUrl: https://127.0.0.1:{port}\n",
                signing = signing.display(),
                d = dir.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("operator.log"))?;
        let child = Command::new(&args.operator)
            .args(["run", "--config"])
            .arg(&config)
            .arg(format!("--admin-listen=127.0.0.1:{}", args.admin_port))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args.operator.display()))?;
        let mut me = Self(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.0.try_wait()? {
                bail!(
                    "the operator exited at start ({status}); see {}/operator.log",
                    dir.display()
                );
            }
            if http_get(args.admin_port, "/readyz").is_some_and(|r| r.0) {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("the operator is not ready after 30 s; see {}/operator.log", dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped MutatingWebhookConfiguration, ValidatingAdmissionPolicy and binding, pointed
/// at `127.0.0.1:port` and limited to [`HOOK_NS`].
async fn install_admission(client: &Client, port: u16, noop_port: u16, ca: &str) -> Result<()> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string("manifests/webhook.yaml")
        .context("read manifests/webhook.yaml (run from the repository root)")?;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .filter_map(|d| d.ok().filter(|v| !v.is_null()))
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let doc = |kind: &str| {
        docs.iter().find(|d| d["kind"] == kind).cloned().with_context(|| format!("no {kind}"))
    };
    let only = json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [HOOK_NS]});
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca);

    let mut mwc = doc("MutatingWebhookConfiguration")?;
    mwc["metadata"] = json!({"name": NAME});
    for hook in mwc["webhooks"].as_array_mut().context("webhooks")? {
        let path = hook["clientConfig"]["service"]["path"].as_str().unwrap_or("/mutate").to_owned();
        hook["clientConfig"] =
            json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle});
        let exprs = &mut hook["namespaceSelector"]["matchExpressions"];
        match exprs.as_array_mut() {
            Some(list) => list.push(only.clone()),
            None => *exprs = json!([only.clone()]),
        }
    }
    // The peer: the same registration (rules, match conditions, timeout) as the first
    // webhook, pointed at the no-op webhook, for NOOP_NS only.
    let mut hook = mwc["webhooks"][0].clone();
    hook["name"] = json!(NOOP_WEBHOOK);
    hook["clientConfig"] =
        json!({"url": format!("https://127.0.0.1:{noop_port}/mutate"), "caBundle": ca_bundle});
    hook["namespaceSelector"] = json!({"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NOOP_NS]}]});
    let noop = json!({"apiVersion": mwc["apiVersion"], "kind": mwc["kind"],
        "metadata": {"name": NOOP}, "webhooks": [hook]});
    let mut vap = doc("ValidatingAdmissionPolicy")?;
    vap["metadata"] = json!({"name": NAME});
    let mut binding = doc("ValidatingAdmissionPolicyBinding")?;
    binding["metadata"] = json!({"name": NAME});
    binding["spec"]["policyName"] = json!(NAME);
    binding["spec"]["matchResources"] = json!({"namespaceSelector": {"matchExpressions": [only]}});

    let apply = PatchParams::apply(NAME).force();
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(mwc)?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(NAME, &apply, &Patch::Apply(&mwc))
        .await?;
    let noop: MutatingWebhookConfiguration = serde_json::from_value(noop)?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(NOOP, &apply, &Patch::Apply(&noop))
        .await?;
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(vap)?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(NAME, &apply, &Patch::Apply(&vap))
        .await?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(binding)?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(NAME, &apply, &Patch::Apply(&binding))
        .await?;
    Ok(())
}

async fn remove_admission(client: &Client) {
    let dp = DeleteParams::default();
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone()).delete(NAME, &dp).await;
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone()).delete(NOOP, &dp).await;
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).delete(NAME, &dp).await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(client.clone()).delete(NAME, &dp).await;
}

fn is_injected(pod: &Pod) -> bool {
    pod.annotations().contains_key(sanctum_operator::names::ANNOTATION_STATUS)
}

fn pod_template() -> Value {
    json!({
        "metadata": {"labels": {"app": "burst"}, "annotations": {"sanctum.dev/inject": "true"}},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "agent", "image": "registry.invalid/agent:1", "args": ["review"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    })
}

async fn create_deployment(client: &Client, ns: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "burst", "namespace": ns},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "burst"}}, "template": pod_template()}
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    Ok(())
}

async fn scale(client: &Client, ns: &str, replicas: usize) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {"replicas": replicas}});
    deployments.patch_scale("burst", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// One histogram summed over the series whose labels include every `want` pair:
/// upper bound (seconds; +Inf last) → cumulative count.
fn histogram(text: &str, metric: &str, want: &[(&str, &str)]) -> BTreeMap<u64, f64> {
    let prefix = format!("{metric}_bucket{{");
    let mut out: BTreeMap<u64, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let has = |k: &str, v: &str| labels.contains(&format!("{k}=\"{v}\""));
        if !want.iter().all(|(k, v)| has(k, v)) {
            continue;
        }
        let Some(le) = labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        // Keyed by the bits of a non-negative float, which sort like the floats.
        *out.entry(le.to_bits()).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> BTreeMap<u64, f64> {
    after.iter().map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0))).collect()
}

/// `q` (0–1) of a cumulative histogram, interpolated inside its bucket the way Prometheus'
/// `histogram_quantile` does; the bucket's lower bound if it falls in +Inf. Milliseconds.
fn quantile_ms(h: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = h.get(&f64::INFINITY.to_bits()).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bits, count) in h {
        let upper = f64::from_bits(*bits);
        if *count >= rank {
            if upper.is_infinite() {
                return lower * 1e3;
            }
            let inside = (count - below).max(f64::MIN_POSITIVE);
            return (lower + (upper - lower) * (rank - below) / inside) * 1e3;
        }
        (lower, below) = (upper, *count);
    }
    f64::NAN
}

fn count(h: &BTreeMap<u64, f64>) -> f64 {
    h.get(&f64::INFINITY.to_bits()).copied().unwrap_or(0.0)
}

/// Client ports of TCP connections to or from 127.0.0.1:`port` that are open or in
/// TIME_WAIT (so: opened in the last minute or still open), from /proc/net/tcp.
fn connections(port: u16) -> BTreeSet<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        if *state == "0A" {
            continue; // LISTEN
        }
        let port_of =
            |a: &str| a.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        match (port_of(local), port_of(remote)) {
            (Some(l), Some(r)) if l == port => {
                out.insert(r);
            }
            (Some(l), Some(r)) if r == port => {
                out.insert(l);
            }
            _ => {}
        }
    }
    out
}

/// One namespace's figures in one round.
#[derive(Debug, Clone, Default)]
struct Figures {
    /// Scale request → the last pod seen on a watch, ms.
    last_pod_ms: f64,
    created: usize,
    injected: usize,
    pod_create_p50: f64,
    pod_create_p99: f64,
    webhook_calls: f64,
    webhook_p50: f64,
    webhook_p99: f64,
    webhook_rejections: f64,
    operator_cpu_s: f64,
    apiserver_cpu_s: f64,
    connections: usize,
}

/// Which webhook a namespace's pods meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Sanctum,
    Noop,
    None,
}

impl Subject {
    fn namespace(self) -> &'static str {
        match self {
            Self::Sanctum => HOOK_NS,
            Self::Noop => NOOP_NS,
            Self::None => PLAIN_NS,
        }
    }
    fn webhook(self) -> &'static str {
        match self {
            Self::Noop => NOOP_WEBHOOK,
            _ => WEBHOOK,
        }
    }
    fn port(self, args: &Args) -> u16 {
        match self {
            Self::Noop => args.noop_port,
            _ => args.webhook_port,
        }
    }
}

fn apiserver_pid(args: &Args) -> Result<u32> {
    let p = args.cluster_dir.join("pids/kube-apiserver.pid");
    Ok(std::fs::read_to_string(&p).with_context(|| p.display().to_string())?.trim().parse()?)
}

async fn metrics(client: &Client) -> Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    client.request_text(req).await.context("GET /metrics")
}

fn counter(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn burst(
    client: &Client,
    args: &Args,
    subject: Subject,
    operator_pid: u32,
) -> Result<Figures> {
    let ns = subject.namespace();
    let apiserver = apiserver_pid(args)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let last: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (s, l) = (seen.clone(), last.clone());
    let watch = tokio::spawn(async move {
        let stream = watcher(pods, watcher::Config::default().labels("app=burst"));
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                && s.lock().unwrap_or_else(|p| p.into_inner()).insert(p.name_any())
            {
                *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // the watch is established
    let before = metrics(client).await?;
    let port = subject.port(args);
    let (cpu0, api0, conns0) =
        (cpu_seconds(operator_pid), cpu_seconds(apiserver), connections(port));
    let t0 = Instant::now();
    scale(client, ns, args.pods).await?;
    let n = args.pods;
    let waited = until("every pod of the burst", Duration::from_secs(args.timeout), || {
        seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= n
    })
    .await;
    let after = metrics(client).await?;
    let (cpu1, api1) = (cpu_seconds(operator_pid), cpu_seconds(apiserver));
    let conns1 = connections(port);
    watch.abort();
    waited?;
    let last_pod = last.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(t0);

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods.list(&ListParams::default().labels("app=burst")).await?;
    let injected = listed.items.iter().filter(|p| is_injected(p)).count();

    let pod_post = [("verb", "POST"), ("resource", "pods"), ("subresource", "")];
    let created = delta(
        &histogram(&before, "apiserver_request_duration_seconds", &pod_post),
        &histogram(&after, "apiserver_request_duration_seconds", &pod_post),
    );
    let hook = [("name", subject.webhook()), ("operation", "CREATE")];
    let named = [("name", subject.webhook())];
    let webhook = delta(
        &histogram(&before, "apiserver_admission_webhook_admission_duration_seconds", &hook),
        &histogram(&after, "apiserver_admission_webhook_admission_duration_seconds", &hook),
    );
    let rejections = counter(&after, "apiserver_admission_webhook_rejection_count", &named)
        - counter(&before, "apiserver_admission_webhook_rejection_count", &named);
    let figures = Figures {
        last_pod_ms: last_pod.saturating_duration_since(t0).as_secs_f64() * 1e3,
        created: listed.items.len(),
        injected,
        pod_create_p50: quantile_ms(&created, 0.5),
        pod_create_p99: quantile_ms(&created, 0.99),
        webhook_calls: count(&webhook),
        webhook_p50: quantile_ms(&webhook, 0.5),
        webhook_p99: quantile_ms(&webhook, 0.99),
        webhook_rejections: rejections,
        operator_cpu_s: cpu1 - cpu0,
        apiserver_cpu_s: api1 - api0,
        connections: conns1.difference(&conns0).count(),
    };

    // Back to 0: pods without a node are deleted at once.
    scale(client, ns, 0).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while !pods.list(&ListParams::default().labels("app=burst").limit(1)).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("the pods of {ns} are still there after {}s", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the garbage collector and the ReplicaSet controller settle before the next burst.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(figures)
}

/// Waits until a dry-run create of an annotated pod in [`HOOK_NS`] comes back injected.
async fn wait_for_webhook(client: &Client) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), HOOK_NS);
    let mut probe: Pod = serde_json::from_value(pod_template())?;
    probe.metadata.name = Some("probe".into());
    let dry = PostParams { dry_run: true, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pod) = pods.create(&dry, &probe).await
            && is_injected(&pod)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the API server does not call the webhook after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_round(label: &str, f: &Figures, n: usize) {
    println!(
        "  {label:10} last pod {:.0} ms ({:.0} pods/s), created {}/{n}, injected {}, pod POST p50 {:.1} ms p99 {:.1} ms; \
         webhook calls {}, p50 {:.2} ms p99 {:.2} ms, rejections {}; operator CPU {:.2} s; API server CPU {:.2} s; connections to the webhook {}",
        f.last_pod_ms,
        n as f64 / (f.last_pod_ms / 1e3),
        f.created,
        f.injected,
        f.pod_create_p50,
        f.pod_create_p99,
        f.webhook_calls,
        f.webhook_p50,
        f.webhook_p99,
        f.webhook_rejections,
        f.operator_cpu_s,
        f.apiserver_cpu_s,
        f.connections,
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::try_default().await.context("KUBECONFIG")?;
    install_crd(&client).await?;
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = sanctum_testkit::tls::ca_and_cert("sanctum burst bench")?;
    let operator = Operator::start(&args, dir.path(), &ca, &cert, &key)?;
    for ns in [HOOK_NS, NOOP_NS, PLAIN_NS] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::background())
            .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .get_opt(ns)
            .await?
            .is_some()
        {
            if Instant::now() > deadline {
                bail!("namespace {ns} from an earlier run is still terminating");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        fresh_namespace(&client, ns).await?;
        create_deployment(&client, ns).await?;
    }
    let noop = tokio::net::TcpListener::bind(("127.0.0.1", args.noop_port))
        .await
        .with_context(|| format!("bind the no-op webhook on 127.0.0.1:{}", args.noop_port))?;
    noop_webhook::spawn(noop, noop_acceptor(&cert, &key)?);
    install_admission(&client, args.webhook_port, args.noop_port, &ca).await?;
    let result = rounds(&client, &args, operator.0.id()).await;
    remove_admission(&client).await;
    drop(operator);
    result
}

/// A TLS acceptor for the no-op webhook with the bench's serving certificate.
fn noop_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One round's figures, by subject.
struct Row {
    sanctum: Figures,
    noop: Figures,
    none: Figures,
}

impl Row {
    fn get(&self, subject: Subject) -> &Figures {
        match subject {
            Subject::Sanctum => &self.sanctum,
            Subject::Noop => &self.noop,
            Subject::None => &self.none,
        }
    }
}

async fn rounds(client: &Client, args: &Args, operator_pid: u32) -> Result<()> {
    wait_for_webhook(client).await?;
    let n = args.pods;
    let mut rows: Vec<Row> = Vec::new();
    let all = [Subject::Sanctum, Subject::Noop, Subject::None];
    for round in 0..args.rounds {
        // Rotate the order so no subject always follows the same one's clean-up.
        let mut figures: Vec<(Subject, Figures)> = Vec::new();
        for k in 0..all.len() {
            let subject = all[(round + k) % all.len()];
            figures.push((subject, burst(client, args, subject, operator_pid).await?));
        }
        let take =
            |s: Subject| figures.iter().find(|f| f.0 == s).map(|f| f.1.clone()).unwrap_or_default();
        let row = Row {
            sanctum: take(Subject::Sanctum),
            noop: take(Subject::Noop),
            none: take(Subject::None),
        };
        println!("round {round}:");
        print_round("sanctum", &row.sanctum, n);
        print_round("no-op", &row.noop, n);
        print_round("none", &row.none, n);
        if row.sanctum.injected != row.sanctum.created {
            println!(
                "  WARNING: {} of {} pods were not injected",
                row.sanctum.created - row.sanctum.injected,
                row.sanctum.created
            );
        }
        rows.push(row);
    }
    type Figure<'a> = dyn Fn(&Figures) -> f64 + 'a;
    let med = |g: &Figure<'_>, s: Subject| median(rows.iter().map(|r| g(r.get(s))).collect());
    let ratio = |g: &Figure<'_>, a: Subject, b: Subject| {
        median(rows.iter().map(|r| g(r.get(a)) / g(r.get(b))).collect())
    };
    println!(
        "\n{n} pods, medians over {} rounds; ratios are medians of per-round ratios. \
         sanctum: the shipped webhook and policy; no-op: a webhook that admits unchanged; none: no webhook",
        args.rounds
    );
    println!(
        "  {:34} {:>9} {:>9} {:>9} {:>13} {:>13}",
        "figure", "sanctum", "no-op", "none", "sanctum/none", "sanctum/no-op"
    );
    let figures: [(&str, &Figure<'_>); 5] = [
        ("scale → last pod, ms", &|f| f.last_pod_ms),
        ("pod POST p50, ms (API server)", &|f| f.pod_create_p50),
        ("pod POST p99, ms (API server)", &|f| f.pod_create_p99),
        ("API server CPU per pod, ms", &|f| f.apiserver_cpu_s * 1e3 / n as f64),
        ("webhook call p50, ms (API server)", &|f| f.webhook_p50),
    ];
    for (label, g) in figures {
        println!(
            "  {label:34} {:>9.2} {:>9.2} {:>9.2} {:>12.2}× {:>12.2}×",
            med(g, Subject::Sanctum),
            med(g, Subject::Noop),
            med(g, Subject::None),
            ratio(g, Subject::Sanctum, Subject::None),
            ratio(g, Subject::Sanctum, Subject::Noop),
        );
    }
    let hook_only: [(&str, &Figure<'_>); 5] = [
        ("webhook call p99, ms (API server)", &|f| f.webhook_p99),
        ("operator CPU per review, ms", &|f| f.operator_cpu_s * 1e3 / f.webhook_calls.max(1.0)),
        ("connections opened to the webhook", &|f| f.connections as f64),
        ("webhook calls", &|f| f.webhook_calls),
        ("pods not injected", &|f| (f.created - f.injected) as f64),
    ];
    for (label, g) in hook_only {
        println!("  {label:34} {:>9.2} {:>9.2}", med(g, Subject::Sanctum), med(g, Subject::Noop));
    }
    println!(
        "  (the API server's webhook histogram has buckets at 5, 25, 100 ms: a figure under 5 ms is an interpolation inside the first bucket)"
    );
    Ok(())
}
