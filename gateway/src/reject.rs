//! Every way the gateway refuses a request: which check failed ([`Reason`], the metrics and
//! audit label), the status, and a message a person can act on. No message holds a token or key.

use http::StatusCode;
use sanctum_common::error::{ApiError, ErrorKind, Retry};

use super::body::ReadError;
use super::jwks::{TypeError, VerifyError};
use super::policy::PolicyError;
use super::provider::ProviderError;
use super::svid::SvidError;
use super::trat::TratError;

/// Declares [`Reason`] from one list: variant, label, doc.
macro_rules! reasons {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $label:literal, )+) => {
        /// Why the gateway refused a request: the `reason` label of
        /// `sanctum_gateway_rejections_total`, the audit line's `rejected` field, and the table
        /// in gateway/README.md (a test keeps that table complete). Labels never change:
        /// dashboards and alerts read them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Reason {
            /// Every reason, in the order of the checks.
            pub const ALL: &[Reason] = &[$(Reason::$variant),+];

            /// The metrics and audit label.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$variant => $label,)+ }
            }

            /// The first line of the variant's doc: what the label means.
            pub const fn meaning(self) -> &'static str {
                match self { $(Reason::$variant => reasons!(@first $($doc)+).trim_ascii(),)+ }
            }
        }
    };
    (@first $first:literal $($rest:literal)*) => { $first };
}

