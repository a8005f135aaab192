//! Amazon Bedrock (`InvokeModel`, `InvokeModelWithResponseStream`) behind the provider seam,
//! for orgs whose provider is `bedrock`: an adapter over the pure pieces in
//! [`crate::bedrock`]. The agent keeps speaking the Messages API:
//!
//! - route: `/model/{modelId}/invoke[-with-response-stream]`, the model id from the org's
//!   `modelIds`; `count_tokens` is refused (404);
//! - body: `model` and `stream` out, `anthropic_version: bedrock-2023-05-31` and the
//!   `anthropic-beta` values (as `anthropic_beta`) in — only those in the org's
//!   `bedrock.betas` (default [`crate::bedrock::DEFAULT_BETAS`]); the others are left out
//!   (Bedrock would refuse the call) and counted in a debug log line;
//! - credentials: the org's Secret directory or STS web identity; SigV4 over the final bytes;
//! - answer: the event stream translated to SSE, Bedrock's errors to Anthropic's shape;
//!   a non-streamed answer is already the Messages API's JSON.
//!
//! Source: Amazon Bedrock runtime API reference and the User Guide's "Anthropic Claude
//! Messages API" page.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, request, response};
use sanctum_common::proxy::{Limits, ProxyMetrics, Upstream, UpstreamClient};

use super::{
    Answer, Call, Credential, Endpoint, Provider, ProviderError, Translate, TranslateError,
};
use crate::bedrock::eventstream::{EVENTSTREAM_CONTENT_TYPE, error_status};
use crate::bedrock::{
    AwsCredentials, EventStreamToSse, JsonErrorToAnthropic, ModelError, ModelMap,
    SecretDirCredentials, WebIdentity, WebIdentityConfig, default_endpoint, invoke_path,
    rewrite_body, sign_parts,
};
use crate::config::{BedrockSpec, ConfigError};

const NAME: &str = "bedrock";
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const AMZN_ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// Where an org's AWS credentials come from.
enum Source {
    SecretDir(SecretDirCredentials),
    WebIdentity(Arc<WebIdentity>),
}

/// One org's Bedrock: its endpoint, region, model map and credentials.
pub struct Bedrock {
    region: String,
    /// The endpoint's authority, exactly as the upstream client sends it as `host` (signed).
    host: String,
    models: ModelMap,
    /// The beta names passed on; `None`: all.
    betas: Option<Vec<String>>,
    source: Source,
    client: UpstreamClient,
}

impl Bedrock {
    /// Builds the provider of org `org` from its `bedrock:` entry. Starts the web-identity
    /// refresher (call inside the runtime). Errors name the org and what to fix.
    pub fn new(
        org: &str,
        spec: &BedrockSpec,
        limits: &Limits,
        metrics: Arc<ProxyMetrics>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let fail = |why: String| ConfigError::Org { org: org.to_owned(), why };
        let endpoint = spec.endpoint.clone().unwrap_or_else(|| default_endpoint(&spec.region));
        let mut upstream =
            Upstream::url(&endpoint).map_err(|e| fail(format!("bedrock.endpoint: {e}")))?;
        if let Some(ca) = ca_file {
            upstream = upstream.with_ca_file(ca);
        }
        let host = endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
            .ok_or_else(|| fail(format!("bedrock.endpoint '{endpoint}' has no host")))?;
        let client = UpstreamClient::new(upstream, limits, metrics)
            .map_err(|e| fail(format!("bedrock.endpoint: {e}")))?;
        let c = &spec.credentials;
        let source = match (&c.secret_dir, &c.web_identity) {
            (Some(dir), None) => {
                Source::SecretDir(SecretDirCredentials::new(dir, Duration::from_secs(1)))
            }
            (None, Some(w)) => {
                let mut config =
                    WebIdentityConfig::new(w.role_arn.clone(), w.token_file.clone(), &spec.region);
                if let Some(name) = &w.session_name {
                    config.session_name = name.clone();
                }
                if let Some(sts) = &w.sts_endpoint {
                    config.sts_endpoint = sts.clone();
                }
                let wi = Arc::new(
                    WebIdentity::new(config).map_err(|e| fail(format!("webIdentity: {e}")))?,
                );
                wi.spawn_refresher();
                Source::WebIdentity(wi)
            }
            _ => {
                return Err(fail(
                    "bedrock.credentials needs exactly one of secretDir or webIdentity".into(),
                ));
            }
        };
        let models = ModelMap::new(spec.model_ids.iter().map(|(k, v)| (k.clone(), v.clone())));
        let betas = spec.passed_betas();
        Ok(Self { region: spec.region.clone(), host, models, betas, source, client })
    }
}

