//! Sanctum installed with its chart on a cluster that runs pods for real: the operator and
//! its webhook as a pod, the gateway as a pod, and a stand-in provider as a pod, each in a
//! fresh namespace. The images must be on the nodes already (`scripts/images`, then
//! `tests/cluster/cluster.sh load-images target/images` on the local cluster).
//!
//! Knobs (environment):
//! - `SANCTUM_E2E_REGISTRY` (default `ghcr.io/sanctum-dev`), `SANCTUM_E2E_TAG` (default the
//!   workspace version): where the images are;
//! - `SANCTUM_KUBELET_SECCOMP_DIR` (default `/var/lib/kubelet/seccomp`): the nodes' kubelet
//!   seccomp directory, where the chart's DaemonSet installs the profile;
//! - `SANCTUM_HELM`: the helm binary (`tests/cluster/cluster.sh env` names it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};

use crate::{Cluster, TestNamespace, bin, kubectl_apply, wait_for, workspace};

/// The org every test tenant belongs to, and the provider key the gateway adds for it.
pub const ORG: &str = "acme";
pub const ORG_KEY: &str = "sk-e2e-acme-provider-key";

pub fn registry() -> String {
    std::env::var("SANCTUM_E2E_REGISTRY").unwrap_or_else(|_| "ghcr.io/sanctum-dev".into())
}

pub fn tag() -> String {
    std::env::var("SANCTUM_E2E_TAG").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into())
}

/// `<registry>/<name>:<tag>`.
pub fn image(name: &str) -> String {
    format!("{}/{name}:{}", registry(), tag())
}

pub fn helm() -> Command {
    Command::new(std::env::var_os("SANCTUM_HELM").unwrap_or_else(|| "helm".into()))
}

/// Runs `cmd`, panicking with its standard error when it fails; its standard output.
pub fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Install {
    pub release: String,
    /// The operator's namespace (the release's).
    pub ns: TestNamespace,
    /// The gateway's and the stand-in provider's.
    pub gateway_ns: TestNamespace,
    pub dir: tempfile::TempDir,
}

impl Install {
    /// Installs the chart with `extra_values` (YAML merged over the test's own) and waits
    /// until the operator, the gateway, the stand-in and the seccomp DaemonSet are ready.
    pub async fn new(cluster: &Cluster, extra_values: &str) -> Self {
        let ns = cluster.namespace("sanctum", &[]).await;
        let gateway_ns =
            cluster.namespace("gw", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
        let release = format!("s{}", &ns.name[ns.name.len() - 6..]);
        let dir = tempfile::tempdir().unwrap();

        // The TraT signing key and the org's provider key, as a user creates them.
        let key = run({
            let mut c = Command::new(bin("sanctum-operator"));
            c.arg("keygen");
            c
        });
        kubectl_apply(&secret_yaml(&ns.name, "sanctum-trat-signing-key", &[("key.pem", &key)]));
        kubectl_apply(&secret_yaml(&gateway_ns.name, "provider-keys", &[(ORG, ORG_KEY)]));
        kubectl_apply(&standin_yaml(&gateway_ns.name));

        let values = dir.path().join("values.yaml");
        std::fs::write(&values, values_yaml(&gateway_ns.name)).unwrap();
        let extra = dir.path().join("extra-values.yaml");
        std::fs::write(&extra, extra_values).unwrap();
        let mut install = helm();
        install
            .args(["install", &release])
            .arg(workspace().join("charts/sanctum"))
            .args(["--namespace", &ns.name, "--wait=false", "-f"])
            .arg(&values)
            .arg("-f")
            .arg(&extra);
        run(install);
        let me = Self { release, ns, gateway_ns, dir };
        me.wait_ready(cluster).await;
        me
    }

    async fn wait_ready(&self, cluster: &Cluster) {
        let ready = |ns: String, name: String| {
            let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns);
            async move {
                let d = api.get(&name).await.ok()?;
                let want = d.spec.as_ref()?.replicas.unwrap_or(1);
                (d.status?.ready_replicas.unwrap_or(0) >= want).then_some(())
            }
        };
        let deployments = [
            (self.gateway_ns.name.clone(), "sanctum-standin".to_owned()),
            (self.ns.name.clone(), format!("{}-operator", self.release)),
            (self.gateway_ns.name.clone(), format!("{}-gateway", self.release)),
        ];
        for (ns, name) in deployments {
            let wait = |secs| {
                let (ns, name) = (ns.clone(), name.clone());
                tokio::time::timeout(Duration::from_secs(secs), async move {
                    while ready(ns.clone(), name.clone()).await.is_none() {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                })
            };
            if wait(90).await.is_ok() {
                continue;
            }
            // Seen once on the local node: a pod whose address its neighbours could not
            // reach (EHOSTUNREACH) for minutes. Say so loudly, recreate the pods once, and
            // fail if that does not help.
            eprintln!(
                "e2e: WARNING: {ns}/{name} not ready in 90 s; recreating its pods once:\n{}",
                self.describe(cluster, &ns, &name).await
            );
            for (pod_ns, selector) in [
                (self.ns.name.as_str(), "app.kubernetes.io/name=sanctum-operator"),
                (ns.as_str(), "app.kubernetes.io/name=sanctum-gateway"),
            ] {
                let _ = crate::kubectl()
                    .args(["delete", "pod", "-n", pod_ns, "-l", selector, "--wait=false"])
                    .output();
            }
            if wait(120).await.is_err() {
                panic!(
                    "timed out waiting for Deployment {ns}/{name} to be ready:\n{}",
                    self.describe(cluster, &ns, &name).await
                );
            }
        }
        let profile = self.seccomp_dir().join("sanctum/scanner.json");
        wait_for("the seccomp DaemonSet to install the profile", Duration::from_secs(60), || {
            let exists = profile.exists();
            async move { exists.then_some(()) }
        })
        .await;
    }

    /// The kubelet seccomp directory of the (local) node.
    pub fn seccomp_dir(&self) -> PathBuf {
        std::env::var_os("SANCTUM_KUBELET_SECCOMP_DIR")
            .map_or_else(|| PathBuf::from("/var/lib/kubelet/seccomp"), PathBuf::from)
    }

    /// Pods and recent logs of a Deployment's pods, for a failure message.
    pub async fn describe(&self, cluster: &Cluster, ns: &str, name: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
        let mut out = String::new();
        let Ok(list) = pods.list(&ListParams::default()).await else { return out };
        for pod in list
            .items
            .iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(name)))
        {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            out.push_str(&format!(
                "pod {pod_name}: {}\n",
                serde_json::to_string(&pod.status).unwrap_or_default()
            ));
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let params = LogParams {
                    container: Some(c.name.clone()),
                    tail_lines: Some(20),
                    ..Default::default()
                };
                if let Ok(log) = pods.logs(&pod_name, &params).await {
                    out.push_str(&format!("--- {pod_name}/{} log:\n{log}\n", c.name));
                }
            }
        }
        out
    }

    /// The gateway's standard output (its audit lines are there: `--audit-log=-`).
    pub async fn gateway_log(&self, cluster: &Cluster) -> String {
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &self.gateway_ns.name);
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=sanctum-gateway"))
            .await
            .unwrap();
        let mut out = String::new();
        for pod in list.items {
            let name = pod.metadata.name.unwrap_or_default();
            out.push_str(&pods.logs(&name, &LogParams::default()).await.unwrap_or_default());
        }
        out
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // Cluster-wide objects (webhook configuration, policy, ClusterRoles) go with the
        // release; the namespaces go with their guards.
        let _ = helm()
            .args(["uninstall", &self.release, "--namespace", &self.ns.name, "--wait"])
            .args(["--timeout", "60s"])
            .output();
    }
}

