//! The ScannerRun reconciler: create the run's objects once, then follow its pod and report
//! phase, conditions, result and Events. Decisions are pure functions (the run's plan once
//! per pass, [`crate::objects`], the status transitions of [`crate::status`]); [`reconcile`]
//! is the thin shell that reads and writes the API.
//!
//! Choices worth knowing:
//! - Objects are created once. The pod and the NetworkPolicy go through server-side apply
//!   with the operator's field manager; the Secret is created (never re-minted), so the TraT
//!   a pod copied stays the one the run's Secret holds.
//! - A run never leaves a terminal phase, and its `txn` is revoked when it gets there; the
//!   finalizer `sanctum.dev/revoke` goes once the revoked list holding that `txn` is saved.
//! - A pod deleted from under a run that has not finished fails the run (`PodDeleted`)
//!   instead of starting it again: a second agent run costs money and may repeat side
//!   effects, so re-running is the user's decision (create a new ScannerRun).
//! - An object the API server refuses ends the run `Failed` (`Rejected`), or for a quota
//!   used up right now leaves it `Pending` with `Provisioned=False`/`QuotaExceeded` and
//!   tries again after 5 s to 5 min ([`crate::refusal`]); either way one Event quotes the
//!   server. The NetworkPolicy is applied only when the server does not hold it already
//!   ([`crate::stored`]), so a retry writes nothing and wakes nothing.
//! - A run in a namespace Sanctum never injects (`kube-system`, the operator's own) or in the
//!   gateway's, which holds the provider keys, fails (`NamespaceNotAllowed`) before anything
//!   is created for it ([`crate::tenancy::refuse_run_namespace`]).
//! - A spec that cannot be built fails the run with a condition and an Event, and is not
//!   retried: only a new ScannerRun can fix it (the spec is immutable).
//! - The run's Secret is used only if this run created it: right after the create succeeds
//!   the status records it (`SecretCreated`), and a create answered 409 without that record
//!   means someone else's Secret sits under the run's name, so the run fails
//!   (`SecretConflict`) before any pod could mount it. (Crashing between the create and the
//!   record fails the run the same way: safe, and rare.) Tenants cannot write the status:
//!   it is a subresource the operator alone is granted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::{Phase, ScannerRun, ScannerRunStatus};
use crate::metrics::Metrics;
use crate::names::MANAGER;
use crate::objects::{BuildError, build_planned};
use crate::plan::RunPlan;
use crate::refusal::Refused;
use crate::revoked::{self, Revoked};
use crate::status::{
    self, conflict, created_its_secret, failed_to_build, pod_deleted, provisioned, secret_created,
    waiting,
};
use crate::tokens::SignerSlot;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("ScannerRun has no {0}")]
    Metadata(&'static str),
}

/// What every reconcile shares: the API client, the config, the process's one signing key
/// holder (shared with the token service), the revoked list, metrics and the per-run
/// failure counts of the controller's error policy.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub signer: Arc<SignerSlot>,
    pub recorder: Recorder,
    pub revoked: Arc<Revoked>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per run, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

pub use sanctum_common::time::now_unix as now_secs;

async fn publish(ctx: &Context, run: &ScannerRun, warning: bool, reason: &str, note: &str) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &run.object_ref(&())).await {
        // Events are best effort: a lost Event must not fail the run.
        tracing::warn!(%error, run = %run.name_any(), "cannot publish Event");
    }
}

/// Writes the run's status (server-side apply), only if the run is still the version
/// `run` was read at: a status folded from a stale cached copy (the controller's cache lags
/// its own writes under a burst of runs) would otherwise remove what a later pass wrote
/// (`Provisioned`, `podName`). A stale copy gets 409 Conflict, see [`stale_read`]. Returns
/// the run's new `resourceVersion`.
async fn write_status(
    api: &Api<ScannerRun>,
    run: &ScannerRun,
    status: &ScannerRunStatus,
) -> Result<Option<String>, Error> {
    let patch = json!({"apiVersion": "sanctum.dev/v1alpha1", "kind": "ScannerRun",
        "metadata": {"resourceVersion": run.resource_version()}, "status": status});
    let written = api
        .patch_status(&run.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch))
        .await?;
    Ok(written.metadata.resource_version)
}

/// Writes the revoked list to its ConfigMap (server-side apply), if anything was added.
pub async fn save_revoked(ctx: &Context) -> Result<(), Error> {
    // One save at a time: a list built earlier must never overwrite a newer one.
    let _one = ctx.revoked.save_lock.lock().await;
    let Some(change) = ctx.revoked.unsaved() else { return Ok(()) };
    let namespace = &ctx.config.namespace;
    let cm = ctx.revoked.to_configmap(namespace, now_secs());
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let apply = PatchParams::apply(MANAGER).force();
    cms.patch(revoked::CONFIGMAP, &apply, &Patch::Apply(&cm)).await?;
    ctx.revoked.mark_saved(change);
    Ok(())
}

