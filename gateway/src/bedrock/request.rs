//! The Messages API request → the Bedrock runtime request: a pure function over the body.
//!
//! Source: Amazon Bedrock User Guide, "Anthropic Claude Messages API" (model parameters) and
//! the Bedrock runtime API reference (`InvokeModel`, `InvokeModelWithResponseStream`):
//! - `POST /v1/messages` → `POST /model/{modelId}/invoke`, or with `"stream": true`
//!   `POST /model/{modelId}/invoke-with-response-stream`; `{modelId}` is a URI label, so
//!   every byte outside RFC 3986 "unreserved" is percent-encoded (`:` → `%3A`, `/` → `%2F`).
//! - The body is the Messages API body without `model` and `stream`, plus
//!   `"anthropic_version": "bedrock-2023-05-31"`; the `anthropic-beta` header's
//!   comma-separated values travel as the body array `anthropic_beta`.
//! - `POST /v1/messages/count_tokens` has no Bedrock counterpart here: refused.
//! - Bedrock refuses a beta name it does not take (400 `ValidationException`, "invalid beta
//!   flag"), so only allowed names are passed on ([`DEFAULT_BETAS`]); the others are left
//!   out, and said so, rather than refused: the agent believes it talks to Anthropic and
//!   sends Anthropic's betas.

use bytes::Bytes;
use serde_json::{Map, Value};
use thiserror::Error;

use super::model::{ModelError, ModelMap};

/// The `anthropic_version` Bedrock requires in the body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error(
        "token counting (/v1/messages/count_tokens) is not supported when the org uses Amazon Bedrock"
    )]
    CountTokensUnsupported,
    #[error(
        "'{0}' is not a Messages API endpoint this gateway forwards to Amazon Bedrock (only POST /v1/messages)"
    )]
    UnsupportedPath(String),
    #[error("the request body is not JSON: {0}")]
    InvalidJson(String),
    #[error("the request body is not a JSON object")]
    NotAnObject,
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl RequestError {
    /// HTTP status and Anthropic error type to answer the client with.
    pub fn status_and_type(&self) -> (u16, &'static str) {
        match self {
            RequestError::UnsupportedPath(_) | RequestError::CountTokensUnsupported => {
                (404, "not_found_error")
            }
            _ => (400, "invalid_request_error"),
        }
    }
}

/// The `anthropic_beta` values passed to Bedrock when the org's `bedrock.betas` is not set.
///
/// Sources: the Amazon Bedrock User Guide, "Anthropic Claude Messages API" → "Request and
/// Response" (`anthropic_beta`, e.g. `computer-use-2024-10-22`), "Extended thinking"
/// (`interleaved-thinking-2025-05-14`), "Anthropic Claude 3.7 Sonnet"
/// (`output-128k-2025-02-19`, `computer-use-2025-01-24`), and the list of beta headers the
/// Bedrock Invoke API takes as collected from AWS's documentation in BerriAI/litellm#19875.
/// `claude-code-20250219` is not in AWS's list, but Claude Code configured for Bedrock sends
/// it and Bedrock takes it (anthropics/claude-code#49648; Claude Opus 4.7 was an exception).
/// Which betas Bedrock takes changes per model and over time: the list in an org's
/// `bedrock.betas` is the operator's to keep current.
pub const DEFAULT_BETAS: &[&str] = &[
    "claude-code-20250219",
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
];

/// A body rewritten by [`rewrite_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenBody {
    /// The Bedrock body.
    pub body: Bytes,
    /// The beta names left out because they are not allowed (in order, without repeats).
    pub dropped_betas: Vec<String>,
}

/// What to send to Bedrock (before signing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockRequest {
    /// The Bedrock model id, as configured (not encoded).
    pub model_id: String,
    /// `/model/{encoded modelId}/invoke` or `…/invoke-with-response-stream`.
    pub path: String,
    /// Whether the client asked for a stream (the answer is then an AWS event stream).
    pub streaming: bool,
    /// The rewritten JSON body.
    pub body: Bytes,
    /// The beta names left out because they are not allowed.
    pub dropped_betas: Vec<String>,
}

