//! The gateway config file (`--config`, YAML; unknown keys are refused): per org, its
//! provider and credentials, its request policy (models, betas, provider-side tools) and its
//! budget and rate defaults. The annotated shape is at the top of [`crate::provider`].
//!
//! An org entry's absent key takes the `default:` entry's value; `default:`'s absent key the
//! built-in default (or the command-line flag named on the field).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    /// Every org not listed under `orgs`.
    #[serde(default)]
    pub default: OrgSpec,
    /// Org id (the TraT's `tctx.org_id`) → its entry.
    #[serde(default)]
    pub orgs: BTreeMap<String, OrgSpec>,
}

/// Which provider an org's requests go to.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The Anthropic Messages API at `--upstream`, with the org's key from `--keys-dir`.
    #[default]
    Anthropic,
    /// Amazon Bedrock `InvokeModel`, configured by the entry's `bedrock:`.
    Bedrock,
}

/// One org's entry (`default:` or `orgs.<org>:`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrgSpec {
    /// `anthropic` (built-in default) or `bedrock`.
    pub provider: Option<ProviderKind>,
    /// Bedrock settings; required when `provider: bedrock`.
    pub bedrock: Option<BedrockSpec>,
    /// Allowed `model` values (patterns, `*` any characters). Built-in default: `["*"]`.
    pub models: Option<Vec<String>>,
    /// Allowed `anthropic-beta` values (patterns), each of a comma list. Default `["*"]`.
    pub betas: Option<Vec<String>>,
    /// Provider-side tools allowed: `mcp_servers` (the request field), or a tool type without
    /// its date (`web_search`, `web_fetch`, `code_execution`, …). Default: none.
    pub server_tools: Option<Vec<String>>,
    /// Token budget of a run whose TraT sets no `tctx.budget_tokens`. Default:
    /// `--default-budget-tokens`.
    pub budget_tokens: Option<u64>,
    /// Requests per minute per run; 0 turns the limit off. Default: `--rate-limit-per-minute`.
    pub rate_per_minute: Option<u32>,
    /// Requests a run may send at once above its rate. Default: `--rate-limit-burst`.
    pub rate_burst: Option<u32>,
}

/// Amazon Bedrock for one org.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BedrockSpec {
    /// AWS region of the Bedrock runtime, e.g. `eu-central-1` (also the SigV4 region).
    pub region: String,
    /// Endpoint base URL without a path. Default
    /// `https://bedrock-runtime.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The `model` the agent sends → the Bedrock model id or inference-profile id
    /// (`eu.anthropic.claude-sonnet-4-5-20250929-v1:0`). A model not listed is refused.
    #[serde(default)]
    pub model_ids: BTreeMap<String, String>,
    /// Where the AWS credentials come from.
    pub credentials: CredentialsSpec,
    /// The `anthropic-beta` names passed on to Bedrock (in the body's `anthropic_beta`);
    /// the others are left out of the request, not refused (Bedrock would refuse the whole
    /// call: 400 `ValidationException`, "invalid beta flag"). `['*']` passes every name.
    /// Default: [`crate::bedrock::DEFAULT_BETAS`], the betas AWS documents for Anthropic
    /// Claude models; keeping the list current is the operator's. The org's `betas:` request
    /// policy (refuse what is not allowed) applies first.
    pub betas: Option<Vec<String>>,
}

impl BedrockSpec {
    /// The beta names to pass to Bedrock: `None` passes every name (`betas: ['*']`);
    /// otherwise the org's list, or [`crate::bedrock::DEFAULT_BETAS`] when it has none.
    pub fn passed_betas(&self) -> Option<Vec<String>> {
        match &self.betas {
            Some(list) if list.iter().any(|b| b == "*") => None,
            Some(list) => Some(list.clone()),
            None => Some(crate::bedrock::DEFAULT_BETAS.iter().map(|b| (*b).to_owned()).collect()),
        }
    }
}

/// The AWS credentials of a Bedrock org: exactly one of the two keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// A directory (a mounted Secret) with files `aws_access_key_id`,
    /// `aws_secret_access_key` and, for temporary credentials, `aws_session_token`; re-read
    /// when they change.
    pub secret_dir: Option<PathBuf>,
    /// STS `AssumeRoleWithWebIdentity` with a projected token (EKS IRSA).
    pub web_identity: Option<WebIdentitySpec>,
}

/// STS web-identity federation (<https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html>).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebIdentitySpec {
    /// The role to assume, `arn:aws:iam::<account>:role/<name>`.
    pub role_arn: String,
    /// The OIDC token file, re-read at each refresh
    /// (`/var/run/secrets/eks.amazonaws.com/serviceaccount/token` under IRSA).
    pub token_file: PathBuf,
    /// `RoleSessionName`; default `sanctum-gateway`.
    pub session_name: Option<String>,
    /// STS endpoint base URL; default `https://sts.<region>.amazonaws.com`.
    pub sts_endpoint: Option<String>,
}

/// Errors of the gateway config file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read --config {path}: {why}")]
    Read { path: String, why: String },
    #[error("--config {path} is not a gateway config (YAML: default, orgs): {why}")]
    Parse { path: String, why: String },
    #[error("--config: org '{org}': {why}")]
    Org { org: String, why: String },
}

