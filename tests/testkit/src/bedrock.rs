//! A stand-in Amazon Bedrock runtime (and, optionally, STS) over real loopback TCP.
//!
//! Written from the AWS documentation, independently of the gateway's libraries, so a test
//! that passes means the gateway speaks the documented protocol, not merely agrees with
//! itself:
//! - SigV4 is verified by hand (IAM User Guide, "Create a signed AWS API request"): the
//!   canonical request (path segments percent-encoded once more, as for every service but
//!   S3), the string to sign, the HMAC-SHA256 key derivation, with `hmac` + `sha2` — not the
//!   `aws-sigv4` crate. A missing or bad signature, an unknown access key, a wrong session
//!   token, region or service, or an `x-amz-date` more than 15 minutes off is answered 403
//!   with Bedrock's error shape: `{"message": …}` and `x-amzn-ErrorType`.
//! - `POST /model/{modelId}/invoke`: the answer of the stand-in Anthropic provider
//!   ([`crate::sse::message_json`], the scripted review of [`crate::review`] included) as JSON.
//!   The body must be Bedrock's: no `model`, no `stream`, `anthropic_version:
//!   bedrock-2023-05-31`; otherwise 400 `ValidationException`. A name in `anthropic_beta`
//!   that is not in [`BedrockConfig::betas`] is refused like real Bedrock does: 400
//!   `ValidationException`, "invalid beta flag".
//! - `POST /model/{modelId}/invoke-with-response-stream`: the same answer's SSE events, each
//!   as an AWS event-stream message (`:event-type: chunk`, payload `{"bytes": base64}`),
//!   framed by hand (prelude, string headers, CRC32 with `crc32fast`), with
//!   `amazon-bedrock-invocationMetrics` on `message_stop`. [`BedrockConfig::stream_exception`]
//!   sends an exception message after `message_start` instead of the rest.
//! - With [`BedrockConfig::sts`]: `POST /` with `Action=AssumeRoleWithWebIdentity` answers
//!   STS's XML with fresh temporary credentials, which the SigV4 check then accepts.
//!
//! Every request is recorded ([`Bedrock::requests`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::{ProviderConfig, Recorded, review, sse};

/// One accepted AWS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, requests must carry it as `x-amz-security-token` (and sign it).
    pub session_token: Option<String>,
}

impl AwsKey {
    pub fn new(id: &str, secret: &str, token: Option<&str>) -> Self {
        Self {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: token.map(str::to_owned),
        }
    }
}

/// The stand-in STS: who may assume which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsConfig {
    pub role_arn: String,
    /// The web identity token it accepts.
    pub token: String,
    /// Lifetime of the credentials it hands out.
    pub lifetime: Duration,
}

/// How the stand-in Bedrock behaves.
#[derive(Debug, Clone)]
pub struct BedrockConfig {
    /// The region requests must be signed for.
    pub region: String,
    /// Long-term (or fixed temporary) keys accepted.
    pub keys: Vec<AwsKey>,
    /// Model ids accepted (decoded); empty: any.
    pub models: Vec<String>,
    /// Reply, usage, deltas, review script, event delay (other fields are ignored).
    pub provider: ProviderConfig,
    /// `(exception type, message)` sent after `message_start` in streamed answers, e.g.
    /// `("throttlingException", "Too many tokens")`.
    pub stream_exception: Option<(String, String)>,
    pub sts: Option<StsConfig>,
    /// The `anthropic_beta` names accepted; `None`: any. Default [`BEDROCK_BETAS`].
    pub betas: Option<Vec<String>>,
}

/// The beta names the stand-in accepts by default: those the Amazon Bedrock User Guide
/// documents for Anthropic Claude models ("Anthropic Claude Messages API", "Request and
/// Response", `anthropic_beta`; "Extended thinking"; "Anthropic Claude 3.7 Sonnet"), plus
/// `claude-code-20250219`, which Claude Code configured for Bedrock sends
/// (anthropics/claude-code#49648). Kept here, apart from the gateway's default list, so a
/// test through the stand-in checks the gateway's list rather than agreeing with itself.
pub const BEDROCK_BETAS: &[&str] = &[
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
];

