//! The operator against a real API server: CRD and CEL rules, the run lifecycle with the
//! test playing the kubelet, Events, garbage collection, an API server restart, and the
//! API server's own Pod Security admission judging the pods.
//!
//! These cases write pod status themselves, because a real node cannot produce the state on
//! demand: a termination message that is not JSON or too large, an exit at a chosen moment
//! between two status writes, a pod deleted mid-run, an API server restart while a run is
//! Running. Their pods carry a node selector no node matches, so a real kubelet (the local
//! cluster has one) never runs them. `pods.rs` proves the same lifecycle with real pods
//! (Succeeded with the summary, OOMKilled, DeadlineExceeded, a missing image).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use sanctum_common::TratClaims;
use sanctum_e2e::*;
use sanctum_operator::crd::{Phase, ScannerRun};
use sanctum_operator::tokens::Signer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const LONGER: Duration = Duration::from_secs(120);
const SUMMARY: &str = r#"{"findings":{"critical":1,"high":2,"medium":0,"low":3,"note":0},"costUsd":0.37,"sarif":"/output/results.sarif"}"#;

fn run_json(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "ghcr.io/sanctum-dev/claude-scanner:1.0.0", "orgId": "acme",
            "source": {"volume": {"claimName": "repo"}},
            "agent": {"model": "claude-sonnet-4-5", "prompt": "review"},
            "identity": {"source": "serviceAccountToken"},
            "timeoutSeconds": 600
        }
    })
}

async fn create_run(client: &Client, value: Value) -> Result<ScannerRun, kube::Error> {
    let run: ScannerRun = serde_json::from_value(value).unwrap();
    let api: Api<ScannerRun> =
        Api::namespaced(client.clone(), run.metadata.namespace.as_deref().unwrap());
    api.create(&PostParams::default(), &run).await
}

/// The operator as its own ServiceAccount with only the shipped RBAC, with a signing key.
async fn operator(cluster: &Cluster, dir: &Path) -> Operator {
    cluster.install_operator_rbac();
    let kubeconfig =
        cluster.service_account_kubeconfig("sanctum-system", "sanctum-operator", dir).await;
    let key = dir.join("signing-key.pem");
    std::fs::write(&key, Signer::generate_pem().unwrap()).unwrap();
    // The test plays the kubelet: a node selector no node matches keeps a real node (the
    // local cluster has one) from running these pods and writing their status too.
    let config = format!(
        "trat:\n  signingKeyFile: {}\npod:\n  seccompLocalhostProfile: null\n  nodeSelector:\n    sanctum.dev/e2e-node: simulated\ntenancy:\n  defaultOrg: acme\n",
        key.display()
    );
    Operator::start(&kubeconfig, &config, dir).await
}

async fn setup() -> Option<(tokio::sync::MutexGuard<'static, ()>, Cluster)> {
    let guard = SERIAL.lock().await;
    let cluster = Cluster::connect().await?;
    cluster.install_crd().await;
    Some((guard, cluster))
}

async fn wait_phase(runs: &Api<ScannerRun>, name: &str, phase: Phase) -> ScannerRun {
    wait_for(&format!("ScannerRun {name} to reach {phase:?}"), LONGER, || async {
        runs.get(name).await.ok().filter(|r| r.phase() == Some(phase))
    })
    .await
}

/// Plays the kubelet: writes the pod's status.
async fn set_pod_status(pods: &Api<Pod>, name: &str, status: Value) {
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
        .await
        .unwrap();
}

fn scanner_state(state: Value) -> Value {
    json!([{"name": "scanner", "image": "ghcr.io/sanctum-dev/claude-scanner:1.0.0", "imageID": "", "ready": false, "restartCount": 0, "state": state}])
}

fn running() -> Value {
    json!({"phase": "Running", "startTime": "2026-11-22T10:00:00Z",
        "containerStatuses": scanner_state(json!({"running": {"startedAt": "2026-11-22T10:00:05Z"}}))})
}

fn terminated(phase: &str, exit_code: i32, reason: &str, message: &str) -> Value {
    json!({"phase": phase, "startTime": "2026-11-22T10:00:00Z",
        "containerStatuses": scanner_state(json!({"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
            "startedAt": "2026-11-22T10:00:05Z", "finishedAt": "2026-11-22T10:04:00Z"}}))})
}

async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

fn condition_reason(run: &ScannerRun, type_: &str) -> Option<String> {
    run.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone())
}

