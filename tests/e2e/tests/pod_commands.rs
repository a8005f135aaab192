//! The command lines the operator and the webhook write into pods are ones the real
//! binaries accept: every injected container's arguments, for both identity sources and
//! both TraT sources, are run through `sanctum-bridge`/`sanctum-forwarder` with `--help`
//! appended (clap refuses an unknown or malformed argument before it reaches `--help`).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use sanctum_e2e::bin;
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::inject::{Agents, ConfigFile, IdentityMount, Injection, TratSource, inject};

fn injected(identity: IdentityMount, trat: TratSource, config: &OperatorConfig) -> Vec<Container> {
    let mut spec = PodSpec {
        containers: vec![Container {
            name: "agent".into(),
            image: Some("agent".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let injection = Injection {
        config,
        identity,
        trat,
        gateway_url: "https://gateway.scan-infra.svc:8443".into(),
        agents: Agents::All,
        model: Some("claude-sonnet-4-5".into()),
        resources: sanctum_operator::resources::effective(&config.pod.sidecar_resources, None),
        allow_api_token: false,
    };
    inject(&mut spec, &injection).unwrap();
    spec.init_containers.unwrap()
}

#[test]
fn injected_command_lines_parse() {
    let config = OperatorConfig::default();
    let identities = [
        IdentityMount::Spiffe {
            helper_config: ConfigFile::Secret { name: "s".into(), key: "k".into() },
        },
        IdentityMount::ServiceAccountToken {
            audience: "sanctum-gateway".into(),
            expiration_seconds: 3600,
        },
    ];
    let trats = [
        TratSource::Secret { name: "s".into(), key: "trat.jwt".into() },
        TratSource::TokenService {
            url: "https://op:8443".into(),
            ca_bundle: Some("-----BEGIN CERTIFICATE-----".into()),
        },
    ];
    let mut checked = 0;
    for identity in &identities {
        for trat in &trats {
            for c in injected(identity.clone(), trat.clone(), &config) {
                let Some(program) = c.command.as_ref().and_then(|c| c.first()) else { continue };
                let mut cmd = Command::new(bin(program));
                cmd.args(c.args.clone().unwrap_or_default()).arg("--help");
                for e in c.env.iter().flatten() {
                    cmd.env(&e.name, e.value.clone().unwrap_or_default());
                }
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "container {}: `{program} {:?}` is refused: {}",
                    c.name,
                    c.args,
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    // write-trat, sanctum-forwarder and sanctum-bridge in each of the four combinations.
    assert_eq!(checked, 12);
}
