//! `sanctum-operator inject -f`: golden files of the injected examples, every workload
//! kind, and the same result as the webhook gives for the same pod.
#![allow(clippy::unwrap_used)]

mod support;
use support::{check_golden, root};

use k8s_openapi::api::core::v1::Pod;
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::crd::IdentitySource;
use sanctum_operator::webhook::admission::{OptIn, Settings};
use sanctum_operator::webhook::manifests::inject_file;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfixture\n-----END CERTIFICATE-----\n";

fn settings() -> Settings {
    Settings { ca_bundle: Some(CA.into()) }
}

fn sa_config() -> OperatorConfig {
    let mut c = OperatorConfig::default();
    c.identity.source = IdentitySource::ServiceAccountToken;
    // The ReplicaSet of inject-kinds names this gateway.
    c.gateway.allowed_urls = vec!["https://gw.example:8443".into()];
    c
}

fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn golden_injected_deployment_example() {
    let text = std::fs::read_to_string(root().join("examples/deployment.yaml")).unwrap();
    for (config, golden) in [
        (OperatorConfig::default(), "inject-deployment.spiffe.yaml"),
        (sa_config(), "inject-deployment.yaml"),
    ] {
        let out = inject_file(&text, &config, &settings(), OptIn::Annotation).unwrap();
        check_golden(golden, &out);
        // Injecting the output again changes nothing.
        let again = inject_file(&out, &config, &settings(), OptIn::Annotation).unwrap();
        assert_eq!(again, out, "{golden}: a second pass changes nothing");
    }
}

#[test]
fn golden_every_workload_kind() {
    let text =
        std::fs::read_to_string(root().join("operator/tests/golden/inject-kinds.input.yaml"))
            .unwrap();
    let out = inject_file(&text, &sa_config(), &settings(), OptIn::Annotation).unwrap();
    check_golden("inject-kinds.yaml", &out);
    let parsed = docs(&out);
    let kinds: Vec<&str> = parsed.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Pod",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "Job",
            "CronJob",
            "Deployment",
            "ConfigMap"
        ]
    );
    let status = |d: &serde_yaml::Value, path: &[&str]| {
        let mut v = d;
        for p in path {
            v = &v[*p];
        }
        v["metadata"]["annotations"]["sanctum.dev/status"].as_str().map(str::to_owned)
    };
    assert_eq!(status(&parsed[0], &[]).as_deref(), Some("injected"));
    for d in &parsed[1..5] {
        assert_eq!(status(d, &["spec", "template"]).as_deref(), Some("injected"));
    }
    assert_eq!(
        status(&parsed[5], &["spec", "jobTemplate", "spec", "template"]).as_deref(),
        Some("injected")
    );
    assert_eq!(status(&parsed[6], &["spec", "template"]), None, "not opted in");
    // Untouched documents are printed byte for byte.
    assert!(out.contains("metadata: {name: settings, namespace: team-a}\ndata: {key: value}\n"));
    assert!(out.contains("    metadata: {labels: {app: plain}}\n"));

    // With the namespace rule, the plain Deployment is injected too.
    let all = inject_file(&text, &sa_config(), &settings(), OptIn::Namespace).unwrap();
    assert_eq!(status(&docs(&all)[6], &["spec", "template"]).as_deref(), Some("injected"));
}

#[test]
fn same_result_as_the_webhook() {
    use sanctum_operator::webhook::admission::{Verdict, decide};
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\n  annotations: {sanctum.dev/inject: \"true\"}\nspec:\n  containers: [{name: a, image: i}]\n";
    let out = inject_file(text, &sa_config(), &settings(), OptIn::Annotation).unwrap();
    let from_file: Pod = serde_yaml::from_str(&out).unwrap();
    let mut doc: serde_json::Value = serde_yaml::from_str(text).unwrap();
    let Verdict::Inject(patch) =
        decide(&doc, "team", OptIn::Annotation, &sa_config(), &settings()).unwrap()
    else {
        panic!("not injected")
    };
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(serde_json::from_value::<Pod>(doc).unwrap(), from_file);
}

#[test]
fn refusals_name_the_document() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {annotations: {sanctum.dev/inject: \"true\"}}\n    spec:\n      hostNetwork: true\n      containers: [{name: a, image: i}]\n";
    let err =
        inject_file(text, &sa_config(), &settings(), OptIn::Annotation).unwrap_err().to_string();
    assert!(err.contains("document 2 (Deployment d)") && err.contains("hostNetwork"), "{err}");
}

/// Runs the real `sanctum-operator inject -f -` on `input` with the SA-token identity:
/// (exit success, stdout, stderr).
fn inject_binary(input: &str, extra: &[&str]) -> (bool, String, String) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "identity: {source: serviceAccountToken}\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sanctum-operator"))
        .args(["inject", "-f", "-", "--config"])
        .arg(&config)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What `kubectl get deploy,pod -o yaml` prints: a `kind: List`.
