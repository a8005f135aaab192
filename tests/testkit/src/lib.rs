//! Test infrastructure shared by the Sanctum test suites and benchmarks.
//!
//! The centre piece is [`Provider`], a stand-in for the Anthropic Messages API that speaks
//! what the real clients expect (see `shared/CLIENTS.md`) and records every request that
//! reached it, so a test can assert on the headers that arrived — and on the ones that did
//! not. It listens on a real Unix socket or a real loopback TCP port.
//!
//! ```no_run
//! # async fn demo() {
//! use sanctum_testkit::{Provider, ProviderConfig};
//! let provider = Provider::start_unix("/tmp/p.sock".as_ref(), ProviderConfig::default()).await.unwrap();
//! // ... point the bridge at /tmp/p.sock, run a client ...
//! let seen = provider.requests();
//! assert_eq!(seen[0].header("txn-token"), Some("…"));
//! # }
//! ```
//!
//! What it answers:
//! - `HEAD` anything: `200`, empty, at once (Claude Code probes `HEAD /`).
//! - `POST /v1/messages` with any query string (`?beta=true`) and model: the configured
//!   [`Reply`] as JSON, or with `"stream": true` as a real SSE event sequence, one write per
//!   event, [`ProviderConfig::event_delay`] apart.
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": …}`.
//! - Anything else: 404 in the Anthropic error shape.
//! - A request missing a [`ProviderConfig::require`]d header, or carrying a
//!   [`ProviderConfig::forbid_values`] string in any header: 401 `authentication_error` with
//!   `x-should-retry: false` (so a real client fails fast instead of retrying for minutes).
//!
//! Per-request overrides, for benchmarks and tests, as request headers (they are recorded
//! like any other): `x-standin-events: N` (content deltas), `x-standin-delay-ms: N` (gap
//! between SSE events), `x-standin-hang: 1` (send `message_start`, then keep the stream open
//! until the client goes away — see [`Provider::cancelled`]), `x-standin-stall: 1` (send
//! `message_start`, then nothing at all until the client goes away), `x-standin-stamp: 1` (put an
//! SSE comment line `: t=<unix time in ns>` before each event, written when the event is
//! sent, so a benchmark can measure each event's delivery delay).
//!
//! A request that offers a `…report_finding` tool gets the scripted security review of
//! [`review`] instead of the configured reply (unless [`ProviderConfig::review_script`] is off),
//! so the reference scanner can be tested with the real Claude Code CLI. With
//! [`ProviderConfig::refuse`] set, every Messages API call is answered with that error instead.

pub mod bedrock;
pub mod bridge;
pub mod clients;
pub mod jwt;
pub mod misbehave;
pub mod review;
pub mod sse;
pub mod tls;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

/// Token counts the provider reports (in `message_start`, `message_delta` and JSON answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            input_tokens: 25,
            output_tokens: 12,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        }
    }
}

/// What the assistant answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A text block.
    Text(String),
    /// A `tool_use` block (streamed as `input_json_delta`s); `stop_reason: tool_use`.
    ToolUse { name: String, input: Value },
}

/// How the stand-in behaves. `Default` accepts anything and answers a short text.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Headers that must arrive with exactly this value, e.g. `("txn-token", trat)`.
    pub require: Vec<(String, String)>,
    /// Strings that must appear in no header value, e.g. the placeholder key.
    pub forbid_values: Vec<String>,
    pub reply: Reply,
    pub usage: Usage,
    /// Number of content deltas in a streamed answer.
    pub deltas: usize,
    /// Gap between two SSE events.
    pub event_delay: Duration,
    /// Keep a copy of every request (headers and body). Off for benchmarks.
    pub record: bool,
    /// Play the scripted review of [`review`] when a request offers a `report_finding` tool.
    pub review_script: bool,
    /// Answer every `POST /v1/messages` with this error (after the header checks).
    pub refuse: Option<Refuse>,
}

/// An error answer, e.g. a spent budget: 429 `rate_limit_error` that must not be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    pub status: u16,
    /// The Anthropic error type, e.g. `rate_limit_error`, `api_error`.
    pub kind: String,
    pub message: String,
    /// `false` adds `x-should-retry: false`; `true` leaves the client to its retries.
    pub retry: bool,
}

impl Refuse {
    /// The gateway's answer when a run's budget is spent: 429, `x-should-retry: false`.
    pub fn budget_spent() -> Self {
        Self {
            status: 429,
            kind: "rate_limit_error".into(),
            message: "stand-in: the run's token budget is spent".into(),
            retry: false,
        }
    }
}

/// The answer text of the default configuration.
pub const DEFAULT_ANSWER: &str = "Hello from the stand-in provider.";

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            require: Vec::new(),
            forbid_values: Vec::new(),
            reply: Reply::Text(DEFAULT_ANSWER.to_owned()),
            usage: Usage::default(),
            deltas: 4,
            event_delay: Duration::ZERO,
            record: true,
            review_script: true,
            refuse: None,
        }
    }
}

/// One request as it reached the provider.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The value of `name` when it arrived exactly once and is text; `None` otherwise.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    }

    /// How many times `name` arrived.
    pub fn count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// True when `needle` occurs in any header value.
    pub fn any_header_contains(&self, needle: &str) -> bool {
        self.headers.values().any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle))
    }
}

struct State {
    config: ProviderConfig,
    recorded: Mutex<Vec<Recorded>>,
    served: AtomicU64,
    cancelled: AtomicU64,
    cancel_notify: Notify,
}

