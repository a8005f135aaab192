//! Transaction tokens: the operator's ES256 signing key ([`Signer`]), the one holder of it
//! that the controller and the token service share ([`SignerSlot`]), the JWKS that verifies
//! it, and the TraT of a run (claims after the OAuth Transaction Tokens draft, see
//! `shared/DESIGN.md`).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::{SecretKey, elliptic_curve::sec1::ToEncodedPoint};
use sanctum_common::claims::{Audience, TransactionContext, TratClaims};
use sanctum_common::defaults::SCOPE_LLM_MESSAGES;
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::plan::RunPlan;

#[derive(Debug, Error)]
pub enum TokenError {
    #[error(
        "cannot read TraT signing key {path}: {source}; mount the key (an ES256/P-256 PEM) there or unset trat.signingKeyFile"
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "TraT signing key {path} is not a P-256 private key in PEM (PKCS#8 or SEC1); generate one with `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`"
    )]
    Parse { path: PathBuf },
    #[error("cannot sign TraT: {0}")]
    Sign(String),
}

/// The operator's signing key with its public JWK.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    kid: String,
    x: String,
    y: String,
    ephemeral: bool,
}

impl std::fmt::Debug for Signer {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

impl Signer {
    fn from_secret(secret: &SecretKey, ephemeral: bool) -> Result<Self, TokenError> {
        let der = secret.to_pkcs8_der().map_err(|e| TokenError::Sign(e.to_string()))?;
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(TokenError::Sign("public key has no affine coordinates".into()));
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638 thumbprint: stable across restarts for the same key, different per key.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Ok(Self { key: EncodingKey::from_ec_der(der.as_bytes()), kid, x, y, ephemeral })
    }