/// Rewrites a Messages API call for Bedrock.
///
/// - `path`: the client's path and query, e.g. `/v1/messages?beta=true`.
/// - `anthropic_beta`: the client's `anthropic-beta` header values (each may list several,
///   comma-separated).
/// - `allowed_betas`: when `Some`, only these beta names are passed on (Bedrock refuses
///   names it does not know); `None` passes every name.
///
/// Errors: [`RequestError`]; count_tokens and other paths, bad JSON, an unmapped model.
pub fn rewrite<'a>(
    path: &str,
    anthropic_beta: impl IntoIterator<Item = &'a str>,
    allowed_betas: Option<&[String]>,
    body: &[u8],
    models: &ModelMap,
) -> Result<BedrockRequest, RequestError> {
    let bare = path.split_once('?').map_or(path, |(p, _)| p);
    match bare.trim_end_matches('/') {
        "/v1/messages" => {}
        "/v1/messages/count_tokens" => return Err(RequestError::CountTokensUnsupported),
        _ => return Err(RequestError::UnsupportedPath(bare.to_owned())),
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(RequestError::NotAnObject);
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.as_str(),
        _ => return Err(ModelError::Missing.into()),
    };
    let model_id = models.bedrock_id(model)?.to_owned();
    let streaming = matches!(obj.get("stream"), Some(Value::Bool(true)));
    let RewrittenBody { body, dropped_betas } = rewrite_object(obj, anthropic_beta, allowed_betas)?;
    Ok(BedrockRequest {
        path: invoke_path(&model_id, streaming),
        model_id,
        streaming,
        body,
        dropped_betas,
    })
}

/// `/model/{modelId}/invoke`, or `/model/{modelId}/invoke-with-response-stream` when
/// `streaming`, with `model_id` percent-encoded as a URI label.
pub fn invoke_path(model_id: &str, streaming: bool) -> String {
    let op = if streaming { "invoke-with-response-stream" } else { "invoke" };
    format!("/model/{}/{op}", encode_label(model_id))
}

/// The body rewrite alone: drops `model` and `stream`, sets `anthropic_version` to
/// [`ANTHROPIC_VERSION`], and puts `betas` (the `anthropic-beta` values, already allowed by
/// the org's request policy; comma-separated lists are split) into `anthropic_beta` (left
/// out when empty). `allowed_betas`: when `Some`, only these names are passed on, the others
/// are returned in [`RewrittenBody::dropped_betas`]; `None` passes every name.
/// Errors: [`RequestError::InvalidJson`], [`RequestError::NotAnObject`].
pub fn rewrite_body(
    body: &[u8],
    betas: &[&str],
    allowed_betas: Option<&[String]>,
) -> Result<RewrittenBody, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(RequestError::NotAnObject);
    };
    rewrite_object(obj, betas.iter().copied(), allowed_betas)
}

fn rewrite_object<'a>(
    mut obj: Map<String, Value>,
    anthropic_beta: impl IntoIterator<Item = &'a str>,
    allowed_betas: Option<&[String]>,
) -> Result<RewrittenBody, RequestError> {
    obj.remove("model");
    obj.remove("stream");
    obj.insert("anthropic_version".into(), Value::String(ANTHROPIC_VERSION.into()));
    let (betas, dropped_betas) = merge_betas(&mut obj, anthropic_beta, allowed_betas);
    if !betas.is_empty() {
        obj.insert(
            "anthropic_beta".into(),
            Value::Array(betas.into_iter().map(Value::String).collect()),
        );
    }
    let body = serde_json::to_vec(&obj).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    Ok(RewrittenBody { body: Bytes::from(body), dropped_betas })
}

