//! The operator's configuration file (`--config`, YAML): images, gateway, identity defaults,
//! token signing, hardening knobs. Every field has a default so that an empty file (or none)
//! gives a working operator; a field the operator does not know is an error, so a typo is
//! never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crd::IdentitySource;
use crate::tenancy::{NamespacePolicy, Tenancy};
use sanctum_common::defaults;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// The operator's own namespace: never injected into.
    pub namespace: String,
    pub images: Images,
    pub gateway: Gateway,
    pub identity: IdentityDefaults,
    pub spiffe: Spiffe,
    pub trat: Trat,
    pub pod: PodSettings,
    pub webhook: Webhook,
    pub token_service: TokenService,
    /// Which orgs each namespace may bill, for ScannerRuns and the token service alike.
    pub tenancy: Tenancy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Images {
    /// `sanctum-bridge` (also runs `write-trat`).
    pub bridge: String,
    /// `sanctum-forwarder`.
    pub forwarder: String,
    /// Clones a `git` source into `/repo` (needs `git`).
    pub git: String,
    pub pull_policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Gateway {
    /// URL the forwarder sends every request to.
    pub url: String,
    /// Where the gateway runs, for the NetworkPolicy's egress rule.
    pub namespace: String,
    /// Labels of the gateway pods, for the NetworkPolicy's egress rule.
    pub pod_labels: BTreeMap<String, String>,
    /// Port of the gateway pods the scanner may reach.
    pub port: i32,
    /// Alternatively (gateway outside the cluster): CIDRs the scanner may reach.
    pub cidrs: Vec<String>,
    /// Further gateway URLs a pod (annotation `sanctum.dev/gateway`) or a ScannerRun
    /// (`spec.gateway`) may name instead of `url`. Both tokens go to the gateway named, so
    /// only these (and `url` itself) may be named; each must be `https://` unless
    /// `allowInsecureHttp` is set.
    pub allowed_urls: Vec<String>,
    /// Let `allowedUrls` hold plain `http://` gateways (both tokens then cross the network
    /// in clear). Off by default.
    pub allow_insecure_http: bool,
    /// PEM CA certificates the forwarders verify an https gateway with, besides the system
    /// roots (the chart puts its generated CA here). It reaches each forwarder in its
    /// environment (`SANCTUM_CA_PEM`): a public certificate, so no volume is needed.
    pub ca_bundle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IdentityDefaults {
    pub source: IdentitySource,
    pub trust_domain: String,
    pub audience: String,
    /// Lifetime of a projected ServiceAccount token (the kubelet refreshes it at 80%).
    pub token_expiration_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Spiffe {
    /// CSI driver exposing the SPIRE agent's Workload API socket.
    pub csi_driver: String,
    /// Image of `fetch-jwt`; it runs as a native sidecar so the short-lived JWT-SVID is
    /// refreshed for the whole run, not fetched once.
    pub fetch_jwt_image: String,
    pub fetch_jwt_command: Vec<String>,
    pub fetch_jwt_args: Vec<String>,
    /// spiffe-helper configuration (HCL) rendered per run into the run's Secret and mounted
    /// only into `fetch-jwt`; `{socket}`, `{audience}`, `{jwt_dir}` are substituted.
    pub helper_config: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Trat {
    /// `iss` of the TraTs this operator mints.
    pub issuer: String,
    /// ES256 (P-256) private key, PEM (PKCS#8 or SEC1). Unset: an ephemeral key is
    /// generated at start-up, and gateways cannot verify TraTs across operator restarts.
    pub signing_key_file: Option<PathBuf>,
    /// Added to the run's timeout to give the TraT's `exp`.
    pub expiry_margin_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodSettings {
    /// UID and GID of the containers Sanctum injects.
    pub run_as_user: i64,
    /// Localhost seccomp profile (relative to the kubelet's seccomp dir); when unset,
    /// `RuntimeDefault` (use that where the profile is not installed on the nodes).
    pub seccomp_localhost_profile: Option<String>,
    /// Size limit of the memory-backed token volumes.
    pub token_volume_size: String,
    /// Size limit of the writable `/tmp`.
    pub tmp_size: String,
    /// Priority class of scanner pods.
    pub priority_class_name: Option<String>,
    /// Node labels a scanner pod must run on (e.g. a dedicated node pool).
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of scanner pods (e.g. for the taint of that node pool).
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// ServiceAccount of scanner pods (its API token is never mounted).
    pub service_account_name: String,
    /// CIDRs a `git` source may be cloned from (TCP 443). Empty by default: the design allows
    /// egress only to the gateway and DNS, so a git clone needs this set explicitly.
    pub git_egress_cidrs: Vec<String>,
    /// Requests and limits of the containers Sanctum adds (`fetch-jwt`, `write-trat`,
    /// `sanctum-forwarder`, `sanctum-bridge`, `git-clone`), by container name, each value
    /// replacing one of the built-in defaults (see [`crate::resources`]); a pod's
    /// `sanctum.dev/sidecar-resources` annotation replaces values of this in turn.
    pub sidecar_resources: crate::resources::Overrides,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Webhook {
    /// Base URL of the token service `fetch-trat` calls from injected pods (it posts to
    /// `<url>/v1/trat`).
    pub token_service_url: String,
    /// HTTPS address of the webhook and the token service (`run` serves them only when a
    /// certificate and key are configured, here or with --tls-cert-file/--tls-key-file).
    pub listen: String,
    /// Serving certificate (PEM chain) and key; reloaded when the files change.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that injected pods trust for the token service; it is handed to
    /// `fetch-trat` in the `write-trat` container's environment. Unset: the serving
    /// certificate chain itself (right for a self-signed certificate).
    pub ca_bundle_file: Option<PathBuf>,
    /// In `spiffe` identity mode, the ConfigMap (in the pod's namespace, key `helper.conf`)
    /// with spiffe-helper's configuration for `fetch-jwt` of injected pods.
    pub spiffe_helper_config_map: String,
}

/// The token service (TraTs for injected pods). Which org a namespace bills is the
/// `tenancy` section's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TokenService {
    /// Lifetime of a TraT minted for an injected pod.
    pub trat_ttl_seconds: i64,
    /// Deprecated: read into `tenancy.namespaces` at load (kept for one release).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespacePolicy>,
    /// Deprecated: read into `tenancy.defaultPolicy` at load (kept for one release).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<NamespacePolicy>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: "sanctum-system".into(),
            images: Images::default(),
            gateway: Gateway::default(),
            identity: IdentityDefaults::default(),
            spiffe: Spiffe::default(),
            trat: Trat::default(),
            pod: PodSettings::default(),
            webhook: Webhook::default(),
            token_service: TokenService::default(),
            tenancy: Tenancy::default(),
        }
    }
}

impl Default for TokenService {
    fn default() -> Self {
        Self { trat_ttl_seconds: 3600, namespaces: BTreeMap::new(), default_policy: None }
    }
}

impl Default for Images {
    fn default() -> Self {
        let tag = env!("CARGO_PKG_VERSION");
        Self {
            bridge: format!("ghcr.io/sanctum-dev/sanctum-bridge:{tag}"),
            forwarder: format!("ghcr.io/sanctum-dev/sanctum-forwarder:{tag}"),
            git: "docker.io/alpine/git:2.47.2".into(),
            pull_policy: None,
        }
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            url: "http://sanctum-gateway.scan-infra.svc.cluster.local:8080".into(),
            namespace: "scan-infra".into(),
            pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "sanctum-gateway".to_owned(),
            )]),
            port: 8080,
            cidrs: Vec::new(),
            allowed_urls: Vec::new(),
            allow_insecure_http: false,
            ca_bundle: None,
        }
    }
}

