//! Amazon Bedrock for orgs whose provider is `bedrock`: pure pieces the provider adapter
//! (`crate::provider`) calls. The agent keeps speaking the Anthropic Messages API; here:
//!
//! - [`model`]: the agent's `model` → the Bedrock model id, from the org's `modelIds`.
//! - [`request`]: `/v1/messages` → `/model/{modelId}/invoke[-with-response-stream]`, and the
//!   body rewrite (`model`/`stream` out, `anthropic_version` and `anthropic_beta` in).
//! - [`sigv4`]: SigV4 signing of the final request (service `bedrock`).
//! - [`credentials`]: AWS credentials from the org's mounted Secret or from STS web identity.
//! - [`eventstream`]: Bedrock's binary event stream → SSE with usage; Bedrock errors →
//!   Anthropic's error shape.
//!
//! Source of the wire rules: Amazon Bedrock runtime API reference (`InvokeModel`,
//! `InvokeModelWithResponseStream`) and the Bedrock User Guide's Anthropic Claude Messages
//! API page.

pub mod credentials;
pub mod eventstream;
pub mod model;
pub mod request;
pub mod sigv4;

pub use credentials::{
    AwsCredentials, CredentialsError, SecretDirCredentials, WebIdentity, WebIdentityConfig,
};
pub use eventstream::{EventStreamToSse, InvocationMetrics, JsonErrorToAnthropic, StreamError};
pub use model::{ModelError, ModelMap};
pub use request::{
    ANTHROPIC_VERSION, BedrockRequest, DEFAULT_BETAS, RequestError, RewrittenBody, invoke_path,
    rewrite, rewrite_body,
};
pub use sigv4::{SERVICE, SignError, sign_parts};

/// The default Bedrock runtime endpoint of `region`.
pub fn default_endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}
