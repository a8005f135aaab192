//! Sanctum on a node that runs pods for real: `helm install` of the chart with the images
//! built here, then ScannerRuns and an injected Deployment whose Claude Code calls go
//! through bridge → forwarder → gateway → provider, the NetworkPolicy enforced, and runs that
//! fail for real reasons.
//!
//! Runs on any cluster `KUBECONFIG` names whose nodes have the images (see
//! `sanctum_e2e::install`). The cases of `operator.rs` that write pod status themselves stay
//! there: a real node cannot produce a chosen kubelet state on demand (a summary that is not
//! JSON, a pod deleted mid-run at a chosen moment, an API server restart between two status
//! writes).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sanctum_e2e::install::{Install, ORG, image, restricted_container, restricted_pod};
use sanctum_e2e::*;
use sanctum_operator::crd::{Phase, ScannerRun};
use serde_json::json;

/// Operator config for the tests: every namespace's tenants belong to one org.
const EXTRA_VALUES: &str = r#"
operator:
  config:
    tenancy:
      defaultOrg: acme
"#;

/// A read-only "repository" for a run: a hostPath PersistentVolume bound to a claim.
async fn repo_claim(ns: &str, dir: &std::path::Path) -> PvGuard {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("README.md"), "# a repository under review\n").unwrap();
    host_claim(ns, "repo", dir, "ReadOnlyMany")
}

/// A hostPath PersistentVolume for `dir` (which must exist), bound to claim `claim` of `ns`.
fn host_claim(ns: &str, claim: &str, dir: &std::path::Path, mode: &str) -> PvGuard {
    let name = format!("{ns}-{claim}");
    kubectl_apply(
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": dir.to_str().unwrap(), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": claim},
            },
        })
        .to_string(),
    );
    kubectl_apply(
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "accessModes": [mode],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        })
        .to_string(),
    );
    PvGuard { name }
}

/// Deletes the PersistentVolume (cluster-scoped: no namespace takes it along). With kubectl,
/// not the test's client: its connection task lives on the runtime a panicking test blocks.
struct PvGuard {
    name: String,
}

impl Drop for PvGuard {
    fn drop(&mut self) {
        let _ = kubectl().args(["delete", "pv", &self.name, "--wait=false"]).output();
    }
}

fn scanner_run(name: &str, ns: &str, spec: serde_json::Value) -> ScannerRun {
    let mut run = json!({
        "apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": image("sanctum-agent"),
            "orgId": ORG,
            "source": {"volume": {"claimName": "repo"}},
            "agent": {"model": "claude-sonnet-4-5", "prompt": "Say hello."},
            "timeoutSeconds": 300,
            "identity": {"source": "serviceAccountToken"},
        },
    });
    let spec_obj = run["spec"].as_object_mut().unwrap();
    for (k, v) in spec.as_object().unwrap() {
        spec_obj.insert(k.clone(), v.clone());
    }
    serde_json::from_value(run).unwrap()
}

