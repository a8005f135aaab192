//! Token claims shared by the operator (which mints TraTs), the bridge (which reads `exp`
//! to refuse expired files early) and the gateway (which verifies both tokens).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

/// Transaction context (`tctx`) of a TraT: what the run is and on whose behalf it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionContext {
    pub run_id: String,
    pub org_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Token budget of the run, when the operator set one; the gateway's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Set for pods injected by the webhook (they have no ScannerRun): who the pod is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

impl TransactionContext {
    /// A context naming only the run and the org; set the other fields as needed.
    pub fn new(run_id: impl Into<String>, org_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            org_id: org_id.into(),
            repo: None,
            budget_tokens: None,
            namespace: None,
            service_account: None,
            pod_name: None,
            pod_uid: None,
        }
    }
}

/// Transaction token claims, after the OAuth Transaction Tokens draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TratClaims {
    pub iss: String,
    pub aud: Audience,
    pub iat: u64,
    pub exp: u64,
    /// Unique per run; the unit of budget and revocation.
    pub txn: String,
    /// The scanner's SPIFFE ID; must equal the JWT-SVID's `sub`.
    pub sub: String,
    /// Space-separated scopes; `llm.messages` to call the Messages API.
    pub scope: String,
    pub tctx: TransactionContext,
}

impl TratClaims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// The claims of a JWT-SVID the gateway relies on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidClaims {
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwtShapeError {
    #[error("is not a JWT (expected three base64url parts separated by '.')")]
    NotJwt,
    #[error("has a payload that is not base64url-encoded JSON")]
    Payload,
    #[error("has no numeric 'exp' claim")]
    NoExp,
}

/// Reads `exp` from a compact JWT **without verifying it**: the bridge uses this only to
/// refuse a token file that is already expired with a helpful 503, never to trust anything.
pub fn unverified_expiry(token: &str) -> Result<u64, JwtShapeError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtShapeError::NotJwt);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| JwtShapeError::Payload)?;
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<serde_json::Number>,
    }
    let claims: Exp = serde_json::from_slice(&bytes).map_err(|_| JwtShapeError::Payload)?;
    claims
        .exp
        .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)))
        .ok_or(JwtShapeError::NoExp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"ES256"}"#), b64(payload))
    }

    #[test]
    fn reads_exp() {
        assert_eq!(unverified_expiry(&jwt(r#"{"exp":1700000000}"#)), Ok(1_700_000_000));
        assert_eq!(unverified_expiry(&jwt(r#"{"exp":1700000000.5}"#)), Ok(1_700_000_000));
        assert_eq!(unverified_expiry(&jwt(r#"{"sub":"x"}"#)), Err(JwtShapeError::NoExp));
        assert_eq!(unverified_expiry("abc"), Err(JwtShapeError::NotJwt));
        assert_eq!(unverified_expiry("a.b.c.d"), Err(JwtShapeError::NotJwt));
        assert_eq!(unverified_expiry("a.!!!.c"), Err(JwtShapeError::Payload));
    }

    #[test]
    fn audience_forms() {
        let one: Audience = serde_json::from_str(r#""gw""#).unwrap();
        let many: Audience = serde_json::from_str(r#"["x","gw"]"#).unwrap();
        assert!(one.contains("gw") && many.contains("gw") && !many.contains("y"));
    }

    #[test]
    fn scopes() {
        let c = TratClaims {
            iss: "i".into(),
            aud: Audience::One("a".into()),
            iat: 0,
            exp: 1,
            txn: "t".into(),
            sub: "s".into(),
            scope: "other llm.messages".into(),
            tctx: TransactionContext::new("r", "o"),
        };
        assert!(c.has_scope("llm.messages") && !c.has_scope("llm"));
    }
}
