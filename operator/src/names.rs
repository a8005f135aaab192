//! Names, labels and annotations shared by everything Sanctum creates or injects.

pub const GROUP: &str = "sanctum.dev";
pub const MANAGER: &str = "sanctum-operator";

// Annotations and labels of the design contract.
pub const ANNOTATION_INJECT: &str = "sanctum.dev/inject";
pub const ANNOTATION_STATUS: &str = "sanctum.dev/status";
pub const STATUS_INJECTED: &str = "injected";
/// What injection removed from agent containers, `<container>: <variable>, …` (names only):
/// credentials and routes to other providers (issue 13 item 5).
pub const ANNOTATION_REMOVED_ENV: &str = "sanctum.dev/removed-env";
pub const ANNOTATION_CONTAINERS: &str = "sanctum.dev/containers";
pub const ANNOTATION_GATEWAY: &str = "sanctum.dev/gateway";
pub const ANNOTATION_MODEL: &str = "sanctum.dev/model";
pub const ANNOTATION_TRAT_SECRET: &str = "sanctum.dev/trat-secret";
/// Requests and limits of the injected containers for one pod, over the operator config's
/// `pod.sidecarResources` (issue 13 item 8; shape in `crate::resources`).
pub const ANNOTATION_SIDECAR_RESOURCES: &str = "sanctum.dev/sidecar-resources";
/// `"true"` keeps the Kubernetes API token mount in injected agent containers (issue 12
/// item 5); without it injection removes that mount.
pub const ANNOTATION_ALLOW_API_TOKEN: &str = "sanctum.dev/allow-api-token";
pub const NAMESPACE_LABEL_INJECTION: &str = "sanctum.dev/injection";
pub const LABEL_RUN: &str = "sanctum.dev/run";
/// The run's UID: SPIRE registration templates build the SPIFFE ID from it.
pub const LABEL_RUN_ID: &str = "sanctum.dev/run-id";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";

// Injected containers and volumes: names a user's pod may not already use.
pub const CONTAINER_FETCH_JWT: &str = "fetch-jwt";
pub const CONTAINER_WRITE_TRAT: &str = "write-trat";
pub const CONTAINER_BRIDGE: &str = "sanctum-bridge";
pub const CONTAINER_FORWARDER: &str = "sanctum-forwarder";
pub const VOLUME_SAGE: &str = "sanctum-sage";
pub const VOLUME_SPIFFE: &str = "sanctum-spiffe";
pub const VOLUME_SPIRE_AGENT: &str = "sanctum-spire-agent";
pub const VOLUME_RUN_SECRET: &str = "sanctum-run-secret";

/// Keys of the per-run Secret.
pub const SECRET_KEY_TRAT: &str = "trat.jwt";
pub const SECRET_KEY_HELPER_CONF: &str = "spiffe-helper.conf";

/// Longest ScannerRun name: `<name>-scanner` must fit a 63-character label value.
pub const MAX_RUN_NAME: usize = 55;

pub fn pod(run: &str) -> String {
    format!("{run}-scanner")
}

pub fn secret(run: &str) -> String {
    format!("{run}-sanctum")
}

pub fn network_policy(run: &str) -> String {
    format!("{run}-scanner")
}
