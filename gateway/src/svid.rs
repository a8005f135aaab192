//! JWT-SVID checks: the caller's identity.
//!
//! Identity sources (DESIGN.md): a SPIRE JWT-SVID (`sub` = `spiffe://<td>/scanner/<run>`) or
//! a projected Kubernetes ServiceAccount token (`sub` = `system:serviceaccount:<ns>:<sa>`,
//! plus a `kubernetes.io` claim naming the pod). Both are checked the same way: signature
//! (against the SVID JWKS), `aud`, `exp`/`nbf` with a small leeway, and `sub` against the
//! allowed-subject patterns (`--allowed-sub`, default `spiffe://<td>/scanner/*`). A cluster
//! without SPIRE adds e.g. `--allowed-sub 'system:serviceaccount:scan-run:*'`; the TraT of
//! such a pod then carries the ServiceAccount subject as its `sub` (the binding rule is the
//! same: TraT `sub` == SVID `sub`), and when both name the pod, its UID must match too.

use serde::Deserialize;
use thiserror::Error;

use sanctum_common::claims::Audience;

/// Subject pattern: literal text where `*` matches one non-empty segment (no `/` or `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an allowed-subject pattern must not be empty".into());
        }
        if pattern.contains("**") {
            return Err(format!(
                "allowed-subject pattern '{pattern}': '*' matches one segment; '**' is not supported"
            ));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// The default: every scanner of the trust domain.
    pub fn scanners(trust_domain: &str) -> Self {
        Self(format!("spiffe://{trust_domain}/scanner/*"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, subject: &str) -> bool {
        glob(self.0.as_bytes(), subject.as_bytes())
    }
}

/// `*` matches one or more bytes other than `/` and `:`; everything else is literal.
/// Backtracking is bounded by the (short) pattern and subject lengths.
fn glob(pattern: &[u8], subject: &[u8]) -> bool {
    match pattern.split_first() {
        None => subject.is_empty(),
        Some((b'*', rest)) => {
            let seg =
                subject.iter().position(|b| *b == b'/' || *b == b':').unwrap_or(subject.len());
            (1..=seg).rev().any(|n| glob(rest, &subject[n..]))
        }
        Some((c, rest)) => subject.first() == Some(c) && glob(rest, &subject[1..]),
    }
}

/// The `kubernetes.io` claim of a projected ServiceAccount token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubernetesClaim {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<NamedRef>,
    #[serde(default)]
    pub serviceaccount: Option<NamedRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NamedRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
}

/// The claims of a JWT-SVID (or ServiceAccount token) the gateway reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SvidTokenClaims {
    pub sub: Option<String>,
    pub aud: Option<Audience>,
    pub exp: Option<serde_json::Number>,
    #[serde(default)]
    pub nbf: Option<serde_json::Number>,
    #[serde(default, rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaim>,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub exp: u64,
    pub nbf: Option<u64>,
    /// The pod's UID, when the token names one (ServiceAccount tokens).
    pub pod_uid: Option<String>,
    /// The pod's name, when the token names one (`kubernetes.io.pod.name` of a bound
    /// ServiceAccount token).
    pub pod_name: Option<String>,
}

impl Identity {
    /// Whether the caller presented a Kubernetes ServiceAccount token (rather than a SPIRE
    /// JWT-SVID): such a `sub` names only the ServiceAccount, so the pod binding is what tells
    /// one pod of that ServiceAccount from another.
    pub fn is_service_account(&self) -> bool {
        self.sub.starts_with("system:serviceaccount:")
    }
}