/// Where the provider listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// A running stand-in provider; stops when dropped.
pub struct Provider {
    state: Arc<State>,
    address: Address,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type RespBody = BoxBody<Bytes, Infallible>;

impl Provider {
    /// Listens on a new Unix socket at `path` (a stale file there is removed).
    pub async fn start_unix(path: &Path, config: ProviderConfig) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let state = Self::state(config);
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                spawn_connection(TokioIo::new(stream), s.clone());
            }
        });
        Ok(Self { state, address: Address::Unix(path.to_owned()), task })
    }

    /// Listens on a loopback TCP address (`127.0.0.1:0` picks a free port).
    pub async fn start_tcp(
        addr: std::net::SocketAddr,
        config: ProviderConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let address = Address::Tcp(listener.local_addr()?);
        let state = Self::state(config);
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                spawn_connection(TokioIo::new(stream), s.clone());
            }
        });
        Ok(Self { state, address, task })
    }

    fn state(config: ProviderConfig) -> Arc<State> {
        Arc::new(State {
            config,
            recorded: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            cancel_notify: Notify::new(),
        })
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// `http://127.0.0.1:PORT` for a TCP provider.
    pub fn url(&self) -> Option<String> {
        match &self.address {
            Address::Tcp(addr) => Some(format!("http://{addr}")),
            Address::Unix(_) => None,
        }
    }

    /// Every request so far, in arrival order (empty when recording is off).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Requests answered so far (recorded or not).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Streams that ended because the client went away before the last event.
    pub fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until [`Provider::cancelled`] reaches `n`, at most `timeout`.
    pub async fn wait_cancelled(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.cancel_notify.notified();
            if self.cancelled() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cancelled() >= n;
            }
        }
    }
}

fn spawn_connection<I>(io: I, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    });
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("request-id", HeaderValue::from_static("req_standin"));
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<RespBody> {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}}).to_string();
    let mut r = full(status, "application/json", body);
    r.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
    r
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "stand-in: request body broke off",
            );
        }
    };
    let cfg = &state.config;
    if cfg.record {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let rec = Recorded {
            method: parts.method.clone(),
            target,
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        state.recorded.lock().unwrap_or_else(PoisonError::into_inner).push(rec);
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    if parts.method == Method::HEAD {
        return full(StatusCode::OK, "text/plain", Bytes::new());
    }
    for (name, want) in &cfg.require {
        let got = parts.headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        if got != Some(want.as_str()) || parts.headers.get_all(name.as_str()).iter().count() != 1 {
            let msg = format!("stand-in provider: header {name} is missing or wrong");
            return error(StatusCode::UNAUTHORIZED, "authentication_error", &msg);
        }
    }
    for needle in &cfg.forbid_values {
        if parts
            .headers
            .values()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle.as_str()))
        {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "stand-in provider: a forbidden value arrived in a header",
            );
        }
    }
    let path = parts.uri.path();
    if parts.method != Method::POST || !path.starts_with("/v1/messages") {
        return error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "stand-in provider: only POST /v1/messages",
        );
    }
    if let Some(refuse) = &cfg.refuse {
        let status = StatusCode::from_u16(refuse.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut r = error(status, &refuse.kind, &refuse.message);
        if refuse.retry {
            r.headers_mut().remove("x-should-retry");
        }
        return r;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "stand-in provider: the body is not JSON",
            );
        }
    };
    if path == "/v1/messages/count_tokens" {
        return full(
            StatusCode::OK,
            "application/json",
            json!({"input_tokens": cfg.usage.input_tokens}).to_string(),
        );
    }
    let model = request["model"].as_str().unwrap_or("claude-standin").to_owned();
    let id = format!("msg_standin_{}", state.served.load(Ordering::SeqCst));
    let scripted = if cfg.review_script { review::reply(&request) } else { None };
    let reply = scripted.as_ref().unwrap_or(&cfg.reply);
    if request["stream"].as_bool() != Some(true) {
        let message = sse::message_json(&id, &model, reply, &cfg.usage);
        return full(StatusCode::OK, "application/json", message.to_string());
    }
    let deltas = header_num(&parts.headers, "x-standin-events").map_or(cfg.deltas, |n| n as usize);
    let delay = header_num(&parts.headers, "x-standin-delay-ms")
        .map_or(cfg.event_delay, Duration::from_millis);
    let hang = parts.headers.contains_key("x-standin-hang");
    let stamp = parts.headers.contains_key("x-standin-stamp");
    let stall = parts.headers.contains_key("x-standin-stall");
    let events = sse::message_events(&id, &model, reply, &cfg.usage, deltas);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let state = state.clone();
    let cancelled = move || {
        state.cancelled.fetch_add(1, Ordering::SeqCst);
        state.cancel_notify.notify_waiters();
    };
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let event = if stamp { stamped(event) } else { event };
            if tx.send(Frame::data(event)).await.is_err() {
                cancelled();
                return;
            }
            if stall && i == 0 {
                // Silent until the client goes away. Empty frames never reach the wire
                // (hyper discards them); they only tell when the body was dropped.
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if tx.send(Frame::data(Bytes::new())).await.is_err() {
                        cancelled();
                        return;
                    }
                }
            }
            if hang && i == 0 {
                // Wait for the client to go away: the channel closes when hyper drops the body.
                while tx.send(Frame::data(Bytes::from_static(b": keep-alive\n\n"))).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cancelled();
                return;
            }
        }
    });
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert("request-id", HeaderValue::from_static("req_standin"));
    r
}

/// Prefixes an SSE event with a comment carrying the wall-clock send time in nanoseconds.
fn stamped(event: Bytes) -> Bytes {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = format!(": t={nanos}\n").into_bytes();
    out.extend_from_slice(&event);
    Bytes::from(out)
}