impl Default for IdentityDefaults {
    fn default() -> Self {
        Self {
            source: IdentitySource::Spiffe,
            trust_domain: defaults::TRUST_DOMAIN.into(),
            audience: defaults::GATEWAY_AUDIENCE.into(),
            token_expiration_seconds: 3600,
        }
    }
}

impl Default for Spiffe {
    fn default() -> Self {
        Self {
            csi_driver: "csi.spiffe.io".into(),
            fetch_jwt_image: "ghcr.io/spiffe/spiffe-helper:0.10.1".into(),
            fetch_jwt_command: Vec::new(),
            fetch_jwt_args: vec!["-config".into(), "/etc/spiffe-helper/helper.conf".into()],
            helper_config: concat!(
                "agent_address = \"{socket}\"\n",
                "cmd = \"\"\n",
                "cmd_args = \"\"\n",
                "cert_dir = \"{jwt_dir}\"\n",
                "daemon_mode = true\n",
                "jwt_svids = [{ jwt_audience = \"{audience}\", jwt_svid_file_name = \"jwt\" }]\n",
            )
            .into(),
        }
    }
}

impl Default for Trat {
    fn default() -> Self {
        Self {
            issuer: "https://sanctum-operator.sanctum-system.svc".into(),
            signing_key_file: None,
            expiry_margin_seconds: 600,
        }
    }
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            run_as_user: 65532,
            seccomp_localhost_profile: Some("sanctum/scanner.json".into()),
            token_volume_size: "1Mi".into(),
            tmp_size: "1Gi".into(),
            priority_class_name: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            service_account_name: "default".into(),
            git_egress_cidrs: Vec::new(),
            sidecar_resources: Default::default(),
        }
    }
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            token_service_url: "https://sanctum-operator.sanctum-system.svc:8443".into(),
            listen: format!("0.0.0.0:{}", defaults::WEBHOOK_PORT),
            tls_cert_file: None,
            tls_key_file: None,
            ca_bundle_file: None,
            spiffe_helper_config_map: "sanctum-spiffe-helper".into(),
        }
    }
}

