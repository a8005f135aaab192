//! Documents the gateway keeps fresh: the two JWKS (a file reloaded on change, or a URL
//! fetched and refreshed) and the operator's revoked list (polled from `--revoked-url`).
//!
//! A URL may be a JWKS itself or an OIDC discovery document (SPIRE's OIDC discovery
//! provider, a Kubernetes service-account issuer): `/.well-known/openid-configuration` is
//! followed to its `jwks_uri`. A refresh that fails keeps the last good set.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sanctum_common::proxy::{Limits, ProxyBody, ProxyMetrics, Upstream, UpstreamClient};
use sanctum_common::time::now_unix;

use super::jwks::KeySet;
use super::revocation::RevokedSet;

/// Largest JWKS, discovery document or revoked list accepted.
const MAX_DOC: usize = 4 << 20;

/// GETs small JSON documents over http(s).
pub struct Fetcher {
    ca_file: Option<PathBuf>,
    metrics: Arc<ProxyMetrics>,
    limits: Limits,
    /// One pooled client per origin (building one loads the system roots).
    clients: std::sync::Mutex<std::collections::HashMap<String, Arc<UpstreamClient>>>,
}

impl Fetcher {
    pub fn new(ca_file: Option<PathBuf>) -> Self {
        let limits = Limits {
            connect_timeout: Duration::from_secs(5),
            response_head_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            pool_max_idle: 2,
            ..Limits::default()
        };
        Self {
            ca_file,
            metrics: Arc::new(ProxyMetrics::new("sanctum_gateway_fetch")),
            limits,
            clients: Default::default(),
        }
    }

    pub async fn get(&self, url: &str) -> Result<Bytes, String> {
        self.get_with(url, None).await
    }

    /// GET with `Authorization: Bearer <token>` when `bearer` is set. A token is only ever
    /// sent over https, so a misconfigured http URL cannot leak it.
    pub async fn get_with(&self, url: &str, bearer: Option<&str>) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
        if bearer.is_some() && uri.scheme_str() != Some("https") {
            return Err(format!("{url}: a bearer token is only sent over https"));
        }
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        let cached = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&origin).cloned();
        let client = match cached {
            Some(c) => c,
            None => {
                let mut upstream = Upstream::url(&origin).map_err(|e| e.to_string())?;
                if let Some(ca) = &self.ca_file {
                    upstream = upstream.with_ca_file(ca);
                }
                let c = Arc::new(
                    UpstreamClient::new(upstream, &self.limits, self.metrics.clone())
                        .map_err(|e| e.to_string())?,
                );
                self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(origin, c.clone());
                c
            }
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            // The Kubernetes issuer serves its JWKS only as application/jwk-set+json (RFC 7517
            // §8.5) and answers 406 to a plain application/json.
            .header(http::header::ACCEPT, "application/json, application/jwk-set+json");
        if let Some(token) = bearer {
            let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| "the bearer token file holds characters a header cannot carry")?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        let req = req.body(ProxyBody::empty()).map_err(|e| e.to_string())?;
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{url} answered HTTP {}", resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_DOC)
            .collect()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// Where a JWKS comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Url(String),
}

impl Origin {
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            Origin::Url(s.to_owned())
        } else {
            Origin::File(PathBuf::from(s))
        }
    }

    fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Url(u) => u.clone(),
        }
    }
}

/// A JWKS kept fresh. `generation` changes whenever the key set does, which invalidates the
/// tokens cached as verified by the old set.
pub struct JwksSource {
    pub name: &'static str,
    origin: Origin,
    /// Bearer token file for a URL origin (re-read at every fetch: kubelet-rotated tokens).
    token_file: Option<PathBuf>,
    keys: RwLock<Option<Arc<KeySet>>>,
    generation: AtomicU64,
    stamp: std::sync::Mutex<Option<(SystemTime, u64)>>,
    last_forced: std::sync::Mutex<Option<Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
    pub last_error: RwLock<Option<String>>,
}

impl JwksSource {
    pub fn new(name: &'static str, origin: Origin) -> Self {
        Self {
            name,
            origin,
            token_file: None,
            keys: RwLock::new(None),
            generation: AtomicU64::new(0),
            stamp: std::sync::Mutex::new(None),
            last_forced: std::sync::Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_error: RwLock::new(None),
        }
    }

    /// Sends the token in `path` as a bearer token with every fetch of a URL origin, e.g.
    /// the gateway's own ServiceAccount token for the Kubernetes service-account issuer's
    /// JWKS (`https://kubernetes.default.svc/openid/v1/jwks`), which needs authentication.
    pub fn with_token_file(mut self, path: Option<PathBuf>) -> Self {
        self.token_file = path;
        self
    }

