//! Tenancy: which orgs a namespace may bill. One policy in the operator config
//! (`tenancy:`) decides it for ScannerRuns (which name an org in `spec.orgId`) and for the
//! token service (which picks the namespace's org for injected pods), so the two can never
//! disagree.
//!
//! ```yaml
//! tenancy:
//!   defaultOrg: acme                 # single-tenant: every namespace not listed uses org acme
//!   namespaces:
//!     team-a: {orgId: acme, budgetTokens: 200000}
//!     team-b: {orgId: bigcorp, otherOrgs: [bigcorp-research]}
//!   defaultPolicy: {orgId: shared}   # the long form of defaultOrg (set one or neither)
//! ```
//!
//! With no policy for a namespace, nothing in it gets a token: a ScannerRun fails
//! (`OrgNotAllowed`, with the config line to add) and the token service answers 403. A
//! fresh install therefore bills no org until the admin says which.
//!
//! Some namespaces hold no ScannerRun whatever the policy says ([`refuse_run_namespace`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::webhook::admission::skip_reason;

/// The `tenancy` section of the operator config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tenancy {
    /// Single-tenant shorthand: namespaces not listed use this org (as if
    /// `defaultPolicy: {orgId: <it>}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_org: Option<String>,
    /// Policy per namespace.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespacePolicy>,
    /// Policy of namespaces not listed; unset (and no `defaultOrg`): they bill no org.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<NamespacePolicy>,
}

/// What one namespace may bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacePolicy {
    /// The namespace's org: injected pods' TraTs bill it (`tctx.org_id`), and ScannerRuns
    /// may name it.
    pub org_id: String,
    /// Further orgs that ScannerRuns of the namespace may name in `spec.orgId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_orgs: Vec<String>,
    /// `tctx.budget_tokens` of every TraT minted for the namespace (provider tokens per run
    /// or per pod); unset: the gateway's default budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Whether a ScannerRun's `env` may read the namespace's Secrets (`valueFrom.secretKeyRef`).
    /// Off by default: otherwise whoever may create a ScannerRun reads any Secret of the
    /// namespace through the scanner, as strong as creating a pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_secret_env: bool,
}

impl NamespacePolicy {
    /// Refuses an `env` entry that reads a Secret unless the policy allows it.
    pub fn allow_env(
        &self,
        namespace: &str,
        env: &[k8s_openapi::api::core::v1::EnvVar],
    ) -> Result<(), TenancyError> {
        if self.allow_secret_env {
            return Ok(());
        }
        let reads_secret = env.iter().find_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.clone(), r.name.clone()))
        });
        match reads_secret {
            Some((name, secret)) => {
                Err(TenancyError::SecretEnvNotAllowed { namespace: namespace.into(), name, secret })
            }
            None => Ok(()),
        }
    }

    /// Every org the namespace may bill, its own first.
    pub fn allowed_orgs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.org_id.as_str()).chain(self.other_orgs.iter().map(String::as_str))
    }
}

/// Why a namespace may not bill an org. Each message names the namespace, the org and the
/// config key that would allow it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TenancyError {
    #[error(
        "namespace {namespace} has no tenancy policy, so nothing in it may bill org '{org}': add `tenancy: {{namespaces: {{{namespace}: {{orgId: {org}}}}}}}` to the operator config (or `tenancy: {{defaultOrg: {org}}}` for a single-tenant install)"
    )]
    NoPolicy { namespace: String, org: String },
    #[error(
        "namespace {namespace} may bill org {allowed}, not '{org}': set spec.orgId to {allowed}, or allow it in the operator config with `tenancy.namespaces.{namespace}.otherOrgs: [{org}]`"
    )]
    OrgNotAllowed { namespace: String, org: String, allowed: String },
    #[error(
        "spec.env[{name}] reads Secret '{secret}', and ScannerRuns of namespace {namespace} may not read Secrets: pass the value another way, or allow it in the operator config with `tenancy.namespaces.{namespace}.allowSecretEnv: true`"
    )]
    SecretEnvNotAllowed { namespace: String, name: String, secret: String },
}

impl TenancyError {
    /// Condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPolicy { .. } | Self::OrgNotAllowed { .. } => "OrgNotAllowed",
            Self::SecretEnvNotAllowed { .. } => "SecretEnvNotAllowed",
        }
    }
}

