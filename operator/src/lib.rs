//! Sanctum's operator: the `ScannerRun` API, the pure builders of the objects a run needs
//! (pod, TraT Secret, NetworkPolicy), the injection shared with the admission webhook, and
//! the controller that drives runs and reports them.

pub mod admin;
pub mod config;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod labels;
pub mod metrics;
pub mod names;
pub mod netpol;
pub mod objects;
pub mod plan;
pub mod pod;
pub mod reconcile;
pub mod refusal;
pub mod render;
pub mod resources;
pub mod revoked;
pub mod seccomp;
pub mod serve;
pub mod status;
pub mod stored;
pub mod tenancy;
pub mod token_service;
pub mod tokens;
pub mod webhook;
