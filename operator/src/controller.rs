//! `sanctum-operator run`: the controller, the admin port and (when a TLS certificate is
//! configured) the webhook with the token service, in one process, shut down together on
//! SIGTERM. `sanctum-operator webhook`: the webhook alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{Controller, watcher};
use sanctum_common::admin::{self, AdminState};
use sanctum_common::defaults;

use crate::config::OperatorConfig;
use crate::crd::ScannerRun;
use crate::metrics::Metrics;
use crate::names::{LABEL_MANAGED_BY, MANAGER};
use crate::reconcile::{
    Context, SignerSlot, error_policy, now_secs, reconcile, revoke, save_revoked,
};
use crate::revoked::{self, Revoked};
use crate::token_service::TokenService;
use crate::tokens::Signer;
use crate::webhook::server::{self, WebhookState};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Operator config file (YAML).
    #[arg(long, env = "SANCTUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin address: /healthz, /readyz, /metrics, /.well-known/jwks.json, /revoked.
    #[arg(long, env = "SANCTUM_ADMIN_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::OPERATOR_ADMIN_PORT)))]
    pub admin_listen: SocketAddr,
    /// HTTPS address of the webhook and token service (default: the config's webhook.listen).
    #[arg(long, env = "SANCTUM_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// Serving certificate (PEM) of the webhook; with --tls-key-file, turns the webhook and
    /// the token service on (default: the config's webhook.tlsCertFile).
    #[arg(long, env = "SANCTUM_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, env = "SANCTUM_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    /// HTTPS address to listen on.
    #[arg(long, env = "SANCTUM_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::WEBHOOK_PORT)))]
    pub listen: SocketAddr,
    /// Serving certificate (PEM chain), reloaded when it changes on disk.
    #[arg(long, env = "SANCTUM_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// Private key of --tls-cert-file (PEM), reloaded with it.
    #[arg(long, env = "SANCTUM_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,
    /// Operator config file (YAML).
    #[arg(long, env = "SANCTUM_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Runs reconciled at once. Unbounded (kube's default), a burst of 1,000 ScannerRuns ran
/// 1,000 reconciles at once, each with its own TLS connection to the API server: 101 MiB
/// of RSS and most of the operator's CPU in handshakes, while the API server, not the
/// operator, set the pace (bench/scale). kube-controller-manager's Job controller runs 5.
const RECONCILE_WORKERS: u16 = 16;

/// How often the serving certificate files are checked for changes.
const TLS_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `sanctum-operator webhook`: the webhook alone, until SIGTERM/SIGINT.
pub async fn webhook(args: WebhookArgs) -> Result<()> {
    let config = OperatorConfig::load(args.config.as_deref())?;
    let ca_file =
        config.webhook.ca_bundle_file.clone().or_else(|| Some(args.tls_cert_file.clone()));
    let tls =
        server::bind(args.listen, args.tls_cert_file, args.tls_key_file, TLS_RELOAD_EVERY).await?;
    let state = Arc::new(WebhookState::new(config, ca_file, None));
    tracing::info!(listen = %args.listen, "sanctum-operator webhook started (no token service: that needs `run`)");
    server::serve(tls, state, sanctum_common::proxy::server::shutdown_signal()).await;
    tracing::info!("sanctum-operator webhook stopped");
    Ok(())
}

struct Admin {
    ctx: Arc<Context>,
    watching: AtomicBool,
    webhook: Option<Arc<WebhookState>>,
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

