//! JSON Web Key Sets and signature verification.
//!
//! Algorithm `none` and algorithm confusion are impossible by construction: the algorithm a
//! key may verify is fixed when the JWKS is loaded (from the key's `alg`, or from its type
//! and curve when `alg` is absent), symmetric (`oct`) keys are never loaded, and a token
//! whose header names any other algorithm is refused before any cryptography runs.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// A key the gateway trusts, with the one algorithm it verifies.
#[derive(Clone)]
pub struct TrustedKey {
    pub alg: Algorithm,
    key: DecodingKey,
}

/// A parsed JWKS: `kid` → key.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
    /// Keys skipped while loading, with the reason (logged once by the loader).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("is not a JWKS document ({0}); expected {{\"keys\":[…]}}")]
    Parse(String),
    #[error("has no usable signing key ({0})")]
    NoUsableKey(String),
}

/// Which of the two tokens a JWT is meant to be, by its JOSE `typ` (RFC 8725 §3.11,
/// explicit typing). When one JWKS holds both issuers' keys (an operator key added to the
/// SVID key set, say), the signature alone cannot tell a TraT from a JWT-SVID; `typ` can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A JWT-SVID or ServiceAccount token: `typ` `JWT` or absent.
    Svid,
    /// A transaction token: `typ` `txntoken+jwt`.
    Trat,
}

/// The TraT's JOSE `typ` (the operator sets it on every TraT).
pub const TRAT_TYP: &str = "txntoken+jwt";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TypeError {
    #[error(
        "is a transaction token (typ '{TRAT_TYP}'), not a JWT-SVID: send the JWT-SVID in Authorization and the TraT in Txn-Token"
    )]
    TratAsSvid,
    #[error("has typ '{0}'; a JWT-SVID has typ 'JWT' or none")]
    NotSvid(String),
    #[error(
        "has typ '{0}', not '{TRAT_TYP}': it is not a transaction token (a JWT-SVID?); send the operator's TraT in Txn-Token"
    )]
    NotTrat(String),
}

impl TokenType {
    /// Checks the `typ` of `token`'s header (media-type rules: case-insensitive, an
    /// `application/` prefix allowed). Call it after the signature verified.
    pub fn check(self, token: &str) -> Result<(), TypeError> {
        let typ = jsonwebtoken::decode_header(token).ok().and_then(|h| h.typ);
        let lower = typ.as_deref().map(|t| {
            let t = t.to_ascii_lowercase();
            t.strip_prefix("application/").map(str::to_owned).unwrap_or(t)
        });
        match (self, lower.as_deref()) {
            (TokenType::Svid, None | Some("jwt")) => Ok(()),
            (TokenType::Svid, Some(TRAT_TYP)) => Err(TypeError::TratAsSvid),
            (TokenType::Svid, Some(_)) => Err(TypeError::NotSvid(typ.unwrap_or_default())),
            (TokenType::Trat, Some(TRAT_TYP)) => Ok(()),
            (TokenType::Trat, _) => Err(TypeError::NotTrat(typ.unwrap_or_else(|| "(none)".into()))),
        }
    }
}

/// Why a token's signature could not be trusted. Messages never contain the token.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("is not a well-formed JWT (three base64url parts with a JSON header)")]
    Malformed,
    #[error("has no 'kid' in its header; the issuer must name its signing key")]
    NoKid,
    #[error("is signed with key id '{0}', which is not in the trusted JWKS")]
    UnknownKid(String),
    #[error("uses algorithm {got} but key '{kid}' only verifies {want}")]
    AlgorithmMismatch { kid: String, got: String, want: String },
    #[error("has an invalid signature")]
    BadSignature,
    #[error("has claims that are not valid JSON of the expected shape ({0})")]
    Claims(String),
}

