//! A ScannerRun resolved against the operator config: every default filled in and every
//! check that the schema cannot make done once, so the builders can trust what they get.
//! A run that fails here ends `Failed` with a condition that says what to fix.

use sanctum_common::SpiffeId;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::{IdentitySource, ScannerRun};
use crate::names;

/// The repository, resolved: exactly one of the two sources.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoSource {
    Git { url: String, revision: Option<String> },
    Volume { claim_name: String, sub_path: Option<String> },
}

/// Everything the builders need about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub name: String,
    pub namespace: String,
    /// The ScannerRun's UID: unique for all time, so it names the run in the SPIFFE ID and
    /// is the TraT's `txn` (the unit of budget and revocation).
    pub uid: String,
    pub identity: IdentitySource,
    pub audience: String,
    pub trust_domain: String,
    /// `sub` of both tokens.
    pub subject: String,
    pub gateway_url: String,
    pub timeout_seconds: i64,
    pub org_id: String,
    pub repo: String,
    pub source: RepoSource,
    pub pod_name: String,
    pub secret_name: String,
    pub network_policy_name: String,
}

/// Why a ScannerRun cannot be built; each names the field and what to do.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlanError {
    #[error("spec.source: set exactly one of git or volume")]
    Source,
    #[error(
        "spec.image '{0}' is not a valid image reference: use [registry/]repository[:tag][@sha256:digest] in lower case"
    )]
    Image(String),
    #[error("spec.timeoutSeconds must be positive, got {0}")]
    Timeout(i64),
    #[error("spec.identity.trustDomain '{0}' is not a valid SPIFFE trust domain")]
    TrustDomain(String),
    #[error("{0}")]
    Gateway(String),
    #[error(
        "metadata.{0} is missing: the ScannerRun must come from the API server (or name a namespace for render)"
    )]
    Metadata(&'static str),
    #[error("metadata.name '{0}' is longer than {max} characters: it names the run's pod, Secret and NetworkPolicy", max = names::MAX_RUN_NAME)]
    NameTooLong(String),
}

impl PlanError {
    /// Condition reason (PascalCase) of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Source => "InvalidSource",
            PlanError::Image(_) => "InvalidImage",
            PlanError::Timeout(_) => "InvalidTimeout",
            PlanError::TrustDomain(_) => "InvalidIdentity",
            PlanError::Gateway(_) => "InvalidGateway",
            PlanError::Metadata(_) | PlanError::NameTooLong(_) => "InvalidMetadata",
        }
    }
}

/// Checks an image reference the way container runtimes parse them: an optional registry
/// host, lower-case path components, an optional tag and an optional digest.
pub fn valid_image(image: &str) -> bool {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some(hex) = d.strip_prefix("sha256:") else { return false };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return false;
        }
    }
    // A tag is after the last ':' that follows the last '/' (a registry may carry a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return false;
        }
    }
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut parts = name.split('/').peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        let is_registry =
            first && parts.peek().is_some() && (part.contains(['.', ':']) || part == "localhost");
        first = false;
        let ok = if is_registry {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        } else {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric()
                && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        };
        if !ok {
            return false;
        }
    }
    true
}

impl RunPlan {
    pub fn new(run: &ScannerRun, config: &OperatorConfig) -> Result<Self, PlanError> {
        let spec = &run.spec;
        let name = run.metadata.name.clone().ok_or(PlanError::Metadata("name"))?;
        if name.len() > names::MAX_RUN_NAME {
            return Err(PlanError::NameTooLong(name));
        }
        let namespace = run.metadata.namespace.clone().ok_or(PlanError::Metadata("namespace"))?;
        let uid = run.metadata.uid.clone().ok_or(PlanError::Metadata("uid"))?;
        let (repo, source) = match (&spec.source.git, &spec.source.volume) {
            (Some(git), None) => (
                git.url.clone(),
                RepoSource::Git { url: git.url.clone(), revision: git.revision.clone() },
            ),
            (None, Some(volume)) => (
                format!("pvc://{}/{}", namespace, volume.claim_name),
                RepoSource::Volume {
                    claim_name: volume.claim_name.clone(),
                    sub_path: volume.sub_path.clone(),
                },
            ),
            _ => return Err(PlanError::Source),
        };
        if !valid_image(&spec.image) {
            return Err(PlanError::Image(spec.image.clone()));
        }
        let timeout_seconds = run.timeout_seconds();
        if timeout_seconds <= 0 {
            return Err(PlanError::Timeout(timeout_seconds));
        }
        let identity_spec = spec.identity.clone().unwrap_or_default();
        let identity = identity_spec.source.unwrap_or(config.identity.source);
        let audience = identity_spec.audience.unwrap_or_else(|| config.identity.audience.clone());
        let trust_domain =
            identity_spec.trust_domain.unwrap_or_else(|| config.identity.trust_domain.clone());
        let spiffe_id = SpiffeId::scanner(&trust_domain, &uid)
            .map_err(|_| PlanError::TrustDomain(trust_domain.clone()))?;
        // A projected ServiceAccount token's `sub` is the ServiceAccount; the TraT must carry
        // the same `sub` for the gateway to bind the two.
        let subject = match identity {
            IdentitySource::Spiffe => spiffe_id.to_string(),
            IdentitySource::ServiceAccountToken => {
                format!("system:serviceaccount:{namespace}:{}", config.pod.service_account_name)
            }
        };
        // Both tokens go to the gateway named here: only the operator's allow-list may be named.
        let gateway_url = match &spec.gateway {
            None => config.gateway.url.clone(),
            Some(url) => {
                config.gateway.check_override("spec.gateway", url).map_err(PlanError::Gateway)?
            }
        };
        Ok(Self {
            pod_name: names::pod(&name),
            secret_name: names::secret(&name),
            network_policy_name: names::network_policy(&name),
            name,
            namespace,
            uid,
            identity,
            audience,
            trust_domain,
            subject,
            gateway_url,
            timeout_seconds,
            org_id: spec.org_id.clone(),
            repo,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "alpine",
            "alpine:3.20",
            "ghcr.io/sanctum-dev/scanner:1.0",
            "localhost:5000/x/y:latest",
            "registry.example.com:443/team/scanner@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker.io/library/python:3.11-slim",
        ] {
            assert!(valid_image(ok), "{ok} should be valid");
        }
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "alpine:",
            "alpine:-bad",
            "x@sha256:short",
            "/leading",
            "trailing/",
            "a//b",
            "ghcr.io/x/y:tag:again",
        ] {
            assert!(!valid_image(bad), "{bad:?} should be invalid");
        }
    }
}