    /// Parses a P-256 private key PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
    pub fn from_pem(pem: &str, path: &Path) -> Result<Self, TokenError> {
        let secret = SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| SecretKey::from_sec1_pem(pem))
            .map_err(|_| TokenError::Parse { path: path.into() })?;
        Self::from_secret(&secret, false)
    }

    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.into(), source })?;
        Self::from_pem(&pem, path)
    }

    /// A fresh key for this process only.
    pub fn ephemeral() -> Result<Self, TokenError> {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        Self::from_secret(&secret, true)
    }

    /// The configured key, or an ephemeral one when none is configured.
    pub fn from_config(path: Option<&Path>) -> Result<Self, TokenError> {
        match path {
            Some(path) => Self::load(path),
            None => Self::ephemeral(),
        }
    }

    /// A new PKCS#8 PEM private key, for `sanctum-operator keygen`-style set-up and tests.
    pub fn generate_pem() -> Result<String, TokenError> {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        secret
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The JWKS (`{"keys":[…]}`) gateways verify TraTs with.
    pub fn jwks(&self) -> serde_json::Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        }]})
    }

    pub fn sign(&self, claims: &TratClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("txntoken+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

/// The operator's signing key, reloaded from its file while it is missing (it may be
/// mounted late). One per process, behind an `Arc`: the controller (ScannerRun TraTs), the
/// token service (injected pods' TraTs) and the admin port (JWKS) all read this one, so
/// they can never sign or publish different keys.
#[derive(Debug)]
pub struct SignerSlot {
    path: Option<PathBuf>,
    current: RwLock<Option<Signer>>,
}

impl SignerSlot {
    /// `path`: the configured key file (`trat.signingKeyFile`; `None` means an ephemeral
    /// key); `initial`: the key loaded at start, if that worked.
    pub fn new(path: Option<PathBuf>, initial: Option<Signer>) -> Self {
        Self { path, current: RwLock::new(initial) }
    }

    /// The key, loading it now if it was not loaded yet. Errors: the file cannot be read
    /// or parsed ([`TokenError`]); the next call tries again.
    pub fn get(&self) -> Result<Signer, TokenError> {
        if let Some(s) = self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(s.clone());
        }
        let signer = Signer::from_config(self.path.as_deref())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(signer.clone());
        Ok(signer)
    }

    /// The key if it is loaded (readiness, JWKS); never loads.
    pub fn loaded(&self) -> Option<Signer> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The TraT claims of a run: valid from `now` (seconds since the epoch) until the run's
/// deadline plus `margin_seconds`. `tctx` names the namespace (for the audit record) and
/// the run's pod: the gateway requires a ServiceAccount-token caller to be that pod.
pub fn trat_claims(
    plan: &RunPlan,
    budget_tokens: Option<u64>,
    issuer: &str,
    margin_seconds: i64,
    now: u64,
) -> TratClaims {
    let lifetime = u64::try_from(plan.timeout_seconds.saturating_add(margin_seconds)).unwrap_or(0);
    TratClaims {
        iss: issuer.to_owned(),
        aud: Audience::One(plan.audience.clone()),
        iat: now,
        exp: now.saturating_add(lifetime),
        txn: plan.uid.clone(),
        sub: plan.subject.clone(),
        scope: SCOPE_LLM_MESSAGES.to_owned(),
        tctx: TransactionContext {
            repo: Some(plan.repo.clone()),
            budget_tokens,
            namespace: Some(plan.namespace.clone()),
            pod_name: Some(plan.pod_name.clone()),
            ..TransactionContext::new(
                format!("{}/{}", plan.namespace, plan.name),
                plan.org_id.clone(),
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    fn claims() -> TratClaims {
        TratClaims {
            iss: "iss".into(),
            aud: Audience::One("sanctum-gateway".into()),
            iat: 1,
            exp: u64::MAX / 2,
            txn: "uid-1".into(),
            sub: "spiffe://td/scanner/uid-1".into(),
            scope: SCOPE_LLM_MESSAGES.into(),
            tctx: TransactionContext::new("ns/run", "acme"),
        }
    }

    fn verify(token: &str, jwks: &serde_json::Value) -> TratClaims {
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["sanctum-gateway"]);
        jsonwebtoken::decode::<TratClaims>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn signed_trat_verifies_against_jwks() {
        let signer = Signer::ephemeral().unwrap();
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(verify(&token, &signer.jwks()), claims());
    }

    #[test]
    fn pem_key_round_trips_with_stable_kid() {
        let pem = Signer::generate_pem().unwrap();
        let a = Signer::from_pem(&pem, Path::new("k.pem")).unwrap();
        let b = Signer::from_pem(&pem, Path::new("k.pem")).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert!(!a.is_ephemeral());
        let other = Signer::ephemeral().unwrap();
        assert_ne!(a.kid(), other.kid());
        // A token of one key does not verify against another key's JWKS.
        let token = a.sign(&claims()).unwrap();
        let set: JwkSet = serde_json::from_value(other.jwks()).unwrap();
        assert!(set.find(&jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()).is_none());
    }

    /// The key may be mounted after the operator starts: the holder loads it on first use,
    /// and every clone of the `Arc` (controller, token service, admin port) sees that one key.
    #[test]
    fn one_slot_loads_a_late_key_once_for_all_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let slot = std::sync::Arc::new(SignerSlot::new(Some(path.clone()), None));
        let token_service = slot.clone();
        assert!(slot.get().is_err());
        assert!(token_service.loaded().is_none());
        std::fs::write(&path, Signer::generate_pem().unwrap()).unwrap();
        let kid = slot.get().unwrap().kid().to_owned();
        assert_eq!(token_service.loaded().unwrap().kid(), kid);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token_service.get().unwrap().kid(), kid, "kept once loaded");
    }

    #[test]
    fn bad_key_files_are_explained() {
        let err = Signer::load(Path::new("/nonexistent/key.pem")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/key.pem") && err.contains("signingKeyFile"), "{err}");
        let err = Signer::from_pem("not a key", Path::new("k.pem")).unwrap_err().to_string();
        assert!(err.contains("k.pem") && err.contains("P-256"), "{err}");
        assert!(!format!("{:?}", Signer::ephemeral().unwrap()).contains("key:"));
    }
}
