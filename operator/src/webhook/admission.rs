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
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
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
    #[error(
        "{field}: container '{container}' runs as UID {uid}, the UID of the Sanctum sidecars, so it could read their files and memory (the pod's tokens); run it as another UID"
    )]
    SidecarUid { field: String, container: String, uid: i64 },
    #[error(
        "this pod is marked sanctum.dev/status: injected but is not what Sanctum's injection makes of it ({0}); remove the sanctum.dev/status annotation and Sanctum's containers and volumes, and let the webhook inject it"
    )]
    NotInjected(String),
    #[error("{field}: {message}")]
    Update { field: String, message: String },
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
        allow_api_token: annotation(pod, ANNOTATION_ALLOW_API_TOKEN).map(str::trim) == Some("true"),
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
    check_uids(spec, config.pod.run_as_user)?;
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

/// Refuses a pod's own container that runs as the sidecars' UID: with the same UID it may
/// read `/proc/<pid>/root` of a sidecar whose process namespace it shares (an ephemeral
/// container, a runtime that shares it). Only what the spec says is known here; an image's
/// default user is not.
fn check_uids(spec: &PodSpec, sidecar_uid: i64) -> Result<(), Refusal> {
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let lists: [(&str, &[Container]); 2] = [
        ("containers", &spec.containers),
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
    ];
    for (list, containers) in lists {
        for c in containers {
            let own = c.security_context.as_ref().and_then(|s| s.run_as_user);
            let field = match (own, pod_uid) {
                (Some(uid), _) if uid == sidecar_uid => {
                    format!("spec.{list}[{}].securityContext.runAsUser", c.name)
                }
                (None, Some(uid)) if uid == sidecar_uid => "spec.securityContext.runAsUser".into(),
                _ => continue,
            };
            return Err(Refusal::SidecarUid { field, container: c.name.clone(), uid: sidecar_uid });
        }
    }
    Ok(())
}

/// Whether the pod is one Sanctum must never touch.
pub fn skip_reason(namespace: &str, config: &OperatorConfig) -> Option<&'static str> {
    if namespace == "kube-system" {
        return Some("kube-system is never injected");
    }
    if namespace == config.namespace {
        return Some("the operator's own namespace is never injected");
    }
    None
}

fn is_marked_injected(pod: &Pod) -> bool {
    annotation(pod, ANNOTATION_STATUS) == Some(STATUS_INJECTED)
}

/// Checks that a pod marked `sanctum.dev/status: injected` is exactly what injection makes
/// of it, so the mark is a fact rather than a label anyone can write: its Sanctum containers
/// and volumes are taken out, the pod is injected again (with its own annotations), and
/// everything that injection sets must be in the pod as given. "In" rather than "equal":
/// the API server adds defaults (`terminationMessagePath`, a probe's `successThreshold`)
/// to what the webhook produced; lists must still match element for element, so no
/// container, mount, variable or volume can be added or swapped.
pub fn check_injected(
    pod: &Pod,
    config: &OperatorConfig,
    settings: &Settings,
) -> Result<(), Refusal> {
    let spec = pod.spec.as_ref().ok_or_else(|| Refusal::Pod("it has no spec".into()))?;
    let mut base = pod.clone();
    if let Some(annotations) = base.metadata.annotations.as_mut() {
        annotations.remove(ANNOTATION_STATUS);
        annotations.remove(ANNOTATION_REMOVED_ENV);
    }
    let base_spec = base.spec.as_mut().expect("checked above");
    if let Some(init) = base_spec.init_containers.as_mut() {
        init.retain(|c| !inject::INJECTED_CONTAINERS.contains(&c.name.as_str()));
    }
    if let Some(volumes) = base_spec.volumes.as_mut() {
        volumes.retain(|v| !inject::INJECTED_VOLUMES.contains(&v.name.as_str()));
    }
    inject_pod(&mut base, config, settings)?;
    let to_json = |s: &PodSpec| serde_json::to_value(s).map_err(|e| Refusal::Pod(e.to_string()));
    let (expected, actual) = (to_json(base.spec.as_ref().expect("injected"))?, to_json(spec)?);
    // The containers first: the message names what matters most.
    let differs = ["initContainers", "containers", "volumes"]
        .into_iter()
        .find_map(|key| {
            let (e, a) = (&expected[key], &actual[key]);
            crate::webhook::subset::first_difference(e, a).map(|rest| format!(".{key}{rest}"))
        })
        .or_else(|| crate::webhook::subset::first_difference(&expected, &actual));
    match differs {
        None => Ok(()),
        Some(path) => Err(Refusal::NotInjected(format!("spec{path} differs"))),
    }
}