impl ConfigFile {
    /// Reads and checks the gateway config file (`--config`).
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), why: e.to_string() })?;
        let file: Self = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: shown, why: e.to_string() })?;
        file.check()?;
        Ok(file)
    }

    /// The effective entry of `org` (an org key left out comes from `default:`).
    pub fn org(&self, org: &str) -> OrgSpec {
        match self.orgs.get(org) {
            None => self.default.clone(),
            Some(o) => {
                let d = &self.default;
                OrgSpec {
                    provider: o.provider.or(d.provider),
                    bedrock: o.bedrock.clone().or_else(|| d.bedrock.clone()),
                    models: o.models.clone().or_else(|| d.models.clone()),
                    betas: o.betas.clone().or_else(|| d.betas.clone()),
                    server_tools: o.server_tools.clone().or_else(|| d.server_tools.clone()),
                    budget_tokens: o.budget_tokens.or(d.budget_tokens),
                    rate_per_minute: o.rate_per_minute.or(d.rate_per_minute),
                    rate_burst: o.rate_burst.or(d.rate_burst),
                }
            }
        }
    }

    /// Refuses entries that cannot work: Bedrock without its settings, credentials naming
    /// both sources or none, an empty region.
    pub fn check(&self) -> Result<(), ConfigError> {
        let entries = std::iter::once(("default", None))
            .chain(self.orgs.keys().map(|k| (k.as_str(), Some(k.as_str()))));
        for (shown, org) in entries {
            let spec = match org {
                None => self.default.clone(),
                Some(o) => self.org(o),
            };
            let fail = |why: &str| ConfigError::Org { org: shown.to_owned(), why: why.to_owned() };
            if spec.provider == Some(ProviderKind::Bedrock) {
                let Some(b) = &spec.bedrock else {
                    return Err(fail(
                        "provider: bedrock needs a 'bedrock:' entry (region, modelIds, credentials)",
                    ));
                };
                if b.region.trim().is_empty() {
                    return Err(fail(
                        "bedrock.region is empty: name the AWS region, e.g. us-east-1",
                    ));
                }
                match (&b.credentials.secret_dir, &b.credentials.web_identity) {
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => {
                        return Err(fail(
                            "bedrock.credentials needs exactly one of secretDir or webIdentity",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_policy_files_stay_valid_and_mean_anthropic() {
        let f: ConfigFile =
            serde_yaml::from_str("default:\n  models: ['x*']\norgs:\n  a:\n    betas: []\n")
                .unwrap();
        f.check().unwrap();
        assert_eq!(f.org("a").provider.unwrap_or_default(), ProviderKind::Anthropic);
        assert_eq!(f.org("a").models, Some(vec!["x*".to_owned()]));
        assert_eq!(f.org("a").betas, Some(vec![]));
    }

    #[test]
    fn bedrock_org() {
        let f: ConfigFile = serde_yaml::from_str(
            "default:\n  budgetTokens: 1000\norgs:\n  g:\n    provider: bedrock\n    ratePerMinute: 5\n    bedrock:\n      region: eu-central-1\n      modelIds: {claude-sonnet-4-5: eu.anthropic.claude-sonnet-4-5-v1:0}\n      credentials:\n        secretDir: /s\n",
        )
        .unwrap();
        f.check().unwrap();
        let g = f.org("g");
        assert_eq!(g.provider, Some(ProviderKind::Bedrock));
        assert_eq!(g.budget_tokens, Some(1000));
        assert_eq!(g.rate_per_minute, Some(5));
        let b = g.bedrock.unwrap();
        assert_eq!(b.model_ids["claude-sonnet-4-5"], "eu.anthropic.claude-sonnet-4-5-v1:0");
        let default = b.passed_betas().unwrap();
        assert!(default.iter().any(|n| n == "interleaved-thinking-2025-05-14"), "{default:?}");
        assert!(!default.iter().any(|n| n == "per-turn-control-2026-07-01"), "{default:?}");
        let with = |betas: &str| {
            let f: ConfigFile = serde_yaml::from_str(&format!(
                "orgs:\n  g:\n    provider: bedrock\n    bedrock: {{region: r, credentials: {{secretDir: /s}}, betas: {betas}}}\n"
            ))
            .unwrap();
            f.check().unwrap();
            f.org("g").bedrock.unwrap().passed_betas()
        };
        assert_eq!(with("['*']"), None);
        assert_eq!(with("[]"), Some(vec![]));
        assert_eq!(with("[a-1, b-2]"), Some(vec!["a-1".to_owned(), "b-2".to_owned()]));
        for bad in [
            "orgs:\n  g:\n    provider: bedrock\n",
            "orgs:\n  g:\n    provider: bedrock\n    bedrock: {region: r, credentials: {}}\n",
            "orgs:\n  g:\n    provider: bedrock\n    bedrock: {region: '', credentials: {secretDir: /s}}\n",
        ] {
            let f: ConfigFile = serde_yaml::from_str(bad).unwrap();
            assert!(f.check().is_err(), "{bad}");
        }
        assert!(serde_yaml::from_str::<ConfigFile>("default:\n  provider: openai\n").is_err());
        assert!(
            serde_yaml::from_str::<ConfigFile>(
                "default:\n  bedrock: {region: r, credentials: {secretDir: /s}, extra: 1}\n"
            )
            .is_err()
        );
    }
}
