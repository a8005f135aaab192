//! The Anthropic Messages API (<https://docs.anthropic.com/en/api/messages>): the client's
//! request passes unchanged except for its credentials; the org's key goes in `x-api-key`.

use bytes::Bytes;
use http::{request, response};
use sanctum_common::headers::X_API_KEY;
use sanctum_common::proxy::UpstreamClient;

use super::{Answer, Call, Credential, Endpoint, Provider, ProviderError, is_sse};
use crate::keys::ProviderKeys;

/// The provider at `--upstream`, with one key per org in `--keys-dir`.
pub struct Anthropic {
    keys: ProviderKeys,
    client: UpstreamClient,
}

impl Anthropic {
    pub fn new(keys: ProviderKeys, client: UpstreamClient) -> Self {
        Self { keys, client }
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn ready(&self) -> Result<(), String> {
        let dir = self.keys.dir();
        if dir.is_dir() {
            Ok(())
        } else {
            Err(format!("--keys-dir {} is not a directory", dir.display()))
        }
    }

    fn credential(&self, org: &str) -> Result<Credential, ProviderError> {
        match self.keys.get(org) {
            Ok(key) => Ok(Credential::ApiKey(key)),
            Err(e) if e.is_unknown_org() => Err(ProviderError::UnknownOrg(e.to_string())),
            Err(e) => Err(ProviderError::CredentialsUnavailable(e.to_string())),
        }
    }

    fn route(&self, call: &Call<'_>) -> Result<http::uri::PathAndQuery, ProviderError> {
        // Static strings: no allocation.
        let path = match (call.endpoint, call.beta_query) {
            (Endpoint::Messages, false) => "/v1/messages",
            (Endpoint::Messages, true) => "/v1/messages?beta=true",
            (Endpoint::CountTokens, false) => "/v1/messages/count_tokens",
            (Endpoint::CountTokens, true) => "/v1/messages/count_tokens?beta=true",
        };
        Ok(http::uri::PathAndQuery::from_static(path))
    }

    fn body(&self, body: Bytes, _call: &Call<'_>) -> Result<Bytes, ProviderError> {
        Ok(body)
    }

    fn sign(
        &self,
        parts: &mut request::Parts,
        _body: &[u8],
        credential: Credential,
    ) -> Result<(), ProviderError> {
        match credential {
            Credential::ApiKey(key) => {
                parts.headers.insert(X_API_KEY, key);
                Ok(())
            }
            Credential::Signing(_) => Err(ProviderError::Signing {
                provider: "anthropic",
                why: "a signing credential where an API key was expected".into(),
            }),
        }
    }

    fn client(&self) -> &UpstreamClient {
        &self.client
    }

    fn answer(&self, head: &mut response::Parts) -> Answer {
        Answer { sse: is_sse(head), translate: None }
    }
}