/// How long a finished run waits for the save loop (one write a second at most) to put its
/// `txn` into the ConfigMap before its finalizer can go.
const SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn has_finalizer(run: &ScannerRun) -> bool {
    run.finalizers().iter().any(|f| f == revoked::FINALIZER)
}

/// Sets the run's finalizers to `finalizers`, only if the run is still the version read
/// (`resourceVersion`), so another controller's finalizer is never lost.
async fn set_finalizers(
    runs: &Api<ScannerRun>,
    run: &ScannerRun,
    finalizers: Vec<String>,
) -> Result<Option<String>, Error> {
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": run.resource_version()}});
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let written = runs.patch(&run.name_any(), &params, &Patch::Merge(&patch)).await?;
    Ok(written.metadata.resource_version)
}

/// Removes our finalizer (and only ours, conditional on the run's `resourceVersion`) once the
/// run's `txn`, revoked by the caller, is in the saved ConfigMap; until then, looks again
/// after [`SAVE_WAIT`]. Saved first: once the finalizer is gone, nothing would bring the txn
/// back to the list after a restart. The save loop writes the list within a second for all
/// runs that ended or were deleted meanwhile: a thousand at once cost a few writes, not a
/// thousand.
async fn release_when_saved(
    ctx: &Context,
    runs: &Api<ScannerRun>,
    run: &ScannerRun,
) -> Result<Action, Error> {
    if has_finalizer(run) {
        if !run.metadata.uid.as_deref().is_none_or(|txn| ctx.revoked.is_saved(txn)) {
            return Ok(Action::requeue(SAVE_WAIT));
        }
        set_finalizers(runs, run, without_ours(run)).await?;
    }
    Ok(Action::await_change())
}

/// The run's finalizers without ours (another controller's are kept).
fn without_ours(run: &ScannerRun) -> Vec<String> {
    run.finalizers().iter().filter(|f| *f != revoked::FINALIZER).cloned().collect()
}

/// Revokes the run's `txn` (its UID) until its TraT would have expired anyway.
pub(crate) fn revoke(run: &ScannerRun, ctx: &Context) {
    let Some(uid) = run.metadata.uid.as_deref() else { return };
    let created = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(now_secs, |t| u64::try_from(t.0.as_second()).unwrap_or(0));
    let lifetime =
        u64::try_from(run.timeout_seconds().saturating_add(ctx.config.trat.expiry_margin_seconds))
            .unwrap_or(0);
    // The TraT is minted after creation; a day of slack keeps the entry until it is dead.
    if ctx.revoked.revoke(uid, created.saturating_add(lifetime).saturating_add(86_400)) {
        tracing::info!(run = %run.name_any(), txn = uid, "revoked the run's transaction token");
    }
}

/// How soon a run whose write was refused with 409 Conflict is looked at again.
pub const STALE_RETRY: Duration = Duration::from_secs(1);

/// A 409 Conflict means the run this pass read was older than the server's (the only
/// precondition the reconciler sends is the run's `resourceVersion`, with its finalizers):
/// the controller's cache had not caught up with our own earlier writes, which happens
/// under a burst of runs. Nothing failed: the newer version's watch event reconciles the
/// run again, and a short requeue covers a missed one. Without this, every stale read went
/// through the error backoff (1 s, 2 s, 4 s, … per run), which at 1,000 runs in a burst
/// added tens of seconds to the last runs (bench/scale).
pub fn stale_read(error: &Error) -> Option<Action> {
    match error {
        Error::Kube(kube::Error::Api(e)) if e.code == 409 => Some(Action::requeue(STALE_RETRY)),
        _ => None,
    }
}

pub async fn reconcile(run: Arc<ScannerRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match reconcile_inner(&run, &ctx).await {
        Err(error) => match stale_read(&error) {
            Some(action) => {
                tracing::debug!(run = %key(&run), "read a stale copy of the run; looking again");
                Ok(action)
            }
            None => Err(error),
        },
        ok => ok,
    };
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(&run));
    }
    result
}

/// `namespace/name` of a run: its key in [`Context::failures`].
pub(crate) fn key(run: &ScannerRun) -> String {
    format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any())
}