    fn metrics(&self, out: &mut String) {
        self.ctx.metrics.render(out, self.ctx.revoked.len());
        if let Some(webhook) = &self.webhook {
            webhook.counters.render(out);
        }
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

/// Backoff of the controller's watches: 0.5 s doubling to at most 5 s, with jitter.
///
/// client-go's (and kube's default) 30 s cap is kind to a struggling API server, but after
/// an API server restart its fresh watch cache answers the first relists with 410 Gone a
/// few times, and a 30 s cap then leaves runs unwatched for over a minute. One operator
/// replica retrying every 5 s is cheap for the API server and keeps runs followed.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let base = 500u64.saturating_mul(1 << self.attempt.min(4)).min(5_000);
        self.attempt = self.attempt.saturating_add(1);
        // Up to 20 % jitter, so restarted replicas of anything do not retry in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = u64::from(nanos) % (base / 5 + 1);
        Some(std::time::Duration::from_millis(base + jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Brings the revoked list back after a start: the saved ConfigMap, then every ended or
/// deleting ScannerRun. Retried until it succeeds; the operator is not ready before.
async fn restore_revoked(ctx: &Context) {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match restore_once(ctx).await {
            Ok(n) => {
                ctx.revoked.mark_restored();
                tracing::info!(entries = n, "revoked list restored");
                return;
            }
            Err(error) => tracing::error!(
                %error,
                "cannot restore the revoked list; the operator needs get/patch on ConfigMap {} in its namespace and list on ScannerRuns",
                revoked::CONFIGMAP
            ),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

async fn restore_once(ctx: &Context) -> Result<usize> {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    if let Some(cm) = cms.get_opt(revoked::CONFIGMAP).await? {
        let saved = cm.data.unwrap_or_default().remove(revoked::CONFIGMAP_KEY).unwrap_or_default();
        if !saved.is_empty() {
            ctx.revoked.restore(&saved).map_err(anyhow::Error::msg)?;
        }
    }
    let runs: Api<ScannerRun> = Api::all(ctx.client.clone());
    for run in runs.list(&ListParams::default()).await? {
        if run.metadata.deletion_timestamp.is_some()
            || run.phase().is_some_and(crate::crd::Phase::is_terminal)
        {
            revoke(&run, ctx);
        }
    }
    Ok(ctx.revoked.len())
}

/// Saves the revoked list whenever entries were added (checked every second).
async fn save_revoked_loop(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Err(error) = save_revoked(&ctx).await {
            tracing::error!(%error, configmap = revoked::CONFIGMAP, "cannot save the revoked list; retrying");
        }
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let config = OperatorConfig::load(args.config.as_deref())?;
    let client = Client::try_default()
        .await
        .context("cannot reach Kubernetes: set KUBECONFIG or run in a pod with a ServiceAccount")?;

    let runs: Api<ScannerRun> = Api::all(client.clone());
    if let Err(error) = runs.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list ScannerRuns ({error}); install the CRD (kubectl apply -f crds/) and the operator's RBAC"
        );
    }

    let key_file = config.trat.signing_key_file.clone();
    let initial = match Signer::from_config(key_file.as_deref()) {
        Ok(signer) => {
            if signer.is_ephemeral() {
                tracing::warn!(
                    kid = signer.kid(),
                    "NO TraT SIGNING KEY CONFIGURED: using an ephemeral key; gateways cannot verify TraTs minted before a restart. Set trat.signingKeyFile."
                );
            }
            Some(signer)
        }
        Err(error) => {
            // Not fatal: runs fail with a condition saying so, and the key is retried.
            tracing::error!(%error, "cannot load the TraT signing key");
            None
        }
    };
    // The webhook and token service, when a serving certificate is configured.
    let cert = args.tls_cert_file.clone().or_else(|| config.webhook.tls_cert_file.clone());
    let key = args.tls_key_file.clone().or_else(|| config.webhook.tls_key_file.clone());
    let webhook = match (cert, key) {
        (Some(cert), Some(key)) => {
            let listen = match args.webhook_listen {
                Some(addr) => addr,
                None => config.webhook.listen.parse().context("webhook.listen")?,
            };
            let tls = server::bind(listen, cert.clone(), key, TLS_RELOAD_EVERY).await?;
            let ca_file = config.webhook.ca_bundle_file.clone().or(Some(cert));
            let signer = Arc::new(SignerSlot::new(key_file.clone(), initial.clone()));
            let tokens = TokenService::new(client.clone(), config.clone(), signer);
            let state = Arc::new(WebhookState::new(config.clone(), ca_file, Some(tokens)));
            tracing::info!(%listen, "webhook and token service listening");
            Some((tls, state))
        }
        _ => {
            tracing::info!("no webhook TLS certificate configured: webhook and token service off");
            None
        }
    };
    let reporter =
        Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        signer: SignerSlot::new(key_file, initial),
        recorder: Recorder::new(client.clone(), reporter),
        revoked: Arc::new(Revoked::default()),
        metrics: Arc::new(Metrics::default()),
        failures: Default::default(),
    });

    let admin_state = Arc::new(Admin {
        ctx: ctx.clone(),
        watching: AtomicBool::new(false),
        webhook: webhook.as_ref().map(|(_, s)| s.clone()),
    });
    let listener = admin::bind(args.admin_listen, "--admin-listen").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::serve(listener, admin_state.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let webhook_task = webhook.map(|(tls, state)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(server::serve(tls, state, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    tracing::info!(admin = %args.admin_listen, "sanctum-operator started");
    restore_revoked(&ctx).await;
    let saver = tokio::spawn(save_revoked_loop(ctx.clone()));

    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let controller = Controller::new(runs, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_WORKERS))
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned)
        .trigger_backoff(ResetTimerBackoff::new(
            WatchBackoff::default(),
            std::time::Duration::from_secs(60),
        ))
        .shutdown_on_signal();
    admin_state.watching.store(true, Ordering::Relaxed);
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(run = %obj.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        })
        .await;
    tracing::info!("controller stopped; shutting down");
    saver.abort();
    if let Err(error) = save_revoked(&admin_state.ctx).await {
        tracing::error!(%error, "cannot save the revoked list at shutdown");
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    if let Some(task) = webhook_task {
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_is_capped_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(8).map(|d| d.as_millis() as u64).collect();
        assert!((500..=600).contains(&delays[0]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 6_000), "{delays:?}");
        assert!(delays[7] >= 5_000, "{delays:?}");
        b.reset();
        assert!(b.next().unwrap().as_millis() <= 600);
    }
}