/// Waits until the run reaches a final phase; its status then.
async fn wait_finished(
    cluster: &Cluster,
    install: &Install,
    runs: &Api<ScannerRun>,
    name: &str,
    timeout: Duration,
) -> ScannerRun {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let run = runs.get(name).await.unwrap();
        let phase = run.status.as_ref().and_then(|s| s.phase);
        if matches!(phase, Some(Phase::Succeeded | Phase::Failed)) {
            return run;
        }
        if std::time::Instant::now() > deadline {
            let ns = run.metadata.namespace.clone().unwrap();
            panic!(
                "run {ns}/{name} not finished in {timeout:?}: {}\n{}",
                serde_json::to_string(&run.status).unwrap(),
                install.describe(cluster, &ns, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn sanctum_runs_for_real() {
    let _guard = SERIAL.lock().await;
    let Some(cluster) = Cluster::connect().await else { return };
    let install = Install::new(&cluster, EXTRA_VALUES).await;
    scanner_run_succeeds_through_the_whole_chain(&cluster, &install).await;
    the_reference_scanner_reviews_the_example_repository(&cluster, &install).await;
    injected_deployment_calls_through_the_chain(&cluster, &install).await;
    network_policy_is_enforced(&cluster, &install).await;
    quotas_and_newer_fields(&cluster, &install).await;
    real_failures_end_runs_with_their_reason(&cluster, &install).await;
}

/// A ScannerRun with the agent image: write-trat, the sidecars in order, the bridge's
/// startup probe, Claude Code's call through the chain, the summary in `status.result`, the
/// sidecars gone within seconds of the agent, the Localhost seccomp profile.
async fn scanner_run_succeeds_through_the_whole_chain(cluster: &Cluster, install: &Install) {
    let ns =
        cluster.namespace("run", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let _pv = repo_claim(&ns.name, &install.dir.path().join("repo-ok")).await;
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    runs.create(&PostParams::default(), &scanner_run("hello", &ns.name, json!({}))).await.unwrap();
    let started = std::time::Instant::now();
    let run = wait_finished(cluster, install, &runs, "hello", Duration::from_secs(180)).await;
    let status = run.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "{}\n{}",
        serde_json::to_string(&status).unwrap(),
        install.describe(cluster, &ns.name, "hello").await
    );
    eprintln!("e2e: kubectl apply -> Succeeded in {:.1} s", started.elapsed().as_secs_f64());
    let result = status.result.expect("the agent's termination summary is in status.result");
    assert!(result.cost_usd >= 0.0);

    let pod_name = status.pod_name.unwrap();
    let pod =
        Api::<Pod>::namespaced(cluster.client.clone(), &ns.name).get(&pod_name).await.unwrap();
    let spec = pod.spec.clone().unwrap();
    let seccomp = spec.security_context.unwrap().seccomp_profile.unwrap();
    assert_eq!(seccomp.type_, "Localhost");
    assert_eq!(seccomp.localhost_profile.as_deref(), Some("sanctum/scanner.json"));
    let pod_status = pod.status.unwrap();
    let inits = pod_status.init_container_statuses.unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["write-trat", "sanctum-forwarder", "sanctum-bridge"]);
    let terminated = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .unwrap_or_else(|| panic!("{} has not terminated: {:?}", c.name, c.state))
    };
    assert_eq!(terminated(&inits[0]).exit_code, 0, "write-trat");
    let agent = terminated(&pod_status.container_statuses.unwrap()[0]);
    assert_eq!(agent.exit_code, 0);
    let agent_end = agent.finished_at.unwrap().0;
    for sidecar in &inits[1..] {
        let end = terminated(sidecar).finished_at.unwrap().0;
        let after = end.as_second() - agent_end.as_second();
        assert!(after <= 10, "{} outlived the agent by {after} s", sidecar.name);
    }

    // The gateway saw the run (its audit line names the run and the org) and added the
    // org's key: the stand-in refuses any request without it, or with the placeholder.
    let audit = install.gateway_log(cluster).await;
    let uid = run.metadata.uid.unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains(&uid) && l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("no audit line with run {uid} and status 200:\n{audit}"));
    assert!(line.contains(ORG), "{line}");
}

/// The reference scanner (Claude Code with read-only tools and its `report_finding` MCP tool)
/// reviews `examples/vulnerable-app` against the stand-in's scripted review: the run ends
/// `Succeeded`, the SARIF is on the output volume, and `status.result` counts what it holds.
async fn the_reference_scanner_reviews_the_example_repository(
    cluster: &Cluster,
    install: &Install,
) {
    let ns =
        cluster.namespace("review", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let repo = workspace().join("examples/vulnerable-app");
    let _repo = host_claim(&ns.name, "repo", &repo, "ReadOnlyMany");
    // The output is a directory of this machine: readable here only when the node is local.
    let out = install.dir.path().join("review-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let _out = host_claim(&ns.name, "output", &out, "ReadWriteOnce");
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    let run = scanner_run(
        "review",
        &ns.name,
        json!({
            "image": image("sanctum-scanner"),
            "output": {"claimName": "output"},
            "agent": {"model": "claude-sonnet-4-5", "maxTurns": 30},
        }),
    );
    let started = std::time::Instant::now();
    runs.create(&PostParams::default(), &run).await.unwrap();
    let run = wait_finished(cluster, install, &runs, "review", Duration::from_secs(240)).await;
    let status = run.status.unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "{}\n{}",
        serde_json::to_string(&status).unwrap(),
        install.describe(cluster, &ns.name, "review").await
    );
    eprintln!(
        "e2e: the scanner's review, apply -> Succeeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let result = status.result.unwrap();
    assert_eq!(result.sarif.as_deref(), Some("/output/results.sarif"));
    let found = result.findings.critical + result.findings.high + result.findings.medium;
    assert!(found >= 3, "the scripted review reports at least three findings: {result:?}");
    if std::env::var_os("SANCTUM_NODE_NAME").is_some() {
        let sarif: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.sarif")).unwrap())
                .unwrap();
        assert_eq!(sarif["version"], "2.1.0");
        let results = sarif["runs"][0]["results"].as_array().unwrap();
        let count = |sev: &str| {
            results.iter().filter(|r| r["properties"]["severity"] == sev).count() as u32
        };
        let f = &result.findings;
        assert_eq!(
            [f.critical, f.high, f.medium, f.low, f.note],
            [count("critical"), count("high"), count("medium"), count("low"), count("note")],
            "status.result counts what the SARIF holds"
        );
        for r in results {
            let uri =
                r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap();
            assert!(repo.join(uri).is_file(), "{uri} is a file of the repository");
        }
    }
}

/// A Deployment annotated `sanctum.dev/inject: "true"` gets the sidecars and a TraT from the
/// token service, and its agent's call goes through the chain; an unannotated one is
/// untouched.
async fn injected_deployment_calls_through_the_chain(cluster: &Cluster, install: &Install) {
    let ns =
        cluster.namespace("inject", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let deployment = |name: &str, annotate: bool| {
        let labels = json!({"app": name});
        let annotations = if annotate { json!({"sanctum.dev/inject": "true"}) } else { json!({}) };
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": restricted_pod(),
                        "containers": [{
                            "name": "claude",
                            "image": image("sanctum-agent"),
                            "imagePullPolicy": "IfNotPresent",
                            "env": [
                                {"name": "ANTHROPIC_API_KEY", "value": "sk-ant-a-real-key-left-behind"},
                                {"name": "SANCTUM_PROMPT", "value": "Say hello."},
                                {"name": "HOME", "value": "/home/agent"},
                            ],
                            "securityContext": restricted_container(),
                            "volumeMounts": [
                                {"name": "home", "mountPath": "/home/agent"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }],
                        "volumes": [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        })
        .to_string()
    };
    kubectl_apply(&deployment("agent", true));
    kubectl_apply(&deployment("plain", false));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let injected =
        wait_for("the injected agent to finish a turn", Duration::from_secs(180), || async {
            let list = pods.list(&ListParams::default().labels("app=agent")).await.ok()?;
            let pod = list.items.into_iter().next()?;
            let statuses = pod.status.as_ref()?.container_statuses.clone()?;
            let agent = statuses.iter().find(|c| c.name == "claude")?;
            // The container exits after one turn (and the Deployment restarts it).
            let done = agent
                .state
                .as_ref()
                .and_then(|s| s.terminated.clone())
                .or_else(|| agent.last_state.as_ref().and_then(|s| s.terminated.clone()))?;
            Some((pod, done))
        })
        .await;
    let (pod, done) = injected;
    assert_eq!(
        done.exit_code,
        0,
        "the agent's turn failed: {:?}\n{}",
        done.message,
        install.describe(cluster, &ns.name, "agent").await
    );
    let summary: serde_json::Value =
        serde_json::from_str(done.message.as_deref().unwrap_or("{}")).unwrap();
    assert!(summary.get("error").is_none(), "{summary}");
    let annotations = pod.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["sanctum.dev/status"], "injected");
    let spec = pod.spec.unwrap();
    let env = spec.containers[0].env.clone().unwrap();
    let key = env.iter().find(|e| e.name == "ANTHROPIC_API_KEY").unwrap();
    assert_eq!(key.value.as_deref(), Some("gateway-injected"), "the real key was replaced");

    let plain = wait_for("the plain pod", Duration::from_secs(30), || async {
        pods.list(&ListParams::default().labels("app=plain")).await.ok()?.items.into_iter().next()
    })
    .await;
    assert!(plain.spec.unwrap().init_containers.is_none(), "an unannotated pod is untouched");
    let audit = install.gateway_log(cluster).await;
    assert!(audit.contains(&ns.name), "the gateway's audit names the namespace:\n{audit}");
    let _ = Api::<Deployment>::namespaced(cluster.client.clone(), &ns.name)
        .delete("agent", &DeleteParams::default())
        .await;
}

/// From a scanner pod, a connection to another pod is refused; the gateway is reachable.
async fn network_policy_is_enforced(cluster: &Cluster, install: &Install) {
    let ns =
        cluster.namespace("netpol", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let _pv = repo_claim(&ns.name, &install.dir.path().join("repo-netpol")).await;
    // Another pod in the cluster: the stand-in provider, reachable by anyone else.
    let standin = format!("sanctum-standin.{}.svc.cluster.local:8080", install.gateway_ns.name);
    let gateway =
        format!("{}-gateway.{}.svc.cluster.local:8443", install.release, install.gateway_ns.name);
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    let run = scanner_run(
        "probe",
        &ns.name,
        json!({"command": ["sanctum-agent", "probe", &gateway, &standin]}),
    );
    runs.create(&PostParams::default(), &run).await.unwrap();
    let run = wait_finished(cluster, install, &runs, "probe", Duration::from_secs(120)).await;
    let status = run.status.unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "{}",
        serde_json::to_string(&status.message).unwrap()
    );
    let pod = Api::<Pod>::namespaced(cluster.client.clone(), &ns.name)
        .get(status.pod_name.as_deref().unwrap())
        .await
        .unwrap();
    let message = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap()
        .message
        .unwrap();
    let probes: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_eq!(probes["probes"][&gateway], "connected", "{probes}");
    assert_ne!(probes["probes"][&standin], "connected", "{probes}");
}

/// An agent out of memory, a run past its timeout, an image that is not there.
async fn real_failures_end_runs_with_their_reason(cluster: &Cluster, install: &Install) {
    let ns =
        cluster.namespace("fail", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let _pv = repo_claim(&ns.name, &install.dir.path().join("repo-fail")).await;
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cases = [
        (
            "oom",
            json!({"command": ["sanctum-agent", "eat-memory"],
                   "resources": {"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}}}),
            "OOMKilled",
        ),
        (
            "late",
            json!({"command": ["sanctum-agent", "sleep", "600"], "timeoutSeconds": 5}),
            "DeadlineExceeded",
        ),
        ("noimage", json!({"image": image("sanctum-no-such-image")}), "ImagePullFailed"),
    ];
    for (name, spec, _) in &cases {
        runs.create(&PostParams::default(), &scanner_run(name, &ns.name, spec.clone()))
            .await
            .unwrap();
    }
    for (name, _, reason) in cases {
        let run = wait_finished(cluster, install, &runs, name, Duration::from_secs(180)).await;
        let status = run.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Failed), "{name}");
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready" || c.type_ == "Completed");
        let reasons: Vec<String> = status.conditions.iter().map(|c| c.reason.clone()).collect();
        assert!(
            reasons.iter().any(|r| r == reason),
            "{name}: expected reason {reason}, got {reasons:?} ({ready:?})"
        );
    }
}

/// Field reports on the real API server: an injected pod keeps a field newer than our types
/// (`env[].valueFrom.fileKeyRef`), a ResourceQuota on `limits.cpu` admits injected pods (every
/// container Sanctum adds has limits), and a run whose pod the quota refuses waits with a
/// condition that quotes the API server, without rewriting its objects.
async fn quotas_and_newer_fields(cluster: &Cluster, install: &Install) {
    let ns =
        cluster.namespace("quota", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    kubectl_apply(
        &json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "limits", "namespace": ns.name},
            "spec": {"hard": {"limits.cpu": "4", "limits.memory": "4Gi", "pods": "1"}},
        })
        .to_string(),
    );
    let resources = json!({"requests": {"cpu": "50m", "memory": "64Mi"},
                           "limits": {"cpu": "500m", "memory": "512Mi"}});
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": ns.name,
                     "annotations": {"sanctum.dev/inject": "true"}},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": restricted_pod(),
            "containers": [{
                "name": "claude",
                "image": image("sanctum-agent"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sanctum-agent", "sleep", "600"],
                // Kubernetes 1.34+: newer than the types the webhook is built with.
                "env": [{"name": "REGION", "valueFrom": {"fileKeyRef": {
                    "volumeName": "env", "path": "app.env", "key": "REGION", "optional": true}}}],
                "resources": resources,
                "securityContext": restricted_container(),
                "volumeMounts": [{"name": "env", "mountPath": "/env"}],
            }],
            "volumes": [{"name": "env", "emptyDir": {}}],
        },
    });
    // kubectl, not our client: its types would drop fileKeyRef on the way back too.
    kubectl_apply(&pod.to_string());
    let out =
        kubectl().args(["get", "pod", "agent", "-n", &ns.name, "-o", "json"]).output().unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["metadata"]["annotations"]["sanctum.dev/status"], "injected");
    let spec = &created["spec"];
    let all = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap());
    for c in all {
        let limits = &c["resources"]["limits"];
        assert!(
            limits["cpu"].is_string() && limits["memory"].is_string(),
            "{} has no limits",
            c["name"]
        );
    }
    let env = spec["containers"][0]["env"].as_array().unwrap();
    let region = env.iter().find(|e| e["name"] == "REGION").unwrap();
    assert_eq!(region["valueFrom"]["fileKeyRef"]["key"], "REGION", "{env:?}");

    // The quota allows one pod, and the agent holds it: a run's pod is refused.
    let _pv = repo_claim(&ns.name, &install.dir.path().join("repo-quota")).await;
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    runs.create(
        &PostParams::default(),
        &scanner_run(
            "waits",
            &ns.name,
            json!({
                "resources": resources,
            }),
        ),
    )
    .await
    .unwrap();
    let condition =
        wait_for("the run to say the quota refused its pod", Duration::from_secs(60), || async {
            let run = runs.get("waits").await.ok()?;
            let status = run.status?;
            status.conditions.into_iter().find(|c| c.reason == "QuotaExceeded")
        })
        .await;
    assert!(condition.message.contains("exceeded quota"), "{condition:?}");
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    let before = policies.get("waits-scanner").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = policies.get("waits-scanner").await.unwrap().metadata.resource_version;
    assert_eq!(before, after, "the NetworkPolicy is not rewritten while the run waits");
    let run = runs.get("waits").await.unwrap();
    assert_eq!(run.status.unwrap().phase, Some(Phase::Pending));
}
