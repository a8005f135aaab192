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
        ("gateway.config.orgs.acme.provider=bedrok", "provider"),
        ("gateway.awsSecrets.acme=Not_A_Secret", "awsSecrets"),
        // The operator config is checked here too, not first by the operator's crash loop.
        ("operator.config.tenancy.defaultOrgg=acme", "defaultOrgg"),
        ("operator.config.tenancy.defaultOrg=Acme Corp", "defaultOrg"),
        ("operator.config.tenancy.namespaces.team-a.orgId=x_", "orgId"),
        ("operator.config.pod.runAsUser=0", "runAsUser"),
        ("operator.config.pod.sidecarResources.sanctum-bridg.limits.memory=1Gi", "sanctum-bridg"),
        // A Bedrock org's secretDir under /etc/sanctum/aws/ with no Secret to mount there.
        (
            "gateway.config.orgs.acme.provider=bedrock,gateway.config.orgs.acme.bedrock.region=eu-central-1,\
             gateway.config.orgs.acme.bedrock.credentials.secretDir=/etc/sanctum/aws/acme",
            "gateway.awsSecrets.acme",
        ),
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

/// The schema's `operator.config` is the operator's config type: every field of it (the
/// defaults, plus a tenancy policy and sidecar resources) is accepted, so the schema refuses
/// only what the operator would.
#[test]
fn every_operator_config_field_is_accepted() {
    let Some(_) = helm() else { return };
    let mut config = sanctum_operator::config::OperatorConfig::parse(
        "tenancy:\n  namespaces:\n    team-a: {orgId: acme, otherOrgs: [acme.research], budgetTokens: 5, allowSecretEnv: true}\n  defaultOrg: acme\n\
         pod:\n  sidecarResources:\n    sanctum-bridge: {limits: {memory: 1Gi}, requests: {cpu: 10m}}\n  priorityClassName: batch\n\
         \x20 tolerations: [{key: pool, operator: Equal, value: scan, effect: NoSchedule}]\n",
        std::path::Path::new("c.yaml"),
    )
    .unwrap();
    config.images.pull_policy = Some("Always".into());
    config.gateway.ca_bundle = Some("-----BEGIN CERTIFICATE-----".into());
    let values = serde_json::json!({"operator": {"config": config}});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values.to_string()).unwrap();
    let mut template = helm().unwrap();
    template.args(["template", "s"]).arg(workspace().join("charts/sanctum")).arg("-f").arg(&file);
    run(template);
}

/// Bedrock orgs (issue 14 item 4): each org's AWS credentials Secret is mounted read-only at
/// the `secretDir` its config names, the web-identity token is projected for STS, and the
/// ServiceAccount carries the IRSA annotation; the config reaches the gateway unchanged.
#[test]
fn bedrock_orgs_get_their_aws_credentials_mounted() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let Some(mut template) = helm() else { return };
    let role = "arn:aws:iam::123456789012:role/sanctum-bedrock-initech";
    let values = format!(
        "gateway:\n  config:\n    orgs:\n      acme: {{}}\n      globex:\n        provider: bedrock\n        \
         bedrock:\n          region: eu-central-1\n          modelIds: {{'claude-*': eu.anthropic.claude-sonnet-4-5-20250929-v1:0}}\n          \
         credentials: {{secretDir: /etc/sanctum/aws/globex}}\n      initech:\n        provider: bedrock\n        \
         bedrock:\n          region: us-east-1\n          modelIds: {{'claude-*': us.anthropic.claude-sonnet-4-5-20250929-v1:0}}\n          \
         credentials: {{webIdentity: {{roleArn: '{role}', tokenFile: /var/run/secrets/sanctum/aws/token}}}}\n  \
         awsSecrets: {{globex: sanctum-aws-globex}}\n  webIdentity: {{enabled: true}}\n  \
         serviceAccount: {{annotations: {{eks.amazonaws.com/role-arn: '{role}'}}}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("values.yaml"), values).unwrap();
    template
        .args(["template", "s"])
        .arg(workspace().join("charts/sanctum"))
        .args(["--show-only", "templates/gateway.yaml", "-f"])
        .arg(dir.path().join("values.yaml"));
    let rendered = run(template);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect();
    let of_kind = |kind: &str| {
        docs.iter().find(|d| d["kind"] == kind).cloned().unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment: Deployment = serde_yaml::from_value(of_kind("Deployment")).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let gateway = &pod.containers[0];
    let mounts = gateway.volume_mounts.as_ref().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"))
    };
    let volume =
        |name: &str| pod.volumes.as_ref().unwrap().iter().find(|v| v.name == name).unwrap();
    let aws = mount("/etc/sanctum/aws/globex");
    assert_eq!(aws.read_only, Some(true));
    let secret = volume(&aws.name).secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("sanctum-aws-globex"));
    let token = mount("/var/run/secrets/sanctum/aws");
    let projected = volume(&token.name).projected.as_ref().unwrap();
    let sa_token = projected.sources.as_ref().unwrap()[0].service_account_token.as_ref().unwrap();
    assert_eq!(sa_token.audience.as_deref(), Some("sts.amazonaws.com"));
    assert_eq!(sa_token.path, "token");
    let sa: ServiceAccount = serde_yaml::from_value(of_kind("ServiceAccount")).unwrap();
    assert_eq!(sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"], role);
    let config: ConfigMap = serde_yaml::from_value(of_kind("ConfigMap")).unwrap();
    let file: serde_yaml::Value =
        serde_yaml::from_str(&config.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(
        file["orgs"]["globex"]["bedrock"]["credentials"]["secretDir"],
        "/etc/sanctum/aws/globex"
    );
    assert_eq!(file["orgs"]["initech"]["provider"], "bedrock");
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