/// The form of an org id (`spec.orgId`'s schema rule); it also names a file at the gateway.
fn valid_org(org: &str) -> bool {
    let b = org.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

impl Tenancy {
    /// The policy of `namespace`: its own entry, else the default (`defaultPolicy` or
    /// `defaultOrg`), else `None` (it bills no org).
    pub fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        if let Some(p) = self.namespaces.get(namespace).or(self.default_policy.as_ref()) {
            return Some(p.clone());
        }
        self.default_org.as_ref().map(|org| NamespacePolicy {
            org_id: org.clone(),
            other_orgs: Vec::new(),
            budget_tokens: None,
            allow_secret_env: false,
        })
    }

    /// Whether a ScannerRun in `namespace` may bill `org`; `Ok` carries the policy (its
    /// budget goes into the TraT).
    pub fn allow_run(&self, namespace: &str, org: &str) -> Result<NamespacePolicy, TenancyError> {
        let Some(policy) = self.policy(namespace) else {
            return Err(TenancyError::NoPolicy { namespace: namespace.into(), org: org.into() });
        };
        if policy.allowed_orgs().any(|o| o == org) {
            return Ok(policy);
        }
        Err(TenancyError::OrgNotAllowed {
            namespace: namespace.into(),
            org: org.into(),
            allowed: policy.allowed_orgs().collect::<Vec<_>>().join(", "),
        })
    }

    /// Checks the section; the message names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_org.is_some() && self.default_policy.is_some() {
            return Err("tenancy.defaultOrg and tenancy.defaultPolicy both set the policy of unlisted namespaces: keep one".into());
        }
        let mut orgs: Vec<(String, &str)> = Vec::new();
        if let Some(org) = &self.default_org {
            orgs.push(("tenancy.defaultOrg".into(), org));
        }
        let listed = self.namespaces.iter().map(|(ns, p)| (format!("tenancy.namespaces.{ns}"), p));
        let default = self.default_policy.iter().map(|p| ("tenancy.defaultPolicy".to_owned(), p));
        for (key, policy) in listed.chain(default) {
            for org in policy.allowed_orgs() {
                orgs.push((key.clone(), org));
            }
        }
        for (key, org) in orgs {
            if !valid_org(org) {
                return Err(format!(
                    "{key}: org '{org}' must be 1-63 lower-case letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                ));
            }
        }
        Ok(())
    }

    /// Moves the pre-`tenancy` token service policy (`tokenService.namespaces` /
    /// `tokenService.defaultPolicy`) here, so old configs keep working for one release.
    pub fn absorb_legacy(
        &mut self,
        namespaces: &mut BTreeMap<String, NamespacePolicy>,
        default_policy: &mut Option<NamespacePolicy>,
    ) -> Result<(), String> {
        if namespaces.is_empty() && default_policy.is_none() {
            return Ok(());
        }
        if *self != Tenancy::default() {
            return Err("tokenService.namespaces/defaultPolicy (deprecated) and tenancy are both set: move the namespaces under tenancy.namespaces".into());
        }
        self.namespaces = std::mem::take(namespaces);
        self.default_policy = default_policy.take();
        Ok(())
    }
}

/// Condition and Event reason of a run in a namespace ScannerRuns may not use.
pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";

