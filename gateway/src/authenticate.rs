//! Who is asking, and for which run: the JWT-SVID (`Authorization: Bearer`), the TraT
//! (`Txn-Token`), the TraT's binding to the caller, and the run's revocation. Both tokens
//! are verified before anything about the body is looked at. Verified tokens are cached by
//! digest (keyed to the JWKS generation); expiry is re-checked on every hit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderName;
use sanctum_common::TratClaims;
use sanctum_common::headers::{AUTHORIZATION, TXN_TOKEN};

use super::audit::AuditRecord;
use super::gateway::Gateway;
use super::jwks::{TokenType, VerifyError};
use super::reject::{self, Rejection};
use super::sources::{JwksSource, RevocationStatus};
use super::svid::{Identity, SvidTokenClaims};
use super::tokencache::digest;
use super::trat::TratError;

const SVID: &str = "JWT-SVID (Authorization)";
const TRAT: &str = "TraT (Txn-Token)";

/// Both tokens, their binding and the run's revocation; fills the audit record's who.
pub async fn authenticate(
    gw: &Gateway,
    headers: &http::HeaderMap,
    now: u64,
    audit: &mut AuditRecord,
) -> Result<Arc<TratClaims>, Rejection> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let svid_token = header(&AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(reject::missing_svid)?;
    let caller = caller(gw, svid_token, now).await?;
    audit.spiffe_id = Some(caller.sub.clone());
    let trat_token = header(&TXN_TOKEN)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(reject::missing_trat)?;
    let trat = transaction(gw, trat_token, now).await?;
    audit.txn = Some(trat.txn.clone());
    audit.run = Some(trat.tctx.run_id.clone());
    audit.org = Some(trat.tctx.org_id.clone());
    audit.namespace = trat.tctx.namespace.clone();
    gw.settings.trat.check_binding(&trat, &caller).map_err(|e| reject::trat(&e))?;
    match gw.revocations.status(&trat.txn) {
        RevocationStatus::Ok => Ok(trat),
        RevocationStatus::Revoked => Err(reject::trat(&TratError::Revoked(trat.txn.clone()))),
        RevocationStatus::Unknown(why) => Err(reject::revocation_unknown(&why)),
    }
}

/// Verifies a token against a JWKS source, refreshing it once for an unknown key id.
async fn verify_signature<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    source: &JwksSource,
    token: &str,
    prefix: &'static str,
    which: &str,
) -> Result<(T, u64), Rejection> {
    let Some((keys, generation)) = source.current() else {
        let why = source
            .last_error
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "not loaded yet".into());
        return Err(reject::jwks_unavailable(which, &why));
    };
    match keys.verify::<T>(token) {
        Ok(claims) => Ok((claims, generation)),
        Err(VerifyError::UnknownKid(kid)) => {
            if source.refresh_for_unknown_kid(&gw.fetcher).await
                && let Some((keys, generation)) = source.current()
            {
                return keys
                    .verify::<T>(token)
                    .map(|c| (c, generation))
                    .map_err(|e| reject::verify(prefix, which, &e));
            }
            Err(reject::verify(prefix, which, &VerifyError::UnknownKid(kid)))
        }
        Err(e) => Err(reject::verify(prefix, which, &e)),
    }
}

/// The JWT-SVID: who is calling.
async fn caller(gw: &Gateway, token: &str, now: u64) -> Result<Identity, Rejection> {
    let key = digest(token);
    let generation = gw.svid_jwks.current().map_or(0, |(_, g)| g);
    if let Some(id) = gw.svid_cache.get(&key, generation, now) {
        gw.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        id.time_check(now, gw.settings.svid.leeway).map_err(|e| reject::svid(&e))?;
        return Ok(id);
    }
    gw.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
    let (claims, generation) =
        verify_signature::<SvidTokenClaims>(gw, &gw.svid_jwks, token, "svid", SVID).await?;
    // After the signature, so a token from an unknown issuer still says so.
    TokenType::Svid.check(token).map_err(|e| reject::token_type(SVID, &e))?;
    let id = gw.settings.svid.check(claims, now).map_err(|e| reject::svid(&e))?;
    gw.svid_cache.insert(key, id.clone(), id.exp, generation, now);
    Ok(id)
}

/// The TraT: which run, of which org, may do what.
async fn transaction(gw: &Gateway, token: &str, now: u64) -> Result<Arc<TratClaims>, Rejection> {
    let key = digest(token);
    let generation = gw.trat_jwks.current().map_or(0, |(_, g)| g);
    let claims = if let Some(c) = gw.trat_cache.get(&key, generation, now) {
        gw.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        c
    } else {
        gw.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let (value, generation) =
            verify_signature::<serde_json::Value>(gw, &gw.trat_jwks, token, "trat", TRAT).await?;
        TokenType::Trat.check(token).map_err(|e| reject::token_type(TRAT, &e))?;
        let claims: TratClaims = serde_json::from_value(value)
            .map_err(|e| reject::trat(&TratError::Shape(e.to_string())))?;
        let claims = Arc::new(claims);
        // Only claims that passed are cached; expiry is re-checked on every hit.
        gw.settings.trat.check_claims(&claims, now).map_err(|e| reject::trat(&e))?;
        gw.trat_cache.insert(key, claims.clone(), claims.exp, generation, now);
        claims
    };
    gw.settings.trat.check_claims(&claims, now).map_err(|e| reject::trat(&e))?;
    Ok(claims)
}
