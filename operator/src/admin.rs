//! The operator's admin port: `/readyz` (watching, revoked list restored, signing key
//! loaded), `/metrics` (controller and webhook counters), the JWKS gateways verify TraTs
//! with, and the revoked list they poll. Served by [`sanctum_common::admin`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use sanctum_common::admin::{self, AdminState};
use sanctum_common::defaults;
use sanctum_common::metrics::{FnGauge, Registry};

use crate::reconcile::{Context, now_secs};
use crate::revoked;
use crate::webhook::server::WebhookState;

/// What the admin port reads: the controller's context (the one signing key holder, the
/// revoked list, metrics) and, when it runs, the webhook's counters.
pub struct Admin {
    pub ctx: Arc<Context>,
    /// Set once the controller starts watching ScannerRuns.
    pub watching: AtomicBool,
    pub webhook: Option<Arc<WebhookState>>,
    /// The process's one registry: the controller's metrics, the revoked-list size and,
    /// when it runs, the webhook's counters.
    registry: Registry,
}

impl Admin {
    pub fn new(ctx: Arc<Context>, webhook: Option<Arc<WebhookState>>) -> Self {
        let mut registry = Registry::default();
        ctx.metrics.register(&mut registry);
        let revoked = ctx.revoked.clone();
        registry.register(
            "sanctum_operator_revoked_txns",
            "Transaction tokens on the revoked list.",
            FnGauge::new(move || i64::try_from(revoked.len()).unwrap_or(i64::MAX)),
        );
        if let Some(webhook) = &webhook {
            webhook.counters.register(&mut registry);
        }
        Self { ctx, watching: AtomicBool::new(false), webhook, registry }
    }

    pub fn set_watching(&self) {
        self.watching.store(true, Ordering::Relaxed);
    }
}

impl AdminState for Admin {
    async fn ready(&self) -> Result<(), String> {
        if !self.watching.load(Ordering::Relaxed) {
            return Err("the controller has not started watching ScannerRuns yet".into());
        }
        if !self.ctx.revoked.is_restored() {
            return Err(format!(
                "the revoked list is not restored yet (ConfigMap {} and the ScannerRuns)",
                revoked::CONFIGMAP
            ));
        }
        if self.ctx.signer.loaded().is_none() {
            return Err("the TraT signing key is not loaded; check trat.signingKeyFile".into());
        }
        Ok(())
    }

    fn metrics(&self) -> &Registry {
        &self.registry
    }

    fn route(&self, path: &str) -> Option<http::Response<Full<Bytes>>> {
        match path {
            defaults::JWKS_PATH => {
                let jwks = self
                    .ctx
                    .signer
                    .loaded()
                    .map_or_else(|| serde_json::json!({"keys": []}), |s| s.jwks());
                Some(admin::json_response(jwks.to_string()))
            }
            // Until the saved list is back, an empty list would un-revoke tokens: 503 makes
            // gateways keep the list they have.
            defaults::REVOKED_PATH if !self.ctx.revoked.is_restored() => {
                let mut r = admin::json_response(
                    r#"{"error":"the operator is restoring its revoked list; retry shortly"}"#,
                );
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Some(r)
            }
            defaults::REVOKED_PATH => {
                Some(admin::json_response(self.ctx.revoked.to_json(now_secs())))
            }
            _ => None,
        }
    }
}