/// The algorithm a JWK may verify. `None` for keys the gateway refuses to use.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            ref other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        // RSA keys without `alg` verify RS256, as SPIRE and Kubernetes issuers use.
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never trusted".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let Some(declared) = jwk.common.key_algorithm else {
        return Ok(from_type);
    };
    let alg = match declared {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => return Err(format!("algorithm {other:?} is not a signature algorithm we accept")),
    };
    // A declared `alg` must fit the key material: an EC key declared RS256 is refused.
    let fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        _ => alg == from_type,
    };
    if fits { Ok(alg) } else { Err(format!("declared alg {alg:?} does not fit the key type")) }
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures are skipped (and listed in
    /// `skipped`); a document with no usable key at all is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(jwk) => jwk,
                Err(e) => {
                    set.skipped.push(format!("key #{i}: {e}"));
                    continue;
                }
            };
            let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
                set.skipped.push(format!("key #{i}: no 'kid'"));
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                set.skipped.push(format!("key '{kid}': 'use' is not 'sig'"));
                continue;
            }
            let alg = match key_algorithm(&jwk) {
                Ok(alg) => alg,
                Err(reason) => {
                    set.skipped.push(format!("key '{kid}': {reason}"));
                    continue;
                }
            };
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => {
                    set.keys.insert(kid, TrustedKey { alg, key });
                }
                Err(e) => set.skipped.push(format!("key '{kid}': {e}")),
            }
        }
        if set.keys.is_empty() {
            let why = if set.skipped.is_empty() {
                "the 'keys' array is empty".to_owned()
            } else {
                set.skipped.join("; ")
            };
            return Err(JwksError::NoUsableKey(why));
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[cfg(test)]
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies the signature of `token` and returns its claims. Time, audience and the other
    /// claims are checked by the caller (with its own clock), not here.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let trusted = self.keys.get(&kid).ok_or_else(|| VerifyError::UnknownKid(kid.clone()))?;
        if header.alg != trusted.alg {
            return Err(VerifyError::AlgorithmMismatch {
                kid,
                got: format!("{:?}", header.alg),
                want: format!("{:?}", trusted.alg),
            });
        }
        let mut validation = Validation::new(trusted.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<T>(token, &trusted.key, &validation).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                    VerifyError::BadSignature
                }
                K::Json(e) => VerifyError::Claims(e.to_string()),
                K::InvalidToken | K::Base64(_) | K::Utf8(_) => VerifyError::Malformed,
                _ => VerifyError::BadSignature,
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! Keys and tokens minted in the tests.
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePrivateKey;

    pub struct EcKey {
        pub kid: String,
        pub encoding: EncodingKey,
        pub jwk: serde_json::Value,
    }

    impl EcKey {
        pub fn new(kid: &str) -> Self {
            let signing = SigningKey::random(&mut rand_core::OsRng);
            let der = signing.to_pkcs8_der().unwrap();
            let encoding = EncodingKey::from_ec_der(der.as_bytes());
            let point = signing.verifying_key().to_encoded_point(false);
            use base64::Engine as _;
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
            });
            Self { kid: kid.into(), encoding, jwk }
        }

        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    pub fn jwks(keys: &[&serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::*;
    use super::*;
    use base64::Engine as _;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn verifies_good_token() {
        let k = EcKey::new("k1");
        let set = KeySet::parse(&jwks(&[&k.jwk])).unwrap();
        let token = k.sign(&serde_json::json!({"sub": "x", "exp": 1}));
        let claims: serde_json::Value = set.verify(&token).unwrap();
        assert_eq!(claims["sub"], "x");
    }

    #[test]
    fn refuses_unknown_kid_and_other_key() {
        let k1 = EcKey::new("k1");
        let mut k2 = EcKey::new("k2");
        let set = KeySet::parse(&jwks(&[&k1.jwk])).unwrap();
        let t = k2.sign(&serde_json::json!({"exp": 1}));
        assert_eq!(set.verify::<serde_json::Value>(&t), Err(VerifyError::UnknownKid("k2".into())));
        // Same kid, different key: signature fails.
        k2.kid = "k1".into();
        let t = k2.sign(&serde_json::json!({"exp": 1}));
        assert_eq!(set.verify::<serde_json::Value>(&t), Err(VerifyError::BadSignature));
    }

    #[test]
    fn refuses_alg_none_and_hmac_confusion() {
        let k = EcKey::new("k1");
        let set = KeySet::parse(&jwks(&[&k.jwk])).unwrap();
        let payload = b64(br#"{"sub":"x","exp":99999999999}"#);
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
        assert!(matches!(
            set.verify::<serde_json::Value>(&none),
            Err(VerifyError::Malformed | VerifyError::AlgorithmMismatch { .. })
        ));
        // HS256 keyed with the public key's JWK text: the classic confusion attack.
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"exp": 99999999999u64}),
            &jsonwebtoken::EncodingKey::from_secret(k.jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            set.verify::<serde_json::Value>(&hs),
            Err(VerifyError::AlgorithmMismatch { .. })
        ));
        // The token's signature swapped onto another payload.
        let good = k.sign(&serde_json::json!({"sub": "a"}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(br#"{"sub":"b"}"#), parts[2]);
        assert_eq!(set.verify::<serde_json::Value>(&forged), Err(VerifyError::BadSignature));
    }

    #[test]
    fn refuses_garbage() {
        let k = EcKey::new("k1");
        let set = KeySet::parse(&jwks(&[&k.jwk])).unwrap();
        for t in ["", "a", "a.b", "a.b.c", "...", "😀.😀.😀"] {
            assert!(set.verify::<serde_json::Value>(t).is_err(), "{t}");
        }
        let no_kid = format!("{}.{}.x", b64(br#"{"alg":"ES256"}"#), b64(b"{}"));
        assert_eq!(set.verify::<serde_json::Value>(&no_kid), Err(VerifyError::NoKid));
    }

    #[test]
    fn never_loads_symmetric_or_mismatched_keys() {
        let k = EcKey::new("ok");
        let mut wrong = k.jwk.clone();
        wrong["kid"] = "wrong".into();
        wrong["alg"] = "RS256".into();
        let oct = serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"});
        let enc = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e", "use": "enc",
            "x": k.jwk["x"], "y": k.jwk["y"]});
        let set = KeySet::parse(&jwks(&[&k.jwk, &wrong, &oct, &enc])).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains("ok") && !set.contains("wrong") && !set.contains("s"));
        assert_eq!(set.skipped.len(), 3);
        assert!(matches!(KeySet::parse(&jwks(&[&oct])), Err(JwksError::NoUsableKey(_))));
        assert!(matches!(KeySet::parse(b"{}"), Err(JwksError::Parse(_))));
        assert!(matches!(KeySet::parse(b"not json"), Err(JwksError::Parse(_))));
    }

    /// A JWT-SVID may come from SPIRE or a Kubernetes issuer: RS256 and EdDSA keys, minted
    /// here with openssl (skipped loudly when it is missing).
    #[test]
    fn rs256_and_eddsa_issuers() {
        use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "rsa",
                Algorithm::RS256,
                vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
            ("ed", Algorithm::EdDSA, vec!["genpkey", "-algorithm", "ED25519"]),
        ];
        for (name, alg, args) in cases {
            let path = dir.path().join(name);
            let made = std::process::Command::new("openssl")
                .args(&args)
                .arg("-out")
                .arg(&path)
                .output()
                .is_ok_and(|o| o.status.success());
            if !made {
                assert!(
                    std::env::var("SANCTUM_REQUIRE_ALL").as_deref() != Ok("1"),
                    "openssl is needed to mint {name} keys"
                );
                eprintln!("**** SKIPPED {name}: openssl not available ****");
                continue;
            }
            let pem = std::fs::read(&path).unwrap();
            let enc = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ed_pem(&pem).unwrap(),
            };
            let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
            jwk["kid"] = name.into();
            let set = KeySet::parse(&jwks(&[&jwk])).unwrap();
            let mut header = Header::new(alg);
            header.kid = Some(name.into());
            let token =
                jsonwebtoken::encode(&header, &serde_json::json!({"sub": name}), &enc).unwrap();
            let claims: serde_json::Value = set.verify(&token).unwrap();
            assert_eq!(claims["sub"], name);
            // The same key cannot be used with another algorithm of its family.
            if alg == Algorithm::RS256 {
                let mut h = Header::new(Algorithm::RS512);
                h.kid = Some(name.into());
                let t = jsonwebtoken::encode(&h, &serde_json::json!({}), &enc).unwrap();
                assert!(matches!(
                    set.verify::<serde_json::Value>(&t),
                    Err(VerifyError::AlgorithmMismatch { .. })
                ));
            }
        }
    }

    #[test]
    fn alg_absent_is_derived_from_key() {
        let k = EcKey::new("k1");
        let mut jwk = k.jwk.clone();
        jwk.as_object_mut().unwrap().remove("alg");
        let set = KeySet::parse(&jwks(&[&jwk])).unwrap();
        let t = k.sign(&serde_json::json!({"sub": "x"}));
        assert!(set.verify::<serde_json::Value>(&t).is_ok());
    }

    /// Issue 12 item 16: each token's `typ` says which it is.
    #[test]
    fn token_types() {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let with = |header: &str| format!("{}.{}.sig", b64(header), b64("{}"));
        let trat = with(r#"{"alg":"ES256","typ":"txntoken+jwt","kid":"k"}"#);
        let svid = with(r#"{"alg":"ES256","typ":"JWT","kid":"k"}"#);
        let sa = with(r#"{"alg":"RS256","kid":"k"}"#);
        assert_eq!(TokenType::Trat.check(&trat), Ok(()));
        assert_eq!(
            TokenType::Trat.check(&with(r#"{"alg":"ES256","typ":"application/TxnToken+JWT"}"#)),
            Ok(())
        );
        assert_eq!(TokenType::Svid.check(&svid), Ok(()));
        assert_eq!(TokenType::Svid.check(&sa), Ok(()));
        assert_eq!(TokenType::Svid.check(&trat), Err(TypeError::TratAsSvid));
        assert_eq!(TokenType::Trat.check(&svid), Err(TypeError::NotTrat("JWT".into())));
        assert_eq!(TokenType::Trat.check(&sa), Err(TypeError::NotTrat("(none)".into())));
        assert!(matches!(
            TokenType::Svid.check(&with(r#"{"alg":"ES256","typ":"at+jwt"}"#)),
            Err(TypeError::NotSvid(_))
        ));
    }
}