async fn reconcile_inner(run: &ScannerRun, ctx: &Context) -> Result<Action, Error> {
    let name = run.metadata.name.clone().ok_or(Error::Metadata("name"))?;
    let namespace = run.metadata.namespace.clone().ok_or(Error::Metadata("namespace"))?;
    let runs: Api<ScannerRun> = Api::namespaced(ctx.client.clone(), &namespace);
    if run.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the pod, Secret and policy.
        revoke(run, ctx);
        return release_when_saved(ctx, &runs, run).await;
    }
    if run.phase().is_some_and(Phase::is_terminal) {
        revoke(run, ctx);
        // A finished run holds nothing more to save once its txn is in the ConfigMap; kept,
        // the finalizer would block the run's deletion (and its namespace's) whenever the
        // operator is gone, e.g. after `helm uninstall`.
        return release_when_saved(ctx, &runs, run).await;
    }
    // Before the finalizer and the token: nothing is created for a run refused here.
    if let Some(message) = crate::tenancy::refuse_run_namespace(&namespace, &ctx.config) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let reason = crate::tenancy::NAMESPACE_NOT_ALLOWED;
        return fail_conflict(run, ctx, &runs, &name, reason, &message, &now).await;
    }
    let with_finalizer;
    let run = if has_finalizer(run) {
        run
    } else {
        let mut all = run.finalizers().to_vec();
        all.push(revoked::FINALIZER.into());
        let mut updated = run.clone();
        updated.metadata.resource_version = set_finalizers(&runs, run, all.clone()).await?;
        updated.metadata.finalizers = Some(all);
        // The status writes below are conditional on the version this patch made.
        with_finalizer = updated;
        &with_finalizer
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    let plan = match RunPlan::new(run, &ctx.config) {
        Ok(plan) => plan,
        Err(e) => return fail_build(run, ctx, &runs, &name, BuildError::Plan(e), &now).await,
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods.get_opt(&plan.pod_name).await?;

    let Some(pod) = pod else {
        if let Some(pod_name) = run.status.as_ref().and_then(|s| s.pod_name.clone()) {
            let status = pod_deleted(run, &pod_name, &now);
            write_status(&runs, run, &status).await?;
            ctx.metrics.transition("Failed", "PodDeleted");
            publish(ctx, run, true, "PodDeleted", status.message.as_deref().unwrap_or_default())
                .await;
            revoke(run, ctx);
            return Ok(Action::await_change());
        }
        return create(run, ctx, &runs, &name, &plan, &now).await;
    };

    let ours = pod
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == run.metadata.uid.as_ref() && o.controller == Some(true));
    if !ours {
        let error = format!(
            "pod {} exists and is not owned by this ScannerRun; delete that pod or create the run under another name",
            plan.pod_name
        );
        return fail_conflict(run, ctx, &runs, &name, "PodConflict", &error, &now).await;
    }

    let step = status::step(run, status::observe(&pod), &now);
    if step.changed {
        write_status(&runs, run, &step.status).await?;
    }
    if let Some(entered) = &step.entered {
        let phase = entered.phase;
        ctx.metrics.transition(&format!("{phase:?}"), &entered.reason);
        publish(ctx, run, phase == Phase::Failed, &entered.reason, &entered.message).await;
        if let Some(cond) = &entered.result_missing {
            publish(ctx, run, true, &cond.reason, &cond.message).await;
        }
    }
    if step.terminal {
        revoke(run, ctx);
    }
    Ok(Action::await_change())
}