reasons! {
    /// The method or path is not `POST /v1/messages` or `POST /v1/messages/count_tokens` (404).
    UnsupportedPath = "unsupported_path",
    /// No `Authorization: Bearer <JWT-SVID>` header (401).
    SvidMissing = "svid_missing",
    /// The JWT-SVID's `kid` is in no key of the SVID JWKS, even after a refresh (401).
    SvidUnknownKey = "svid_unknown_key",
    /// The JWT-SVID's `alg` does not match its key (401).
    SvidAlgorithm = "svid_algorithm",
    /// The JWT-SVID's signature does not verify (401).
    SvidSignature = "svid_signature",
    /// The JWT-SVID is not a well-formed JWT (401).
    SvidMalformed = "svid_malformed",
    /// A TraT (or another token type) was sent as the JWT-SVID (401).
    SvidType = "svid_type",
    /// The JWT-SVID expired (401, retried: the bridge re-reads a rotated token).
    SvidExpired = "svid_expired",
    /// The JWT-SVID's `nbf` is in the future (401, retried).
    SvidNotYetValid = "svid_not_yet_valid",
    /// The JWT-SVID's `aud` does not name the gateway's audience (401).
    SvidAudience = "svid_audience",
    /// The JWT-SVID's `sub` matches no `--allowed-sub` pattern (403).
    SvidSubjectNotAllowed = "svid_subject_not_allowed",
    /// The JWT-SVID lacks `sub` or `exp`, or has a malformed `nbf` (401).
    SvidClaims = "svid_claims",
    /// A JWKS (SVID or TraT) has not been loaded yet (503, retried).
    JwksUnavailable = "jwks_unavailable",
    /// No `Txn-Token` header (401).
    TratMissing = "trat_missing",
    /// The TraT's `kid` is in no key of the TraT JWKS, even after a refresh (401).
    TratUnknownKey = "trat_unknown_key",
    /// The TraT's `alg` does not match its key (401).
    TratAlgorithm = "trat_algorithm",
    /// The TraT's signature does not verify (401).
    TratSignature = "trat_signature",
    /// The TraT is not a well-formed JWT (401).
    TratMalformed = "trat_malformed",
    /// The token in `Txn-Token` is not a TraT (`typ: txntoken+jwt`) (401).
    TratType = "trat_type",
    /// The TraT's claims are missing or of the wrong shape (401).
    TratClaims = "trat_claims",
    /// The TraT expired (401).
    TratExpired = "trat_expired",
    /// The TraT's `aud` does not name the gateway's audience (401).
    TratAudience = "trat_audience",
    /// The TraT's `iss` is not `--trat-issuer` (401).
    TratIssuer = "trat_issuer",
    /// The TraT's `scope` lacks `llm.messages` (403).
    TratScope = "trat_scope",
    /// The TraT is not bound to the caller (its `sub`, or pod, differs from the JWT-SVID's) (403).
    TratNotBound = "trat_not_bound",
    /// The run ended: its `txn` is on the operator's revoked list (403).
    TratRevoked = "trat_revoked",
    /// The revoked list is older than `--revoked-max-age-secs` (503, retried).
    RevocationUnavailable = "revocation_unavailable",
    /// The run is above its request rate (429 with retry-after).
    RateLimited = "rate_limited",
    /// The org has no provider credentials (no key file in `--keys-dir`, or an invalid org id) (403).
    UnknownOrg = "unknown_org",
    /// The org's provider credentials exist but cannot be read now (503, retried).
    ProviderKeyUnavailable = "provider_key_unavailable",
    /// The request body is compressed (`content-encoding`): it could not be scanned (400).
    UnsupportedEncoding = "unsupported_encoding",
    /// The request body is larger than `--max-body-bytes` (413).
    BodyTooLarge = "body_too_large",
    /// The run has `--run-body-bytes-in-flight` bytes of bodies in memory already (429, retried).
    BodyRunInFlight = "body_run_in_flight",
    /// All runs together have `--body-bytes-in-flight` bytes in memory already (503, retried).
    BodyGatewayInFlight = "body_gateway_in_flight",
    /// The body did not arrive within `--body-read-timeout-secs` (408).
    BodyTimeout = "body_timeout",
    /// The body could not be read (the client's connection broke) (400).
    BodyRead = "body_read",
    /// The body is not a JSON object with each read field once (400).
    InvalidJson = "invalid_json",
    /// `max_tokens` is missing or not a positive integer (400).
    InvalidMaxTokens = "invalid_max_tokens",
    /// The `anthropic-beta` header is not visible ASCII (400).
    InvalidBeta = "invalid_beta",
    /// The model is not allowed for the org (or none is named) (403).
    PolicyModel = "policy_model",
    /// An `anthropic-beta` value is not allowed for the org (403).
    PolicyBeta = "policy_beta",
    /// A provider-side tool (or `mcp_servers`) is not allowed for the org (403).
    PolicyServerTool = "policy_server_tool",
    /// `tools` is not an array of tool objects (400).
    InvalidTools = "invalid_tools",
    /// The org's provider does not serve this endpoint (404).
    ProviderUnsupported = "provider_unsupported",
    /// The model has no id at the org's provider (Bedrock `modelIds`) (403).
    ProviderModel = "provider_model",
    /// The body could not be rewritten for the org's provider (400).
    ProviderBody = "provider_body",
    /// The request could not be signed for the org's provider (500).
    ProviderSigning = "provider_signing",
    /// DLP found a secret in the body (400).
    DlpBlock = "dlp_block",
    /// The run has spend the state store has not recorded yet (503, retried).
    SettlementPending = "settlement_pending",
    /// The budget and rate store (Redis) did not answer (503, retried).
    StateUnavailable = "state_unavailable",
    /// The run has spent its token budget (429, never retried).
    BudgetExhausted = "budget_exhausted",
    /// The request alone could exceed the run's remaining budget (429, never retried).
    BudgetInsufficient = "budget_insufficient",
    /// The run's remaining budget is reserved by requests in flight (429, retried).
    BudgetBusy = "budget_busy",
    /// The provider could not be reached, or broke off before its answer's head (502/504).
    UpstreamUnreachable = "upstream_unreachable",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

#[derive(Debug)]
pub struct Rejection {
    pub reason: Reason,
    pub error: ApiError,
}

impl Rejection {
    pub fn new(reason: Reason, error: ApiError) -> Self {
        Self { reason, error }
    }
}

pub fn missing_svid() -> Rejection {
    Rejection::new(
        Reason::SvidMissing,
        ApiError::unauthorized(
            "missing 'Authorization: Bearer <JWT-SVID>': send requests through sanctum-bridge, \
             which adds the pod's identity token",
        ),
    )
}

pub fn missing_trat() -> Rejection {
    Rejection::new(
        Reason::TratMissing,
        ApiError::unauthorized(
            "missing 'Txn-Token' header: send requests through sanctum-bridge, which adds the \
             run's transaction token from /run/sage/trat.jwt",
        ),
    )
}

/// `which` is "JWT-SVID (Authorization)" or "TraT (Txn-Token)"; `prefix` is "svid" or "trat".
pub fn verify(prefix: &'static str, which: &str, e: &VerifyError) -> Rejection {
    let reason = match (prefix, e) {
        ("svid", VerifyError::UnknownKid(_)) => Reason::SvidUnknownKey,
        ("svid", VerifyError::AlgorithmMismatch { .. }) => Reason::SvidAlgorithm,
        ("svid", VerifyError::BadSignature) => Reason::SvidSignature,
        ("svid", _) => Reason::SvidMalformed,
        (_, VerifyError::UnknownKid(_)) => Reason::TratUnknownKey,
        (_, VerifyError::AlgorithmMismatch { .. }) => Reason::TratAlgorithm,
        (_, VerifyError::BadSignature) => Reason::TratSignature,
        _ => Reason::TratMalformed,
    };
    Rejection::new(reason, ApiError::unauthorized(format!("the {which} {e}")))
}

/// A token in the wrong header (a TraT as the JWT-SVID, or the reverse): never retried.
pub fn token_type(which: &str, e: &TypeError) -> Rejection {
    let reason = match e {
        TypeError::TratAsSvid | TypeError::NotSvid(_) => Reason::SvidType,
        TypeError::NotTrat(_) => Reason::TratType,
    };
    Rejection::new(reason, ApiError::unauthorized(format!("the {which} {e}")))
}

pub fn jwks_unavailable(which: &str, why: &str) -> Rejection {
    Rejection::new(
        Reason::JwksUnavailable,
        ApiError::unavailable(format!(
            "the gateway has no verification keys for the {which} yet ({why}); check the \
             gateway's --svid-jwks / --trat-jwks source"
        ))
        .retry(Retry::After(5)),
    )
}

pub fn svid(e: &SvidError) -> Rejection {
    let msg = format!("the JWT-SVID (Authorization) {e}");
    match e {
        SvidError::Expired { .. } => Rejection::new(
            Reason::SvidExpired,
            // The bridge re-reads the token file on every request: a rotation can fix this.
            ApiError::unauthorized(msg).retry(Retry::After(5)),
        ),
        SvidError::NotYetValid { .. } => Rejection::new(
            Reason::SvidNotYetValid,
            ApiError::unauthorized(msg).retry(Retry::After(5)),
        ),
        SvidError::Audience(_) => Rejection::new(Reason::SvidAudience, ApiError::unauthorized(msg)),
        SvidError::SubjectNotAllowed { .. } => {
            Rejection::new(Reason::SvidSubjectNotAllowed, ApiError::forbidden(msg))
        }
        SvidError::NoSub | SvidError::NoExp | SvidError::BadNbf => {
            Rejection::new(Reason::SvidClaims, ApiError::unauthorized(msg))
        }
    }
}

pub fn trat(e: &TratError) -> Rejection {
    let msg = format!("the TraT (Txn-Token) {e}");
    let (reason, error) = match e {
        TratError::Shape(_) | TratError::Empty(_) => {
            (Reason::TratClaims, ApiError::unauthorized(msg))
        }
        TratError::Expired { .. } => (Reason::TratExpired, ApiError::unauthorized(msg)),
        TratError::Audience(_) => (Reason::TratAudience, ApiError::unauthorized(msg)),
        TratError::Issuer { .. } => (Reason::TratIssuer, ApiError::unauthorized(msg)),
        TratError::Scope(_) => (Reason::TratScope, ApiError::forbidden(msg)),
        TratError::NotBound { .. }
        | TratError::PodMismatch { .. }
        | TratError::PodNameMismatch { .. }
        | TratError::PodUnbound(_) => (Reason::TratNotBound, ApiError::forbidden(msg)),
        TratError::Revoked(_) => (Reason::TratRevoked, ApiError::forbidden(msg)),
    };
    Rejection::new(reason, error)
}

pub fn revocation_unknown(why: &str) -> Rejection {
    Rejection::new(
        Reason::RevocationUnavailable,
        ApiError::unavailable(format!(
            "the gateway cannot tell whether this run was revoked: the operator's revoked list \
             is not fresh ({why}); check --revoked-url and the operator's admin port"
        ))
        .retry(Retry::After(5)),
    )
}

/// The org's provider cannot take the request (see [`ProviderError`] for each status).
pub fn provider(e: &ProviderError) -> Rejection {
    let msg = e.to_string();
    match e {
        ProviderError::UnknownOrg(_) => {
            Rejection::new(Reason::UnknownOrg, ApiError::forbidden(msg))
        }
        ProviderError::CredentialsUnavailable(_) => Rejection::new(
            Reason::ProviderKeyUnavailable,
            ApiError::unavailable(msg).retry(Retry::After(10)),
        ),
        ProviderError::Unsupported { .. } => Rejection::new(
            Reason::ProviderUnsupported,
            ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFoundError, msg).retry(Retry::Never),
        ),
        ProviderError::UnknownModel { .. } => Rejection::new(
            Reason::ProviderModel,
            ApiError::forbidden(format!(
                "{msg}; ask the platform team to map it (bedrock.modelIds in --config)"
            )),
        ),
        ProviderError::Body { .. } => {
            bad_request(Reason::ProviderBody, format!("{msg}; send a Messages API request"))
        }
        ProviderError::Signing { .. } => Rejection::new(
            Reason::ProviderSigning,
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::ApiError,
                format!("{msg}; check the org's provider credentials in the gateway"),
            ),
        ),
    }
}

