//! The ScannerRun Controller wiring: what it watches (ScannerRuns, and the pods and
//! NetworkPolicies it owns), how many runs it reconciles at once, how its watches back off,
//! the error policy of a failed reconcile, and the reconcile hook ([`crate::reconcile`]).
//! The process around it (clients, token service, webhook, admin port) is [`crate::serve`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{Controller, watcher};

use crate::crd::ScannerRun;
use crate::names::{LABEL_MANAGED_BY, MANAGER};
use crate::reconcile::{Context, Error, key, reconcile};

/// Runs reconciled at once. Unbounded (kube's default), a burst of 1,000 ScannerRuns ran
/// 1,000 reconciles at once, each with its own TLS connection to the API server: 101 MiB
/// of RSS and most of the operator's CPU in handshakes, while the API server, not the
/// operator, set the pace (bench/scale). kube-controller-manager's Job controller runs 5.
const RECONCILE_WORKERS: u16 = 16;

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
    type Item = Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let base = 500u64.saturating_mul(1 << self.attempt.min(4)).min(5_000);
        self.attempt = self.attempt.saturating_add(1);
        // Up to 20 % jitter, so restarted replicas of anything do not retry in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = u64::from(nanos) % (base / 5 + 1);
        Some(Duration::from_millis(base + jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Retries with exponential backoff (1 s, 2 s, … up to 5 min) per run: an API outage is
/// ridden out without a hot loop. A successful reconcile resets the run's count.
pub fn error_policy(run: Arc<ScannerRun>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key(&run)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(run = %key(&run), %error, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// The controller: every ScannerRun, and the pods and NetworkPolicies labelled as the
/// operator's (their owner reference maps them to their run). Watches nothing until
/// [`run`]; stops on SIGTERM/SIGINT.
pub fn controller(client: &Client) -> Controller<ScannerRun> {
    let runs: Api<ScannerRun> = Api::all(client.clone());
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(runs, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_WORKERS))
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned)
        .trigger_backoff(ResetTimerBackoff::new(WatchBackoff::default(), Duration::from_secs(60)))
        .shutdown_on_signal()
}

/// Drives `controller` with [`reconcile`] and [`error_policy`] until it shuts down.
pub async fn run(controller: Controller<ScannerRun>, ctx: Arc<Context>) {
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(run = %obj.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile error"),
            }
        })
        .await;
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