/// An UPDATE of a pod Sanctum injected, or an ephemeral container added to it: refused when
/// it would hand the tokens to something else: a Sanctum container's image swapped (pods
/// allow image updates), or an ephemeral container that mounts a token volume or joins a
/// Sanctum container's process namespace (`targetContainerName`).
pub fn check_update(old: &Pod, new: &Pod) -> Result<(), Refusal> {
    if !is_marked_injected(old) {
        return Ok(());
    }
    let (Some(old_spec), Some(new_spec)) = (old.spec.as_ref(), new.spec.as_ref()) else {
        return Ok(());
    };
    let ours = |spec: &PodSpec| -> Vec<(String, Option<String>)> {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| inject::INJECTED_CONTAINERS.contains(&c.name.as_str()))
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect()
    };
    let before = ours(old_spec);
    for (name, image) in ours(new_spec) {
        if !before.contains(&(name.clone(), image.clone())) {
            return Err(Refusal::Update {
                field: format!("spec.initContainers[{name}].image"),
                message: format!(
                    "the image of Sanctum's container '{name}' may not change on a running pod (it holds the pod's tokens); delete and create the pod instead"
                ),
            });
        }
    }
    if new_spec.share_process_namespace == Some(true) {
        return Err(Refusal::Inject(inject::InjectError::SharedProcessNamespace));
    }
    for e in new_spec.ephemeral_containers.iter().flatten() {
        if let Some(m) = e
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| inject::INJECTED_VOLUMES.contains(&m.name.as_str()))
        {
            return Err(Refusal::Update {
                field: format!("spec.ephemeralContainers[{}].volumeMounts[{}]", e.name, m.name),
                message: format!(
                    "ephemeral container '{}' mounts volume '{}', which holds the pod's tokens; debug without it",
                    e.name, m.name
                ),
            });
        }
        if let Some(target) =
            e.target_container_name.as_deref().filter(|t| inject::INJECTED_CONTAINERS.contains(t))
        {
            return Err(Refusal::Update {
                field: format!("spec.ephemeralContainers[{}].targetContainerName", e.name),
                message: format!(
                    "ephemeral container '{}' would share the process namespace of Sanctum's '{target}', which holds the pod's tokens; target an app container",
                    e.name
                ),
            });
        }
    }
    Ok(())
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
    if let Some(reason) = skip_reason(namespace, config) {
        return Ok(Verdict::Skip(reason));
    }
    if is_marked_injected(&pod) {
        // The webhook's own second pass (reinvocation) lands here too, and passes.
        check_injected(&pod, config, settings)?;
        return Ok(Verdict::Skip("already injected"));
    }
    if !wants_injection(&pod, opt_in) {
        return Ok(Verdict::Skip("not opted in"));
    }
    let typed = |p: &Pod| serde_json::to_value(p).map_err(|e| Refusal::Pod(e.to_string()));
    // The typed form before injection, serialized first so the pod itself can be injected
    // (no copy of it).
    let before = typed(&pod)?;
    let mut injected = pod;
    inject_pod(&mut injected, config, settings)?;
    let after = patch::overlay(raw, &before, &typed(&injected)?);
    Ok(Verdict::Inject(patch::pod_patch(raw, after)))
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

/// Takes the object at `pointer` (`request.object`, `request.oldObject`) out of `body` and
/// leaves a stand-in with the same keys: its type fields and metadata as they were, every
/// other value `null`. kube's `DynamicObject` reads only those (the rest lands in an untyped
/// `data`), so a review is accepted or refused exactly as with the whole object, but the pod
/// is neither copied nor buffered again by serde's `flatten` (`AdmissionReview` and
/// `DynamicObject` both flatten). A value that is not a JSON object is copied and left as
/// it was.
fn take_object(body: &mut Value, pointer: &str) -> Option<Value> {
    let slot = body.pointer_mut(pointer)?;
    let Value::Object(fields) = slot else { return Some(slot.clone()) };
    let stand_in = fields
        .iter()
        .map(|(key, value)| match key.as_str() {
            "apiVersion" | "kind" | "metadata" => (key.clone(), value.clone()),
            _ => (key.clone(), Value::Null),
        })
        .collect();
    Some(std::mem::replace(slot, Value::Object(stand_in)))
}

fn is_pod(req: &AdmissionRequest<DynamicObject>) -> bool {
    req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod"
}

/// Handles one AdmissionReview body. `Err` only for a body that is not a review at all.
pub fn review(
    body: &[u8],
    opt_in: OptIn,
    config: &OperatorConfig,
    settings: &Settings,
) -> Result<Answer, BadReview> {
    let mut body: Value =
        serde_json::from_slice(body).map_err(|e| BadReview::Parse(e.to_string()))?;
    // The pod is read from the raw body: kube's DynamicObject would re-serialize its
    // metadata through typed fields and drop what they do not know.
    let raw_object = take_object(&mut body, "/request/object");
    let raw_old = take_object(&mut body, "/request/oldObject");
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
    let sub_resource = req.sub_resource.as_deref().unwrap_or("");
    // An UPDATE of a pod (or its ephemeral containers): guarded, never patched.
    if is_pod(&req)
        && req.operation == Operation::Update
        && (sub_resource.is_empty() || sub_resource == "ephemeralcontainers")
    {
        let pods = raw_old.filter(Value::is_object).zip(raw_object.filter(Value::is_object));
        let Some((old, new)) = pods else {
            return Ok(answer("ignored", allow(), None));
        };
        let checked = typed_pod(&old).and_then(|old| check_update(&old, &typed_pod(&new)?));
        return Ok(match checked {
            Ok(()) => answer("allowed", allow(), None),
            Err(refusal) => {
                let message = refusal.to_string();
                answer("refused", deny(&message), Some(message))
            }
        });
    }
    // Anything else but a Pod CREATE is not ours to judge: allow it untouched.
    if !is_pod(&req) || req.operation != Operation::Create || !sub_resource.is_empty() {
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