impl Identity {
    /// Whether the token is inside its validity window at `now` (± `leeway`).
    pub fn time_check(&self, now: u64, leeway: u64) -> Result<(), SvidError> {
        if now > self.exp.saturating_add(leeway) {
            return Err(SvidError::Expired { exp: self.exp, now });
        }
        if let Some(nbf) = self.nbf
            && now.saturating_add(leeway) < nbf
        {
            return Err(SvidError::NotYetValid { nbf, now });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SvidError {
    #[error("has no 'sub' claim")]
    NoSub,
    #[error("has no numeric 'exp' claim; the issuer must set an expiry")]
    NoExp,
    #[error("has a non-numeric 'nbf' claim")]
    BadNbf,
    #[error("expired at {exp} (now {now}); the pod's token file is not being rotated")]
    Expired { exp: u64, now: u64 },
    #[error("is not valid before {nbf} (now {now}); check the clocks")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("is not issued for audience '{0}'; mint it with that audience")]
    Audience(String),
    #[error("names subject '{sub}', which this gateway does not allow (allowed: {allowed})")]
    SubjectNotAllowed { sub: String, allowed: String },
}

/// The configured rules for JWT-SVIDs.
#[derive(Debug, Clone)]
pub struct SvidPolicy {
    pub audience: String,
    pub leeway: u64,
    pub allowed: Vec<SubjectPattern>,
}

fn number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

impl SvidPolicy {
    /// Checks verified claims. Time is checked with `now`; the result may be cached until `exp`
    /// because every other check depends only on the claims and this policy.
    pub fn check(&self, claims: SvidTokenClaims, now: u64) -> Result<Identity, SvidError> {
        let sub = claims.sub.filter(|s| !s.is_empty()).ok_or(SvidError::NoSub)?;
        let exp = claims.exp.as_ref().and_then(number).ok_or(SvidError::NoExp)?;
        let nbf = match &claims.nbf {
            None => None,
            Some(n) => Some(number(n).ok_or(SvidError::BadNbf)?),
        };
        if !claims.aud.as_ref().is_some_and(|a| a.contains(&self.audience)) {
            return Err(SvidError::Audience(self.audience.clone()));
        }
        let pod = claims.kubernetes.and_then(|k| k.pod).unwrap_or_default();
        let identity = Identity { sub, exp, nbf, pod_uid: pod.uid, pod_name: pod.name };
        identity.time_check(now, self.leeway)?;
        if !self.allowed.iter().any(|p| p.matches(&identity.sub)) {
            return Err(SvidError::SubjectNotAllowed {
                sub: identity.sub,
                allowed: self.allowed.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SvidPolicy {
        SvidPolicy {
            audience: "sanctum-gateway".into(),
            leeway: 30,
            allowed: vec![
                SubjectPattern::scanners("sage-sanctum.local"),
                SubjectPattern::new("system:serviceaccount:scan-run:*").unwrap(),
            ],
        }
    }

    fn claims(v: serde_json::Value) -> SvidTokenClaims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn patterns() {
        let p = SubjectPattern::scanners("td");
        assert!(p.matches("spiffe://td/scanner/run-1"));
        assert!(!p.matches("spiffe://td/scanner/"));
        assert!(!p.matches("spiffe://td/scanner/a/b"));
        assert!(!p.matches("spiffe://td/scanner"));
        assert!(!p.matches("spiffe://td2/scanner/a"));
        assert!(!p.matches("spiffe://td/admin/a"));
        let sa = SubjectPattern::new("system:serviceaccount:ns:*").unwrap();
        assert!(sa.matches("system:serviceaccount:ns:scanner"));
        assert!(!sa.matches("system:serviceaccount:ns:a:b"));
        assert!(!sa.matches("system:serviceaccount:other:a"));
        let mid = SubjectPattern::new("spiffe://td/*/agent").unwrap();
        assert!(mid.matches("spiffe://td/x/agent"));
        assert!(!mid.matches("spiffe://td/x/y/agent"));
        assert!(!mid.matches("spiffe://td//agent"));
        let suffix = SubjectPattern::new("spiffe://td/scanner/run-*-a").unwrap();
        assert!(suffix.matches("spiffe://td/scanner/run-1-a"));
        assert!(!suffix.matches("spiffe://td/scanner/run--a"));
        assert!(suffix.matches("spiffe://td/scanner/run-x-a-a"));
        let exact = SubjectPattern::new("spiffe://td/x").unwrap();
        assert!(exact.matches("spiffe://td/x") && !exact.matches("spiffe://td/xy"));
        assert!(SubjectPattern::new("").is_err() && SubjectPattern::new("a/**").is_err());
    }

    #[test]
    fn good_svid() {
        let id = policy()
            .check(
                claims(serde_json::json!({"sub": "spiffe://sage-sanctum.local/scanner/r1",
                "aud": ["x", "sanctum-gateway"], "exp": 2000, "nbf": 900})),
                1000,
            )
            .unwrap();
        assert_eq!(id.sub, "spiffe://sage-sanctum.local/scanner/r1");
        assert_eq!(id.exp, 2000);
    }

    #[test]
    fn service_account_token() {
        let id = policy()
            .check(
                claims(serde_json::json!({"sub": "system:serviceaccount:scan-run:scanner",
                "aud": "sanctum-gateway", "exp": 2000,
                "kubernetes.io": {"namespace": "scan-run", "pod": {"name": "p", "uid": "u-1"},
                                  "serviceaccount": {"name": "scanner", "uid": "s"}}})),
                1000,
            )
            .unwrap();
        assert_eq!(id.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(id.pod_name.as_deref(), Some("p"));
        assert!(id.is_service_account());
    }

    #[test]
    fn bad_svids() {
        let p = policy();
        let sub = "spiffe://sage-sanctum.local/scanner/r1";
        let cases = [
            (serde_json::json!({"aud": "sanctum-gateway", "exp": 2000}), SvidError::NoSub),
            (serde_json::json!({"sub": sub, "aud": "sanctum-gateway"}), SvidError::NoExp),
            (
                serde_json::json!({"sub": sub, "aud": "other", "exp": 2000}),
                SvidError::Audience("sanctum-gateway".into()),
            ),
            (
                serde_json::json!({"sub": sub, "exp": 2000}),
                SvidError::Audience("sanctum-gateway".into()),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "sanctum-gateway", "exp": 969}),
                SvidError::Expired { exp: 969, now: 1000 },
            ),
            (
                serde_json::json!({"sub": sub, "aud": "sanctum-gateway", "exp": 2000, "nbf": 1031}),
                SvidError::NotYetValid { nbf: 1031, now: 1000 },
            ),
            (
                serde_json::json!({"sub": sub, "aud": "sanctum-gateway", "exp": 2000, "nbf": -5}),
                SvidError::BadNbf,
            ),
        ];
        for (c, want) in cases {
            assert_eq!(p.check(claims(c.clone()), 1000), Err(want), "{c}");
        }
        let err = p
            .check(
                claims(serde_json::json!({"sub": "spiffe://evil/scanner/r",
                "aud": "sanctum-gateway", "exp": 2000})),
                1000,
            )
            .unwrap_err();
        assert!(matches!(err, SvidError::SubjectNotAllowed { .. }));
        // Within the leeway is fine.
        assert!(
            p.check(
                claims(serde_json::json!({"sub": sub, "aud": "sanctum-gateway", "exp": 971})),
                1000
            )
            .is_ok()
        );
    }
}
