//! HTTP header names on the request path. All lower case: `http::HeaderName` compares
//! case-insensitively, and HTTP/1 peers may send any case.

use http::HeaderName;

pub const AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;
pub const PROXY_AUTHORIZATION: HeaderName = http::header::PROXY_AUTHORIZATION;
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const TXN_TOKEN: HeaderName = HeaderName::from_static("txn-token");
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// Credentials a client may send that the bridge must never pass on: the pod holds no real
/// key, and anything here is either the placeholder or something a prompt injection planted.
pub const CLIENT_CREDENTIALS: [HeaderName; 4] =
    [AUTHORIZATION, PROXY_AUTHORIZATION, X_API_KEY, TXN_TOKEN];
