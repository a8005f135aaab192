//! The gateway's server shell: accept (TCP or TLS), run the checks in order, forward with
//! the org's key, meter the response, settle the budget, write the audit line.
//!
//! Order of checks (cheapest and least revealing first): path → JWT-SVID → TraT (claims,
//! binding, revocation) → rate → provider key → body (deadline, size, bytes in flight,
//! JSON, `max_tokens`) → the org's request policy (model, betas, provider-side tools; the
//! query string cut to `beta=true`) → DLP → spend still being recorded → budget
//! reservation. Nothing about the body is looked at before both tokens verified.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use sanctum_common::headers::{AUTHORIZATION, PROXY_AUTHORIZATION, TXN_TOKEN, X_API_KEY};
use sanctum_common::proxy::{
    Handler, Limits, ProxyBody, ProxyMetrics, Refusal, Server, UpstreamClient, UpstreamError,
};
use sanctum_common::{ApiError, TratClaims};
use tokio::net::TcpListener;

use super::audit::{AuditLog, AuditRecord};
use super::body::{Hold, InFlight};
use super::budget::{self, Admission};
use super::dlp::{Scanner, Verdict};
use super::jwks::{TokenType, VerifyError};
use super::keys::ProviderKeys;
use super::metrics::Metrics;
use super::policy::{self, Asked, Policies};
use super::ratelimit::{RateDecision, RateLimit};
use super::reject::{self, Rejection};
use super::sources::{Fetcher, JwksSource, RevocationStatus, Revocations};
use super::state::State;
use super::svid::{Identity, SvidPolicy, SvidTokenClaims};
use super::tokencache::{TokenCache, digest};
use super::trat::{TratError, TratPolicy};
use super::unsettled::Unsettled;
use super::usage::{self, SseUsage, Usage};

const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-sanctum-request-id");
/// Non-streaming responses larger than this are passed on but not parsed for usage.
const MAX_JSON_USAGE: usize = 8 << 20;

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub struct Settings {
    pub svid: SvidPolicy,
    pub trat: TratPolicy,
    pub default_budget: u64,
    pub max_body: usize,
    pub reservation_ttl: u64,
    pub rate: Option<RateLimit>,
    /// Body bytes counted as one input token when reserving (see [`budget::reservation`]).
    pub body_bytes_per_token: u64,
    /// Time a client has to send its whole request body once its head has arrived.
    pub body_read_timeout: Duration,
    /// Per-org request policy (models, betas, provider-side tools).
    pub policy: Policies,
    /// Label token metrics with org and run ids.
    pub metrics_tenant_labels: bool,
}

pub struct Gateway {
    pub settings: Settings,
    pub svid_jwks: Arc<JwksSource>,
    pub trat_jwks: Arc<JwksSource>,
    pub fetcher: Arc<Fetcher>,
    pub revocations: Arc<Revocations>,
    pub keys: ProviderKeys,
    pub dlp: Scanner,
    pub state: State,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub proxy_metrics: Arc<ProxyMetrics>,
    pub client: UpstreamClient,
    /// Runs whose spend the state store has not recorded yet.
    pub unsettled: Unsettled,
    /// Request-body bytes held in memory, per run and in all.
    pub inflight: Arc<InFlight>,
    svid_cache: TokenCache<Identity>,
    trat_cache: TokenCache<Arc<TratClaims>>,
}

/// What an admitted request carries to settlement.
struct Run {
    txn: String,
    org: String,
    keep_until: u64,
    reservation: Option<String>,
    /// Tokens reserved for this request (0 when nothing was reserved).
    reserved: u64,
    /// The request body's bytes in memory, released once it has been sent upstream.
    body_hold: Option<Hold>,
}

