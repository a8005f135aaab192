//! The admission decision, pure: an `AdmissionReview` in, an `AdmissionReview` (with a
//! JSONPatch when the pod is injected) out. The server around it only moves bytes.
//!
//! Who is injected:
//! - [`OptIn::Annotation`] (`/mutate`, `failurePolicy: Ignore`): pods annotated
//!   `sanctum.dev/inject: "true"`.
//! - [`OptIn::Namespace`] (`/mutate/namespace`, `failurePolicy: Fail`): every pod of a
//!   namespace labelled `sanctum.dev/injection=enabled` unless annotated `"false"`. The
//!   namespace label is matched by the MutatingWebhookConfiguration's `namespaceSelector`,
//!   so this server needs no API access to know it: the path says which entry called.
//!
//! Never in `kube-system` or the operator's own namespace; never twice (a pod marked
//! `sanctum.dev/status: injected` is left alone, so `reinvocationPolicy: IfNeeded` and
//! repeated passes change nothing).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde_json::{Value, json};
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::IdentitySource;
use crate::inject::{self, Agents, ConfigFile, IdentityMount, Injection, TratSource};
use crate::names::*;
use crate::webhook::patch;

/// Which webhook entry called: the rule that opts a pod in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// The pod must be annotated `sanctum.dev/inject: "true"`.
    Annotation,
    /// The pod's namespace is labelled `sanctum.dev/injection=enabled`: every pod unless
    /// annotated `"false"`.
    Namespace,
}

/// What the webhook adds besides the operator config: the token service's CA for
/// `fetch-trat` (read from a file that may rotate, so not part of the config).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub ca_bundle: Option<String>,
}

/// A body that is not an AdmissionReview: answered 400 with this message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BadReview {
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Parse(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Why a pod that asked for injection is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "Sanctum refuses to inject a pod with hostNetwork: true: its loopback LLM bridge would be open to every process on the node; remove hostNetwork or the sanctum.dev/inject annotation"
    )]
    HostNetwork,
    #[error("Sanctum cannot inject this pod: {0}")]
    Inject(#[from] inject::InjectError),
    #[error("Sanctum cannot inject this pod: annotation {annotation}: {message}")]
    Annotation { annotation: &'static str, message: String },
    #[error("Sanctum cannot read this pod: {0}")]
    Pod(String),
}

/// The outcome for one pod, before it is wrapped in a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed unchanged; the reason is for the log.
    Skip(&'static str),
    /// Allowed with this patch.
    Inject(json_patch::Patch),
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether the pod asked for injection under `opt_in`.
pub fn wants_injection(pod: &Pod, opt_in: OptIn) -> bool {
    let value = annotation(pod, ANNOTATION_INJECT).map(str::trim);
    match opt_in {
        OptIn::Annotation => value == Some("true"),
        OptIn::Namespace => value != Some("false"),
    }
}

/// The [`Injection`] of a pod: the operator's defaults with the pod's annotations on top.
pub fn injection_for<'a>(
    pod: &Pod,
    config: &'a OperatorConfig,
    settings: &Settings,
) -> Result<Injection<'a>, Refusal> {
    let agents = match annotation(pod, ANNOTATION_CONTAINERS) {
        None => Agents::All,
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(Refusal::Annotation {
                    annotation: ANNOTATION_CONTAINERS,
                    message: "name at least one container (a comma-separated list)".into(),
                });
            }
            Agents::Named(names)
        }
    };
    // Both tokens go to the gateway named here: only the operator's allow-list may be named.
    let gateway_url = match annotation(pod, ANNOTATION_GATEWAY).map(str::trim) {
        None => config.gateway.url.clone(),
        Some(url) => config
            .gateway
            .check_override("the URL", url)
            .map_err(|message| Refusal::Annotation { annotation: ANNOTATION_GATEWAY, message })?,
    };
    let model = annotation(pod, ANNOTATION_MODEL).map(str::trim).filter(|m| !m.is_empty());
    let trat = match annotation(pod, ANNOTATION_TRAT_SECRET).map(str::trim) {
        None => TratSource::TokenService {
            url: config.webhook.token_service_url.clone(),
            ca_bundle: settings.ca_bundle.clone(),
        },
        Some(value) => {
            // `name` or `name:key` (key defaults to the ScannerRun Secret's `trat.jwt`).
            let (name, key) = value.split_once(':').unwrap_or((value, SECRET_KEY_TRAT));
            if !valid_dns_subdomain(name) || key.is_empty() {
                return Err(Refusal::Annotation {
                    annotation: ANNOTATION_TRAT_SECRET,
                    message: format!(
                        "'{value}' must be a Secret name, optionally followed by ':key'"
                    ),
                });
            }
            TratSource::Secret { name: name.to_owned(), key: key.to_owned() }
        }
    };
    let identity = match config.identity.source {
        IdentitySource::ServiceAccountToken => IdentityMount::ServiceAccountToken {
            audience: config.identity.audience.clone(),
            expiration_seconds: config.identity.token_expiration_seconds,
        },
        IdentitySource::Spiffe => IdentityMount::Spiffe {
            helper_config: ConfigFile::ConfigMap {
                name: config.webhook.spiffe_helper_config_map.clone(),
                key: "helper.conf".into(),
            },
        },
    };
    let pod_resources = annotation(pod, ANNOTATION_SIDECAR_RESOURCES)
        .map(crate::resources::parse_annotation)
        .transpose()
        .map_err(|message| Refusal::Annotation {
            annotation: ANNOTATION_SIDECAR_RESOURCES,
            message,
        })?;
    let resources =
        crate::resources::effective(&config.pod.sidecar_resources, pod_resources.as_ref());
    Ok(Injection {
        config,
        identity,
        trat,
        gateway_url,
        agents,
        model: model.map(str::to_owned),
        resources,
    })
}

