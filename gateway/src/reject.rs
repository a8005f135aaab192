//! Every way the gateway refuses a request: which check failed (the metrics and audit
//! label), the status, and a message a person can act on. No message holds a token or key.

use http::StatusCode;
use sanctum_common::error::{ApiError, ErrorKind, Retry};

use super::body::ReadError;
use super::jwks::{TypeError, VerifyError};
use super::keys::KeyError;
use super::policy::PolicyError;
use super::svid::SvidError;
use super::trat::TratError;

#[derive(Debug)]
pub struct Rejection {
    pub reason: &'static str,
    pub error: ApiError,
}

impl Rejection {
    pub fn new(reason: &'static str, error: ApiError) -> Self {
        Self { reason, error }
    }
}

pub fn missing_svid() -> Rejection {
    Rejection::new(
        "svid_missing",
        ApiError::unauthorized(
            "missing 'Authorization: Bearer <JWT-SVID>': send requests through sanctum-bridge, \
             which adds the pod's identity token",
        ),
    )
}

pub fn missing_trat() -> Rejection {
    Rejection::new(
        "trat_missing",
        ApiError::unauthorized(
            "missing 'Txn-Token' header: send requests through sanctum-bridge, which adds the \
             run's transaction token from /run/sage/trat.jwt",
        ),
    )
}

/// `which` is "JWT-SVID (Authorization)" or "TraT (Txn-Token)"; `prefix` is "svid" or "trat".
pub fn verify(prefix: &'static str, which: &str, e: &VerifyError) -> Rejection {
    let reason = match (prefix, e) {
        ("svid", VerifyError::UnknownKid(_)) => "svid_unknown_key",
        ("svid", VerifyError::AlgorithmMismatch { .. }) => "svid_algorithm",
        ("svid", VerifyError::BadSignature) => "svid_signature",
        ("svid", _) => "svid_malformed",
        (_, VerifyError::UnknownKid(_)) => "trat_unknown_key",
        (_, VerifyError::AlgorithmMismatch { .. }) => "trat_algorithm",
        (_, VerifyError::BadSignature) => "trat_signature",
        _ => "trat_malformed",
    };
    Rejection::new(reason, ApiError::unauthorized(format!("the {which} {e}")))
}

/// A token in the wrong header (a TraT as the JWT-SVID, or the reverse): never retried.
pub fn token_type(which: &str, e: &TypeError) -> Rejection {
    let reason = match e {
        TypeError::TratAsSvid | TypeError::NotSvid(_) => "svid_type",
        TypeError::NotTrat(_) => "trat_type",
    };
    Rejection::new(reason, ApiError::unauthorized(format!("the {which} {e}")))
}

pub fn jwks_unavailable(which: &str, why: &str) -> Rejection {
    Rejection::new(
        "jwks_unavailable",
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
            "svid_expired",
            // The bridge re-reads the token file on every request: a rotation can fix this.
            ApiError::unauthorized(msg).retry(Retry::After(5)),
        ),
        SvidError::NotYetValid { .. } => {
            Rejection::new("svid_not_yet_valid", ApiError::unauthorized(msg).retry(Retry::After(5)))
        }
        SvidError::Audience(_) => Rejection::new("svid_audience", ApiError::unauthorized(msg)),
        SvidError::SubjectNotAllowed { .. } => {
            Rejection::new("svid_subject_not_allowed", ApiError::forbidden(msg))
        }
        SvidError::NoSub | SvidError::NoExp | SvidError::BadNbf => {
            Rejection::new("svid_claims", ApiError::unauthorized(msg))
        }
    }
}