#[allow(clippy::too_many_arguments)]
impl Gateway {
    pub fn new(
        settings: Settings,
        svid_jwks: Arc<JwksSource>,
        trat_jwks: Arc<JwksSource>,
        fetcher: Arc<Fetcher>,
        revocations: Arc<Revocations>,
        keys: ProviderKeys,
        dlp: Scanner,
        state: State,
        audit: AuditLog,
        proxy_metrics: Arc<ProxyMetrics>,
        client: UpstreamClient,
        inflight: Arc<InFlight>,
    ) -> Self {
        let leeway = settings.svid.leeway;
        let tenant_labels = settings.metrics_tenant_labels;
        Self {
            settings,
            svid_jwks,
            trat_jwks,
            fetcher,
            revocations,
            keys,
            dlp,
            state,
            audit,
            metrics: Metrics::new(tenant_labels),
            proxy_metrics,
            client,
            unsettled: Unsettled::default(),
            inflight,
            svid_cache: TokenCache::new(100_000, leeway),
            trat_cache: TokenCache::new(100_000, leeway),
        }
    }

    /// Verifies a token against a JWKS source, refreshing it once for an unknown key id.
    async fn verify_signature<T: serde::de::DeserializeOwned>(
        &self,
        source: &JwksSource,
        token: &str,
        prefix: &'static str,
        which: &str,
    ) -> Result<(T, u64), Rejection> {
        let Some((keys, generation)) = source.current() else {
            let why = source
                .last_error
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "not loaded yet".into());
            return Err(reject::jwks_unavailable(which, &why));
        };
        match keys.verify::<T>(token) {
            Ok(claims) => Ok((claims, generation)),
            Err(VerifyError::UnknownKid(kid)) => {
                if source.refresh_for_unknown_kid(&self.fetcher).await
                    && let Some((keys, generation)) = source.current()
                {
                    return keys
                        .verify::<T>(token)
                        .map(|c| (c, generation))
                        .map_err(|e| reject::verify(prefix, which, &e));
                }
                Err(reject::verify(prefix, which, &VerifyError::UnknownKid(kid)))
            }
            Err(e) => Err(reject::verify(prefix, which, &e)),
        }
    }

    async fn caller(&self, token: &str, now: u64) -> Result<Identity, Rejection> {
        let key = digest(token);
        let generation = self.svid_jwks.current().map_or(0, |(_, g)| g);
        if let Some(id) = self.svid_cache.get(&key, generation, now) {
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            id.time_check(now, self.settings.svid.leeway).map_err(|e| reject::svid(&e))?;
            return Ok(id);
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let (claims, generation) = self
            .verify_signature::<SvidTokenClaims>(
                &self.svid_jwks,
                token,
                "svid",
                "JWT-SVID (Authorization)",
            )
            .await?;
        // After the signature, so a token from an unknown issuer still says so.
        TokenType::Svid
            .check(token)
            .map_err(|e| reject::token_type("JWT-SVID (Authorization)", &e))?;
        let id = self.settings.svid.check(claims, now).map_err(|e| reject::svid(&e))?;
        self.svid_cache.insert(key, id.clone(), id.exp, generation, now);
        Ok(id)
    }

    async fn transaction(&self, token: &str, now: u64) -> Result<Arc<TratClaims>, Rejection> {
        let key = digest(token);
        let generation = self.trat_jwks.current().map_or(0, |(_, g)| g);
        let claims = if let Some(c) = self.trat_cache.get(&key, generation, now) {
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            c
        } else {
            self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
            let (value, generation) = self
                .verify_signature::<serde_json::Value>(
                    &self.trat_jwks,
                    token,
                    "trat",
                    "TraT (Txn-Token)",
                )
                .await?;
            TokenType::Trat.check(token).map_err(|e| reject::token_type("TraT (Txn-Token)", &e))?;
            let claims: TratClaims = serde_json::from_value(value)
                .map_err(|e| reject::trat(&TratError::Shape(e.to_string())))?;
            let claims = Arc::new(claims);
            // Only claims that passed are cached; expiry is re-checked on every hit.
            self.settings.trat.check_claims(&claims, now).map_err(|e| reject::trat(&e))?;
            self.trat_cache.insert(key, claims.clone(), claims.exp, generation, now);
            claims
        };
        self.settings.trat.check_claims(&claims, now).map_err(|e| reject::trat(&e))?;
        Ok(claims)
    }

    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<GatewayBody> {
        let start = Instant::now();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let mut audit = AuditRecord {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.clone(),
            method: req.method().to_string(),
            path: req.uri().path().chars().take(256).collect(),
            ..AuditRecord::default()
        };
        let path = req.uri().path();
        if path == "/" && (req.method() == Method::HEAD || req.method() == Method::GET) {
            // Some Claude Code versions probe the base URL first; it reveals nothing.
            return Response::new(GatewayBody::full(Bytes::new()));
        }
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut response = match self.admit(req, &mut audit).await {
            Err(rejection) => {
                self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.refuse(rejection, &mut audit, start)
            }
            Ok((upstream_req, run)) => self.forward(upstream_req, run, audit, start).await,
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        response
    }

    fn refuse(
        &self,
        rejection: Rejection,
        audit: &mut AuditRecord,
        start: Instant,
    ) -> Response<GatewayBody> {
        let status = rejection.error.status.as_u16();
        audit.status = status;
        audit.rejected = Some(rejection.reason);
        audit.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        self.metrics.request(status);
        self.metrics.rejection(rejection.reason);
        tracing::info!(
            request_id = %audit.request_id,
            reason = rejection.reason,
            status,
            txn = audit.txn.as_deref().unwrap_or(""),
            spiffe_id = audit.spiffe_id.as_deref().unwrap_or(""),
            "request refused"
        );
        self.audit.write(audit);
        rejection.error.to_response::<GatewayBody>()
    }

    /// Every check; on success the request to send upstream and the run it belongs to.
    async fn admit(
        &self,
        req: Request<Incoming>,
        audit: &mut AuditRecord,
    ) -> Result<(Request<ProxyBody>, Run), Rejection> {
        let path = req.uri().path();
        let counting = path == "/v1/messages/count_tokens";
        if req.method() != Method::POST || !(path == "/v1/messages" || counting) {
            return Err(reject::not_found(req.method().as_str(), path));
        }
        let now = now_unix();
        let header = |name: &HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        let svid_token = header(&AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(reject::missing_svid)?;
        let caller = self.caller(svid_token, now).await?;
        audit.spiffe_id = Some(caller.sub.clone());
        let trat_token = header(&TXN_TOKEN)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(reject::missing_trat)?;
        let trat = self.transaction(trat_token, now).await?;
        audit.txn = Some(trat.txn.clone());
        audit.run = Some(trat.tctx.run_id.clone());
        audit.org = Some(trat.tctx.org_id.clone());
        audit.namespace = trat.tctx.namespace.clone();
        self.settings.trat.check_binding(&trat, &caller).map_err(|e| reject::trat(&e))?;
        match self.revocations.status(&trat.txn) {
            RevocationStatus::Ok => {}
            RevocationStatus::Revoked => {
                return Err(reject::trat(&TratError::Revoked(trat.txn.clone())));
            }
            RevocationStatus::Unknown(why) => return Err(reject::revocation_unknown(&why)),
        }
        let keep_until = trat.exp.saturating_add(self.settings.trat.leeway);
        if let Some(limit) = self.settings.rate {
            match self.state.check_rate(&trat.txn, limit, now_ms(), keep_until).await {
                Ok(RateDecision::Allow) => {}
                Ok(RateDecision::Deny { retry_after_ms }) => {
                    return Err(reject::rate_limited(&trat.txn, retry_after_ms));
                }
                Err(e) => return Err(reject::state_unavailable(&e)),
            }
        }
        let provider_key = self.keys.get(&trat.tctx.org_id).map_err(|e| reject::key(&e))?;

        // The body: only now, after both tokens proved who is asking.
        if let Some(enc) = req.headers().get(CONTENT_ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return Err(reject::bad_request(
                "unsupported_encoding",
                "compressed request bodies are not accepted: the gateway must scan the body; \
                 send it uncompressed",
            ));
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (mut parts, body) = req.into_parts();
        let mut hold = self.inflight.hold(&trat.txn);
        let timeout = self.settings.body_read_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let body = super::body::read(
            body,
            declared,
            self.settings.max_body,
            deadline,
            timeout.as_secs(),
            &mut hold,
        )
        .await
        .map_err(|e| reject::body(&e, &trat.txn))?;
        let fields = super::fields::read(&body).map_err(|e| {
            reject::bad_request(
                "invalid_json",
                format!("the request body {e}; send a Messages API request"),
            )
        })?;
        audit.model = fields.model.as_ref().map(|m| m.chars().take(128).collect());
        audit.stream = fields.stream.as_ref().and_then(|s| s.as_bool()).unwrap_or(false);
        let max_tokens = if counting {
            0
        } else {
            fields.max_tokens.as_ref().and_then(|v| v.as_u64()).filter(|n| *n > 0).ok_or_else(
                || {
                    reject::bad_request(
                        "invalid_max_tokens",
                        "'max_tokens' must be a positive integer: the gateway reserves the run's \
                         budget against it",
                    )
                },
            )?
        };

        // The org's request policy: models, betas, provider-side tools.
        let mut betas = Vec::new();
        for value in parts.headers.get_all(ANTHROPIC_BETA) {
            let value = value.to_str().map_err(|_| {
                reject::bad_request(
                    "invalid_beta",
                    "the anthropic-beta header is not visible ASCII; send beta names only",
                )
            })?;
            betas.extend(value.split(',').map(str::trim).filter(|b| !b.is_empty()));
        }
        let asked = Asked {
            model: fields.model.as_deref(),
            betas,
            tools: fields.tools.clone().map(|r| &body[r]),
            mcp_servers: fields.mcp_servers,
        };
        self.settings.policy.check(&trat.tctx.org_id, &asked).map_err(|e| reject::policy(&e))?;
        // The query string is not the agent's to choose: only `beta=true` goes on.
        let target = match policy::upstream_query(parts.uri.query()) {
            Some(q) => format!("{}?{q}", parts.uri.path()),
            None => parts.uri.path().to_owned(),
        };
        parts.uri = target.parse().map_err(|_| reject::not_found("POST", parts.uri.path()))?;

        let body_len = body.len();
        let body = match self.dlp.scan(&body) {
            Verdict::Clean => body,
            Verdict::Block { rule, description, offset } => {
                self.metrics.dlp(&rule, "block");
                audit.dlp_rules = vec![rule.clone()];
                audit.dlp_action = Some("block");
                return Err(reject::dlp_block(&rule, &description, offset));
            }
            Verdict::Redacted { body: redacted, rules } => {
                audit.dlp_rules = rules.clone();
                if serde_json::from_slice::<serde::de::IgnoredAny>(&redacted).is_err() {
                    // A match crossed JSON structure: redacting would corrupt the request.
                    audit.dlp_action = Some("block");
                    for r in &rules {
                        self.metrics.dlp(r, "block");
                    }
                    return Err(reject::dlp_block(&rules[0], "secret that cannot be redacted", 0));
                }
                for r in &rules {
                    self.metrics.dlp(r, "redact");
                }
                audit.dlp_action = Some("redact");
                Bytes::from(redacted)
            }
        };

        let mut run = Run {
            txn: trat.txn.clone(),
            org: trat.tctx.org_id.clone(),
            keep_until,
            reservation: None,
            reserved: 0,
            body_hold: Some(hold),
        };
        if !counting {
            if self.unsettled.holds(&trat.txn) {
                return Err(reject::settlement_pending(&trat.txn));
            }
            let limit = trat.tctx.budget_tokens.unwrap_or(self.settings.default_budget);
            let id = audit.request_id.clone();
            let input = budget::input_bound(body_len, self.settings.body_bytes_per_token);
            let asked =
                budget::reservation(body_len, max_tokens, self.settings.body_bytes_per_token);
            let admission = self
                .state
                .reserve(
                    &trat.txn,
                    limit,
                    &id,
                    asked,
                    now,
                    self.settings.reservation_ttl,
                    keep_until,
                )
                .await
                .map_err(|e| reject::state_unavailable(&e))?;
            match admission {
                Admission::Admitted => {
                    run.reservation = Some(id);
                    run.reserved = asked;
                }
                Admission::Exhausted { spent, limit } => {
                    return Err(reject::budget_exhausted(&trat.txn, spent, limit));
                }
                Admission::TooLarge { remaining, asked } => {
                    return Err(reject::budget_too_large(
                        &trat.txn, remaining, asked, max_tokens, input, body_len,
                    ));
                }
                Admission::Busy { remaining, reserved, .. } => {
                    return Err(reject::budget_busy(&trat.txn, remaining, reserved));
                }
            }
        }

        // The request that leaves: the client's credentials never do.
        let headers = &mut parts.headers;
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, TXN_TOKEN, X_API_KEY, HOST, CONTENT_LENGTH]
        {
            headers.remove(name);
        }
        headers.insert(X_API_KEY, provider_key);
        // Usage must be readable: no compressed responses from the provider.
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let upstream = Request::from_parts(parts, ProxyBody::full(body));
        Ok((upstream, run))
    }

    async fn forward(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        mut run: Run,
        mut audit: AuditRecord,
        start: Instant,
    ) -> Response<GatewayBody> {
        let sent = self.client.send(req).await;
        // The provider has answered (or failed): the body is no longer held.
        run.body_hold = None;
        match sent {
            Ok(response) => {
                let status = response.status();
                audit.status = status.as_u16();
                self.metrics.request(status.as_u16());
                let sse = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                let finish = Finish { gw: self.clone(), run, audit, start };
                response.map(|body| GatewayBody::metered(body, sse, finish))
            }
            Err(error) => {
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(request_id = %audit.request_id, %error, "provider unreachable");
                let api = error.to_api_error("check the gateway's --upstream");
                // A request that never left costs nothing; one that may have reached the
                // provider (no answer in time, a broken answer) may have cost its reservation.
                let seen = match error {
                    UpstreamError::ResponseTimeout { .. } | UpstreamError::Protocol { .. } => {
                        Seen::Partly
                    }
                    _ => Seen::NotSent,
                };
                let finish = Finish { gw: self.clone(), run, audit, start };
                finish.done(
                    api.status.as_u16(),
                    Usage::default(),
                    seen,
                    Some("upstream_unreachable"),
                );
                api.to_response::<GatewayBody>()
            }
        }
    }
}

/// Settlement of one forwarded request: budget, metrics, audit.
struct Finish {
    gw: Arc<Gateway>,
    run: Run,
    audit: AuditRecord,
    start: Instant,
}

/// How much of the provider's usage report the gateway saw, which decides the charge
/// ([`budget::charge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The whole answer, usage included: charged what the provider reported.
    Full,
    /// Part of it (client gone, stream broken, answer too large to read): charged at least
    /// the reservation.
    Partly,
    /// The request never reached the provider: charged nothing.
    NotSent,
}

impl Finish {
    fn done(self, status: u16, usage: Usage, seen: Seen, rejected: Option<&'static str>) {
        let Finish { gw, run, mut audit, start } = self;
        let incomplete = seen != Seen::Full;
        let charged = match seen {
            Seen::Full | Seen::NotSent => usage.total(),
            Seen::Partly => budget::charge(usage.total(), false, run.reserved),
        };
        audit.charged_tokens = charged;
        gw.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        audit.status = status;
        audit.rejected = rejected;
        if let Some(reason) = rejected {
            gw.metrics.request(status);
            gw.metrics.rejection(reason);
        }
        audit.incomplete = incomplete;
        audit.input_tokens = usage.input_tokens;
        audit.output_tokens = usage.output_tokens;
        audit.cache_creation_input_tokens = usage.cache_creation_input_tokens;
        audit.cache_read_input_tokens = usage.cache_read_input_tokens;
        audit.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        gw.metrics.tokens(&run.org, &run.txn, run.keep_until, &usage);
        let in_memory = match &run.reservation {
            None => true,
            Some(id) => gw.state.settle_in_memory(&run.txn, id, charged).is_some(),
        };
        if in_memory {
            gw.audit.write(&audit);
            return;
        }
        let settle = async move {
            if let Some(id) = &run.reservation {
                settle_until_recorded(&gw, &run, id, charged).await;
            }
            gw.audit.write(&audit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(settle);
            }
            Err(_) => tracing::error!("no runtime to settle a request on; budget not updated"),
        }
    }
}

/// Records `charged` tokens for reservation `id`, retrying (200 ms doubling to 5 s) until the
/// store takes it; meanwhile the run is held in [`Gateway::unsettled`] and refused new
/// admissions. Retrying is safe: the store counts each reservation id once.
async fn settle_until_recorded(gw: &Gateway, run: &Run, id: &str, charged: u64) {
    let mut delay = Duration::from_millis(200);
    let mut held = false;
    loop {
        match gw.state.settle(&run.txn, id, charged, now_unix(), run.keep_until).await {
            Ok(_) => break,
            Err(error) => {
                if !held {
                    held = true;
                    gw.unsettled.hold(&run.txn);
                    tracing::warn!(%error, txn = %run.txn, tokens = charged,
                        "budget settlement failed; retrying, and refusing the run until it is recorded");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    if held {
        gw.unsettled.release(&run.txn);
        tracing::info!(txn = %run.txn, tokens = charged, "budget settlement recorded after retries");
    }
}

/// The response body: in memory (errors), or the provider's stream metered on its way.
pub struct GatewayBody {
    kind: BodyKind,
}

enum BodyKind {
    Full(Option<Bytes>),
    Metered(Box<Metered>),
}

struct Metered {
    inner: ProxyBody,
    sse: bool,
    sse_usage: SseUsage,
    json: Option<Vec<u8>>,
    /// SSE bytes after the last complete event, held so an error event never lands inside
    /// a half-sent one.
    pending: BytesMut,
    ended: bool,
    status: u16,
    finish: Option<Finish>,
}

impl GatewayBody {
    pub fn full(bytes: Bytes) -> Self {
        Self { kind: BodyKind::Full(if bytes.is_empty() { None } else { Some(bytes) }) }
    }

    fn metered(inner: ProxyBody, sse: bool, finish: Finish) -> Self {
        let status = finish.audit.status;
        Self {
            kind: BodyKind::Metered(Box::new(Metered {
                inner,
                sse,
                sse_usage: SseUsage::default(),
                json: if sse { None } else { Some(Vec::new()) },
                pending: BytesMut::new(),
                ended: false,
                status,
                finish: Some(finish),
            })),
        }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

/// End of the last complete SSE event in `buf` (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n' {
            if buf[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 3 && buf[i - 2] == b'\r' && buf[i - 3] == b'\n' {
                return Some(i);
            }
        }
        i -= 1;
    }
    None
}

impl Metered {
    /// The usage reported so far, and whether it is the whole report. `ended` says whether
    /// the provider's body was read to its end.
    fn usage(&self, ended: bool) -> (Usage, Seen) {
        if self.sse {
            // `message_stop` follows the last `message_delta`, whose usage is final.
            let full = ended && self.sse_usage.stopped;
            return (self.sse_usage.usage(), if full { Seen::Full } else { Seen::Partly });
        }
        let parsed = if ended { self.json.as_deref().and_then(usage::from_json) } else { None };
        match parsed {
            Some(u) => (u, Seen::Full),
            // An error answer read in full: the provider did not run the model.
            None if ended && !(200..300).contains(&self.status) => (Usage::default(), Seen::Full),
            None => (Usage::default(), Seen::Partly),
        }
    }

    /// Settles once. `ended`: the provider's body was read to its end (not broken off, not
    /// abandoned by the client).
    fn complete(&mut self, ended: bool) {
        if let Some(finish) = self.finish.take() {
            let (usage, seen) = self.usage(ended);
            finish.done(self.status, usage, seen, None);
        }
    }
}

fn error_event(message: &str) -> Bytes {
    let body = ApiError::bad_gateway(message).body();
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let m = match &mut self.get_mut().kind {
            BodyKind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Metered(m) => m,
        };
        loop {
            if m.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut m.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: the Messages API sends none
                    };
                    // hyper stops polling a body once its content-length is written, so the
                    // end is noticed here, not only from a final `None`.
                    let last = m.inner.is_end_stream();
                    if m.sse {
                        m.sse_usage.feed(&data);
                        m.pending.extend_from_slice(&data);
                        if last {
                            m.ended = true;
                            m.complete(true);
                            return Poll::Ready(Some(Ok(Frame::data(m.pending.split().freeze()))));
                        }
                        match last_event_end(&m.pending) {
                            Some(end) => {
                                return Poll::Ready(Some(Ok(Frame::data(
                                    m.pending.split_to(end).freeze(),
                                ))));
                            }
                            None => continue,
                        }
                    }
                    if let Some(buf) = &mut m.json {
                        if buf.len() + data.len() <= MAX_JSON_USAGE {
                            buf.extend_from_slice(&data);
                        } else {
                            m.json = None;
                        }
                    }
                    if last {
                        m.ended = true;
                        m.complete(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => {
                    m.ended = true;
                    if let Some(f) = &m.finish {
                        f.gw.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(request_id = %f.audit.request_id, %error, "provider stream broke");
                    }
                    m.complete(false);
                    if m.sse {
                        // Drop the half event; end the stream the way the API reports errors.
                        m.pending.clear();
                        return Poll::Ready(Some(Ok(Frame::data(error_event(
                            "the provider's stream broke off before the message was complete; \
                             retry the request",
                        )))));
                    }
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Ready(None) => {
                    m.ended = true;
                    m.complete(true);
                    if !m.pending.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(m.pending.split().freeze()))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(b) => b.is_none(),
            BodyKind::Metered(m) => m.ended && m.pending.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BodyKind::Metered(m) if !m.sse => m.inner.size_hint(),
            BodyKind::Metered(_) => SizeHint::default(),
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away mid-response (or never read it): settle what was seen.
        self.complete(false);
    }
}

/// The gateway as a [`Handler`] of the shared server shell; the requests the shell answers
/// itself (malformed heads, CONNECT) count in the gateway's own metrics too.
struct Serving(Arc<Gateway>);

impl Handler for Serving {
    type Body = GatewayBody;

    async fn handle(&self, req: Request<Incoming>) -> Response<GatewayBody> {
        self.0.handle(req).await
    }

    fn refused(&self, refusal: Refusal) {
        self.0.metrics.request(refusal.status().as_u16());
        self.0.metrics.rejection(refusal.reason());
    }
}

/// Serves on `listener` (TLS when `tls` is set) on the shared server shell until
/// `shutdown`, then drains for `limits.grace_period`. At most `limits.max_connections`
/// connections are open at once (more are closed at accept); a connection has
/// `limits.tls_handshake_timeout` for its TLS handshake and `limits.header_read_timeout`
/// for each request head; hop-by-hop headers are gone before [`Gateway::handle`] runs.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let metrics = gw.proxy_metrics.clone();
    Server::new("gateway", Arc::new(Serving(gw)), limits)
        .metrics(metrics)
        .maybe_tls(tls)
        .serve(listener, shutdown)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries() {
        assert_eq!(last_event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(last_event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(last_event_end(b"data: x\n"), None);
        assert_eq!(last_event_end(b""), None);
        assert_eq!(last_event_end(b"\n\n\n"), Some(3));
    }

    #[test]
    fn error_event_is_sse() {
        let e = error_event("broke");
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: error\ndata: {\"type\":\"error\""));
        assert!(text.ends_with("\n\n"));
    }
}