/// The header's names plus any already in the body, in order, without repeats: the allowed
/// ones and the dropped ones.
fn merge_betas<'a>(
    obj: &mut Map<String, Value>,
    header: impl IntoIterator<Item = &'a str>,
    allowed: Option<&[String]>,
) -> (Vec<String>, Vec<String>) {
    let mut out: Vec<String> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let from_body = match obj.remove("anthropic_beta") {
        Some(Value::Array(a)) => {
            a.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    };
    let from_header = header.into_iter().flat_map(|v| v.split(',')).map(|s| s.trim().to_owned());
    for name in from_body.into_iter().chain(from_header) {
        if name.is_empty() || out.contains(&name) || dropped.contains(&name) {
            continue;
        }
        if allowed.is_some_and(|a| !a.contains(&name)) {
            dropped.push(name);
            continue;
        }
        out.push(name);
    }
    (out, dropped)
}

/// Percent-encodes a URI path label: RFC 3986 §2.3 unreserved bytes stay, all else `%XX`.
pub fn encode_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + 8);
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> ModelMap {
        ModelMap::new([(
            "claude-sonnet-4-5".to_owned(),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0".to_owned(),
        )])
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn streaming_body_and_path() {
        let body = br#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":128000,
            "messages":[{"role":"user","content":"hi"}],"temperature":0.7,"metadata":{"user_id":"u"}}"#;
        let r = rewrite(
            "/v1/messages?beta=true",
            ["claude-code-20250219, interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
            None,
            body,
            &models(),
        )
        .unwrap();
        assert!(r.streaming);
        assert_eq!(
            r.path,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        );
        let v = json(&r.body);
        assert_eq!(v.get("model"), None);
        assert_eq!(v.get("stream"), None);
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(
            v["anthropic_beta"],
            serde_json::json!([
                "claude-code-20250219",
                "interleaved-thinking-2025-05-14",
                "context-1m-2025-08-07"
            ])
        );
        assert_eq!(v["max_tokens"], 128000);
        assert_eq!(v["temperature"], 0.7);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["metadata"]["user_id"], "u");
    }

    #[test]
    fn non_streaming_without_betas_and_filtered_betas() {
        let body = br#"{"model":"claude-sonnet-4-5","stream":false,"messages":[]}"#;
        let r = rewrite("/v1/messages", [], None, body, &models()).unwrap();
        assert!(!r.streaming);
        assert!(r.path.ends_with("%3A0/invoke"));
        assert_eq!(json(&r.body).get("anthropic_beta"), None);
        let allowed = vec!["context-1m-2025-08-07".to_owned()];
        let r = rewrite(
            "/v1/messages",
            ["oauth-2025-04-20,context-1m-2025-08-07"],
            Some(&allowed),
            body,
            &models(),
        )
        .unwrap();
        assert_eq!(json(&r.body)["anthropic_beta"], serde_json::json!(["context-1m-2025-08-07"]));
        assert_eq!(r.dropped_betas, ["oauth-2025-04-20"]);
        let r =
            rewrite("/v1/messages", ["oauth-2025-04-20"], Some(&allowed), body, &models()).unwrap();
        assert_eq!(json(&r.body).get("anthropic_beta"), None);
    }

    #[test]
    fn refusals() {
        let m = models();
        let ok = br#"{"model":"claude-sonnet-4-5"}"#;
        assert_eq!(
            rewrite("/v1/messages/count_tokens?beta=true", [], None, ok, &m),
            Err(RequestError::CountTokensUnsupported)
        );
        assert!(matches!(
            rewrite("/v1/complete", [], None, ok, &m),
            Err(RequestError::UnsupportedPath(_))
        ));
        assert!(matches!(
            rewrite("/v1/messages", [], None, b"{", &m),
            Err(RequestError::InvalidJson(_))
        ));
        assert_eq!(rewrite("/v1/messages", [], None, b"[1]", &m), Err(RequestError::NotAnObject));
        assert_eq!(
            rewrite("/v1/messages", [], None, b"{}", &m),
            Err(RequestError::Model(ModelError::Missing))
        );
        let err =
            rewrite("/v1/messages", [], None, br#"{"model":"claude-opus-9"}"#, &m).unwrap_err();
        assert_eq!(err.status_and_type(), (400, "invalid_request_error"));
        assert!(
            err.to_string().contains("claude-opus-9")
                && err.to_string().contains("claude-sonnet-4-5")
        );
        assert_eq!(RequestError::CountTokensUnsupported.status_and_type().0, 404);
    }

    #[test]
    fn body_and_path_alone() {
        let b = rewrite_body(
            br#"{"model":"m","stream":true,"anthropic_version":"x","system":"s"}"#,
            &["a,b", "a"],
            None,
        )
        .unwrap();
        assert!(b.dropped_betas.is_empty());
        assert_eq!(
            json(&b.body),
            serde_json::json!({"anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["a", "b"], "system": "s"})
        );
        assert_eq!(
            invoke_path("anthropic.claude-v2:1", false),
            "/model/anthropic.claude-v2%3A1/invoke"
        );
        assert_eq!(rewrite_body(b"1", &[], None), Err(RequestError::NotAnObject));
    }

    #[test]
    fn body_betas_filtered_and_dropped_ones_named() {
        // Claude Code 2.1.332's betas (see CLIENTS.md) against the default list.
        let allowed: Vec<String> = DEFAULT_BETAS.iter().map(|s| (*s).to_owned()).collect();
        let b = rewrite_body(
            br#"{"model":"m","anthropic_beta":["output-128k-2025-02-19","x-1"]}"#,
            &[
                "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
                "per-turn-control-2026-07-01, mid-conversation-tool-changes-2026-07-01",
                "thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,effort-2025-11-24",
                "x-1",
            ],
            Some(&allowed),
        )
        .unwrap();
        assert_eq!(
            json(&b.body)["anthropic_beta"],
            serde_json::json!([
                "output-128k-2025-02-19",
                "claude-code-20250219",
                "interleaved-thinking-2025-05-14",
                "context-management-2025-06-27",
                "effort-2025-11-24"
            ])
        );
        assert_eq!(
            b.dropped_betas,
            [
                "x-1",
                "per-turn-control-2026-07-01",
                "mid-conversation-tool-changes-2026-07-01",
                "thinking-token-count-2026-05-13",
                "advanced-tool-use-2025-11-20"
            ]
        );
        // Nothing allowed: no `anthropic_beta` at all (an empty array is not sent).
        let b = rewrite_body(br#"{"model":"m"}"#, &["a"], Some(&[])).unwrap();
        assert_eq!(json(&b.body).get("anthropic_beta"), None);
        assert_eq!(b.dropped_betas, ["a"]);
    }

    #[test]
    fn labels_encode_arns() {
        assert_eq!(
            encode_label(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.x-v1:0"
            ),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.x-v1%3A0"
        );
    }
}
