//! What the client asked for, read from the body and head (`model`, `max_tokens`, `stream`,
//! `anthropic-beta`, `?beta=true`) and checked against the org's request policy (models,
//! betas, provider-side tools). The body is read only for these fields (see
//! [`crate::fields`]); the conversation is not parsed.

use http::HeaderName;
use http::request::Parts;

use super::audit::AuditRecord;
use super::fields;
use super::orgs::Org;
use super::policy::{self, Asked};
use super::provider::{Call, Endpoint};
use super::reject::{self, Reason, Rejection};

const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The request as the pipeline's later steps need it; borrows the head's beta values.
#[derive(Debug)]
pub struct Request<'h> {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub stream: bool,
    /// `max_tokens` (0 for `count_tokens`, which generates nothing).
    pub max_tokens: u64,
    /// Every `anthropic-beta` value, split on commas and trimmed.
    pub betas: Vec<&'h str>,
    /// The query string had `beta=true` (the only parameter that reaches the provider).
    pub beta_query: bool,
}

impl Request<'_> {
    /// What a provider needs of it.
    pub fn call(&self) -> Call<'_> {
        Call {
            endpoint: self.endpoint,
            model: self.model.as_deref(),
            stream: self.stream,
            betas: &self.betas,
            beta_query: self.beta_query,
        }
    }
}

/// The pipeline's request step: reads the fields and applies `org`'s policy (`org_id`
/// names it in errors); fills the audit record's model and stream.
pub fn read<'h>(
    org: &Org,
    org_id: &str,
    endpoint: Endpoint,
    parts: &'h Parts,
    body: &[u8],
    audit: &mut AuditRecord,
) -> Result<Request<'h>, Rejection> {
    let fields = fields::read(body).map_err(|e| {
        reject::bad_request(
            Reason::InvalidJson,
            format!("the request body {e}; send a Messages API request"),
        )
    })?;
    audit.model = fields.model.as_ref().map(|m| m.chars().take(128).collect());
    let stream = fields.stream.as_ref().and_then(|s| s.as_bool()).unwrap_or(false);
    audit.stream = stream;
    let max_tokens = match endpoint {
        Endpoint::CountTokens => 0,
        Endpoint::Messages => {
            fields.max_tokens.as_ref().and_then(|v| v.as_u64()).filter(|n| *n > 0).ok_or_else(
                || {
                    reject::bad_request(
                        Reason::InvalidMaxTokens,
                        "'max_tokens' must be a positive integer: the gateway reserves the run's \
                     budget against it",
                    )
                },
            )?
        }
    };
    let mut betas = Vec::new();
    for value in parts.headers.get_all(ANTHROPIC_BETA) {
        let value = value.to_str().map_err(|_| {
            reject::bad_request(
                Reason::InvalidBeta,
                "the anthropic-beta header is not visible ASCII; send beta names only",
            )
        })?;
        betas.extend(value.split(',').map(str::trim).filter(|b| !b.is_empty()));
    }
    let asked = Asked {
        model: fields.model.as_deref(),
        betas: &betas,
        tools: fields.tools.clone().map(|r| &body[r]),
        mcp_servers: fields.mcp_servers,
    };
    org.policy.check(org_id, &asked).map_err(|e| reject::policy(&e))?;
    Ok(Request {
        endpoint,
        stream,
        max_tokens,
        betas,
        model: fields.model,
        // The query string is not the agent's to choose: only `beta=true` goes on.
        beta_query: policy::upstream_query(parts.uri.query()).is_some(),
    })
}