impl Default for BedrockConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            keys: vec![AwsKey::new(EXAMPLE_KEY_ID, EXAMPLE_SECRET, None)],
            models: Vec::new(),
            provider: ProviderConfig::default(),
            stream_exception: None,
            sts: None,
            betas: Some(BEDROCK_BETAS.iter().map(|b| (*b).to_owned()).collect()),
        }
    }
}

/// The AWS documentation's example key pair, accepted by [`BedrockConfig::default`].
pub const EXAMPLE_KEY_ID: &str = "AKIDEXAMPLE";
pub const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

struct State {
    config: BedrockConfig,
    /// Keys handed out by the stand-in STS.
    issued: Mutex<Vec<AwsKey>>,
    recorded: Mutex<Vec<Recorded>>,
    served: AtomicU64,
    sts_calls: AtomicU64,
}

/// A running stand-in Bedrock; stops when dropped.
pub struct Bedrock {
    state: Arc<State>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bedrock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type RespBody = BoxBody<Bytes, Infallible>;

impl Bedrock {
    /// Listens on `127.0.0.1` at a free port.
    pub async fn start(config: BedrockConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config,
            issued: Mutex::new(Vec::new()),
            recorded: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            sts_calls: AtomicU64::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let state = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { state, addr, task })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the Bedrock endpoint, and the STS endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, the `host` a signed request names.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far (Bedrock and STS), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Number of `AssumeRoleWithWebIdentity` calls answered with credentials.
    pub fn sts_calls(&self) -> u64 {
        self.state.sts_calls.load(Ordering::SeqCst)
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("x-amzn-requestid", HeaderValue::from_static("standin-request"));
    r
}

/// Bedrock's error shape: `{"message": …}` and `x-amzn-ErrorType: <Exception>:<namespace>`.
fn aws_error(status: StatusCode, exception: &str, message: &str) -> Response<RespBody> {
    let mut r = respond(status, "application/json", json!({ "message": message }).to_string());
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return aws_error(StatusCode::BAD_REQUEST, "ValidationException", "request body broke off");
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    state.recorded.lock().unwrap_or_else(PoisonError::into_inner).push(Recorded {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    state.served.fetch_add(1, Ordering::SeqCst);
    if parts.method == Method::POST && parts.uri.path() == "/" && state.config.sts.is_some() {
        return sts(state, &body);
    }
    let keys: Vec<AwsKey> = {
        let issued = state.issued.lock().unwrap_or_else(PoisonError::into_inner);
        state.config.keys.iter().chain(issued.iter()).cloned().collect()
    };
    if let Err((exception, message)) = verify_sigv4(
        &parts.method,
        &target,
        &parts.headers,
        &body,
        &state.config.region,
        "bedrock",
        &keys,
        SystemTime::now(),
    ) {
        return aws_error(StatusCode::FORBIDDEN, exception, &message);
    }
    let path = parts.uri.path();
    let (label, streaming) = match path.strip_prefix("/model/") {
        Some(rest) => {
            match (rest.strip_suffix("/invoke-with-response-stream"), rest.strip_suffix("/invoke"))
            {
                (Some(l), _) => (l, true),
                (None, Some(l)) => (l, false),
                _ => ("", false),
            }
        }
        None => ("", false),
    };
    if parts.method != Method::POST || label.is_empty() || label.contains('/') {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "stand-in Bedrock: only POST /model/{modelId}/invoke[-with-response-stream]",
        );
    }
    let Some(model_id) = percent_decode(label) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "the model identifier is not validly encoded",
        );
    };
    if !state.config.models.is_empty() && !state.config.models.contains(&model_id) {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "The provided model identifier is invalid.",
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
            );
        }
    };
    for key in ["model", "stream"] {
        if request.get(key).is_some() {
            let msg = format!(
                "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
            );
            return aws_error(StatusCode::BAD_REQUEST, "ValidationException", &msg);
        }
    }
    if request.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request: required key [anthropic_version] not found or not bedrock-2023-05-31",
        );
    }
    if let Some(beta) = request.get("anthropic_beta") {
        let Some(names) =
            beta.as_array().and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        else {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "Malformed input request: anthropic_beta must be an array of strings",
            );
        };
        if let Some(allowed) = &state.config.betas
            && names.iter().any(|n| !allowed.iter().any(|a| a == n))
        {
            return aws_error(StatusCode::BAD_REQUEST, "ValidationException", "invalid beta flag");
        }
    }
    let cfg = &state.config.provider;
    let id = format!("msg_bdrk_standin_{}", state.served.load(Ordering::SeqCst));
    let scripted = if cfg.review_script { review::reply(&request) } else { None };
    let reply = scripted.as_ref().unwrap_or(&cfg.reply);
    let model = model_id.as_str();
    if !streaming {
        let message = sse::message_json(&id, model, reply, &cfg.usage);
        let mut r = respond(StatusCode::OK, "application/json", message.to_string());
        for (name, n) in [
            ("x-amzn-bedrock-input-token-count", cfg.usage.input_tokens),
            ("x-amzn-bedrock-output-token-count", cfg.usage.output_tokens),
        ] {
            r.headers_mut().insert(name, HeaderValue::from(n));
        }
        return r;
    }
    let mut frames: Vec<Bytes> = Vec::new();
    for event in sse::message_events(&id, model, reply, &cfg.usage, cfg.deltas) {
        let Some(mut data) = sse_data(&event) else { continue };
        if data["type"] == "message_stop" {
            data["amazon-bedrock-invocationMetrics"] = json!({
                "inputTokenCount": cfg.usage.input_tokens,
                "outputTokenCount": cfg.usage.output_tokens,
                "invocationLatency": 250,
                "firstByteLatency": 40,
            });
        }
        let started = data["type"] == "message_start";
        frames.push(chunk_message(data.to_string().as_bytes()));
        if started && let Some((kind, message)) = &state.config.stream_exception {
            frames.push(exception_message(kind, message));
            break;
        }
    }
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let delay = cfg.event_delay;
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Frame::data(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    r.headers_mut()
        .insert("x-amzn-bedrock-content-type", HeaderValue::from_static("application/json"));
    r.headers_mut().insert("x-amzn-requestid", HeaderValue::from_static("standin-request"));
    r
}

