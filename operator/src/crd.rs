//! The `ScannerRun` API (`sanctum.dev/v1alpha1`): one agent run against one repository.
//!
//! What can be checked at admission is in the schema as CEL rules, so that a bad object is
//! refused by the API server with a message instead of failing later in the controller:
//! - exactly one source (`git` or `volume`);
//! - positive timeouts and turn counts;
//! - the spec is immutable: a ScannerRun is the record of one run — its pod, token and
//!   network policy are built once from it, so an edit could only lie about what ran.
//!   To run again with other settings, create a new ScannerRun.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default `timeoutSeconds`: one hour.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sanctum.dev",
    version = "v1alpha1",
    kind = "ScannerRun",
    plural = "scannerruns",
    shortname = "sr",
    namespaced,
    status = "ScannerRunStatus",
    derive = "PartialEq",
    doc = "One run of an AI coding agent (Claude Code) against one repository, in a hardened pod that holds no credentials.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Findings", type_ = "string", json_path = ".status.findings"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 55").message("ScannerRun names are at most 55 characters: the name also names the run's pod, Secret and NetworkPolicy")
)]
#[schemars(transform = k8s_integer_formats)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a ScannerRun records one run; delete it and create a new ScannerRun to run again"))]
#[serde(rename_all = "camelCase")]
pub struct ScannerRunSpec {
    /// Scanner image: the container that runs the agent (for example an image with Claude Code).
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("image must be a non-empty image reference without spaces"))]
    pub image: String,
    /// Entrypoint override of the scanner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments of the scanner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment of the scanner container. `ANTHROPIC_API_KEY` and
    /// `ANTHROPIC_AUTH_TOKEN` are always replaced: the pod holds no provider key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Resources of the scanner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The repository to scan, mounted read-only at `/repo`.
    pub source: Source,
    /// Where results go (`/output`): a PersistentVolumeClaim, or an emptyDir when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// What the agent does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    /// Organisation the run bills to; selects the provider key at the gateway.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$')").message("orgId must be 1-63 lower-case letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub org_id: String,
    /// Deadline of the whole run (the pod's `activeDeadlineSeconds`). Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("timeoutSeconds must be a positive number of seconds"))]
    pub timeout_seconds: Option<i64>,
    /// How the scanner proves who it is to the gateway. Defaults from the operator config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Gateway endpoint override (URL); the operator config's gateway otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("gateway must be an http:// or https:// URL"))]
    pub gateway: Option<String>,
}

/// Exactly one of `git` or `volume`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.git) != has(self.volume)").message("source must set exactly one of git or volume"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Cloned by an init container into an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// An existing PersistentVolumeClaim holding the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL (https).
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("git.url must be an https:// (or http://) URL"))]
    pub url: String,
    /// Branch, tag or commit; the remote's default branch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    #[x_kube(validation = Rule::new("self.size() > 0").message("volume.claimName must not be empty"))]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("subPath must be a relative path without '..'"))]
    pub sub_path: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// PersistentVolumeClaim mounted at `/output`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("output.claimName must not be empty"))]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("subPath must be a relative path without '..'"))]
    pub sub_path: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Model name (`ANTHROPIC_MODEL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upper bound on agent turns (`SANCTUM_MAX_TURNS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("agent.maxTurns must be positive"))]
    pub max_turns: Option<i64>,
    /// The task (`SANCTUM_PROMPT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IdentitySource>,
    /// Audience of the JWT-SVID and the TraT (the gateway's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// SPIFFE trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9._-]+$')").message("trustDomain may hold lower-case letters, digits, '.', '_' and '-' only"))]
    pub trust_domain: Option<String>,
}

/// Where the scanner's JWT-SVID comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum IdentitySource {
    /// A SPIRE agent through the SPIFFE CSI driver; `fetch-jwt` keeps the JWT-SVID fresh.
    #[default]
    Spiffe,
    /// A projected, audience-bound, kubelet-rotated ServiceAccount token (no SPIRE needed).
    ServiceAccountToken,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(transform = k8s_integer_formats)]
