//! The request pipeline, as the list it is. Cheapest and least revealing checks first;
//! nothing about the body is looked at before both tokens verified:
//!
//! 1. [`route`] — `POST /v1/messages` or `/v1/messages/count_tokens`
//! 2. [`authenticate`] — JWT-SVID, TraT, their binding, the run's revocation
//! 3. [`ratelimit::check`] — the run's request rate (per org)
//! 4. [`Provider::credential`] — the org's provider credentials
//! 5. [`body::receive`] — the body (encoding, deadline, size, bytes in flight)
//! 6. [`request::read`] — its fields (`max_tokens`, `model`, betas) and the org's policy;
//!    [`Provider::route`] — the provider's path for it
//! 7. [`dlp::screen`] — secrets blocked or redacted; [`Provider::body`] — the body for the
//!    provider
//! 8. `outgoing` + [`Provider::sign`] — the request that leaves (client credentials
//!    removed, the org's added, signed over the final bytes)
//! 9. [`budget::reserve`] — spend still being recorded, then the budget reservation (last:
//!    a reservation is never left behind by a later refusal)
//! 10. `forward::forward` — sent; the answer [metered](crate::metered) on its way, then
//!     [settled](crate::settle) (budget, token metrics, audit line)
//!
//! A refusal at any step is answered by `Gateway::refuse`: metrics, log and audit line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use sanctum_common::headers::{AUTHORIZATION, PROXY_AUTHORIZATION, TXN_TOKEN, X_API_KEY};
use sanctum_common::proxy::ProxyBody;

use super::audit::AuditRecord;
use super::authenticate::authenticate;
use super::gateway::{Gateway, now_unix};
use super::metered::GatewayBody;
use super::provider::{Endpoint, Provider};
use super::reject::{self, Rejection};
use super::route::{is_probe, route};
use super::settle::Run;
use super::{body, budget, dlp, forward, ratelimit, request};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-sanctum-request-id");

/// An admitted request: what to send, on which provider, for which run.
struct Admitted {
    upstream: Request<ProxyBody>,
    provider: Arc<dyn Provider>,
    run: Run,
}

impl Gateway {
    /// Answers one client request (the server shell calls this for every request).
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<GatewayBody> {
        let start = Instant::now();
        if is_probe(&req) {
            return Response::new(GatewayBody::full(Bytes::new()));
        }
        let mut audit = AuditRecord::begin(req.method(), req.uri().path());
        let request_id = HeaderValue::from_str(&audit.request_id).ok();
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut response = match self.admit(req, &mut audit).await {
            Err(rejection) => {
                self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.refuse(rejection, &mut audit, start)
            }
            Ok(Admitted { upstream, provider, run }) => {
                forward::forward(self, &*provider, upstream, run, audit, start).await
            }
        };
        if let Some(v) = request_id {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        response
    }

    /// Steps 1–9: every check; on success the request to send and the run it belongs to.
    async fn admit(
        &self,
        req: Request<Incoming>,
        audit: &mut AuditRecord,
    ) -> Result<Admitted, Rejection> {
        let endpoint = route(&req)?;
        let now = now_unix();
        let trat = authenticate(self, req.headers(), now, audit).await?;
        let (txn, org_id) = (&trat.txn, &trat.tctx.org_id);
        let org = self.orgs.get(org_id);
        let keep_until = trat.exp.saturating_add(self.settings.trat.leeway);
        ratelimit::check(self, org.rate, txn, keep_until).await?;
        let provider = &org.provider;
        let credential = provider.credential(org_id).map_err(|e| reject::provider(&e))?;

        let (parts, body, hold) = body::receive(self, req, txn).await?;
        let asked = request::read(org, org_id, endpoint, &parts, &body, audit)?;
        let call = asked.call();
        let path = provider.route(&call).map_err(|e| reject::provider(&e))?;
        let body_len = body.len();
        let body = dlp::screen(self, body, audit)?;
        let body = provider.body(body, &call).map_err(|e| reject::provider(&e))?;
        let max_tokens = asked.max_tokens;
        drop(asked); // the head's beta values are no longer borrowed: `parts` may change

        let mut parts = parts;
        outgoing(&mut parts, path);
        provider.sign(&mut parts, &body, credential).map_err(|e| reject::provider(&e))?;
        let limit = trat.tctx.budget_tokens.unwrap_or(org.budget_tokens);
        let counting = endpoint == Endpoint::CountTokens;
        let reserved = budget::reserve(
            self,
            txn,
            limit,
            &audit.request_id,
            counting,
            max_tokens,
            body_len,
            now,
            keep_until,
        )
        .await?;
        let run = Run {
            txn: txn.clone(),
            org: org_id.clone(),
            keep_until,
            reservation: reserved.id,
            reserved: reserved.tokens,
            body_hold: Some(hold),
        };
        let upstream = Request::from_parts(parts, ProxyBody::full(body));
        Ok(Admitted { upstream, provider: provider.clone(), run })
    }

    /// Answers a refusal: counted, logged, audited.
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
        self.metrics.rejection(rejection.reason.label());
        tracing::info!(
            request_id = %audit.request_id,
            reason = rejection.reason.label(),
            status,
            txn = audit.txn.as_deref().unwrap_or(""),
            spiffe_id = audit.spiffe_id.as_deref().unwrap_or(""),
            "request refused"
        );
        self.audit.write(audit);
        rejection.error.to_response::<GatewayBody>()
    }
}

/// The head that leaves, before the provider signs it: the provider's path; the client's
/// credentials never leave; identity encoding so usage stays readable; a content type.
fn outgoing(parts: &mut http::request::Parts, path: http::uri::PathAndQuery) {
    parts.uri = http::Uri::from(path);
    let headers = &mut parts.headers;
    for name in [AUTHORIZATION, PROXY_AUTHORIZATION, TXN_TOKEN, X_API_KEY, HOST, CONTENT_LENGTH] {
        headers.remove(name);
    }
    // Usage must be readable: no compressed responses from the provider.
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
}