pub fn rate_limited(txn: &str, retry_after_ms: u64) -> Rejection {
    let secs = retry_after_ms.div_ceil(1000).clamp(1, 3600) as u32;
    Rejection::new(
        Reason::RateLimited,
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RateLimitError,
            format!("run txn '{txn}' is above its request rate; retry in {secs} s"),
        )
        .retry(Retry::After(secs)),
    )
}

fn too_many(reason: Reason, message: String, retry: Retry) -> Rejection {
    Rejection::new(
        reason,
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimitError, message)
            .retry(retry),
    )
}

pub fn budget_exhausted(txn: &str, spent: u64, limit: u64) -> Rejection {
    too_many(
        Reason::BudgetExhausted,
        format!(
            "run txn '{txn}' has spent its token budget ({spent} of {limit} tokens); \
             raise the run's budget to continue"
        ),
        Retry::Never,
    )
}

/// The request could exceed the budget even alone: `asked` = `max_tokens` + `input`, the
/// input bound of a `body_bytes`-byte body.
pub fn budget_too_large(
    txn: &str,
    remaining: u64,
    asked: u64,
    max_tokens: u64,
    input: u64,
    body_bytes: usize,
) -> Rejection {
    too_many(
        Reason::BudgetInsufficient,
        format!(
            "run txn '{txn}' has {remaining} tokens of budget left, but this request may use up \
             to {asked} tokens (max_tokens={max_tokens} plus up to {input} input tokens for its \
             {body_bytes}-byte body); lower max_tokens, send a shorter conversation, or raise \
             the run's budget"
        ),
        Retry::Never,
    )
}

