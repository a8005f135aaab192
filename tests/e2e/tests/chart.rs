//! The Helm chart against a real API server: `helm install` creates what it should and
//! `helm uninstall` removes it; the plain manifests are the chart's rendering.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use sanctum_e2e::*;

fn helm() -> Option<Command> {
    match std::env::var_os("SANCTUM_HELM") {
        Some(helm) => Some(Command::new(helm)),
        None => {
            assert!(
                !required(),
                "SANCTUM_HELM is unset: tests/cluster/cluster.sh env names the helm it built"
            );
            eprintln!("e2e: SKIPPED: SANCTUM_HELM is unset");
            None
        }
    }
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Uninstall {
    release: String,
    namespace: String,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        if let Some(mut helm) = helm() {
            let _ = helm
                .args(["uninstall", &self.release, "--namespace", &self.namespace, "--wait"])
                .output();
        }
    }
}

#[test]
fn manifests_are_the_charts_rendering() {
    let Some(_) = helm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut render = Command::new(workspace().join("scripts/render-manifests"));
    render.arg(dir.path());
    run(render);
    for file in ["operator-rbac.yaml", "sanctum.yaml", "webhook.yaml", "gateway.yaml"] {
        let fresh = std::fs::read_to_string(dir.path().join(file)).unwrap();
        let checked_in = std::fs::read_to_string(workspace().join("manifests").join(file)).unwrap();
        assert!(fresh == checked_in, "manifests/{file} is stale: run scripts/render-manifests");
    }
}

/// `values.schema.json` refuses wrong values before anything is rendered, naming the value.
#[test]
fn wrong_values_are_refused_with_the_field_named() {
    let Some(_) = helm() else { return };
    let cases = [
        ("gateway.tls.mode=mtls", "mode"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("gateway.state=etcd://x", "state"),
        ("gateway.port=0", "port"),
        ("operator.adminPort=99999", "adminPort"),
        ("gateway.tls.mode=secret", "secretName"),
        ("gatway.enabled=false", "gatway"),
    ];
    for (set, field) in cases {
        let mut template = helm().unwrap();
        template
            .args(["template", "s"])
            .arg(workspace().join("charts/sanctum"))
            .args(["--set", set]);
        let out = template.output().unwrap();
        assert!(!out.status.success(), "--set {set} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "--set {set}: the error does not name {field}: {err}");
    }
}

#[tokio::test]
async fn helm_install_and_uninstall() {
    let Some(mut install) = helm() else { return };
    let _guard = SERIAL.lock().await;
    let Some(cluster) = Cluster::connect().await else { return };
    let ns = cluster.namespace("helm", &[]).await;
    let release = format!("r{}", &ns.name[ns.name.len() - 6..]);
    install.args(["install", &release]).arg(workspace().join("charts/sanctum")).args([
        "--namespace",
        &ns.name,
        "--wait=false",
        "--set",
        &format!("gateway.namespace={},gateway.createNamespace=false", ns.name),
    ]);
    run(install);
    // The release holds cluster-wide admission objects: remove them even if this test fails.
    let uninstall = Uninstall { release: release.clone(), namespace: ns.name.clone() };

    let client = cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let operator = deployments.get(&format!("{release}-operator")).await.unwrap();
    let spec = operator.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some(format!("{release}-operator").as_str()));
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(&args[..3], ["run", "--config", "/etc/sanctum/config/config.yaml"]);
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get(&format!("{release}-operator"))
        .await
        .unwrap();
    let config_yaml = &config.data.unwrap()["config.yaml"];
    // The rendered operator config is one the operator accepts.
    let parsed = sanctum_operator::config::OperatorConfig::parse(
        config_yaml,
        std::path::Path::new("config.yaml"),
    )
    .unwrap();
    assert_eq!(parsed.namespace, ns.name);
    assert!(
        Api::<DaemonSet>::namespaced(client.clone(), &ns.name)
            .get(&format!("{release}-seccomp-installer"))
            .await
            .is_ok()
    );
    let roles: Api<ClusterRole> = Api::all(client.clone());
    roles.get(&format!("{release}-operator")).await.unwrap();

    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = webhooks.get(&format!("{release}-injector")).await.unwrap();
    for webhook in mwc.webhooks.unwrap() {
        // selfSigned TLS: the chart put its CA in the configuration.
        assert!(
            webhook.client_config.ca_bundle.is_some_and(|b| !b.0.is_empty()),
            "{} has no caBundle",
            webhook.name
        );
        assert_eq!(webhook.client_config.service.unwrap().name, format!("{release}-webhook"));
    }
    let tls = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get(&format!("{release}-webhook"))
        .await
        .unwrap();
    assert!(
        ["tls.crt", "tls.key", "ca.crt"].iter().all(|k| tls
            .data
            .as_ref()
            .unwrap()
            .contains_key(*k))
    );

    drop(uninstall);
    wait_for("helm uninstall to remove the ClusterRole", Duration::from_secs(30), || async {
        roles.get_opt(&format!("{release}-operator")).await.ok().flatten().is_none().then_some(())
    })
    .await;
}