#[tokio::test]
async fn crd_is_served_and_explained() {
    let Some((_guard, cluster)) = setup().await else { return };
    // The API server publishes a new CRD's OpenAPI a few seconds after it is established.
    let text = wait_for("kubectl explain scannerrun.spec", WAIT, || async {
        let out = kubectl().args(["explain", "scannerrun.spec"]).output().expect("kubectl");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    for field in ["image", "orgId", "source", "identity", "timeoutSeconds"] {
        assert!(text.contains(field), "kubectl explain lacks {field}:\n{text}");
    }
    let out = kubectl().args(["get", "sr", "-A"]).output().unwrap();
    assert!(
        out.status.success(),
        "the short name sr is served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(cluster);
}

#[tokio::test]
async fn cel_rules_refuse_bad_runs_with_their_messages() {
    let Some((_guard, cluster)) = setup().await else { return };
    let ns = cluster.namespace("cel", &[]).await;
    let bad = |patch: fn(&mut Value)| {
        let mut v = run_json("bad", &ns.name);
        patch(&mut v);
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (bad(|v| v["spec"]["source"] = json!({})), "source must set exactly one of git or volume"),
        (
            bad(|v| v["spec"]["source"]["git"] = json!({"url": "https://x/y.git"})),
            "source must set exactly one of git or volume",
        ),
        (
            bad(|v| v["spec"]["timeoutSeconds"] = json!(0)),
            "timeoutSeconds must be a positive number of seconds",
        ),
        (bad(|v| v["spec"]["orgId"] = json!("Acme Corp")), "orgId must be 1-63 lower-case letters"),
        (
            bad(|v| v["spec"]["image"] = json!("has space")),
            "image must be a non-empty image reference",
        ),
        (
            bad(|v| v["spec"]["gateway"] = json!("ftp://gw")),
            "gateway must be an http:// or https:// URL",
        ),
        (bad(|v| v["spec"]["agent"]["maxTurns"] = json!(-1)), "agent.maxTurns must be positive"),
        (
            bad(|v| v["metadata"]["name"] = json!("a".repeat(56))),
            "ScannerRun names are at most 55 characters",
        ),
        (bad(|v| v["spec"]["identity"]["source"] = json!("magic")), "Unsupported value: \"magic\""),
    ];
    // Raw JSON through kubectl: a typed client could not even express the unknown values.
    for (value, message) in cases {
        let mut child = kubectl()
            .args(["create", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(value.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the API server accepted {value}");
        assert!(stderr.contains(message), "expected {message:?} in:\n{stderr}");
    }

    // The spec is immutable once created.
    let runs: Api<ScannerRun> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_run(&cluster.client, run_json("good", &ns.name)).await.unwrap();
    let err = runs
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "ghcr.io/other/image:2"}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec is immutable"), "{err}");
}

#[tokio::test]
async fn run_lifecycle_with_results_events_and_revocation() {
    let Some((_guard, cluster)) = setup().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(&cluster, dir.path()).await;
    // The API server's Pod Security admission judges the pod the operator builds.
    let ns =
        cluster.namespace("run", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let client = cluster.client.clone();
    let runs: Api<ScannerRun> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let created = create_run(&client, run_json("review", &ns.name)).await.unwrap();
    let uid = created.uid().unwrap();

    let run = wait_phase(&runs, "review", Phase::Pending).await;
    assert_eq!(run.status.as_ref().unwrap().pod_name.as_deref(), Some("review-scanner"));
    let pod = pods.get("review-scanner").await.unwrap();
    let secret =
        Api::<Secret>::namespaced(client.clone(), &ns.name).get("review-sanctum").await.unwrap();
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name)
        .get("review-scanner")
        .await
        .unwrap();
    for owners in [pod.owner_references(), secret.owner_references(), policy.owner_references()] {
        assert!(
            owners.iter().any(|o| o.uid == uid && o.controller == Some(true)),
            "owned by the run: {owners:?}"
        );
    }
    assert_eq!(pod.labels().get("sanctum.dev/run").map(String::as_str), Some("review"));
    let managers: Vec<_> = pod.managed_fields().iter().filter_map(|f| f.manager.clone()).collect();
    assert!(
        managers.iter().any(|m| m == "sanctum-operator"),
        "applied with the operator's field manager: {managers:?}"
    );

    // The TraT in the Secret verifies against the JWKS the running operator serves.
    let (status, jwks) = http_get(op.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200);
    let jwks: JwkSet = serde_json::from_str(&jwks).unwrap();
    let token = String::from_utf8(secret.data.unwrap()["trat.jwt"].0.clone()).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["sanctum-gateway"]);
    let claims = jsonwebtoken::decode::<TratClaims>(
        &token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.txn, uid);
    assert_eq!(claims.sub, format!("system:serviceaccount:{}:default", ns.name));

    set_pod_status(&pods, "review-scanner", running()).await;
    let run = wait_phase(&runs, "review", Phase::Running).await;
    assert_eq!(condition_reason(&run, "Started").as_deref(), Some("Started"));

    set_pod_status(&pods, "review-scanner", terminated("Succeeded", 0, "Completed", SUMMARY)).await;
    let run = wait_phase(&runs, "review", Phase::Succeeded).await;
    let status = run.status.unwrap();
    let result = status.result.unwrap();
    assert_eq!((result.findings.critical, result.findings.high, result.findings.low), (1, 2, 3));
    assert_eq!(result.cost_usd, 0.37);
    assert_eq!(status.findings.as_deref(), Some("C1 H2 M0 L3 N0"));
    assert!(status.completion_time.is_some());

    let reasons = wait_for("the run's Events", WAIT, || async {
        let r = event_reasons(&client, &ns.name, "review").await;
        ["Created", "Running", "Succeeded"].iter().all(|x| r.iter().any(|y| y == x)).then_some(r)
    })
    .await;
    assert!(!reasons.iter().any(|r| r == "MissingSummary"));

    let (_, revoked) = http_get(op.admin, "/revoked").unwrap();
    assert!(revoked.contains(&uid), "the ended run's txn is revoked: {revoked}");
    let (_, metrics) = http_get(op.admin, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "sanctum_operator_run_transitions_total{phase=\"Succeeded\",reason=\"Succeeded\"} 1"
        ),
        "{metrics}"
    );

    // Graceful shutdown on SIGTERM.
    let exit = op.terminate().expect("the operator stops within 15 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}:\n{}", op.log_text());
}

#[tokio::test]
async fn failures_have_reasons_a_person_can_act_on() {
    let Some((_guard, cluster)) = setup().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _op = operator(&cluster, dir.path()).await;
    let ns = cluster.namespace("fail", &[]).await;
    let client = cluster.client.clone();
    let runs: Api<ScannerRun> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let cases = [
        ("oom", terminated("Failed", 137, "OOMKilled", ""), "OOMKilled"),
        ("crash", terminated("Failed", 3, "Error", "not json"), "ScannerFailed"),
        (
            "late",
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline"}),
            "DeadlineExceeded",
        ),
    ];
    for (name, _, _) in &cases {
        create_run(&client, run_json(name, &ns.name)).await.unwrap();
    }
    for (name, status, reason) in cases {
        wait_phase(&runs, name, Phase::Pending).await;
        set_pod_status(&pods, &format!("{name}-scanner"), status).await;
        let run = wait_phase(&runs, name, Phase::Failed).await;
        assert_eq!(condition_reason(&run, "Finished").as_deref(), Some(reason), "{name}");
        wait_for(&format!("a {reason} Event"), WAIT, || async {
            event_reasons(&client, &ns.name, name).await.iter().any(|r| r == reason).then_some(())
        })
        .await;
    }
    let crash = runs.get("crash").await.unwrap();
    assert_eq!(condition_reason(&crash, "ResultRecorded").as_deref(), Some("MalformedSummary"));

    // A pod deleted from under a running run fails it, and is not recreated.
    create_run(&client, run_json("gone", &ns.name)).await.unwrap();
    wait_phase(&runs, "gone", Phase::Pending).await;
    pods.delete(
        "gone-scanner",
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
    )
    .await
    .unwrap();
    let run = wait_phase(&runs, "gone", Phase::Failed).await;
    assert_eq!(condition_reason(&run, "Finished").as_deref(), Some("PodDeleted"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pods.get_opt("gone-scanner").await.unwrap().is_none(), "not recreated");
}

#[tokio::test]
async fn deleting_a_run_garbage_collects_what_it_owned() {
    let Some((_guard, cluster)) = setup().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _op = operator(&cluster, dir.path()).await;
    let ns = cluster.namespace("gc", &[]).await;
    let client = cluster.client.clone();
    let runs: Api<ScannerRun> = Api::namespaced(client.clone(), &ns.name);
    create_run(&client, run_json("doomed", &ns.name)).await.unwrap();
    wait_phase(&runs, "doomed", Phase::Pending).await;
    runs.delete("doomed", &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the garbage collector to delete the run's pod, Secret and NetworkPolicy",
        Duration::from_secs(90),
        || async {
            let pod = pods.get_opt("doomed-scanner").await.ok()?;
            let secret = secrets.get_opt("doomed-sanctum").await.ok()?;
            let policy = policies.get_opt("doomed-scanner").await.ok()?;
            (pod.is_none() && secret.is_none() && policy.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn operator_survives_an_api_server_restart() {
    let Some((_guard, cluster)) = setup().await else { return };
    let Some(script) = std::env::var_os("SANCTUM_CLUSTER_SCRIPT") else {
        assert!(
            !required(),
            "SANCTUM_CLUSTER_SCRIPT is unset: the local control plane is needed to restart its API server"
        );
        eprintln!(
            "e2e: SKIPPED operator_survives_an_api_server_restart: needs the local control plane (SANCTUM_CLUSTER_SCRIPT)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(&cluster, dir.path()).await;
    let ns = cluster.namespace("restart", &[]).await;
    let client = cluster.client.clone();
    let runs: Api<ScannerRun> = Api::namespaced(client.clone(), &ns.name);
    create_run(&client, run_json("steady", &ns.name)).await.unwrap();
    wait_phase(&runs, "steady", Phase::Pending).await;

    let out =
        std::process::Command::new("bash").arg(&script).arg("restart-apiserver").output().unwrap();
    assert!(
        out.status.success(),
        "restart-apiserver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(op.alive(), "the operator died with the API server:\n{}", op.log_text());

    // Work that happens after the restart still reaches the run.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    set_pod_status(&pods, "steady-scanner", running()).await;
    let seen = tokio::time::timeout(WAIT, wait_phase(&runs, "steady", Phase::Running)).await;
    assert!(
        seen.is_ok(),
        "the run did not follow its pod after the restart; operator log:\n{}",
        op.log_text()
    );
    create_run(&client, run_json("after", &ns.name)).await.unwrap();
    wait_phase(&runs, "after", Phase::Pending).await;
    assert!(op.alive());
}

#[tokio::test]
async fn pod_security_restricted_admits_the_rendered_pod_and_refuses_an_unhardened_one() {
    let Some((_guard, cluster)) = setup().await else { return };
    let ns =
        cluster.namespace("psa", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let text = std::fs::read_to_string(workspace().join("examples/scannerrun-git.yaml")).unwrap();
    let signer = Signer::ephemeral().unwrap();
    let mut config = sanctum_operator::config::OperatorConfig::default();
    config.tenancy.default_org = Some("acme".into());
    config.gateway.allowed_urls = vec!["https://gateway.example.org:8443".into()];
    let (out, _) =
        sanctum_operator::render::render(&text, &config, &signer, 1_800_000_000).unwrap();
    let mut pod: Pod = out
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "Pod")
        .map(|d| serde_json::from_value(d).unwrap())
        .unwrap();
    pod.metadata.namespace = Some(ns.name.clone());
    pod.metadata.owner_references = None;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.expect("PSA restricted admits the scanner pod");

    // The negative control: PSA really enforces in this namespace.
    let plain: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .unwrap();
    let err = pods.create(&PostParams::default(), &plain).await.unwrap_err();
    assert!(err.to_string().contains("violates PodSecurity \"restricted"), "{err}");
}

#[tokio::test]
async fn operator_ignores_objects_it_does_not_own() {
    let Some((_guard, cluster)) = setup().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(&cluster, dir.path()).await;
    let ns = cluster.namespace("foreign", &[]).await;
    let client = cluster.client.clone();
    // A pod with the operator's labels that the operator did not create.
    let foreign: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "impostor-scanner", "labels": {"app.kubernetes.io/managed-by": "sanctum-operator", "sanctum.dev/run": "impostor"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    // And a run whose pod name is taken by it.
    create_run(&client, run_json("impostor", &ns.name)).await.unwrap();
    let runs: Api<ScannerRun> = Api::namespaced(client.clone(), &ns.name);
    let run = wait_phase(&runs, "impostor", Phase::Failed).await;
    assert_eq!(condition_reason(&run, "Provisioned").as_deref(), Some("PodConflict"));
    // The operator keeps working.
    create_run(&client, run_json("honest", &ns.name)).await.unwrap();
    wait_phase(&runs, "honest", Phase::Pending).await;
    assert!(op.alive(), "{}", op.log_text());
}