impl Provider for Bedrock {
    fn name(&self) -> &'static str {
        NAME
    }

    fn ready(&self) -> Result<(), String> {
        match &self.source {
            Source::SecretDir(s) if !s.dir().is_dir() => Err(format!(
                "Bedrock credentials directory {} is not a directory",
                s.dir().display()
            )),
            // Web identity: requests say 503 until STS answers; one org's STS must not make
            // the whole gateway unready.
            _ => Ok(()),
        }
    }

    fn credential(&self, _org: &str) -> Result<Credential, ProviderError> {
        let creds = match &self.source {
            Source::SecretDir(s) => s.get(),
            Source::WebIdentity(w) => w.current(SystemTime::now()),
        }
        .map_err(|e| ProviderError::CredentialsUnavailable(e.to_string()))?;
        Ok(Credential::Signing(creds as Arc<dyn Any + Send + Sync>))
    }

    fn route(&self, call: &Call<'_>) -> Result<http::uri::PathAndQuery, ProviderError> {
        if call.endpoint == Endpoint::CountTokens {
            return Err(ProviderError::Unsupported {
                provider: NAME,
                endpoint: "POST /v1/messages/count_tokens",
            });
        }
        let model = call.model.unwrap_or_default();
        if model.is_empty() {
            return Err(ProviderError::Body {
                provider: NAME,
                why: ModelError::Missing.to_string(),
            });
        }
        let id = self.models.bedrock_id(model).map_err(|e| match e {
            ModelError::Unmapped { .. } => {
                ProviderError::UnknownModel { provider: NAME, model: model.to_owned() }
            }
            ModelError::Missing => ProviderError::Body { provider: NAME, why: e.to_string() },
        })?;
        http::uri::PathAndQuery::try_from(invoke_path(id, call.stream)).map_err(|e| {
            ProviderError::Body { provider: NAME, why: format!("model id gives no path: {e}") }
        })
    }

    fn body(&self, body: Bytes, call: &Call<'_>) -> Result<Bytes, ProviderError> {
        let rewritten = rewrite_body(&body, call.betas, self.betas.as_deref())
            .map_err(|e| ProviderError::Body { provider: NAME, why: e.to_string() })?;
        if !rewritten.dropped_betas.is_empty() {
            // Beta names are public feature names, never secrets.
            tracing::debug!(
                provider = NAME,
                dropped = rewritten.dropped_betas.len(),
                betas = ?rewritten.dropped_betas,
                "anthropic-beta values not in the org's bedrock.betas left out of the request"
            );
        }
        Ok(rewritten.body)
    }

    fn sign(
        &self,
        parts: &mut request::Parts,
        body: &[u8],
        credential: Credential,
    ) -> Result<(), ProviderError> {
        let signing_error = |why: String| ProviderError::Signing { provider: NAME, why };
        let Credential::Signing(any) = credential else {
            return Err(signing_error("an API key where AWS credentials were expected".into()));
        };
        let creds = any
            .downcast_ref::<AwsCredentials>()
            .ok_or_else(|| signing_error("credentials of another provider".into()))?;
        // Both travel in the body now (`anthropic_version`, `anthropic_beta`).
        parts.headers.remove(ANTHROPIC_BETA);
        parts.headers.remove(ANTHROPIC_VERSION);
        sign_parts(
            parts,
            &self.host,
            &self.region,
            crate::bedrock::SERVICE,
            body,
            creds,
            SystemTime::now(),
        )
        .map_err(|e| signing_error(e.to_string()))
    }

    fn client(&self) -> &UpstreamClient {
        &self.client
    }

    fn answer(&self, head: &mut response::Parts) -> Answer {
        let content_type = head.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !head.status.is_success() {
            let exception =
                head.headers.get(AMZN_ERROR_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let from = head.status.as_u16();
            let (status, _) = error_status(from, exception.as_deref());
            head.status =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            head.headers.remove(CONTENT_LENGTH);
            let t = JsonError(JsonErrorToAnthropic::new(from, exception));
            return Answer { sse: false, translate: Some(Box::new(t)) };
        }
        if content_type.is_some_and(|t| t.starts_with(EVENTSTREAM_CONTENT_TYPE)) {
            head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            head.headers.remove(CONTENT_LENGTH);
            return Answer {
                sse: true,
                translate: Some(Box::new(Stream(EventStreamToSse::new()))),
            };
        }
        // `InvokeModel`'s answer is the Messages API's JSON, usage included.
        Answer { sse: false, translate: None }
    }
}

/// The event stream → SSE.
struct Stream(EventStreamToSse);

impl Translate for Stream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), TranslateError> {
        self.0.feed(input, out).map_err(|e| TranslateError(e.to_string()))
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), TranslateError> {
        self.0.finish(out).map_err(|e| TranslateError(e.to_string()))
    }
}

/// Bedrock's error JSON → Anthropic's error shape.
struct JsonError(JsonErrorToAnthropic);

impl Translate for JsonError {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), TranslateError> {
        self.0.feed(input, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), TranslateError> {
        self.0.finish(out);
        Ok(())
    }
}