/// The JSON of an SSE event `event: …\ndata: {json}\n\n`.
fn sse_data(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("data: "))?;
    serde_json::from_str(line).ok()
}

/// The Anthropic event JSONs of a streamed stand-in answer, exactly as
/// [`Bedrock`] puts them (base64) into its chunks, `invocationMetrics` included.
pub fn expected_events(config: &BedrockConfig, id: &str, model: &str) -> Vec<Value> {
    let cfg = &config.provider;
    sse::message_events(id, model, &cfg.reply, &cfg.usage, cfg.deltas)
        .iter()
        .filter_map(|e| sse_data(e))
        .collect()
}

// ---------------------------------------------------------------------------------------
// AWS event-stream framing, by hand (AWS event-stream encoding: prelude = total length u32
// BE, headers length u32 BE, prelude CRC32; headers; payload; message CRC32 over all before).

/// One event-stream message with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut hdrs = Vec::new();
    for (name, value) in headers {
        hdrs.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        hdrs.extend_from_slice(name.as_bytes());
        hdrs.push(7); // string
        hdrs.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        hdrs.extend_from_slice(value.as_bytes());
    }
    let total = 12 + hdrs.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(hdrs.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hdrs);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// A `chunk` event carrying one Anthropic event JSON, with Bedrock's `p` padding field.
pub fn chunk_message(event_json: &[u8]) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event_json);
    let pad = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[..(event_json.len() % 30) + 1].to_owned();
    let payload = json!({ "bytes": b64, "p": pad }).to_string();
    frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// An `exception` message, e.g. `throttlingException`.
