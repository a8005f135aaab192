//! The operator process: `sanctum-operator run` builds the Kubernetes client, loads the one
//! signing key holder, starts the admin port, the webhook with the token service (when a
//! TLS certificate is configured), restores and keeps saving the revoked list, runs the
//! [`crate::controller`], and shuts all of it down together on SIGTERM.
//! `sanctum-operator webhook` serves the webhook alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use sanctum_common::admin;
use sanctum_common::defaults;

use crate::admin::Admin;
use crate::config::OperatorConfig;
use crate::controller;
use crate::crd::ScannerRun;
use crate::metrics::Metrics;
use crate::names::MANAGER;
use crate::reconcile::{Context, revoke, save_revoked};
use crate::revoked::{self, Revoked};
use crate::token_service::TokenService;
use crate::tokens::{Signer, SignerSlot};
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

/// The process's one signing key holder, with the configured key loaded if it can be. A key
/// that cannot be loaded yet is not fatal: runs fail with a condition saying so, and the
/// holder tries the file again on each use.
fn signing_key(config: &OperatorConfig) -> Arc<SignerSlot> {
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
            tracing::error!(%error, "cannot load the TraT signing key");
            None
        }
    };
    Arc::new(SignerSlot::new(key_file, initial))
}

/// `sanctum-operator run`: everything in one process, until SIGTERM/SIGINT.
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

    let signer = signing_key(&config);
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
            let tokens = TokenService::new(client.clone(), config.clone(), signer.clone());
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
        signer,
        recorder: Recorder::new(client.clone(), reporter),
        revoked: Arc::new(Revoked::default()),
        metrics: Arc::new(Metrics::default()),
        failures: Default::default(),
    });

    let admin_state = Arc::new(Admin::new(ctx.clone(), webhook.as_ref().map(|(_, s)| s.clone())));
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

    let watcher = controller::controller(&client);
    admin_state.set_watching();
    controller::run(watcher, ctx.clone()).await;
    tracing::info!("controller stopped; shutting down");
    saver.abort();
    if let Err(error) = save_revoked(&ctx).await {
        tracing::error!(%error, "cannot save the revoked list at shutdown");
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    if let Some(task) = webhook_task {
        let _ = task.await;
    }
    Ok(())
}
