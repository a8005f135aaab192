//! Unsigned, JWT-shaped tokens for tests that only need a token's shape and `exp`
//! (the bridge reads `exp` without verifying). Never accepted by a real gateway.

use base64::Engine as _;

/// `header.payload.signature` with the given claims (a JSON object) as the payload.
pub fn unsigned(claims: &serde_json::Value) -> String {
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"ES256","typ":"JWT","kid":"test"}"#),
        b64(claims.to_string().as_bytes()),
        b64(b"not-a-signature")
    )
}

/// A token with `sub` that expires `secs_from_now` seconds from now (negative: expired).
pub fn expiring_in(sub: &str, secs_from_now: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    unsigned(
        &serde_json::json!({ "sub": sub, "aud": "sanctum-gateway", "exp": now + secs_from_now, "iat": now }),
    )
}