async fn fail_conflict(
    run: &ScannerRun,
    ctx: &Context,
    runs: &Api<ScannerRun>,
    name: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> Result<Action, Error> {
    tracing::warn!(run = name, reason, message, "ScannerRun cannot be provisioned");
    write_status(runs, run, &conflict(run, reason, message, now)).await?;
    ctx.metrics.transition("Failed", reason);
    publish(ctx, run, true, reason, message).await;
    Ok(Action::await_change())
}

async fn fail_build(
    run: &ScannerRun,
    ctx: &Context,
    runs: &Api<ScannerRun>,
    name: &str,
    error: BuildError,
    now: &Time,
) -> Result<Action, Error> {
    tracing::warn!(run = name, reason = error.reason(), %error, "ScannerRun cannot be built");
    let status = failed_to_build(run, &error, now);
    write_status(runs, run, &status).await?;
    ctx.metrics.transition("Failed", error.reason());
    publish(ctx, run, true, error.reason(), &error.to_string()).await;
    Ok(Action::await_change())
}

/// How long a waiting run waits before the next try: as long as it has been waiting
/// (`since`, the condition's lastTransitionTime), so the pace halves with each try,
/// between 5 s and 5 min.
pub fn retry_delay(since: &Time, now: &Time) -> Duration {
    let waited = now.0.as_second().saturating_sub(since.0.as_second());
    Duration::from_secs(u64::try_from(waited).unwrap_or(0).clamp(5, 300))
}

/// Ends the run or lets it wait after the API server refused `what`; errors that are not
/// the run's (the operator's RBAC, transient ones) go back to the controller's backoff.
async fn refused(
    run: &ScannerRun,
    ctx: &Context,
    runs: &Api<ScannerRun>,
    name: &str,
    what: &str,
    error: kube::Error,
    now: &Time,
) -> Result<Action, Error> {
    match crate::refusal::classify(what, &error) {
        Some(Refused::Fail { reason, message }) => {
            fail_conflict(run, ctx, runs, name, reason, &message, now).await
        }
        Some(Refused::Wait { reason, message }) => {
            let old = run.status.clone().unwrap_or_default();
            let status = waiting(run, reason, &message, now);
            let first = status::first_wait(&old, reason);
            if status != old {
                write_status(runs, run, &status).await?;
            }
            if first {
                tracing::warn!(run = name, reason, message, "ScannerRun waits");
                ctx.metrics.transition("Pending", reason);
                publish(ctx, run, true, reason, &message).await;
            }
            Ok(Action::requeue(retry_delay(status::waiting_since(&status, now), now)))
        }
        Some(Refused::Operator) | None => Err(error.into()),
    }
}

async fn create(
    run: &ScannerRun,
    ctx: &Context,
    runs: &Api<ScannerRun>,
    name: &str,
    plan: &RunPlan,
    now: &Time,
) -> Result<Action, Error> {
    let signer = match ctx.signer.get() {
        Ok(signer) => signer,
        Err(e) => return fail_build(run, ctx, runs, name, BuildError::Token(e), now).await,
    };
    let objects = match build_planned(run, plan, &ctx.config, &signer, now_secs()) {
        Ok(objects) => objects,
        Err(e) => return fail_build(run, ctx, runs, name, e, now).await,
    };
    let apply = PatchParams::apply(MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &plan.namespace);
    let create = PostParams { dry_run: false, field_manager: Some(MANAGER.into()) };
    let mut run = run.clone();
    match secrets.create(&create, &objects.secret).await {
        Ok(_) => {
            let status = secret_created(&run, plan, now);
            let version = write_status(runs, &run, &status).await?;
            run.status = Some(status);
            run.metadata.resource_version = version;
        }
        // Created by an earlier pass that failed later: keep the token it holds.
        Err(kube::Error::Api(e)) if e.code == 409 && created_its_secret(&run) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let message = format!(
                "a Secret {} exists that this run did not create; delete it or rename the run",
                plan.secret_name
            );
            return fail_conflict(&run, ctx, runs, name, "SecretConflict", &message, now).await;
        }
        Err(e) => {
            let what = format!("Secret {}", plan.secret_name);
            return refused(&run, ctx, runs, name, &what, e, now).await;
        }
    }
    let run = &run;
    // The policy before the pod, so the pod never runs unfenced; written only when the
    // server does not hold it already, so a retry writes nothing (and wakes nothing).
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &plan.namespace);
    let desired = serde_json::to_value(&objects.network_policy).unwrap_or_default();
    let stored = policies.get_opt(&plan.network_policy_name).await?;
    let stored = stored.map(|p| serde_json::to_value(&p).unwrap_or_default());
    if !stored.is_some_and(|s| crate::stored::holds(&s, &desired)) {
        let what = format!("NetworkPolicy {}", plan.network_policy_name);
        let policy = Patch::Apply(&objects.network_policy);
        if let Err(e) = policies.patch(&plan.network_policy_name, &apply, &policy).await {
            return refused(run, ctx, runs, name, &what, e, now).await;
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &plan.namespace);
    if let Err(e) = pods.patch(&plan.pod_name, &apply, &Patch::Apply(&objects.pod)).await {
        let what = format!("pod {}", plan.pod_name);
        return refused(run, ctx, runs, name, &what, e, now).await;
    }

    let status = provisioned(run, plan, now);
    write_status(runs, run, &status).await?;
    ctx.metrics.transition("Pending", "Created");
    publish(ctx, run, false, "Created", status.message.as_deref().unwrap_or_default()).await;
    tracing::info!(run = name, namespace = %plan.namespace, pod = %plan.pod_name, "created the run's objects");
    Ok(Action::await_change())
}

#[cfg(test)]
mod stale_read_tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> Error {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "message": "m", "reason": reason, "code": code
        }))
        .unwrap_or_default();
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn a_conflict_is_a_short_requeue_not_a_failure() {
        assert_eq!(stale_read(&api_error(409, "Conflict")), Some(Action::requeue(STALE_RETRY)));
        for other in [api_error(403, "Forbidden"), api_error(500, "InternalError")] {
            assert_eq!(stale_read(&other), None);
        }
        assert_eq!(stale_read(&Error::Metadata("name")), None);
    }
}
