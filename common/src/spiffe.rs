//! SPIFFE IDs of scanners: `spiffe://<trust-domain>/scanner/<run-id>`.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID must start with spiffe://")]
    Scheme,
    #[error(
        "SPIFFE ID trust domain '{0}' is invalid: use lower-case letters, digits, '.', '-', '_'"
    )]
    TrustDomain(String),
    #[error(
        "SPIFFE ID path '{0}' is invalid: non-empty segments of letters, digits, '.', '-', '_'"
    )]
    Path(String),
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        })
}

impl SpiffeId {
    /// `spiffe://<trust_domain>/<segments joined by '/'>`.
    pub fn new(trust_domain: &str, segments: &[&str]) -> Result<Self, SpiffeIdError> {
        if !valid_trust_domain(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(trust_domain.to_owned()));
        }
        let path = format!("/{}", segments.join("/"));
        if !valid_path(&path) {
            return Err(SpiffeIdError::Path(path));
        }
        Ok(Self { trust_domain: trust_domain.to_owned(), path })
    }

    /// The identity of the scanner of one run.
    /// A run id is one path segment: a '/' in it is refused, not turned into two.
    pub fn scanner(trust_domain: &str, run_id: &str) -> Result<Self, SpiffeIdError> {
        if run_id.contains('/') {
            return Err(SpiffeIdError::Path(format!("/scanner/{run_id}")));
        }
        Self::new(trust_domain, &["scanner", run_id])
    }

    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if !valid_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(td.to_owned()));
        }
        if !valid_path(path) {
            return Err(SpiffeIdError::Path(path.to_owned()));
        }
        Ok(Self { trust_domain: td.to_owned(), path: path.to_owned() })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_id_round_trips() {
        let id = SpiffeId::scanner("sage-sanctum.local", "run-42").unwrap();
        assert_eq!(id.to_string(), "spiffe://sage-sanctum.local/scanner/run-42");
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(SpiffeId::parse("http://x/y"), Err(SpiffeIdError::Scheme));
        assert!(matches!(SpiffeId::parse("spiffe://UPPER/x"), Err(SpiffeIdError::TrustDomain(_))));
        assert!(matches!(SpiffeId::parse("spiffe://td/a//b"), Err(SpiffeIdError::Path(_))));
        assert!(matches!(SpiffeId::parse("spiffe://td/a/../b"), Err(SpiffeIdError::Path(_))));
        assert!(matches!(SpiffeId::scanner("td", "a/b"), Err(SpiffeIdError::Path(_))));
        assert!(matches!(SpiffeId::scanner("td", "a b"), Err(SpiffeIdError::Path(_))));
    }
}
