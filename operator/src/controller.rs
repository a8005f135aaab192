//! `sanctum-operator run`: the controller and the admin port, in one process, shut down
//! together on SIGTERM.

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
use crate::reconcile::{Context, SignerSlot, error_policy, now_secs, reconcile};
use crate::revoked::Revoked;
use crate::tokens::Signer;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Operator config file (YAML).
    #[arg(long, env = "SANCTUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin address: /healthz, /readyz, /metrics, /.well-known/jwks.json, /revoked.
    #[arg(long, env = "SANCTUM_ADMIN_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::OPERATOR_ADMIN_PORT)))]
    pub admin_listen: SocketAddr,
}

struct Admin {
    ctx: Arc<Context>,
    watching: AtomicBool,
}

impl AdminState for Admin {
    async fn ready(&self) -> Result<(), String> {
        if !self.watching.load(Ordering::Relaxed) {
            return Err("the controller has not started watching ScannerRuns yet".into());
        }
        if self.ctx.signer.loaded().is_none() {
            return Err("the TraT signing key is not loaded; check trat.signingKeyFile".into());
        }
        Ok(())
    }

    fn metrics(&self, out: &mut String) {
        self.ctx.metrics.render(out, self.ctx.revoked.len());
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

    let admin_state = Arc::new(Admin { ctx: ctx.clone(), watching: AtomicBool::new(false) });
    let listener = admin::bind(args.admin_listen, "--admin-listen").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let mut stop = stop_rx.clone();
        tokio::spawn(admin::serve(listener, admin_state.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    tracing::info!(admin = %args.admin_listen, "sanctum-operator started");

    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let controller = Controller::new(runs, watcher::Config::default().any_semantic())
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
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
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