const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: agent
    namespace: team
  spec:
    selector: {matchLabels: {app: agent}}
    template:
      metadata:
        annotations: {sanctum.dev/inject: "true"}
        labels: {app: agent}
      spec:
        containers:
        - name: claude
          image: ghcr.io/example/claude:1
          env:
          - {name: ANTHROPIC_API_KEY, value: sk-ant-real}
          - name: REPO_TOKEN
            valueFrom:
              fileKeyRef: {volumeName: cfg, path: app.env, key: REPO_TOKEN}
- apiVersion: v1
  kind: Pod
  metadata:
    name: solo
    namespace: team
    annotations: {sanctum.dev/inject: "true"}
  spec:
    containers:
    - {name: claude, image: ghcr.io/example/claude:1, env: [{name: ANTHROPIC_API_KEY, value: sk-ant-real}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings, namespace: team}
  data: {key: value}
kind: List
metadata:
  resourceVersion: ""
"#;

fn injected_status(template: &serde_json::Value) -> &str {
    template["metadata"]["annotations"]["sanctum.dev/status"].as_str().unwrap_or("")
}

/// Issue 13 item 9: `inject -f` on a `kind: List` printed it byte for byte, exit 0, the
/// real key still in it. Every item is injected now, and newer fields are kept.
#[test]
fn kubectl_list_yaml_is_injected() {
    let (ok, out, err) = inject_binary(KUBECTL_LIST, &[]);
    assert!(ok, "{err}");
    assert!(!out.contains("sk-ant-real"), "{out}");
    let list: serde_json::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(injected_status(&items[0]["spec"]["template"]), "injected");
    assert_eq!(injected_status(&items[1]), "injected");
    assert_eq!(
        items[2],
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "team"}, "data": {"key": "value"}})
    );
    let env = &items[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env[0],
        serde_json::json!({"name": "REPO_TOKEN", "valueFrom": {"fileKeyRef":
            {"volumeName": "cfg", "path": "app.env", "key": "REPO_TOKEN"}}})
    );
    // A second pass changes nothing.
    let (ok, again, _) = inject_binary(&out, &[]);
    assert!(ok);
    assert_eq!(again, out);
}

/// `kubectl get -o json` (a JSON List), a JSON stream of objects, and an API
/// `DeploymentList` whose items omit apiVersion and kind: JSON in, JSON out, injected.
#[test]
fn json_lists_and_streams_are_injected() {
    let list: serde_json::Value = serde_yaml::from_str(KUBECTL_LIST).unwrap();
    let (ok, out, err) = inject_binary(&serde_json::to_string_pretty(&list).unwrap(), &[]);
    assert!(ok, "{err}");
    let back: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(injected_status(&back["items"][0]["spec"]["template"]), "injected");
    assert!(!out.contains("sk-ant-real"));

    let items = list["items"].as_array().unwrap();
    let stream = format!("{}\n{}\n", items[2], items[1]);
    let (ok, out, err) = inject_binary(&stream, &[]);
    assert!(ok, "{err}");
    let docs: Vec<serde_json::Value> =
        serde_json::Deserializer::from_str(&out).into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(out.lines().next().unwrap(), items[2].to_string(), "untouched, as it came");
    assert_eq!(injected_status(&docs[1]), "injected");

    let mut deployment = items[0].clone();
    let obj = deployment.as_object_mut().unwrap();
    obj.remove("kind");
    obj.remove("apiVersion");
    let typed = serde_json::json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
        "metadata": {}, "items": [deployment]});
    let (ok, out, err) = inject_binary(&typed.to_string(), &[]);
    assert!(ok, "{err}");
    let back: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(injected_status(&back["items"][0]["spec"]["template"]), "injected");
    assert!(back["items"][0].get("kind").is_none(), "the item keeps its shape");
}

/// An opted-in pod template in a kind `inject -f` cannot inject (a CRD, an old apiVersion)
/// is never passed through in silence: exit 1 and one line that says what to do.
#[test]
fn opted_in_templates_of_unknown_kinds_fail_with_one_line() {
    let rollout = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  template:\n    metadata: {annotations: {sanctum.dev/inject: \"true\"}}\n    spec:\n      containers: [{name: a, image: i}]\n";
    let input = format!("apiVersion: v1\nkind: List\nitems:\n- {}", rollout.replace('\n', "\n  "));
    for text in [rollout.to_owned(), input] {
        let (ok, out, err) = inject_binary(&text, &[]);
        assert!(!ok, "{out}");
        assert!(out.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(
                "Rollout of apiVersion 'argoproj.io/v1alpha1' is not a kind inject -f can inject"
            ) && err.contains("/spec/template")
                && err.contains("sanctum.dev/inject: \"false\""),
            "{err}"
        );
    }
    // Not opted in: passed through as it came; with the namespace rule it is opted in.
    let plain = rollout.replace("sanctum.dev/inject: \"true\"", "app: x");
    let (ok, out, _) = inject_binary(&plain, &[]);
    assert!(ok);
    assert_eq!(out, plain);
    let (ok, _, err) = inject_binary(&plain, &["--namespace-enabled"]);
    assert!(!ok && err.contains("Rollout"), "{err}");
}