fn secret_yaml(ns: &str, name: &str, data: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, serde_json::Value> =
        data.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    })
    .to_string()
}

/// The pod-level securityContext of the test agents (Pod Security `restricted`), as their own
/// UID: the sidecars' 65532 is refused to app containers.
pub fn restricted_pod() -> serde_json::Value {
    serde_json::json!({
        "runAsNonRoot": true,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The hardened securityContext every test pod uses (Pod Security `restricted`).
pub fn restricted_container() -> serde_json::Value {
    serde_json::json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The stand-in Messages API as a pod behind a Service: it refuses any request without the
/// org's real key, and any request that still carries the pod's placeholder.
fn standin_yaml(ns: &str) -> String {
    let labels = serde_json::json!({"app.kubernetes.io/name": "sanctum-standin"});
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sanctum-standin", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "standin",
                        "image": image("sanctum-standin"),
                        "imagePullPolicy": "IfNotPresent",
                        "args": [
                            "--listen", "0.0.0.0:8080", "--any-address",
                            "--require-header", format!("x-api-key: {ORG_KEY}"),
                            "--forbid-value", "gateway-injected",
                        ],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        "securityContext": restricted_container(),
                    }],
                },
            },
        },
    });
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sanctum-standin", "namespace": ns},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]},
    });
    format!("{deployment}\n---\n{service}\n")
}

fn values_yaml(gateway_ns: &str) -> String {
    serde_json::json!({
        "image": {"registry": registry(), "tag": tag(), "pullPolicy": "IfNotPresent"},
        "gateway": {
            "namespace": gateway_ns,
            "createNamespace": false,
            "replicas": 1,
            "upstream": format!("http://sanctum-standin.{gateway_ns}.svc.cluster.local:8080"),
            "providerKeysSecret": "provider-keys",
        },
        "seccomp": {
            "install": true,
            "kubeletSeccompDir": std::env::var("SANCTUM_KUBELET_SECCOMP_DIR")
                .unwrap_or_else(|_| "/var/lib/kubelet/seccomp".into()),
        },
    })
    .to_string()
}
