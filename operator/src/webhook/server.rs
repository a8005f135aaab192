//! The routes around [`admission::review`] and the token service, served on the shared
//! server shell ([`sanctum_common::proxy::Server`]: TLS, connection cap, handshake and
//! header deadlines, head guard, graceful shutdown) with the certificate reloaded from disk
//! (new handshakes get the new pair, open connections keep theirs); bounded bodies, no
//! panics on input.
//!
//! Routes:
//! - `POST /mutate` — the annotation opt-in webhook entry (`failurePolicy: Ignore`)
//! - `POST /mutate/namespace` — the labelled-namespace entry (`failurePolicy: Fail`)
//! - `POST /v1/trat` — the token service (only under `run`, which has API access)
//! - `GET /healthz`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::config::OperatorConfig;
use crate::token_service::{self, TokenService, TokenServiceError};
use crate::webhook::admission::{self, OptIn, Settings};
use sanctum_common::proxy::{Handler, Limits, Server};
use sanctum_common::tls::{self, ReloadingCert, TlsError};

/// Largest AdmissionReview accepted (the API server caps objects at about 1.5 MiB; a
/// review carries the object once, plus a little).
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;
pub const PATH_NAMESPACE: &str = "/mutate/namespace";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The webhook's and the token service's counters: the families
/// `sanctum_webhook_reviews_total{outcome}` and `sanctum_token_service_requests_total{outcome}`
/// and their counters, resolved once (the outcomes are fixed).
#[derive(Debug)]
pub struct Counters {
    reviews: Family<OutcomeLabels, Counter>,
    trat_requests: Family<OutcomeLabels, Counter>,
    pub injected: Counter,
    pub skipped: Counter,
    pub refused: Counter,
    pub bad_requests: Counter,
    pub trats_minted: Counter,
    pub trats_refused: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        let reviews = Family::<OutcomeLabels, Counter>::default();
        let trat_requests = Family::<OutcomeLabels, Counter>::default();
        let review = |outcome| reviews.get_or_create_owned(&OutcomeLabels { outcome });
        let trat = |outcome| trat_requests.get_or_create_owned(&OutcomeLabels { outcome });
        Self {
            injected: review("injected"),
            skipped: review("skipped"),
            refused: review("refused"),
            bad_requests: review("bad_request"),
            trats_minted: trat("minted"),
            trats_refused: trat("refused"),
            reviews,
            trat_requests,
        }
    }
}

impl Counters {
    /// Adds both families to the process's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sanctum_webhook_reviews",
            "Admission reviews answered, by outcome.",
            self.reviews.clone(),
        );
        registry.register(
            "sanctum_token_service_requests",
            "Token service exchanges, by outcome.",
            self.trat_requests.clone(),
        );
    }
}

/// Everything a request needs.
pub struct WebhookState {
    config: OperatorConfig,
    settings: RwLock<Arc<Settings>>,
    ca_file: Option<PathBuf>,
    token_service: Option<TokenService>,
    pub counters: Counters,
}

fn read_ca(path: &std::path::Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "CA bundle holds no PEM certificate; injected pods get none");
            None
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the CA bundle; injected pods get none");
            None
        }
    }
}