pub fn budget_busy(txn: &str, remaining: u64, reserved: u64) -> Rejection {
    too_many(
        Reason::BudgetBusy,
        format!(
            "run txn '{txn}' has {remaining} tokens of budget left, {reserved} of them reserved \
             by requests in flight; retry when they finish"
        ),
        Retry::After(2),
    )
}

/// Spend of this run that the state store has not recorded yet (it is being retried): its
/// budget cannot be judged until then.
pub fn settlement_pending(txn: &str) -> Rejection {
    Rejection::new(
        Reason::SettlementPending,
        ApiError::unavailable(format!(
            "run txn '{txn}' has spend the gateway is still recording in its budget store \
             (Redis did not answer); retry shortly"
        ))
        .retry(Retry::After(2)),
    )
}

pub fn state_unavailable(e: &dyn std::fmt::Display) -> Rejection {
    Rejection::new(
        Reason::StateUnavailable,
        ApiError::unavailable(format!("budget and rate state unavailable: {e}"))
            .retry(Retry::After(2)),
    )
}

pub fn bad_request(reason: Reason, message: impl Into<String>) -> Rejection {
    Rejection::new(reason, ApiError::bad_request(message))
}

pub fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        Reason::BodyTooLarge,
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTooLarge,
            format!("the request body is larger than the gateway's limit of {limit} bytes"),
        )
        .retry(Retry::Never),
    )
}