/// A URL as compared for the gateway allow-list: scheme and host are case-insensitive and a
/// trailing `/` means nothing.
fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            let path = if path.is_empty() { String::new() } else { format!("/{path}") };
            format!("{}://{}{path}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => url.to_owned(),
    }
}

impl Gateway {
    /// The gateway a pod or run asked for by name (`key`: where it was named, for the
    /// message). Allowed: `url` itself, or an entry of `allowedUrls` over https (http only
    /// with `allowInsecureHttp`). Err: a message naming `key`, the URL and the allowed list.
    pub fn check_override(&self, key: &str, requested: &str) -> Result<String, String> {
        let wanted = normalize_url(requested);
        if wanted == normalize_url(&self.url) {
            return Ok(requested.trim().to_owned());
        }
        let allowed: Vec<String> = std::iter::once(self.url.as_str())
            .chain(self.allowed_urls.iter().map(String::as_str))
            .map(normalize_url)
            .collect();
        if !allowed[1..].contains(&wanted) {
            return Err(format!(
                "{key} '{requested}' is not an allowed gateway (both tokens are sent there): name one of {} or add it to gateway.allowedUrls in the operator config",
                allowed.join(", ")
            ));
        }
        if !wanted.starts_with("https://") && !self.allow_insecure_http {
            return Err(format!(
                "{key} '{requested}' is not https: both tokens would cross the network in clear; use an https:// gateway, or set gateway.allowInsecureHttp: true in the operator config"
            ));
        }
        Ok(requested.trim().to_owned())
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read operator config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("operator config {path} is invalid: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    #[error("operator config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl OperatorConfig {
    /// Loads a config file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text)
                .map_err(|source| ConfigError::Parse { path: path.into(), source })?
        };
        let invalid = |message| ConfigError::Invalid { path: path.into(), message };
        let legacy = &mut config.token_service;
        config
            .tenancy
            .absorb_legacy(&mut legacy.namespaces, &mut legacy.default_policy)
            .map_err(invalid)?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.gateway.url.starts_with("http://") || self.gateway.url.starts_with("https://")) {
            return Err(format!(
                "gateway.url '{}' must be an http:// or https:// URL",
                self.gateway.url
            ));
        }
        for url in &self.gateway.allowed_urls {
            let https = url.starts_with("https://");
            if !(https || url.starts_with("http://")) {
                return Err(format!("gateway.allowedUrls entry '{url}' must be an https:// URL"));
            }
            if !https && !self.gateway.allow_insecure_http {
                return Err(format!(
                    "gateway.allowedUrls entry '{url}' is plain http: both tokens would cross the network in clear; use https:// or set gateway.allowInsecureHttp: true"
                ));
            }
        }
        if self.gateway.pod_labels.is_empty() && self.gateway.cidrs.is_empty() {
            return Err("gateway needs podLabels or cidrs: the scanner's NetworkPolicy allows egress only there".into());
        }
        crate::resources::validate(&self.pod.sidecar_resources)
            .map_err(|e| format!("pod.sidecarResources: {e}"))?;
        if self.pod.run_as_user <= 0 {
            return Err("pod.runAsUser must be a non-root UID (> 0)".into());
        }
        if self.trat.expiry_margin_seconds < 0 {
            return Err("trat.expiryMarginSeconds must not be negative".into());
        }
        if !self.webhook.token_service_url.starts_with("https://") {
            return Err(format!(
                "webhook.tokenServiceUrl '{}' must be an https:// URL: pods send their ServiceAccount token there",
                self.webhook.token_service_url
            ));
        }
        if self.webhook.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "webhook.listen '{}' must be an address like 0.0.0.0:8443",
                self.webhook.listen
            ));
        }
        if self.webhook.tls_cert_file.is_some() != self.webhook.tls_key_file.is_some() {
            return Err(
                "webhook.tlsCertFile and webhook.tlsKeyFile go together: set both or neither"
                    .into(),
            );
        }
        if !(60..=86_400).contains(&self.token_service.trat_ttl_seconds) {
            return Err("tokenService.tratTtlSeconds must be between 60 and 86400".into());
        }
        self.tenancy.validate()?;
        if sanctum_common::SpiffeId::scanner(&self.identity.trust_domain, "x").is_err() {
            return Err(format!(
                "identity.trustDomain '{}' is not a valid SPIFFE trust domain",
                self.identity.trust_domain
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            OperatorConfig::parse("", Path::new("c.yaml")).unwrap(),
            OperatorConfig::default()
        );
    }

    #[test]
    fn partial_file_overrides_one_field() {
        let c = OperatorConfig::parse(
            "gateway:\n  url: https://gw.example:8443\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.gateway.url, "https://gw.example:8443");
        assert_eq!(c.gateway.namespace, "scan-infra");
    }

    #[test]
    fn typo_is_an_error_naming_the_field() {
        let err =
            OperatorConfig::parse("gatway: {}\n", Path::new("c.yaml")).unwrap_err().to_string();
        assert!(err.contains("c.yaml") && err.contains("gatway"), "{err}");
    }

    /// Issue 12 item 6: a pod or run may name only the configured gateway or an allowed
    /// https one; the message names where it was named and the allowed list.
    #[test]
    fn gateway_overrides_are_allow_listed_and_https() {
        let c = OperatorConfig::parse(
            "gateway:\n  url: http://gw.scan-infra:8080\n  allowedUrls: [https://gw-eu.example.com/]\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let g = &c.gateway;
        g.check_override("k", "http://gw.scan-infra:8080/").unwrap();
        g.check_override("k", "HTTPS://GW-EU.example.com").unwrap();
        let err = g
            .check_override("annotation sanctum.dev/gateway", "http://evil.example:80")
            .unwrap_err();
        assert!(
            err.starts_with(
                "annotation sanctum.dev/gateway 'http://evil.example:80' is not an allowed gateway"
            ),
            "{err}"
        );
        assert!(err.contains("http://gw.scan-infra:8080, https://gw-eu.example.com"), "{err}");
        assert!(err.contains("gateway.allowedUrls"), "{err}");
        let mut insecure = g.clone();
        insecure.allowed_urls.push("http://gw-old.example".into());
        let err = insecure.check_override("k", "http://gw-old.example").unwrap_err();
        assert!(err.contains("allowInsecureHttp"), "{err}");
        insecure.allow_insecure_http = true;
        insecure.check_override("k", "http://gw-old.example").unwrap();
        let err =
            OperatorConfig::parse("gateway:\n  allowedUrls: [http://x]\n", Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("allowInsecureHttp"), "{err}");
    }

    #[test]
    fn legacy_token_service_namespaces_become_tenancy() {
        let c = OperatorConfig::parse(
            "tokenService:\n  namespaces:\n    team: {orgId: acme, budgetTokens: 5}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert!(c.token_service.namespaces.is_empty());
        assert_eq!(c.tenancy.policy("team").unwrap().budget_tokens, Some(5));
        let err = OperatorConfig::parse(
            "tenancy: {defaultOrg: acme}\ntokenService:\n  namespaces:\n    team: {orgId: acme}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenancy.namespaces"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = OperatorConfig::parse("pod:\n  runAsUser: 0\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("runAsUser"), "{err}");
        let text = "pod:\n  sidecarResources:\n    sanctum-bridge: {limits: {memory: lots}}\n";
        let err = OperatorConfig::parse(text, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(
            err.contains(
                "pod.sidecarResources: sanctum-bridge.limits.memory: 'lots' is not a quantity"
            ),
            "{err}"
        );
        let text = "pod:\n  sidecarResources:\n    sanctum-bridge: {limits: {memory: 1Gi}}\n";
        let c = OperatorConfig::parse(text, Path::new("c.yaml")).unwrap();
        assert_eq!(c.pod.sidecar_resources["sanctum-bridge"].limits["memory"], "1Gi");
    }
}