impl WebhookState {
    /// `ca_file`: the PEM bundle handed to injected pods for the token service (re-read
    /// every few seconds, as it may rotate with the serving certificate).
    pub fn new(
        config: OperatorConfig,
        ca_file: Option<PathBuf>,
        token_service: Option<TokenService>,
    ) -> Self {
        let ca_bundle = ca_file.as_deref().and_then(read_ca);
        Self {
            config,
            settings: RwLock::new(Arc::new(Settings { ca_bundle })),
            ca_file,
            token_service,
            counters: Counters::default(),
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh_ca(&self) {
        let Some(path) = &self.ca_file else { return };
        let ca_bundle = read_ca(path);
        let mut current = self.settings.write().unwrap_or_else(|e| e.into_inner());
        if current.ca_bundle != ca_bundle {
            tracing::info!(path = %path.display(), "CA bundle for injected pods reloaded");
            *current = Arc::new(Settings { ca_bundle });
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, message: &str) -> Resp {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            Err(if too_big {
                plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("body larger than {limit} bytes"))
            } else {
                plain(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}"))
            })
        }
    }
}

async fn mutate(state: &WebhookState, req: Request<Incoming>, opt_in: OptIn) -> Resp {
    let started = Instant::now();
    let body = match read_body(req, MAX_REVIEW_BYTES).await {
        Ok(b) => b,
        Err(r) => {
            state.counters.bad_requests.inc();
            return r;
        }
    };
    let settings = state.settings();
    match admission::review(&body, opt_in, &state.config, &settings) {
        Ok(answer) => {
            let counter = match answer.outcome {
                "injected" => &state.counters.injected,
                "refused" => &state.counters.refused,
                _ => &state.counters.skipped,
            };
            counter.inc();
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            if answer.outcome == "skipped" || answer.outcome == "ignored" {
                tracing::debug!(outcome = answer.outcome, namespace = %answer.namespace, name = %answer.name, reason = answer.message.as_deref().unwrap_or(""), micros, "admission review");
            } else {
                tracing::info!(outcome = answer.outcome, namespace = %answer.namespace, name = %answer.name, reason = answer.message.as_deref().unwrap_or(""), micros, "admission review");
            }
            match serde_json::to_vec(&answer.review) {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(e) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the AdmissionReview answer: {e}"),
                ),
            }
        }
        Err(bad) => {
            state.counters.bad_requests.inc();
            tracing::warn!(error = %bad, "bad admission request");
            plain(StatusCode::BAD_REQUEST, &bad.to_string())
        }
    }
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

async fn trat(state: &WebhookState, req: Request<Incoming>) -> Resp {
    let json = |status: u16, body: String| {
        respond(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            body,
        )
    };
    let Some(service) = &state.token_service else {
        let e = TokenServiceError::Unavailable(
            "this process serves the webhook alone (sanctum-operator webhook); the token service runs under sanctum-operator run".into(),
        );
        return json(e.status(), token_service::error_body(&e));
    };
    let token = bearer(&req).unwrap_or_default();
    // The body is not used; read (bounded) so the connection stays reusable.
    if let Err(r) = read_body(req, MAX_TOKEN_REQUEST_BYTES).await {
        return r;
    }
    let now = sanctum_common::time::now_unix();
    match service.exchange(&token, now).await {
        Ok((token, exp)) => {
            state.counters.trats_minted.inc();
            json(200, token_service::success_body(&token, exp))
        }
        Err(error) => {
            state.counters.trats_refused.inc();
            tracing::warn!(%error, "TraT refused");
            json(error.status(), token_service::error_body(&error))
        }
    }
}

pub async fn handle(state: &WebhookState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, sanctum_common::defaults::WEBHOOK_PATH) => {
            mutate(state, req, OptIn::Annotation).await
        }
        (Method::POST, PATH_NAMESPACE) => mutate(state, req, OptIn::Namespace).await,
        (Method::POST, token_service::PATH) => trat(state, req).await,
        (Method::GET, "/healthz") => plain(StatusCode::OK, "ok"),
        (_, "/mutate" | "/mutate/namespace" | "/v1/trat") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "only POST")
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A TLS listener for the webhook: the certificate pair loaded (or an error naming the
/// file) and watched for changes.
pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} (webhook): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub async fn bind(
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    reload_every: Duration,
) -> Result<TlsListener, ServeError> {
    let reloading = Arc::new(ReloadingCert::new(cert, key)?);
    reloading.spawn_watcher(reload_every);
    let acceptor = tls::acceptor(reloading)?;
    let listener =
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    Ok(TlsListener { listener, acceptor })
}

/// The webhook's admission rules on the shared server shell: at most 1024 connections open
/// at once (webhook calls from the API servers, TraT requests from injected pods starting;
/// more are closed at accept, with a log line), 10 s for the TLS handshake and for each
/// request head, heads up to 64 KiB, 10 s for open requests to finish at shutdown.
pub fn default_limits() -> Limits {
    Limits {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(10),
        tls_handshake_timeout: Duration::from_secs(10),
        max_header_bytes: 64 * 1024,
        grace_period: Duration::from_secs(10),
        ..Limits::default()
    }
}

impl Handler for WebhookState {
    type Body = Full<Bytes>;
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        handle(self, req).await
    }
}

/// Serves until `shutdown` completes, with [`default_limits`].
pub async fn serve(
    tls: TlsListener,
    state: Arc<WebhookState>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    serve_with(tls, state, default_limits(), shutdown).await;
}

/// Serves on the shared server shell ([`Server`]: TLS, connection cap, header-read
/// deadline, head guard, graceful shutdown) until `shutdown` completes, then lets open
/// requests finish for `limits.grace_period`. Re-reads the CA bundle every 5 s meanwhile.
pub async fn serve_with(
    tls: TlsListener,
    state: Arc<WebhookState>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let s = state.clone();
                let _ = tokio::task::spawn_blocking(move || s.refresh_ca()).await;
            }
        });
    }
    // The webhook and the token service are reachable from every pod of the cluster.
    // HTTP/2 by ALPN: the API server then multiplexes its reviews on one connection instead
    // of a TLS handshake per concurrent review during a burst of pod creations.
    Server::new("webhook", state, limits)
        .tls(tls.acceptor)
        .http2(true)
        .serve(tls.listener, shutdown)
        .await;
}