#[serde(rename_all = "camelCase")]
pub struct ScannerRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What is happening, or what went wrong and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The scanner's summary, copied from its termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// Findings at a glance for `kubectl get` (`C0 H2 M1 L0 N0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<String>,
}

/// The run result contract: what the scanner writes to `/dev/termination-log`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub findings: Findings,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sarif: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Findings {
    #[serde(default)]
    pub critical: u32,
    #[serde(default)]
    pub high: u32,
    #[serde(default)]
    pub medium: u32,
    #[serde(default)]
    pub low: u32,
    #[serde(default)]
    pub note: u32,
}

impl Findings {
    pub fn summary(&self) -> String {
        format!("C{} H{} M{} L{} N{}", self.critical, self.high, self.medium, self.low, self.note)
    }
}

/// Maps schemars' unsigned integer formats to ones Kubernetes knows, in `schema` and every
/// schema inside it. A CRD schema follows OpenAPI 3.0, whose integer formats are `int32` and
/// `int64` only; since 1.34 the API server answers each other format with a warning
/// (`unrecognized format "uint32"`) on every apply. `uint8`/`uint16` become `int32` and
/// `uint32` becomes `int64` (each holds every value; schemars' `minimum: 0` stays); a wider
/// unsigned format, which no signed one holds, is dropped.
fn k8s_integer_formats(schema: &mut schemars::Schema) {
    if let Some(object) = schema.as_object_mut() {
        let format = object.get("format").and_then(|f| f.as_str());
        let mapped = match format {
            Some("uint8" | "uint16") => Some(Some("int32")),
            Some("uint32") => Some(Some("int64")),
            Some(f) if f.starts_with("uint") => Some(None),
            _ => None,
        };
        match mapped {
            Some(Some(signed)) => {
                object.insert("format".into(), signed.into());
            }
            Some(None) => {
                object.remove("format");
            }
            None => {}
        }
    }
    schemars::transform::transform_subschemas(&mut k8s_integer_formats, schema);
}

/// The CRD as YAML, as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(format!(
        "# Generated by `sanctum-operator crd` from operator/src/crd.rs: do not edit.\n{}",
        serde_yaml::to_string(&ScannerRun::crd())?
    ))
}

impl ScannerRun {
    /// The ScannerRun's own phase, `Pending` before the controller wrote any.
    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn timeout_seconds(&self) -> i64 {
        self.spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `format` in the CRD is one the API server knows (OpenAPI 3.0's, plus the string
    /// formats Kubernetes adds), so applying it prints no `unrecognized format` warning.
    #[test]
    fn the_crd_has_only_formats_kubernetes_knows() {
        let yaml = crd_yaml().unwrap();
        let known = ["int32", "int64", "float", "double", "byte", "date", "date-time"];
        let formats: Vec<&str> =
            yaml.lines().filter_map(|l| l.trim().strip_prefix("format: ")).collect();
        assert!(formats.contains(&"int64"), "{formats:?}");
        for format in formats {
            assert!(known.contains(&format), "unrecognized format {format}");
        }
    }

    #[test]
    fn unsigned_formats_become_signed_or_none() {
        let mut schema = schemars::json_schema!({
            "properties": {
                "a": {"type": "integer", "format": "uint16"},
                "b": {"type": "integer", "format": "uint32", "minimum": 0},
                "c": {"type": "integer", "format": "uint64"},
                "d": {"type": "integer", "format": "int32"},
            }
        });
        k8s_integer_formats(&mut schema);
        let p = &schema.as_value()["properties"];
        assert_eq!(p["a"]["format"], "int32");
        assert_eq!(p["b"], serde_json::json!({"type": "integer", "format": "int64", "minimum": 0}));
        assert_eq!(p["c"], serde_json::json!({"type": "integer"}));
        assert_eq!(p["d"]["format"], "int32");
    }
}
