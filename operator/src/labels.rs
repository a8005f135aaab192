//! The labels and owner metadata of every object the operator creates for a run (pod,
//! Secret, NetworkPolicy): one place, so the builders agree and the controller's
//! `managed-by` watch selector finds them all.

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::ObjectMeta;

use crate::crd::ScannerRun;
use crate::names::{
    LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, LABEL_PART_OF, LABEL_RUN,
    MANAGER,
};
use crate::plan::RunPlan;

/// Labels on everything the operator creates for a run; `component` says which object it is
/// (`scanner`, `trat`, `network-policy`).
pub fn labels(plan: &RunPlan, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.into(), "sanctum-scanner".into()),
        (LABEL_INSTANCE.into(), plan.name.clone()),
        (LABEL_COMPONENT.into(), component.into()),
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        (LABEL_PART_OF.into(), "sanctum".into()),
        (LABEL_RUN.into(), plan.name.clone()),
    ])
}

/// Metadata of an object named `name` in the run's namespace, owned (and
/// garbage-collected) with the run: [`labels`] and the run as controller owner.
pub fn owned_meta(run: &ScannerRun, plan: &RunPlan, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan, component)),
        owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The label that selects a run's pod (the NetworkPolicy's `podSelector`).
pub fn run_selector(plan: &RunPlan) -> (&'static str, &str) {
    (LABEL_RUN, &plan.name)
}
