//! Property: for any ScannerRun the operator accepts, every container of the built pod is
//! hardened (Pod Security Standards `restricted` and more), and no agent container can see
//! a token — neither mounted nor through its environment.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use kube::api::ObjectMeta;
use proptest::prelude::*;
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::crd::*;
use sanctum_operator::objects::build;
use sanctum_operator::tokens::Signer;

const SIDECARS: [&str; 4] = ["fetch-jwt", "write-trat", "sanctum-forwarder", "sanctum-bridge"];
const TOKEN_VOLUMES: [&str; 4] =
    ["sanctum-sage", "sanctum-spiffe", "sanctum-run-secret", "sanctum-spiffe-helper"];
/// Volume types Pod Security Standards `restricted` allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn spec_strategy() -> impl Strategy<Value = ScannerRunSpec> {
    let source = prop_oneof![
        ("[a-z]{1,10}", proptest::option::of("[a-z0-9.]{1,8}")).prop_map(|(repo, revision)| {
            Source {
                git: Some(GitSource { url: format!("https://git.example/{repo}.git"), revision }),
                volume: None,
            }
        }),
        ("[a-z][a-z0-9-]{0,20}", proptest::option::of("[a-z]{1,5}")).prop_map(
            |(claim_name, sub_path)| Source {
                git: None,
                volume: Some(VolumeSource { claim_name, sub_path }),
            }
        ),
    ];
    let env = proptest::collection::vec(
        (
            prop_oneof![
                Just("ANTHROPIC_API_KEY".to_owned()),
                Just("ANTHROPIC_AUTH_TOKEN".to_owned()),
                Just("HOME".to_owned()),
                "[A-Z_]{1,12}"
            ],
            "[a-z]{0,8}",
        )
            .prop_map(|(name, v)| EnvVar {
                name,
                value: Some(format!("sk-ant-{v}")),
                value_from: None,
            }),
        0..5,
    );
    (
        source,
        env,
        proptest::option::of(prop_oneof![
            Just(IdentitySource::Spiffe),
            Just(IdentitySource::ServiceAccountToken)
        ]),
        proptest::option::of("[a-z0-9-]{1,20}"),
        proptest::option::of(1i64..100_000),
        proptest::bool::ANY,
    )
        .prop_map(|(source, env, identity_source, model, timeout, output)| ScannerRunSpec {
            image: "ghcr.io/example/scanner:1".into(),
            command: None,
            args: None,
            env: Some(env),
            resources: None,
            source,
            output: output.then(|| Output { claim_name: "out".into(), sub_path: None }),
            agent: Some(Agent { model, max_turns: Some(5), prompt: Some("p".into()) }),
            org_id: "acme".into(),
            timeout_seconds: timeout,
            identity: Some(Identity {
                source: identity_source,
                audience: None,
                trust_domain: None,
            }),
            gateway: None,
        })
}

fn hardened(c: &Container, seccomp_localhost: bool) -> Result<(), String> {
    let sc = c.security_context.as_ref().ok_or(format!("{}: no securityContext", c.name))?;
    let checks = [
        ("runAsNonRoot", sc.run_as_non_root == Some(true)),
        ("runAsUser non-zero", sc.run_as_user.is_some_and(|u| u > 0)),
        ("readOnlyRootFilesystem", sc.read_only_root_filesystem == Some(true)),
        ("allowPrivilegeEscalation false", sc.allow_privilege_escalation == Some(false)),
        ("privileged false", sc.privileged != Some(true)),
        (
            "drop ALL",
            sc.capabilities
                .as_ref()
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL")),
        ),
        (
            "no added capabilities",
            sc.capabilities.as_ref().and_then(|c| c.add.as_ref()).is_none_or(|a| a.is_empty()),
        ),
        (
            "seccomp",
            sc.seccomp_profile.as_ref().is_some_and(|s| {
                s.type_ == if seccomp_localhost { "Localhost" } else { "RuntimeDefault" }
            }),
        ),
        ("no hostPort", c.ports.iter().flatten().all(|p| p.host_port.is_none())),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("container {}: {what}", c.name)),
        None => Ok(()),
    }
}

fn check_pod(pod: &Pod, seccomp_localhost: bool) -> Result<(), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    if spec.automount_service_account_token != Some(false) {
        return Err("automountServiceAccountToken".into());
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        return Err("host namespaces".into());
    }
    let psc = spec.security_context.as_ref().ok_or("no pod securityContext")?;
    if psc.run_as_non_root != Some(true) || psc.seccomp_profile.is_none() {
        return Err("pod securityContext".into());
    }
    for v in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(v).map_err(|e| e.to_string())?;
        let kinds: Vec<&String> =
            value.as_object().ok_or("volume")?.keys().filter(|k| *k != "name").collect();
        if kinds.len() != 1 || !RESTRICTED_VOLUMES.contains(&kinds[0].as_str()) {
            return Err(format!(
                "volume {} of type {kinds:?} is not allowed by restricted",
                v.name
            ));
        }
    }
    let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for c in all {
        hardened(c, seccomp_localhost)?;
        let is_sidecar = SIDECARS.contains(&c.name.as_str());
        if !is_sidecar {
            for m in c.volume_mounts.iter().flatten() {
                if TOKEN_VOLUMES.contains(&m.name.as_str())
                    || m.mount_path.starts_with("/run/sage")
                    || m.mount_path.starts_with("/var/run/spiffe")
                {
                    return Err(format!(
                        "agent container {} mounts {} at {}",
                        c.name, m.name, m.mount_path
                    ));
                }
            }
        }
    }
    let scanner =
        spec.containers.iter().find(|c| c.name == "scanner").ok_or("no scanner container")?;
    let env = scanner.env.as_ref().ok_or("scanner has no env")?;
    let keys: Vec<&EnvVar> = env.iter().filter(|e| e.name == "ANTHROPIC_API_KEY").collect();
    if keys.len() != 1 || keys[0].value.as_deref() != Some("gateway-injected") {
        return Err(format!("ANTHROPIC_API_KEY must be the placeholder once, got {keys:?}"));
    }
    if env.iter().any(|e| e.name == "ANTHROPIC_AUTH_TOKEN") {
        return Err("ANTHROPIC_AUTH_TOKEN reached the scanner".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_built_pod_is_hardened(spec in spec_strategy(), localhost in proptest::bool::ANY) {
        let mut config = OperatorConfig::default();
        config.tenancy.default_org = Some(spec.org_id.clone());
        if !localhost {
            config.pod.seccomp_localhost_profile = None;
        }
        let mut run = ScannerRun::new("run-1", spec);
        run.metadata = ObjectMeta { name: Some("run-1".into()), namespace: Some("ns".into()), uid: Some("0000-1111".into()), ..Default::default() };
        let signer = Signer::ephemeral().unwrap();
        let objects = build(&run, &config, &signer, 1_800_000_000).unwrap();
        if let Err(e) = check_pod(&objects.pod, localhost) {
            prop_assert!(false, "{e}");
        }
    }
}
