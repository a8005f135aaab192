//! The NetworkPolicy of a scanner pod: no ingress at all; egress only to the gateway and DNS
//! (and, for a `git` source, to the git CIDRs the operator config allows).

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::OperatorConfig;
use crate::crd::ScannerRun;
use crate::labels::{owned_meta, run_selector};
use crate::plan::{RepoSource, RunPlan};

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ),
        match_expressions: None,
    }
}

fn cidr_peers(cidrs: &[String]) -> Vec<NetworkPolicyPeer> {
    cidrs
        .iter()
        .map(|cidr| NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
            ..Default::default()
        })
        .collect()
}

/// The port a gateway URL names (or its scheme's default).
fn url_port(url: &str) -> Option<i32> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host_port.starts_with('[') => {
            port.parse().ok()
        }
        _ => Some(if url.starts_with("https://") { 443 } else { 80 }),
    }
}

pub fn build_network_policy(
    run: &ScannerRun,
    plan: &RunPlan,
    config: &OperatorConfig,
) -> NetworkPolicy {
    let gw = &config.gateway;
    let mut gateway_peers = Vec::new();
    if !gw.pod_labels.is_empty() {
        let labels: Vec<(&str, &str)> =
            gw.pod_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        gateway_peers.push(NetworkPolicyPeer {
            namespace_selector: Some(selector(&[("kubernetes.io/metadata.name", &gw.namespace)])),
            pod_selector: Some(selector(&labels)),
            ip_block: None,
        });
    }
    gateway_peers.extend(cidr_peers(&gw.cidrs));
    // Allow the port the pods listen on, and the one the URL names (a Service may map them).
    let mut gateway_ports = vec![port("TCP", gw.port)];
    if let Some(p) = url_port(&plan.gateway_url).filter(|p| *p != gw.port) {
        gateway_ports.push(port("TCP", p));
    }
    let mut egress = vec![
        NetworkPolicyEgressRule { to: Some(gateway_peers), ports: Some(gateway_ports) },
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(&[(
                    "kubernetes.io/metadata.name",
                    "kube-system",
                )])),
                pod_selector: Some(selector(&[("k8s-app", "kube-dns")])),
                ip_block: None,
            }]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
    ];
    if matches!(plan.source, RepoSource::Git { .. }) && !config.pod.git_egress_cidrs.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(cidr_peers(&config.pod.git_egress_cidrs)),
            ports: Some(vec![port("TCP", 443)]),
        });
    }
    NetworkPolicy {
        metadata: owned_meta(run, plan, &plan.network_policy_name, "network-policy"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&[run_selector(plan)])),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            // No ingress rule with `Ingress` in policyTypes denies all ingress. Left out
            // rather than `[]`: the server stores an empty list as absent, and an applied
            // `[]` would differ from the stored object on every pass (issue 13 item 10).
            ingress: None,
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::url_port;

    #[test]
    fn ports_of_urls() {
        assert_eq!(url_port("http://gw.scan-infra.svc:8080"), Some(8080));
        assert_eq!(url_port("https://gw.example.com/v1"), Some(443));
        assert_eq!(url_port("http://gw"), Some(80));
        assert_eq!(url_port("http://[fd00::1]:9000/x"), Some(9000));
        assert_eq!(url_port("nonsense"), None);
    }
}