pub fn exception_message(kind: &str, message: &str) -> Bytes {
    let payload = json!({ "message": message }).to_string();
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

// ---------------------------------------------------------------------------------------
// SigV4 verification, from the IAM User Guide.

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding as SigV4 defines it: unreserved bytes stay, all else `%XX` (upper case);
/// `/` stays when `keep_slash`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `YYYYMMDDTHHMMSSZ` → Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || &s[8..9] != "T" || &s[15..] != "Z" {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    Some(days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks a request's SigV4 `Authorization` header.
///
/// `target` is the path and query exactly as received. Errors: `(exception, message)` as
/// Bedrock names them (`MissingAuthenticationTokenException`, `UnrecognizedClientException`,
/// `InvalidSignatureException`).
#[allow(clippy::too_many_arguments)]
pub fn verify_sigv4(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    region: &str,
    service: &str,
    keys: &[AwsKey],
    now: SystemTime,
) -> Result<(), (&'static str, String)> {
    let bad = |m: &str| ("InvalidSignatureException", m.to_owned());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Err(("MissingAuthenticationTokenException", "Missing Authentication Token".into()));
    };
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("Authorization header requires the AWS4-HMAC-SHA256 algorithm"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) =
            part.trim().split_once('=').ok_or_else(|| bad("Authorization header is malformed"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(bad("Authorization header has an unknown field")),
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(bad("Authorization header needs Credential, SignedHeaders and Signature"));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, scope_region, scope_service, "aws4_request"] = scope[..] else {
        return Err(bad("Credential must be <key>/<date>/<region>/<service>/aws4_request"));
    };
    let Some(key) = keys.iter().find(|k| k.access_key_id == key_id) else {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    };
    if scope_region != region {
        return Err(bad(&format!(
            "Credential should be scoped to a valid region, not '{scope_region}'"
        )));
    }
    if scope_service != service {
        return Err(bad(&format!("Credential should be scoped to correct service: '{service}'")));
    }
    let amz_date = header("x-amz-date").ok_or_else(|| bad("x-amz-date is missing"))?;
    let when = parse_amz_date(amz_date).ok_or_else(|| bad("x-amz-date is not YYYYMMDDTHHMMSSZ"))?;
    if !amz_date.starts_with(date) {
        return Err(bad("the credential scope's date is not x-amz-date's"));
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if (now - when).abs() > 15 * 60 {
        return Err(bad(
            "Signature expired: x-amz-date is more than 15 minutes from the server's time",
        ));
    }
    let token = header("x-amz-security-token");
    if token != key.session_token.as_deref() {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != names
        || names.iter().any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(bad("SignedHeaders must be lower case, sorted, without repeats"));
    }
    for needed in ["host", "x-amz-date"].into_iter().chain(token.map(|_| "x-amz-security-token")) {
        if !names.contains(&needed) {
            return Err(bad(&format!("'{needed}' must be a signed header")));
        }
    }
    // Canonical request.
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let canonical_uri = if path.is_empty() { "/".to_owned() } else { uri_encode(path, true) };
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(s).unwrap_or_else(|| s.to_owned());
            (uri_encode(&dec(k), false), uri_encode(&dec(v), false))
        })
        .collect();
    params.sort();
    let canonical_query =
        params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(bad(&format!("signed header '{name}' is not in the request")));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        method.as_str(),
        hex(&Sha256::digest(body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", key.secret_access_key).as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    if expected != signature {
        return Err(bad(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// STS AssumeRoleWithWebIdentity.

fn sts(state: &Arc<State>, body: &[u8]) -> Response<RespBody> {
    let Some(sts) = &state.config.sts else { unreachable!("checked by the caller") };
    let form: Vec<(String, String)> = std::str::from_utf8(body)
        .unwrap_or("")
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect();
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let error = |status: StatusCode, code: &str, message: &str| {
        let xml = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>standin</RequestId></ErrorResponse>"
        );
        respond(status, "text/xml", xml)
    };
    if get("Action") != Some("AssumeRoleWithWebIdentity") || get("Version") != Some("2011-06-15") {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "only AssumeRoleWithWebIdentity, version 2011-06-15",
        );
    }
    if get("RoleArn") != Some(sts.role_arn.as_str()) {
        return error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        );
    }
    if get("WebIdentityToken") != Some(sts.token.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "Couldn't retrieve verification key from your identity provider",
        );
    }
    if get("RoleSessionName").is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "ValidationError", "RoleSessionName is required");
    }
    let n = state.sts_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let key = AwsKey {
        access_key_id: format!("ASIASTANDIN{n:08}"),
        secret_access_key: format!("standin/secret+{n}/{nanos}"),
        session_token: Some(format!("FwoGZXIvYXdzEStandinSessionToken{n}x{nanos}")),
    };
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        + sts.lifetime.as_secs() as i64;
    let xml = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:sanctum:gateway</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser><Arn>{arn}/{session}</Arn><AssumedRoleId>AROASTANDIN:{session}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{id}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.standin</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>standin-{n}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        arn = sts.role_arn,
        session = get("RoleSessionName").unwrap_or_default(),
        token = key.session_token.as_deref().unwrap_or_default(),
        secret = key.secret_access_key,
        expiration = iso8601(expires),
        id = key.access_key_id,
    );
    state.issued.lock().unwrap_or_else(PoisonError::into_inner).push(key);
    respond(StatusCode::OK, "text/xml", xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IAM User Guide's worked example (GET ?Action=ListUsers on iam, 2015-08-30).
    #[test]
    fn aws_documented_example_verifies() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        headers.insert("authorization", HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"));
        let keys = [AwsKey::new(EXAMPLE_KEY_ID, EXAMPLE_SECRET, None)];
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let target = "/?Action=ListUsers&Version=2010-05-08";
        assert_eq!(
            verify_sigv4(&Method::GET, target, &headers, b"", "us-east-1", "iam", &keys, at),
            Ok(())
        );
        // One byte of the body, the path or the time changed: refused.
        assert!(
            verify_sigv4(&Method::GET, target, &headers, b"x", "us-east-1", "iam", &keys, at)
                .is_err()
        );
        assert!(
            verify_sigv4(
                &Method::GET,
                "/?Action=ListUsers&Version=2010-05-09",
                &headers,
                b"",
                "us-east-1",
                "iam",
                &keys,
                at
            )
            .is_err()
        );
        let late = at + Duration::from_secs(16 * 60);
        assert!(
            verify_sigv4(&Method::GET, target, &headers, b"", "us-east-1", "iam", &keys, late)
                .is_err()
        );
        let other = [AwsKey::new(EXAMPLE_KEY_ID, "wrong", None)];
        assert_eq!(
            verify_sigv4(&Method::GET, target, &headers, b"", "us-east-1", "iam", &other, at)
                .unwrap_err()
                .0,
            "InvalidSignatureException"
        );
        headers.remove("authorization");
        assert_eq!(
            verify_sigv4(&Method::GET, target, &headers, b"", "us-east-1", "iam", &keys, at)
                .unwrap_err()
                .0,
            "MissingAuthenticationTokenException"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(iso8601(1_440_938_160), "2015-08-30T12:36:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_amz_date("2015-08-30"), None);
    }

    #[test]
    fn frames_have_valid_crcs() {
        let f = frame(&[(":message-type", "event")], b"{}");
        let total = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(total, f.len());
        assert_eq!(u32::from_be_bytes([f[8], f[9], f[10], f[11]]), crc32fast::hash(&f[..8]));
        let n = f.len();
        assert_eq!(
            u32::from_be_bytes([f[n - 4], f[n - 3], f[n - 2], f[n - 1]]),
            crc32fast::hash(&f[..n - 4])
        );
    }
}
