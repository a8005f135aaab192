//! The provider seam: everything that differs between the LLM providers an org's requests go
//! to. The agent always speaks the Anthropic Messages API (`POST /v1/messages`, SSE when
//! `stream: true`); a [`Provider`] turns the admitted request into the provider's request and
//! the provider's answer back into a Messages API answer. One module per provider:
//! [`anthropic`] (the Messages API itself: the body passes unchanged, the org's key goes in
//! `x-api-key`) and, when present, `bedrock` (Amazon Bedrock `InvokeModel`, SigV4-signed).
//!
//! # Config shape (`--config`, YAML; unknown keys are refused)
//!
//! Every key of an org entry is optional; a key an org leaves out comes from `default:`, and a
//! key `default:` leaves out has the built-in default shown. Files without the provider keys
//! (the request-policy files of before) stay valid and mean `provider: anthropic`.
//!
//! ```yaml
//! default:                      # every org not listed under `orgs:`
//!   provider: anthropic         # anthropic (built-in default) | bedrock
//!   models: ['*']               # allowed `model` values ('*' matches any characters)
//!   betas: ['*']                # allowed anthropic-beta values
//!   serverTools: []             # provider-side tools allowed (mcp_servers, web_search, …)
//!   budgetTokens: 2000000       # run budget when the TraT sets no tctx.budget_tokens
//!                               #   (default: --default-budget-tokens)
//!   ratePerMinute: 120          # requests per minute per run, 0 = no limit
//!                               #   (default: --rate-limit-per-minute)
//!   rateBurst: 20               # requests above the rate at once (default: --rate-limit-burst)
//! orgs:
//!   acme: {}                    # Anthropic with the key in --keys-dir/acme
//!   globex:
//!     provider: bedrock
//!     models: ['claude-sonnet-4-5*']
//!     bedrock:                  # required when provider: bedrock
//!       region: eu-central-1    # AWS region of the Bedrock runtime endpoint
//!       endpoint: https://bedrock-runtime.eu-central-1.amazonaws.com
//!                               # optional: a VPC endpoint or a test stand-in; default
//!                               # https://bedrock-runtime.<region>.amazonaws.com (no path)
//!       modelIds:               # the `model` the agent sends → Bedrock model id or inference
//!                               # profile; a model not listed is refused (403)
//!         claude-sonnet-4-5-20250929: eu.anthropic.claude-sonnet-4-5-20250929-v1:0
//!       credentials:            # exactly one of secretDir | webIdentity
//!         secretDir: /etc/sanctum/aws/globex
//!                               # a mounted Secret: files aws_access_key_id,
//!                               # aws_secret_access_key and (optional) aws_session_token,
//!                               # re-read when they change
//!         # webIdentity:        # STS AssumeRoleWithWebIdentity (EKS IRSA)
//!         #   roleArn: arn:aws:iam::123456789012:role/sanctum-bedrock-globex
//!         #   tokenFile: /var/run/secrets/eks.amazonaws.com/serviceaccount/token
//!         #   sessionName: sanctum-gateway     # optional
//!         #   stsEndpoint: https://sts.eu-central-1.amazonaws.com   # optional (the default)
//!       # betas: ['*']          # anthropic-beta names passed to Bedrock, the others left
//!                               # out (not refused); default: bedrock::DEFAULT_BETAS
//! ```
//!
//! The Rust shape of this file is [`crate::config`]; the Bedrock adapter takes its
//! [`crate::config::BedrockSpec`].
//!
//! # The request path through a provider
//!
//! 1. [`Provider::credential`] — the "provider key" step, right after the rate check and
//!    before the body is read: an org without usable credentials is refused cheaply.
//! 2. [`Provider::route`] — the path (and query) of the provider's request, from what the
//!    client asked ([`Call`]): Anthropic keeps `/v1/messages[?beta=true]`; Bedrock answers
//!    `/model/{modelId}/invoke` or `/model/{modelId}/invoke-with-response-stream`.
//! 3. [`Provider::body`] — the body after DLP (and redaction), rewritten for the provider:
//!    Anthropic passes it unchanged (no copy); Bedrock drops `model` and `stream`, adds
//!    `anthropic_version: "bedrock-2023-05-31"` and the `anthropic-beta` header's values as
//!    the `anthropic_beta` array.
//! 4. [`Provider::sign`] — credentials onto the final request, whose body bytes are final
//!    (SigV4 signs them); the client's own credential headers are already gone.
//! 5. [`Provider::client`] — the pooled connection to send it on.
//! 6. [`Provider::answer`] — how to read the answer: as it is (Anthropic), or through a
//!    [`Translate`] that turns it into what the Messages API would have sent (Bedrock's
//!    `application/vnd.amazon.eventstream` into SSE; its error JSON into the Anthropic error
//!    shape). The gateway meters usage on the translated bytes, so budgets and the audit
//!    line work alike for every provider.
//!
//! Every method but [`Provider::answer`] (for a translated answer) runs without allocating
//! for Anthropic; all are synchronous — credentials that must be fetched (web identity) are
//! refreshed in the background by the provider and read here from memory.