pub fn trat(e: &TratError) -> Rejection {
    let msg = format!("the TraT (Txn-Token) {e}");
    let (reason, error) = match e {
        TratError::Shape(_) | TratError::Empty(_) => ("trat_claims", ApiError::unauthorized(msg)),
        TratError::Expired { .. } => ("trat_expired", ApiError::unauthorized(msg)),
        TratError::Audience(_) => ("trat_audience", ApiError::unauthorized(msg)),
        TratError::Issuer { .. } => ("trat_issuer", ApiError::unauthorized(msg)),
        TratError::Scope(_) => ("trat_scope", ApiError::forbidden(msg)),
        TratError::NotBound { .. }
        | TratError::PodMismatch { .. }
        | TratError::PodNameMismatch { .. }
        | TratError::PodUnbound(_) => ("trat_not_bound", ApiError::forbidden(msg)),
        TratError::Revoked(_) => ("trat_revoked", ApiError::forbidden(msg)),
    };
    Rejection::new(reason, error)
}

pub fn revocation_unknown(why: &str) -> Rejection {
    Rejection::new(
        "revocation_unavailable",
        ApiError::unavailable(format!(
            "the gateway cannot tell whether this run was revoked: the operator's revoked list \
             is not fresh ({why}); check --revoked-url and the operator's admin port"
        ))
        .retry(Retry::After(5)),
    )
}

pub fn key(e: &KeyError) -> Rejection {
    if e.is_unknown_org() {
        Rejection::new("unknown_org", ApiError::forbidden(format!("{e}")))
    } else {
        Rejection::new(
            "provider_key_unavailable",
            ApiError::unavailable(format!("{e}")).retry(Retry::After(10)),
        )
    }
}

pub fn rate_limited(txn: &str, retry_after_ms: u64) -> Rejection {
    let secs = retry_after_ms.div_ceil(1000).clamp(1, 3600) as u32;
    Rejection::new(
        "rate_limited",
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RateLimitError,
            format!("run txn '{txn}' is above its request rate; retry in {secs} s"),
        )
        .retry(Retry::After(secs)),
    )
}

fn too_many(reason: &'static str, message: String, retry: Retry) -> Rejection {
    Rejection::new(
        reason,
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimitError, message)
            .retry(retry),
    )
}

pub fn budget_exhausted(txn: &str, spent: u64, limit: u64) -> Rejection {
    too_many(
        "budget_exhausted",
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
        "budget_insufficient",
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
        "budget_busy",
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
        "settlement_pending",
        ApiError::unavailable(format!(
            "run txn '{txn}' has spend the gateway is still recording in its budget store \
             (Redis did not answer); retry shortly"
        ))
        .retry(Retry::After(2)),
    )
}

pub fn state_unavailable(e: &dyn std::fmt::Display) -> Rejection {
    Rejection::new(
        "state_unavailable",
        ApiError::unavailable(format!("budget and rate state unavailable: {e}"))
            .retry(Retry::After(2)),
    )
}

pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::new(reason, ApiError::bad_request(message))
}

pub fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        "body_too_large",
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
            "body_run_in_flight",
            format!(
                "run txn '{txn}': {e}; retry when its other requests have been sent, or send \
                 smaller conversations"
            ),
            Retry::After(2),
        ),
        ReadError::GatewayFull { .. } => Rejection::new(
            "body_gateway_in_flight",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::OverloadedError,
                format!("{e}; retry shortly"),
            )
            .retry(Retry::After(2)),
        ),
        ReadError::Timeout(_) => Rejection::new(
            "body_timeout",
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorKind::InvalidRequestError,
                format!("{e}; send the whole body promptly (check the network to the gateway)"),
            )
            .retry(Retry::After(1)),
        ),
        ReadError::Broken(_) => bad_request("body_read", format!("{e}; send it again")),
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
        "dlp_block",
        ApiError::bad_request(format!(
            "request blocked by the gateway's data-loss prevention: the body contains a \
             {description} (rule '{rule}') at byte {offset}; remove the secret from the \
             conversation (it is not shown here) and try again"
        )),
    )
}

pub fn not_found(method: &str, path: &str) -> Rejection {
    Rejection::new(
        "unsupported_path",
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