fn valid_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Injects `pod` in place and marks it. The same steps as the webhook, for `inject -f`.
pub fn inject_pod(
    pod: &mut Pod,
    config: &OperatorConfig,
    settings: &Settings,
) -> Result<(), Refusal> {
    let spec = pod.spec.as_mut().ok_or_else(|| Refusal::Pod("it has no spec".into()))?;
    if spec.host_network == Some(true) {
        return Err(Refusal::HostNetwork);
    }
    let snapshot = Pod { metadata: pod.metadata.clone(), spec: None, status: None };
    let injection = injection_for(&snapshot, config, settings)?;
    let spec = pod.spec.as_mut().ok_or_else(|| Refusal::Pod("it has no spec".into()))?;
    let removed = inject::inject(spec, &injection)?;
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(ANNOTATION_STATUS.into(), STATUS_INJECTED.into());
    // What injection took away (credentials, other provider routes), so the team sees it
    // on the pod: names only, never a value.
    if !removed.is_empty() {
        annotations.insert(ANNOTATION_REMOVED_ENV.into(), removed.join(", "));
    }
    Ok(())
}

/// Whether the pod is one Sanctum must never touch or has already injected.
pub fn skip_reason(pod: &Pod, namespace: &str, config: &OperatorConfig) -> Option<&'static str> {
    if namespace == "kube-system" {
        return Some("kube-system is never injected");
    }
    if namespace == config.namespace {
        return Some("the operator's own namespace is never injected");
    }
    if annotation(pod, ANNOTATION_STATUS) == Some(STATUS_INJECTED) {
        return Some("already injected");
    }
    None
}

/// The pod of `raw` (a Pod or a pod template as JSON) in the typed form injection reads.
/// Fields the typed form does not know are ignored here and kept by the patch.
pub fn typed_pod(raw: &Value) -> Result<Pod, Refusal> {
    serde_path_to_error::deserialize(raw)
        .map_err(|e| Refusal::Pod(format!("{}: {}", e.path(), e.inner())))
}

