//! The gateway's shared parts: settings, token sources and caches, the orgs and their
//! providers, the DLP scanner, the budget and rate store, the audit log and metrics. The
//! request pipeline that uses them is [`crate::pipeline`].

use std::sync::Arc;
use std::time::Duration;

use sanctum_common::TratClaims;
use sanctum_common::proxy::ProxyMetrics;

use super::audit::AuditLog;
use super::body::InFlight;
use super::dlp::Scanner;
use super::metrics::Metrics;
use super::orgs::Orgs;
use super::sources::{Fetcher, JwksSource, Revocations};
use super::state::State;
use super::svid::{Identity, SvidPolicy};
use super::tokencache::TokenCache;
use super::trat::TratPolicy;
use super::unsettled::Unsettled;

pub use sanctum_common::time::{now_ms, now_unix};

pub struct Settings {
    pub svid: SvidPolicy,
    pub trat: TratPolicy,
    pub max_body: usize,
    pub reservation_ttl: u64,
    /// Body bytes counted as one input token when reserving (see
    /// [`crate::budget::reservation`]).
    pub body_bytes_per_token: u64,
    /// Time a client has to send its whole request body once its head has arrived.
    pub body_read_timeout: Duration,
    /// Label token metrics with org and run ids.
    pub metrics_tenant_labels: bool,
}

pub struct Gateway {
    pub settings: Settings,
    pub svid_jwks: Arc<JwksSource>,
    pub trat_jwks: Arc<JwksSource>,
    pub fetcher: Arc<Fetcher>,
    pub revocations: Arc<Revocations>,
    /// Per org: provider, request policy, budget and rate defaults.
    pub orgs: Orgs,
    pub dlp: Scanner,
    pub state: State,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub proxy_metrics: Arc<ProxyMetrics>,
    /// Runs whose spend the state store has not recorded yet.
    pub unsettled: Unsettled,
    /// Request-body bytes held in memory, per run and in all.
    pub inflight: Arc<InFlight>,
    pub(crate) svid_cache: TokenCache<Identity>,
    pub(crate) trat_cache: TokenCache<Arc<TratClaims>>,
}

#[allow(clippy::too_many_arguments)]
impl Gateway {
    pub fn new(
        settings: Settings,
        svid_jwks: Arc<JwksSource>,
        trat_jwks: Arc<JwksSource>,
        fetcher: Arc<Fetcher>,
        revocations: Arc<Revocations>,
        orgs: Orgs,
        dlp: Scanner,
        state: State,
        audit: AuditLog,
        proxy_metrics: Arc<ProxyMetrics>,
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
            orgs,
            dlp,
            state,
            audit,
            metrics: Metrics::new(tenant_labels),
            proxy_metrics,
            unsettled: Unsettled::default(),
            inflight,
            svid_cache: TokenCache::new(100_000, leeway),
            trat_cache: TokenCache::new(100_000, leeway),
        }
    }
}
