//! The webhook and the token service against a real API server: the API server calls
//! `sanctum-operator run`'s webhook over TLS (`clientConfig.url` on 127.0.0.1 with its
//! `caBundle`), Pod Security `restricted` judges the injected pods, the
//! ValidatingAdmissionPolicy refuses opted-in pods while the webhook is down, the
//! deployment and replicaset controllers create injected pods, and `sanctum-bridge
//! fetch-trat` trades real TokenRequest tokens at the token service.
//!
//! The webhook configuration and the policy come from `manifests/webhook.yaml`, with the
//! service reference swapped for the loopback URL, unique names, and selectors narrowed to
//! this test's namespaces (so they cannot touch another test's pods). They are cluster-
//! scoped: a guard deletes them even when the test fails.
#![allow(clippy::unwrap_used)]

use sanctum_testkit::tls::ca_and_cert;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use sanctum_common::TratClaims;
use sanctum_e2e::*;
use sanctum_operator::tokens::Signer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Deletes the cluster-scoped objects a test made, also when it panics.
struct ClusterObjects {
    kubeconfig: kube::config::Kubeconfig,
    webhooks: Vec<String>,
    policies: Vec<String>,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        let (kubeconfig, webhooks, policies) =
            (self.kubeconfig.clone(), self.webhooks.clone(), self.policies.clone());
        // Drop cannot await: delete from a runtime of its own, on a thread of its own, with
        // a client of its own (the test's client lives on the test's runtime, blocked here).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let options = kube::config::KubeConfigOptions::default();
                let config =
                    kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.ok()?;
                let client = Client::try_from(config).ok()?;
                let dp = DeleteParams::default();
                for name in &webhooks {
                    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
                    let _ = api.delete(name, &dp).await;
                }
                for name in &policies {
                    let b: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
                    let _ = b.delete(name, &dp).await;
                    let p: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
                    let _ = p.delete(name, &dp).await;
                }
                Some(())
            })
        })
        .join();
    }
}

fn manifest_docs() -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(workspace().join("manifests/webhook.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn only_namespaces(namespaces: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "In".into(),
        values: Some(namespaces.iter().map(|n| (*n).to_owned()).collect()),
    }
}

/// Installs the shipped webhook configuration and policy, pointed at `port`, for
/// `namespaces` only.
async fn install_admission(
    cluster: &Cluster,
    port: u16,
    ca: &str,
    namespaces: &[&str],
    suffix: &str,
) -> ClusterObjects {
    let docs = manifest_docs();
    let by_kind = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
    let name = format!("sanctum-e2e-{suffix}");
    let client = &cluster.client;
    let guard = ClusterObjects {
        kubeconfig: cluster.kubeconfig.clone(),
        webhooks: vec![name.clone()],
        policies: vec![name.clone()],
    };

    let mut mwc: MutatingWebhookConfiguration =
        serde_json::from_value(by_kind("MutatingWebhookConfiguration")).unwrap();
    mwc.metadata.name = Some(name.clone());
    mwc.metadata.annotations = None;
    let ca_bundle = k8s_openapi::ByteString(ca.as_bytes().to_vec());
    for webhook in mwc.webhooks.iter_mut().flatten() {
        let path = webhook.client_config.service.take().unwrap().path.unwrap();
        webhook.client_config.url = Some(format!("https://127.0.0.1:{port}{path}"));
        webhook.client_config.ca_bundle = Some(ca_bundle.clone());
        let selector = webhook.namespace_selector.get_or_insert_with(LabelSelector::default);
        selector.match_expressions.get_or_insert_with(Vec::new).push(only_namespaces(namespaces));
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();

    let mut vap: ValidatingAdmissionPolicy =
        serde_json::from_value(by_kind("ValidatingAdmissionPolicy")).unwrap();
    vap.metadata.name = Some(name.clone());
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &vap)
        .await
        .unwrap();
    let mut binding: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(by_kind("ValidatingAdmissionPolicyBinding")).unwrap();
    binding.metadata.name = Some(name.clone());
    let spec = binding.spec.as_mut().unwrap();
    spec.policy_name = Some(name.clone());
    spec.match_resources = Some(k8s_openapi::api::admissionregistration::v1::MatchResources {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![only_namespaces(namespaces)]),
            ..Default::default()
        }),
        ..Default::default()
    });
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    guard
}

/// A pod that passes Pod Security `restricted` on its own, asking for injection or not.
fn agent_pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "claude", "image": "ghcr.io/example/claude:1",
                "env": [{"name": "ANTHROPIC_API_KEY", "value": "sk-ant-real-key"}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))
    .unwrap()
}

fn is_injected(pod: &Pod) -> bool {
    let marked = pod.annotations().get("sanctum.dev/status").is_some_and(|s| s == "injected");
    let spec = pod.spec.as_ref().unwrap();
    let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    marked && init == ["write-trat", "sanctum-forwarder", "sanctum-bridge"]
}

