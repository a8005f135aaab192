//! Harness of the end-to-end suite. It runs against whatever `KUBECONFIG` names: the local
//! control plane of `tests/cluster/` in CI, kind or a real cluster for users. Each test gets
//! a fresh namespace that is deleted afterwards; adding a case is a few lines:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_case() {
//!     let Some(cluster) = Cluster::connect().await else { return };
//!     let ns = cluster.namespace("my-case", &[]).await;
//!     // … create objects in ns.name, then `wait_for` what should follow.
//! }
//! ```
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod install;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig, NamedAuthInfo};
use kube::{Client, Config};

/// A serial lock: the tests start operators that watch the whole cluster, so two at once
/// would reconcile each other's runs.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Whether a missing cluster or tool is a failure (CI) rather than a skip.
pub fn required() -> bool {
    std::env::var("SANCTUM_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!required(), "e2e: {why} (SANCTUM_REQUIRE_ALL=1, so this is a failure)");
    eprintln!("e2e: SKIPPED: {why}");
}

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: Kubeconfig,
}

/// A path of a binary of this workspace (`cargo build --workspace --bins` first).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SANCTUM_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from)
            .join("debug")
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (or set SANCTUM_BIN_DIR)",
        path.display()
    );
    path
}

pub fn kubectl() -> Command {
    let kubectl = std::env::var_os("SANCTUM_KUBECTL").unwrap_or_else(|| "kubectl".into());
    Command::new(kubectl)
}

impl Cluster {
    /// The cluster `KUBECONFIG` names, or `None` (after saying why) when there is none.
    pub async fn connect() -> Option<Self> {
        let kubeconfig = match Kubeconfig::read() {
            Ok(k) => k,
            Err(e) => {
                skip(&format!("no kubeconfig ({e}); start one with tests/cluster/cluster.sh up"));
                return None;
            }
        };
        let config =
            match Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    skip(&format!("kubeconfig unusable: {e}"));
                    return None;
                }
            };
        let client = Client::try_from(config).unwrap();
        if let Err(e) = client.apiserver_version().await {
            skip(&format!("the API server in KUBECONFIG does not answer: {e}"));
            return None;
        }
        Some(Self { client, kubeconfig })
    }

    /// A fresh namespace `sanctum-e2e-<prefix>-<random>`, deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
        let suffix: u32 =
            std::process::id() ^ (Instant::now().elapsed().subsec_nanos()) ^ rand_u32();
        let name = format!("e2e-{prefix}-{:06x}", suffix & 0xff_ffff);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        // The namespace controller's serviceaccount controller makes `default` soon after.
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_for("the default ServiceAccount", Duration::from_secs(30), || async {
            sas.get_opt("default").await.ok().flatten()
        })
        .await;
        TestNamespace { name, kubeconfig: self.kubeconfig.clone() }
    }

    /// Applies the CRD from `crds/` and waits until it is established.
    pub async fn install_crd(&self) {
        let text = std::fs::read_to_string(workspace().join("crds/scannerrun.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        api.patch(
            "scannerruns.sanctum.dev",
            &PatchParams::apply("sanctum-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        wait_for("the ScannerRun CRD to be established", Duration::from_secs(30), || async {
            let crd = api.get("scannerruns.sanctum.dev").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }

    /// Applies the operator's namespace, ServiceAccount and RBAC from `manifests/` — only
    /// what Sanctum ships, so the operator runs with exactly those rights.
    pub fn install_operator_rbac(&self) {
        let text =
            std::fs::read_to_string(workspace().join("manifests/operator-rbac.yaml")).unwrap();
        kubectl_apply(&text);
    }

    /// A kubeconfig that authenticates as `namespace/service_account` with a token from the
    /// TokenRequest API (works on any cluster, not only the local one).
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
        dir: &Path,
    ) -> PathBuf {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .unwrap();
        let token = token.status.unwrap().token;
        let mut kubeconfig = self.kubeconfig.clone();
        let context_name = kubeconfig.current_context.clone().unwrap();
        let user = format!("{namespace}-{service_account}");
        kubeconfig.auth_infos = vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo { token: Some(token.into()), ..Default::default() }),
            other: Default::default(),
        }];
        for ctx in &mut kubeconfig.contexts {
            if ctx.name == context_name
                && let Some(c) = ctx.context.as_mut()
            {
                c.user = Some(user.clone());
            }
        }
        let path = dir.join(format!("{user}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
        path
    }
}

fn rand_u32() -> u32 {
    let mut buf = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    u32::from_le_bytes(buf)
}

/// `kubectl apply --server-side` of a YAML stream, with the current KUBECONFIG.
pub fn kubectl_apply(yaml: &str) {
    let mut child = kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=sanctum-e2e",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is missing: set SANCTUM_KUBECTL or put kubectl on PATH");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct TestNamespace {
    pub name: String,
    kubeconfig: Kubeconfig,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        // Drop cannot await: delete from a runtime of its own, on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let config =
                    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await
                        .ok()?;
                let client = Client::try_from(config).ok()?;
                Api::<Namespace>::all(client).delete(&name, &DeleteParams::default()).await.ok()
            })
        })
        .join();
    }
}

/// Polls `check` every 200 ms until it gives `Some`, or panics naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// `sanctum-operator run` as a child process, killed when dropped.
pub struct Operator {
    child: Child,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator with `kubeconfig` and waits until `/readyz` answers ok.
    pub async fn start(kubeconfig: &Path, config_yaml: &str, dir: &Path) -> Self {
        let config = dir.join("operator-config.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join("operator.log");
        let child = Command::new(bin("sanctum-operator"))
            .args(["run", "--config"])
            .arg(&config)
            .arg(format!("--admin-listen={admin}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("SANCTUM_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut operator = Self { child, admin, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = operator.child.try_wait().unwrap() {
                panic!("sanctum-operator exited ({status}) at start:\n{}", operator.log_text());
            }
            if http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200) {
                return operator;
            }
            assert!(
                Instant::now() < deadline,
                "sanctum-operator not ready in 30 s:\n{}",
                operator.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGTERM, then the exit status (graceful shutdown).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