/// The decision for one Pod CREATE. `raw` is the pod exactly as the API server sent it
/// (`request.object`); the patch is built against it (see [`crate::webhook::patch`]), so a
/// field this build's Kubernetes types do not know reaches the pod unchanged. `namespace`
/// empty means the pod's own `metadata.namespace`.
pub fn decide(
    raw: &Value,
    namespace: &str,
    opt_in: OptIn,
    config: &OperatorConfig,
    settings: &Settings,
) -> Result<Verdict, Refusal> {
    let pod = typed_pod(raw)?;
    let namespace = match namespace {
        "" => pod.metadata.namespace.as_deref().unwrap_or_default(),
        ns => ns,
    };
    if let Some(reason) = skip_reason(&pod, namespace, config) {
        return Ok(Verdict::Skip(reason));
    }
    if !wants_injection(&pod, opt_in) {
        return Ok(Verdict::Skip("not opted in"));
    }
    let mut injected = pod.clone();
    inject_pod(&mut injected, config, settings)?;
    let typed = |p: &Pod| serde_json::to_value(p).map_err(|e| Refusal::Pod(e.to_string()));
    let after = patch::overlay(raw, &typed(&pod)?, &typed(&injected)?);
    Ok(Verdict::Inject(patch::pod_patch(raw, &after)))
}

/// The `response` of an AdmissionReview. Built here rather than with kube's type, whose
/// `patch` would serialize as an array of numbers; the API server wants base64.
fn response(
    uid: &str,
    allowed: bool,
    patch: Option<&json_patch::Patch>,
    denial: Option<&str>,
) -> Value {
    let mut r = json!({"uid": uid, "allowed": allowed});
    if let Some(patch) = patch {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if let Some(message) = denial {
        r["status"] = json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

/// What the server should answer.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back.
    pub review: Value,
    /// For the log: what was decided, and about which pod (never its content).
    pub outcome: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: Option<String>,
}

fn is_pod(req: &AdmissionRequest<DynamicObject>) -> bool {
    req.kind.group.is_empty()
        && req.kind.version == "v1"
        && req.kind.kind == "Pod"
        && req.sub_resource.as_deref().unwrap_or("").is_empty()
}

/// Handles one AdmissionReview body. `Err` only for a body that is not a review at all.
pub fn review(
    body: &[u8],
    opt_in: OptIn,
    config: &OperatorConfig,
    settings: &Settings,
) -> Result<Answer, BadReview> {
    let body: Value = serde_json::from_slice(body).map_err(|e| BadReview::Parse(e.to_string()))?;
    // The pod is read from the raw body: kube's DynamicObject would re-serialize its
    // metadata through typed fields and drop what they do not know.
    let raw_object = body.pointer("/request/object").cloned();
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(body).map_err(|e| BadReview::Parse(e.to_string()))?;
    let req: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    let uid = req.uid.clone();
    let namespace = req.namespace.clone().unwrap_or_default();
    let answer = |outcome, review, message| Answer {
        review,
        outcome,
        namespace: namespace.clone(),
        name: req.name.clone(),
        message,
    };
    let allow = || response(&uid, true, None, None);
    let deny = |message: &str| response(&uid, false, None, Some(message));
    // Anything but a Pod CREATE is not ours to judge: allow it untouched.
    if !is_pod(&req) || req.operation != Operation::Create {
        return Ok(answer("ignored", allow(), None));
    }
    let Some(object) = raw_object.filter(Value::is_object) else {
        return Ok(answer("ignored", allow(), None));
    };
    // A dry run gets the same answer: the decision has no side effects to skip.
    Ok(match decide(&object, &namespace, opt_in, config, settings) {
        Ok(Verdict::Skip(reason)) => answer("skipped", allow(), Some(reason.to_owned())),
        Ok(Verdict::Inject(patch)) => {
            answer("injected", response(&uid, true, Some(&patch), None), None)
        }
        Err(refusal) => {
            let message = refusal.to_string();
            answer("refused", deny(&message), Some(message))
        }
    })
}