/// A request body that could not be taken in (see [`super::body`]).
pub fn body(e: &ReadError, txn: &str) -> Rejection {
    match e {
        ReadError::TooLarge(limit) => too_large(*limit),
        ReadError::RunFull { .. } => too_many(
            Reason::BodyRunInFlight,
            format!(
                "run txn '{txn}': {e}; retry when its other requests have been sent, or send \
                 smaller conversations"
            ),
            Retry::After(2),
        ),
        ReadError::GatewayFull { .. } => Rejection::new(
            Reason::BodyGatewayInFlight,
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::OverloadedError,
                format!("{e}; retry shortly"),
            )
            .retry(Retry::After(2)),
        ),
        ReadError::Timeout(_) => Rejection::new(
            Reason::BodyTimeout,
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorKind::InvalidRequestError,
                format!("{e}; send the whole body promptly (check the network to the gateway)"),
            )
            .retry(Retry::After(1)),
        ),
        ReadError::Broken(_) => bad_request(Reason::BodyRead, format!("{e}; send it again")),
    }
}

/// The org's request policy refused the request: a 403 a retry cannot fix.
pub fn policy(e: &PolicyError) -> Rejection {
    if matches!(e, PolicyError::BadTools) {
        return bad_request(e.reason(), format!("{e}; send a Messages API request"));
    }
    Rejection::new(
        e.reason(),
        ApiError::forbidden(format!(
            "{e}; the gateway's per-org request policy (--config) decides this, ask the \
             platform team to change it"
        )),
    )
}

pub fn dlp_block(rule: &str, description: &str, offset: usize) -> Rejection {
    Rejection::new(
        Reason::DlpBlock,
        ApiError::bad_request(format!(
            "request blocked by the gateway's data-loss prevention: the body contains a \
             {description} (rule '{rule}') at byte {offset}; remove the secret from the \
             conversation (it is not shown here) and try again"
        )),
    )
}

pub fn not_found(method: &str, path: &str) -> Rejection {
    Rejection::new(
        Reason::UnsupportedPath,
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            format!(
                "{method} {path} is not served by the Sanctum gateway: only POST /v1/messages \
                 and POST /v1/messages/count_tokens are"
            ),
        )
        .retry(Retry::Never),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case_and_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let label = r.label();
            assert!(seen.insert(label), "{label} twice");
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{label}");
            assert!(!r.meaning().is_empty());
            let row = format!("| `{label}` | {} |", r.meaning());
            assert!(readme.contains(&row), "gateway/README.md lacks the row {row}");
        }
        // Labels dashboards read: unchanged from the &'static str days.
        assert_eq!(Reason::SvidMissing.label(), "svid_missing");
        assert_eq!(Reason::BudgetInsufficient.label(), "budget_insufficient");
        assert_eq!(Reason::UpstreamUnreachable.label(), "upstream_unreachable");
        assert_eq!(serde_json::to_string(&Reason::DlpBlock).unwrap(), "\"dlp_block\"");
    }
}