pub mod anthropic;
pub mod bedrock;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, request, response};
use sanctum_common::proxy::UpstreamClient;
use thiserror::Error;

/// Which Messages API endpoint the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
}

/// What the client asked for, as far as a provider needs to know to route and rewrite it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The request's `model` (already allowed by the org's policy).
    pub model: Option<&'a str>,
    /// The request's `stream` (`true` only when the JSON says `true`).
    pub stream: bool,
    /// Every `anthropic-beta` value, split on commas and trimmed (already allowed).
    pub betas: &'a [&'a str],
    /// Whether the client's query string had `beta=true` (the only parameter passed on).
    pub beta_query: bool,
}

/// A credential, read at the provider-key step and used by [`Provider::sign`].
#[derive(Clone)]
pub enum Credential {
    /// An API key sent as a header (Anthropic's `x-api-key`); marked sensitive.
    ApiKey(HeaderValue),
    /// What a signing provider needs (for Bedrock: AWS access key id, secret access key,
    /// session token), opaque to the pipeline; the provider downcasts its own type.
    Signing(Arc<dyn std::any::Any + Send + Sync>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)") // never the secret
    }
}

/// Why a provider could not take a request. Messages never hold a credential.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// The org has no credentials configured (its fault: 403).
    #[error("{0}")]
    UnknownOrg(String),
    /// The org's credentials exist but cannot be used now (the gateway's fault: 503).
    #[error("{0}")]
    CredentialsUnavailable(String),
    /// The provider does not serve this endpoint (404).
    #[error("{endpoint} is not served for orgs whose provider is {provider}")]
    Unsupported { provider: &'static str, endpoint: &'static str },
    /// The model has no id at this provider (403: the org's config decides it).
    #[error("model '{model}' has no {provider} model id in the gateway's config for this org")]
    UnknownModel { provider: &'static str, model: String },
    /// The body could not be rewritten for the provider (400).
    #[error("the request body cannot be sent to {provider}: {why}")]
    Body { provider: &'static str, why: String },
    /// Signing the request failed (500: a gateway fault).
    #[error("cannot sign the request for {provider}: {why}")]
    Signing { provider: &'static str, why: String },
}

/// How the gateway reads the provider's answer.
pub struct Answer {
    /// The answer (after translation) is an SSE stream: metered event by event.
    pub sse: bool,
    /// Turns the provider's bytes into Messages API bytes; `None`: they already are.
    pub translate: Option<Box<dyn Translate>>,
}

/// A translator of a provider's response body into the Messages API's (Bedrock's event
/// stream into SSE). Input may be split anywhere; output must be whole SSE events (or, for a
/// JSON answer, appear whole at [`Translate::finish`]).
pub trait Translate: Send {
    /// Takes the next provider bytes and appends what they translate to onto `out`.
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), TranslateError>;
    /// The provider's body ended: appends anything held back onto `out`.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), TranslateError>;
}

/// The provider's answer could not be translated; the client gets an SSE `error` event.
#[derive(Debug, Error)]
#[error("the provider's answer could not be translated: {0}")]
pub struct TranslateError(pub String);

/// One provider. Implementations are shared by all requests of the orgs using them
/// (`Arc<dyn Provider>`, one per org or one for all orgs of a kind).
pub trait Provider: Send + Sync {
    /// Short name for logs, the audit line and errors (`anthropic`, `bedrock`).
    fn name(&self) -> &'static str;

    /// Whether the provider can serve at all (for `/readyz`): `Err` says what is missing.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// The org's credential, checked before the body is read.
    ///
    /// Errors: [`ProviderError::UnknownOrg`] (403) or [`ProviderError::CredentialsUnavailable`]
    /// (503, retried).
    fn credential(&self, org: &str) -> Result<Credential, ProviderError>;

    /// The path and query (origin form, e.g. `/v1/messages?beta=true`) of the provider's
    /// request. Errors: [`ProviderError::Unsupported`], [`ProviderError::UnknownModel`].
    fn route(&self, call: &Call<'_>) -> Result<http::uri::PathAndQuery, ProviderError>;

    /// The body to send, from the body after DLP. Errors: [`ProviderError::Body`].
    fn body(&self, body: Bytes, call: &Call<'_>) -> Result<Bytes, ProviderError>;

    /// Puts the credential on the final request (`parts` has the provider's path, no client
    /// credentials, `accept-encoding: identity`, a `content-type`); `body` is exactly what
    /// will be sent. Errors: [`ProviderError::Signing`].
    fn sign(
        &self,
        parts: &mut request::Parts,
        body: &[u8],
        credential: Credential,
    ) -> Result<(), ProviderError>;

    /// The client to the provider's endpoint.
    fn client(&self) -> &UpstreamClient;

    /// How to read the answer whose head is `head`; may rewrite the head (content type and
    /// length of a translated answer).
    fn answer(&self, head: &mut response::Parts) -> Answer;
}

/// Whether a response head announces an SSE stream.
pub fn is_sse(head: &response::Parts) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}