fn assert_agent_env(pod: &Pod) {
    let agent = &pod.spec.as_ref().unwrap().containers[0];
    let env: Vec<(&str, &str)> = agent
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    assert!(env.contains(&("ANTHROPIC_API_KEY", "gateway-injected")), "{env:?}");
    assert!(env.contains(&("ANTHROPIC_BASE_URL", "http://127.0.0.1:8082")), "{env:?}");
    assert!(!env.iter().any(|(_, v)| v.contains("sk-ant-real")), "the real key is gone: {env:?}");
}

async fn token_for(client: &Client, ns: &str, audience: &str, pod: &Pod) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    sas.create_token_request("default", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// Runs the real `sanctum-bridge fetch-trat`: Ok(TraT) or Err(its standard error).
fn fetch_trat(dir: &Path, port: u16, ca: &str, token: &str) -> Result<String, String> {
    let token_file = dir.join("sa-token");
    let out = dir.join("trat.jwt");
    let _ = std::fs::remove_file(&out);
    std::fs::write(&token_file, token).unwrap();
    let output = std::process::Command::new(bin("sanctum-bridge"))
        .arg("fetch-trat")
        .arg(format!("--token-service=https://127.0.0.1:{port}"))
        .arg(format!("--sa-token-file={}", token_file.display()))
        .arg(format!("--out={}", out.display()))
        .arg("--attempts=2")
        .env("SANCTUM_TOKEN_SERVICE_CA", ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    Ok(std::fs::read_to_string(&out).unwrap())
}

#[tokio::test]
async fn webhook_injects_over_tls_token_service_trades_and_policy_fails_closed() {
    let _guard = SERIAL.lock().await;
    let Some(cluster) = Cluster::connect().await else { return };
    cluster.install_crd().await;
    cluster.install_operator_rbac();
    let client = cluster.client.clone();
    let dir = tempfile::tempdir().unwrap();

    // Namespaces: one annotation opt-in under PSA restricted, one labelled for injection.
    let ns = cluster.namespace("wh", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let labelled = cluster
        .namespace(
            "whns",
            &[
                ("sanctum.dev/injection", "enabled"),
                ("pod-security.kubernetes.io/enforce", "restricted"),
            ],
        )
        .await;

    // The operator as its own ServiceAccount, serving the webhook and token service.
    let (ca, cert, key) = ca_and_cert("sanctum e2e webhook").unwrap();
    for (file, pem) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(dir.path().join(file), pem).unwrap();
    }
    let signing_key = dir.path().join("signing-key.pem");
    std::fs::write(&signing_key, Signer::generate_pem().unwrap()).unwrap();
    let port = free_port();
    let config = format!(
        "trat:\n  signingKeyFile: {key}\nidentity:\n  source: serviceAccountToken\n\
         webhook:\n  listen: 127.0.0.1:{port}\n  tlsCertFile: {cert}\n  tlsKeyFile: {tlskey}\n  caBundleFile: {ca}\n  tokenServiceUrl: https://127.0.0.1:{port}\n\
         tokenService:\n  namespaces:\n    {ns}: {{orgId: acme, budgetTokens: 50000}}\n",
        key = signing_key.display(),
        cert = dir.path().join("tls.crt").display(),
        tlskey = dir.path().join("tls.key").display(),
        ca = dir.path().join("ca.crt").display(),
        ns = ns.name,
    );
    let kubeconfig =
        cluster.service_account_kubeconfig("sanctum-system", "sanctum-operator", dir.path()).await;
    let mut operator = Operator::start(&kubeconfig, &config, dir.path()).await;

    let suffix = ns.name.trim_start_matches("e2e-wh-").to_owned();
    let _objects = install_admission(
        &cluster,
        port,
        &ca,
        &[ns.name.as_str(), labelled.name.as_str()],
        &suffix,
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let yes = json!({"sanctum.dev/inject": "true"});

    // The API server picks new webhook configurations up within a moment: wait for it.
    wait_for("the API server to call the webhook", WAIT, || async {
        let dry = PostParams { dry_run: true, ..Default::default() };
        let pod = pods.create(&dry, &agent_pod("probe", yes.clone())).await.ok()?;
        is_injected(&pod).then_some(())
    })
    .await;

    // An annotated pod is stored injected, and PSA restricted admitted it.
    let stored = pods.create(&PostParams::default(), &agent_pod("annotated", yes.clone())).await;
    let stored = stored.expect("PSA restricted admits the injected pod");
    assert!(is_injected(&stored), "{:?}", stored.spec);
    assert_agent_env(&stored);
    let stored = pods.get("annotated").await.unwrap();
    assert!(is_injected(&stored));

    // An unannotated pod is untouched.
    let plain = pods.create(&PostParams::default(), &agent_pod("plain", json!({}))).await.unwrap();
    assert!(plain.spec.as_ref().unwrap().init_containers.is_none());
    assert!(!plain.annotations().contains_key("sanctum.dev/status"));

    // hostNetwork asking for injection: refused, saying why.
    let mut host = agent_pod("host", yes.clone());
    host.spec.as_mut().unwrap().host_network = Some(true);
    let err = pods.create(&PostParams::default(), &host).await.unwrap_err().to_string();
    assert!(err.contains("hostNetwork") && err.contains("Sanctum"), "{err}");

    // A Deployment's pods come out injected (deployment → replicaset → pod controllers).
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "reviewer"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "reviewer"}},
            "template": {
                "metadata": {"labels": {"app": "reviewer"}, "annotations": yes.clone()},
                "spec": serde_json::to_value(agent_pod("x", json!({})).spec).unwrap()
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let made = wait_for("the Deployment's two pods", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=reviewer")).await.ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for pod in &made {
        assert!(is_injected(pod), "{} is injected", pod.name_any());
        assert_agent_env(pod);
    }

    // A labelled namespace: every pod is injected unless it opts out.
    let lpods: Api<Pod> = Api::namespaced(client.clone(), &labelled.name);
    let p = lpods.create(&PostParams::default(), &agent_pod("auto", json!({}))).await.unwrap();
    assert!(is_injected(&p));
    let out = json!({"sanctum.dev/inject": "false"});
    let p = lpods.create(&PostParams::default(), &agent_pod("optout", out)).await.unwrap();
    assert!(p.spec.as_ref().unwrap().init_containers.is_none());

    // The token service trades a real pod-bound token (audience sanctum) for a TraT.
    let bound =
        pods.create(&PostParams::default(), &agent_pod("bound", yes.clone())).await.unwrap();
    let token = token_for(&client, &ns.name, "sanctum", &bound).await;
    let trat = fetch_trat(dir.path(), port, &ca, &token).expect("fetch-trat succeeds");
    let (status, jwks) = http_get(operator.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200);
    let jwks: JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = jsonwebtoken::decode_header(&trat).unwrap().kid.unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["sanctum-gateway"]);
    let claims = jsonwebtoken::decode::<TratClaims>(
        &trat,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, format!("system:serviceaccount:{}:default", ns.name));
    assert_eq!(claims.txn, bound.uid().unwrap());
    assert_eq!(claims.tctx.org_id, "acme");
    assert_eq!(claims.tctx.budget_tokens, Some(50_000));
    assert_eq!(claims.tctx.pod_name.as_deref(), Some("bound"));
    assert_eq!(claims.tctx.pod_uid, bound.uid());
    assert_eq!(claims.tctx.namespace.as_deref(), Some(ns.name.as_str()));
    assert!(claims.exp > claims.iat && claims.exp - claims.iat <= 3600);

    // A token of another audience is refused.
    let other = token_for(&client, &ns.name, "another-audience", &bound).await;
    let err = fetch_trat(dir.path(), port, &ca, &other).unwrap_err();
    assert!(err.contains("401") && err.contains("not accepted"), "{err}");
    // An uninjected pod gets none.
    let plain_token = token_for(&client, &ns.name, "sanctum", &plain).await;
    let err = fetch_trat(dir.path(), port, &ca, &plain_token).unwrap_err();
    assert!(err.contains("403") && err.contains("not injected"), "{err}");
    // Nor a deleted pod: its bound token stops being valid.
    pods.delete("bound", &DeleteParams::default()).await.unwrap();
    let err = wait_for("the deleted pod's token to be refused", WAIT, || async {
        fetch_trat(dir.path(), port, &ca, &token).err()
    })
    .await;
    assert!(err.contains("401") || err.contains("403"), "{err}");
    assert!(!operator.log_text().contains(&token), "the SA token never reaches a log line");

    // The webhook stops: an annotated pod is refused by the policy, with its message,
    // while an ordinary pod is created normally.
    operator.terminate().expect("the operator stops on SIGTERM");
    let err = wait_for("the policy to refuse an uninjected annotated pod", WAIT, || async {
        let dry = PostParams { dry_run: true, ..Default::default() };
        pods.create(&dry, &agent_pod("down", yes.clone())).await.err().map(|e| e.to_string())
    })
    .await;
    assert!(err.contains("did not answer") && err.contains("sanctum.dev/inject"), "{err}");
    let err =
        pods.create(&PostParams::default(), &agent_pod("down", yes.clone())).await.unwrap_err();
    assert!(err.to_string().contains("Sanctum webhook"), "{err}");
    pods.create(&PostParams::default(), &agent_pod("ordinary", json!({})))
        .await
        .expect("an ordinary pod does not need the webhook");
    // In the labelled namespace, pods fail closed; opted-out ones are still admitted.
    assert!(lpods.create(&PostParams::default(), &agent_pod("auto2", json!({}))).await.is_err());
    lpods
        .create(
            &PostParams::default(),
            &agent_pod("optout2", json!({"sanctum.dev/inject": "false"})),
        )
        .await
        .expect("an opted-out pod does not need the webhook");
}