/// Why ScannerRuns may not run in `namespace`, or `None` when they may: the namespaces the
/// admission webhook never injects ([`skip_reason`]: `kube-system` and the operator's own,
/// the one list both use), and the gateway's (`gateway.namespace`), which holds the
/// provider keys. The message names the namespace and what to do.
pub fn refuse_run_namespace(namespace: &str, config: &OperatorConfig) -> Option<String> {
    let why = match skip_reason(namespace, config) {
        Some(why) => why,
        None if namespace == config.gateway.namespace => {
            "it is the gateway's namespace, which holds the provider keys"
        }
        None => return None,
    };
    Some(format!(
        "ScannerRuns may not run in namespace {namespace} ({why}); create the run in a namespace meant for scans, one the operator config's tenancy section lets bill an org"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_refused_where_sanctum_never_injects_and_in_the_gateway_s_namespace() {
        let config = OperatorConfig::default();
        assert_eq!(
            (config.namespace.as_str(), config.gateway.namespace.as_str()),
            ("sanctum-system", "scan-infra")
        );
        for (ns, why) in [
            ("kube-system", "kube-system is never injected"),
            ("sanctum-system", "the operator's own namespace"),
            ("scan-infra", "provider keys"),
        ] {
            let message = refuse_run_namespace(ns, &config).unwrap();
            assert!(message.contains(&format!("namespace {ns} (")), "{message}");
            assert!(message.contains(why) && message.contains("meant for scans"), "{message}");
        }
        assert_eq!(refuse_run_namespace("team-a", &config), None);
    }

    fn tenancy(yaml: &str) -> Tenancy {
        let t: Tenancy = serde_yaml::from_str(yaml).unwrap();
        t.validate().unwrap();
        t
    }

    #[test]
    fn no_policy_bills_no_org_and_says_what_to_add() {
        let err = Tenancy::default().allow_run("team-a", "bigcorp").unwrap_err();
        assert_eq!(err.reason(), "OrgNotAllowed");
        let msg = err.to_string();
        assert!(msg.contains("team-a") && msg.contains("bigcorp"), "{msg}");
        assert!(msg.contains("tenancy: {namespaces: {team-a: {orgId: bigcorp}}}"), "{msg}");
        assert!(msg.contains("tenancy: {defaultOrg: bigcorp}"), "{msg}");
    }

    #[test]
    fn a_namespace_bills_only_its_orgs() {
        let t = tenancy(
            "namespaces:\n  team-a: {orgId: acme, budgetTokens: 9}\n  team-b: {orgId: bigcorp, otherOrgs: [labs]}\n",
        );
        assert_eq!(t.allow_run("team-a", "acme").unwrap().budget_tokens, Some(9));
        let err = t.allow_run("team-a", "bigcorp").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TenancyError::OrgNotAllowed { .. }));
        assert!(msg.contains("namespace team-a may bill org acme, not 'bigcorp'"), "{msg}");
        assert!(msg.contains("tenancy.namespaces.team-a.otherOrgs: [bigcorp]"), "{msg}");
        t.allow_run("team-b", "labs").unwrap();
        t.allow_run("team-b", "bigcorp").unwrap();
        // Unlisted namespaces have no default here.
        assert!(matches!(t.allow_run("team-c", "acme"), Err(TenancyError::NoPolicy { .. })));
    }

    #[test]
    fn single_tenant_is_one_line() {
        let t = tenancy("defaultOrg: acme\n");
        t.allow_run("anything", "acme").unwrap();
        assert!(t.allow_run("anything", "bigcorp").is_err());
        assert_eq!(t.policy("x").unwrap().org_id, "acme");
        // A listed namespace overrides the default.
        let t = tenancy("defaultOrg: acme\nnamespaces:\n  team-b: {orgId: bigcorp}\n");
        assert!(t.allow_run("team-b", "acme").is_err());
    }

    #[test]
    fn bad_sections_are_explained() {
        let both: Tenancy =
            serde_yaml::from_str("defaultOrg: a\ndefaultPolicy: {orgId: b}\n").unwrap();
        assert!(both.validate().unwrap_err().contains("keep one"));
        let bad: Tenancy =
            serde_yaml::from_str("namespaces:\n  t: {orgId: a, otherOrgs: [Big Corp]}\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("tenancy.namespaces.t: org 'Big Corp'"));
        assert!(serde_yaml::from_str::<Tenancy>("namespace: {}\n").is_err());
    }

    #[test]
    fn legacy_token_service_policy_moves_here() {
        let mut legacy = BTreeMap::from([(
            "team".to_owned(),
            NamespacePolicy {
                org_id: "acme".into(),
                other_orgs: vec![],
                budget_tokens: None,
                allow_secret_env: false,
            },
        )]);
        let mut default = None;
        let mut t = Tenancy::default();
        t.absorb_legacy(&mut legacy, &mut default).unwrap();
        assert_eq!(t.policy("team").unwrap().org_id, "acme");
        assert!(legacy.is_empty());
        let mut again = BTreeMap::from([("x".to_owned(), t.policy("team").unwrap())]);
        assert!(t.absorb_legacy(&mut again, &mut default).unwrap_err().contains("both set"));
    }

    /// Issue 12 item 18: a ScannerRun's env reads a Secret only where the policy says so.
    #[test]
    fn secret_env_needs_the_policy() {
        use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
        let env = vec![
            EnvVar { name: "PLAIN".into(), value: Some("x".into()), ..Default::default() },
            EnvVar {
                name: "TOKEN".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "db-admin".into(),
                        key: "password".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let t: Tenancy = serde_yaml::from_str("defaultOrg: acme").unwrap();
        let policy = t.allow_run("team-a", "acme").unwrap();
        assert!(policy.allow_env("team-a", &env[..1]).is_ok());
        let err = policy.allow_env("team-a", &env).unwrap_err();
        assert_eq!(err.reason(), "SecretEnvNotAllowed");
        let message = err.to_string();
        assert!(message.contains("spec.env[TOKEN]") && message.contains("db-admin"), "{message}");
        assert!(message.contains("tenancy.namespaces.team-a.allowSecretEnv"), "{message}");
        let t: Tenancy =
            serde_yaml::from_str("namespaces: {team-a: {orgId: acme, allowSecretEnv: true}}")
                .unwrap();
        assert!(t.allow_run("team-a", "acme").unwrap().allow_env("team-a", &env).is_ok());
    }
}