    pub fn current(&self) -> Option<(Arc<KeySet>, u64)> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some((keys, self.generation.load(Ordering::Acquire)))
    }

    fn install(&self, set: KeySet) {
        for skipped in &set.skipped {
            tracing::warn!(jwks = self.name, source = %self.origin.describe(), skipped = %skipped, "JWKS key skipped");
        }
        tracing::info!(jwks = self.name, source = %self.origin.describe(), keys = set.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn fail(&self, error: String) {
        tracing::warn!(jwks = self.name, source = %self.origin.describe(), %error, "JWKS refresh failed; keeping the last good set");
        *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// Loads or reloads; for a file, only when its modification time or size changed.
    pub async fn refresh(&self, fetcher: &Fetcher) {
        let _one_at_a_time = self.refresh_lock.lock().await;
        match &self.origin {
            Origin::File(path) => {
                let meta = match tokio::fs::metadata(path).await {
                    Ok(m) => m,
                    Err(e) => return self.fail(format!("cannot read {}: {e}", path.display())),
                };
                let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
                if *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) == Some(stamp) {
                    return;
                }
                match tokio::fs::read(path).await {
                    Ok(bytes) => match KeySet::parse(&bytes) {
                        Ok(set) => {
                            *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = Some(stamp);
                            self.install(set);
                        }
                        Err(e) => self.fail(format!("{} {e}", path.display())),
                    },
                    Err(e) => self.fail(format!("cannot read {}: {e}", path.display())),
                }
            }
            Origin::Url(url) => match self.fetch(fetcher, url).await {
                Ok(set) => self.install(set),
                Err(e) => self.fail(e),
            },
        }
    }

    /// A token names a key we do not know: maybe the issuer rotated. Refresh now, at most
    /// once every 10 s, so a stream of bad tokens cannot hammer the issuer.
    pub async fn refresh_for_unknown_kid(&self, fetcher: &Fetcher) -> bool {
        {
            let mut last = self.last_forced.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let before = self.generation.load(Ordering::Acquire);
        self.refresh(fetcher).await;
        self.generation.load(Ordering::Acquire) != before
    }

    /// Polls: files every `file_every`, URLs every `url_every`.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        fetcher: Arc<Fetcher>,
        file_every: Duration,
        url_every: Duration,
    ) {
        let me = self.clone();
        let every = match me.origin {
            Origin::File(_) => file_every,
            Origin::Url(_) => url_every,
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.refresh(&fetcher).await;
            }
        });
    }
}

impl JwksSource {
    async fn fetch(&self, fetcher: &Fetcher, url: &str) -> Result<KeySet, String> {
        let token = match &self.token_file {
            Some(path) => Some(
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        fetch_jwks(fetcher, url, token.as_deref()).await
    }
}

async fn fetch_jwks(fetcher: &Fetcher, url: &str, bearer: Option<&str>) -> Result<KeySet, String> {
    let body = fetcher.get_with(url, bearer).await?;
    #[derive(serde::Deserialize)]
    struct Discovery {
        jwks_uri: Option<String>,
        keys: Option<serde_json::Value>,
    }
    let doc: Discovery =
        serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))?;
    if doc.keys.is_none()
        && let Some(jwks_uri) = doc.jwks_uri
    {
        let body = fetcher.get_with(&jwks_uri, bearer).await?;
        return KeySet::parse(&body).map_err(|e| format!("{jwks_uri} {e}"));
    }
    KeySet::parse(&body).map_err(|e| format!("{url} {e}"))
}

/// The revoked list, polled.
pub struct Revocations {
    url: Option<String>,
    set: RwLock<Arc<RevokedSet>>,
    last_ok: std::sync::Mutex<Option<Instant>>,
    pub max_age: Duration,
    pub last_error: RwLock<Option<String>>,
}

/// Whether a txn may be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RevocationStatus {
    Ok,
    Revoked,
    /// No fresh list: fail closed.
    Unknown(String),
}

impl Revocations {
    pub fn new(url: Option<String>, max_age: Duration) -> Self {
        Self {
            url,
            set: RwLock::new(Arc::new(RevokedSet::default())),
            last_ok: std::sync::Mutex::new(None),
            max_age,
            last_error: RwLock::new(None),
        }
    }

    pub fn status(&self, txn: &str) -> RevocationStatus {
        if self.url.is_some() {
            let fresh = self
                .last_ok
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() <= self.max_age);
            if !fresh {
                let why = self
                    .last_error
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into());
                return RevocationStatus::Unknown(why);
            }
        }
        if self.set.read().unwrap_or_else(|e| e.into_inner()).is_revoked(txn) {
            RevocationStatus::Revoked
        } else {
            RevocationStatus::Ok
        }
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn poll_once(&self, fetcher: &Fetcher) {
        let Some(url) = &self.url else {
            return;
        };
        let result = match fetcher.get(url).await {
            Ok(body) => RevokedSet::parse(&body, now_unix()).map_err(|e| format!("{url} {e}")),
            Err(e) => Err(e),
        };
        match result {
            Ok(set) => {
                *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(error) => {
                tracing::warn!(%error, "revoked list poll failed; keeping the last list");
                *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = Some(error);
            }
        }
    }

    pub fn spawn_poller(self: &Arc<Self>, fetcher: Arc<Fetcher>, every: Duration) {
        if self.url.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.poll_once(&fetcher).await;
            }
        });
    }
}
