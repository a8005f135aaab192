//! The error body every Sanctum component answers with when it makes an error itself:
//! Anthropic-shaped (`{"type":"error","error":{"type":…,"message":…}}`) so that Claude Code
//! and the SDKs print the message, plus the retry headers of the design.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::headers::{RETRY_AFTER, X_SHOULD_RETRY};

/// Anthropic error `type`s (<https://docs.anthropic.com/en/api/errors>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    NotFoundError,
    RequestTooLarge,
    RateLimitError,
    ApiError,
    OverloadedError,
}

/// Whether the client should try again, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retrying cannot help (bad credentials, DLP block, budget spent): `x-should-retry: false`.
    Never,
    /// Transient (token rotating, socket briefly down, rate limit): `retry-after: <secs>`.
    After(u32),
    /// Leave it to the client's default policy.
    Default,
}

/// An error Sanctum itself answers with. The message must say what failed and what to do,
/// and must never contain a token or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
    pub retry: Retry,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: ErrorKind,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry: Retry::Default }
    }

    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// 400: malformed request; retrying the same request cannot help.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequestError, message)
            .retry(Retry::Never)
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorKind::AuthenticationError, message)
            .retry(Retry::Never)
    }

    /// 403: valid credentials that are not allowed this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::PermissionError, message).retry(Retry::Never)
    }

    /// 502: the next hop could not be reached.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorKind::ApiError, message).retry(Retry::After(1))
    }

    /// 503: a local precondition (a token file) is not met yet.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::ApiError, message)
            .retry(Retry::After(2))
    }

    /// The JSON body, serialized.
    pub fn body(&self) -> Bytes {
        let body = Body { ty: "error", error: Inner { kind: self.kind, message: &self.message } };
        // Serializing two strings and an enum cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// A complete HTTP response with the body and the retry headers.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self.retry {
            Retry::Never => {
                headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
            }
            Retry::After(secs) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            Retry::Default => {}
        }
        response
    }

    /// Convenience for hyper services whose body type is `Full<Bytes>`.
    pub fn into_full(self) -> Response<Full<Bytes>> {
        self.to_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_anthropic_shaped() {
        let err = ApiError::unavailable("token file /run/sage/trat.jwt is missing");
        let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], "token file /run/sage/trat.jwt is missing");
    }

    #[test]
    fn retry_headers() {
        let never: Response<Full<Bytes>> = ApiError::forbidden("no").to_response();
        assert_eq!(never.headers()["x-should-retry"], "false");
        assert!(never.headers().get("retry-after").is_none());
        let later: Response<Full<Bytes>> = ApiError::unavailable("wait").to_response();
        assert_eq!(later.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(later.headers()["retry-after"], "2");
        assert!(later.headers().get("x-should-retry").is_none());
    }

    #[test]
    fn message_is_escaped() {
        let err = ApiError::bad_request("quote \" and newline \n");
        let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["error"]["message"], "quote \" and newline \n");
    }
}
