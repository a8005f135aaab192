//! Sanctum's operator: the `ScannerRun` API, the pure builders of the objects a run needs
//! (pod, TraT Secret, NetworkPolicy), the injection shared with the admission webhook, and
//! the controller that drives runs and reports them.

pub mod config;
pub mod crd;
pub mod inject;
pub mod names;
pub mod plan;
pub mod tokens;
