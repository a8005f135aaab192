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
