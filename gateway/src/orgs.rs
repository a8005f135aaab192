//! The orgs the gateway serves, compiled from the config file: per org its provider, its
//! request policy, and its budget and rate defaults. Looked up once per request, after the
//! TraT named the org ([`Orgs::get`]: one map lookup, no allocation).

use std::collections::HashMap;
use std::sync::Arc;

use super::config::{BedrockSpec, ConfigError, ConfigFile, ProviderKind};
use super::keys::KeyedOrgs;
use super::policy::{Policies, Policy};
use super::provider::Provider;
use super::ratelimit::RateLimit;

/// One org, as the pipeline uses it.
pub struct Org {
    /// Where its requests go, and how.
    pub provider: Arc<dyn Provider>,
    /// Its models, betas and provider-side tools.
    pub policy: Policy,
    /// Budget (tokens) of a run whose TraT sets none.
    pub budget_tokens: u64,
    /// Its runs' request rate; `None`: no limit.
    pub rate: Option<RateLimit>,
}

/// The built-in values of what an org entry leaves out (the command-line flags).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `--default-budget-tokens`.
    pub budget_tokens: u64,
    /// `--rate-limit-per-minute` (0: no limit).
    pub rate_per_minute: u32,
    /// `--rate-limit-burst`.
    pub rate_burst: u32,
}

/// Every org's entry; orgs not in the config file get the default entry.
pub struct Orgs {
    default: Org,
    orgs: HashMap<String, Org>,
    keyed: KeyedOrgs,
}

impl Orgs {
    /// Compiles `file`. `anthropic` serves every org whose provider is `anthropic`;
    /// `bedrock` builds the provider of an org whose provider is `bedrock` (its name, or
    /// `default`, and its settings).
    pub fn new(
        file: &ConfigFile,
        defaults: Defaults,
        anthropic: Arc<dyn Provider>,
        mut bedrock: impl FnMut(&str, &BedrockSpec) -> Result<Arc<dyn Provider>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        file.check()?;
        let policies = Policies::new(file);
        // `None`: the `default:` entry (an org may be called "default" too).
        let mut build =
            |name: Option<&str>, spec: &super::config::OrgSpec| -> Result<Org, ConfigError> {
                let policy = match name {
                    Some(org) => policies.policy(org),
                    None => policies.default_policy(),
                };
                let name = name.unwrap_or("default");
                let provider = match spec.provider.unwrap_or_default() {
                    ProviderKind::Anthropic => anthropic.clone(),
                    ProviderKind::Bedrock => {
                        let b = spec.bedrock.as_ref().ok_or_else(|| ConfigError::Org {
                            org: name.to_owned(),
                            why: "provider: bedrock needs a 'bedrock:' entry".into(),
                        })?;
                        bedrock(name, b)?
                    }
                };
                Ok(Org {
                    provider,
                    policy: policy.clone(),
                    budget_tokens: spec.budget_tokens.unwrap_or(defaults.budget_tokens),
                    rate: RateLimit::per_minute(
                        spec.rate_per_minute.unwrap_or(defaults.rate_per_minute),
                        spec.rate_burst.unwrap_or(defaults.rate_burst),
                    ),
                })
            };
        let default = build(None, &file.default)?;
        let mut keyed = KeyedOrgs {
            unlisted: file.default.provider.unwrap_or_default() == ProviderKind::Anthropic,
            ..KeyedOrgs::default()
        };
        let mut orgs = HashMap::with_capacity(file.orgs.len());
        for name in file.orgs.keys() {
            let spec = file.org(name);
            match spec.provider.unwrap_or_default() {
                ProviderKind::Anthropic => keyed.listed.push(name.clone()),
                ProviderKind::Bedrock => keyed.elsewhere.push(name.clone()),
            }
            orgs.insert(name.clone(), build(Some(name), &spec)?);
        }
        Ok(Self { default, orgs, keyed })
    }

    /// The org's entry (the default entry for an org the file does not list).
    pub fn get(&self, org: &str) -> &Org {
        self.orgs.get(org).unwrap_or(&self.default)
    }

    /// Which orgs need a key in `--keys-dir` (for readiness, [`crate::keys::ProviderKeys::readiness`]).
    pub fn keyed(&self) -> &KeyedOrgs {
        &self.keyed
    }

    /// Each distinct provider once (for readiness).
    pub fn providers(&self) -> Vec<&Arc<dyn Provider>> {
        let mut out: Vec<&Arc<dyn Provider>> = vec![&self.default.provider];
        for org in self.orgs.values() {
            if !out.iter().any(|p| Arc::ptr_eq(p, &org.provider)) {
                out.push(&org.provider);
            }
        }
        out
    }
}
