//! AWS Signature Version 4 for the final Bedrock request, with the `aws-sigv4` crate.
//!
//! Signed: `host` (the endpoint's authority, exactly as the upstream client will send it),
//! `content-type`, `accept` when present, and every `x-amz-*` header; the signer adds
//! `x-amz-date` and, for temporary credentials, `x-amz-security-token` (both signed) and
//! `authorization`. Other headers are left out of the signature on purpose: proxies and the
//! upstream client may drop or rewrite them (hop-by-hop headers, `content-length`), and a
//! header that changes after signing would break it. The payload hash is computed over the
//! exact body bytes; Bedrock needs no `x-amz-content-sha256` header (that is S3's).
//! Source: AWS IAM User Guide, "Create a signed AWS API request" (SigV4); service name
//! `bedrock` (Bedrock runtime API reference).

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::{HeaderName, HeaderValue, request};
use thiserror::Error;

use super::credentials::AwsCredentials;

/// The SigV4 service name of the Bedrock runtime.
pub const SERVICE: &str = "bedrock";

#[derive(Debug, Error)]
pub enum SignError {
    #[error("cannot sign for Bedrock: {0}")]
    Signer(String),
    #[error("the signed header {0} is not a valid header value")]
    Header(&'static str),
}

/// Signs `parts` in place for `service` in `region`, as sent to `host` with `body`.
///
/// `parts.uri` is the origin-form path and query (`/model/…/invoke`), already
/// percent-encoded as it goes on the wire; the canonical request encodes it once more, as
/// SigV4 requires for every service but S3. `time` is the signing time (`SystemTime::now()`
/// outside tests). Adds `x-amz-date`, `authorization` and, for a session token,
/// `x-amz-security-token` (the latter two marked sensitive).
///
/// Errors: [`SignError`] when the path or a header cannot be signed (never a secret).
pub fn sign_parts(
    parts: &mut request::Parts,
    host: &str,
    region: &str,
    service: &str,
    body: &[u8],
    credentials: &AwsCredentials,
    time: SystemTime,
) -> Result<(), SignError> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        credentials.session_token().map(str::to_owned),
        credentials.expires(),
        "sanctum",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Signer(e.to_string()))?
        .into();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("https://{host}{path}");
    let mut headers: Vec<(&str, &str)> = vec![("host", host)];
    for (name, value) in &parts.headers {
        let n = name.as_str();
        let signed = n == "content-type" || n == "accept" || n.starts_with("x-amz-");
        // A stale signature's headers are replaced below, never signed.
        if !signed || n == "x-amz-date" || n == "x-amz-security-token" {
            continue;
        }
        let v = value.to_str().map_err(|_| SignError::Signer(format!("header {n} is not text")))?;
        headers.push((n, v));
    }
    let signable = SignableRequest::new(
        parts.method.as_str(),
        url,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError::Signer(e.to_string()))?;
    let (instructions, _signature) =
        sign(signable, &params).map_err(|e| SignError::Signer(e.to_string()))?.into_parts();
    let (signed_headers, _params) = instructions.into_parts();
    parts.headers.remove("x-amz-security-token");
    for h in signed_headers {
        let mut value =
            HeaderValue::from_str(h.value()).map_err(|_| SignError::Header(h.name()))?;
        value.set_sensitive(h.sensitive() || h.name() == "authorization");
        parts.headers.insert(HeaderName::from_static(h.name()), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parts(uri: &str) -> request::Parts {
        let (mut p, ()) = http::Request::post(uri).body(()).unwrap().into_parts();
        p.headers.insert("content-type", HeaderValue::from_static("application/json"));
        p.headers.insert("user-agent", HeaderValue::from_static("claude-cli/2"));
        p
    }

    #[test]
    fn adds_signature_headers() {
        let creds = AwsCredentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("TOKEN".into()),
            None,
        );
        let mut p = parts("/model/anthropic.claude-v1%3A0/invoke");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        sign_parts(
            &mut p,
            "bedrock-runtime.us-east-1.amazonaws.com",
            "us-east-1",
            SERVICE,
            b"{}",
            &creds,
            t,
        )
        .unwrap();
        assert_eq!(p.headers["x-amz-date"], "20150830T123600Z");
        assert_eq!(p.headers["x-amz-security-token"], "TOKEN");
        assert!(p.headers["x-amz-security-token"].is_sensitive());
        let auth = p.headers["authorization"].to_str().unwrap();
        assert!(p.headers["authorization"].is_sensitive());
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert!(!auth.contains("wJalr"));
        // Signing again (a retry) replaces the headers instead of adding a second set.
        sign_parts(
            &mut p,
            "bedrock-runtime.us-east-1.amazonaws.com",
            "us-east-1",
            SERVICE,
            b"{}",
            &creds,
            t,
        )
        .unwrap();
        assert_eq!(p.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(p.headers.get_all("x-amz-date").iter().count(), 1);
    }

    #[test]
    fn long_term_keys_send_no_token() {
        let creds = AwsCredentials::new("AKID", "secret", None, None);
        let mut p = parts("/model/m/invoke");
        sign_parts(&mut p, "127.0.0.1:9", "eu-west-1", SERVICE, b"", &creds, SystemTime::now())
            .unwrap();
        assert!(p.headers.get("x-amz-security-token").is_none());
        assert!(
            p.headers["authorization"]
                .to_str()
                .unwrap()
                .contains("SignedHeaders=content-type;host;x-amz-date,")
        );
    }
}
