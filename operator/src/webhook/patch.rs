//! The JSONPatch from a pod to its injected form.
//!
//! The API server applies the patch to the pod *as it received it*, which may carry fields
//! that this build's Kubernetes types do not know (a newer API server). So the patch must
//! never rewrite what it did not change: it adds the injected init containers in front of
//! the pod's own, appends the volumes, and replaces only the containers' fields that
//! changed (the agent `env`). A generic diff of re-serialized pods would replace whole
//! array elements and silently drop such unknown fields.

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{Map, Value};

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn to_value<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn add(ops: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    ops.push(PatchOperation::Add(AddOperation { path, value }));
}

fn replace(ops: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    ops.push(PatchOperation::Replace(ReplaceOperation { path, value }));
}

/// Field-level changes of one object (a container, the pod spec): each top-level key that
/// differs is added, replaced or (rarely) removed as a whole.
fn object_fields(ops: &mut Vec<PatchOperation>, base: &[&str], before: &Value, after: &Value) {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    for (key, value) in a {
        let mut path = base.to_vec();
        path.push(key);
        match b.get(key) {
            None => add(ops, pointer(&path), value.clone()),
            Some(old) if old != value => replace(ops, pointer(&path), value.clone()),
            Some(_) => {}
        }
    }
    for key in b.keys().filter(|k| !a.contains_key(*k)) {
        let mut path = base.to_vec();
        path.push(key);
        ops.push(PatchOperation::Remove(json_patch::RemoveOperation { path: pointer(&path) }));
    }
}

/// The added init containers, when `after` is `before` with containers put in front.
fn prefix<'a>(before: &[Container], after: &'a [Container]) -> Option<&'a [Container]> {
    let n = after.len().checked_sub(before.len())?;
    (after[n..] == *before).then_some(&after[..n])
}

fn spec_patch(ops: &mut Vec<PatchOperation>, before: &PodSpec, after: &PodSpec) {
    // Containers: field by field, index by index (injection never adds or removes one).
    if before.containers.len() == after.containers.len() {
        for (i, (b, a)) in before.containers.iter().zip(&after.containers).enumerate() {
            if b != a {
                let i = i.to_string();
                object_fields(ops, &["spec", "containers", &i], &to_value(b), &to_value(a));
            }
        }
    } else {
        replace(ops, pointer(&["spec", "containers"]), to_value(&after.containers));
    }

    // Init containers: ours go in front of the pod's own.
    let (b_init, a_init) = (
        before.init_containers.as_deref().unwrap_or(&[]),
        after.init_containers.as_deref().unwrap_or(&[]),
    );
    if b_init != a_init {
        match (before.init_containers.is_some(), prefix(b_init, a_init)) {
            (true, Some(added)) => {
                for (i, c) in added.iter().enumerate() {
                    let i = i.to_string();
                    add(ops, pointer(&["spec", "initContainers", &i]), to_value(c));
                }
            }
            (false, Some(_)) => add(ops, pointer(&["spec", "initContainers"]), to_value(a_init)),
            (_, None) => replace(ops, pointer(&["spec", "initContainers"]), to_value(a_init)),
        }
    }

    // Volumes: ours are appended.
    let (b_vol, a_vol) =
        (before.volumes.as_deref().unwrap_or(&[]), after.volumes.as_deref().unwrap_or(&[]));
    if b_vol != a_vol {
        let appended = a_vol.len() >= b_vol.len() && a_vol[..b_vol.len()] == *b_vol;
        match (before.volumes.is_some(), appended) {
            (true, true) => {
                for v in &a_vol[b_vol.len()..] {
                    add(ops, pointer(&["spec", "volumes", "-"]), to_value(v));
                }
            }
            (false, true) => add(ops, pointer(&["spec", "volumes"]), to_value(a_vol)),
            (_, false) => replace(ops, pointer(&["spec", "volumes"]), to_value(a_vol)),
        }
    }

    // Anything else of the spec, field by field.
    let strip = |s: &PodSpec| {
        let mut v = to_value(s);
        if let Some(m) = v.as_object_mut() {
            for k in ["containers", "initContainers", "volumes"] {
                m.remove(k);
            }
        }
        v
    };
    let (b_rest, a_rest) = (strip(before), strip(after));
    if b_rest != a_rest {
        object_fields(ops, &["spec"], &b_rest, &a_rest);
    }
}

/// The patch that turns `before` into `after` (metadata annotations and labels, spec).
pub fn pod_patch(before: &Pod, after: &Pod) -> Patch {
    let mut ops = Vec::new();
    for (field, b, a) in [
        ("annotations", &before.metadata.annotations, &after.metadata.annotations),
        ("labels", &before.metadata.labels, &after.metadata.labels),
    ] {
        if b == a {
            continue;
        }
        match (b, a) {
            (Some(b), Some(a)) => {
                for (k, v) in a {
                    match b.get(k) {
                        None => add(&mut ops, pointer(&["metadata", field, k]), to_value(v)),
                        Some(old) if old != v => {
                            replace(&mut ops, pointer(&["metadata", field, k]), to_value(v))
                        }
                        Some(_) => {}
                    }
                }
            }
            (None, Some(a)) => add(&mut ops, pointer(&["metadata", field]), to_value(a)),
            (_, None) => {}
        }
    }
    match (&before.spec, &after.spec) {
        (Some(b), Some(a)) if b != a => spec_patch(&mut ops, b, a),
        (None, Some(a)) => add(&mut ops, pointer(&["spec"]), to_value(a)),
        _ => {}
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotation_keys_with_slashes_are_escaped_and_unknown_fields_survive() {
        let raw = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": {"a": "b"}},
            "spec": {
                "containers": [{"name": "c", "image": "i", "futureField": 1}],
                "initContainers": [{"name": "u", "image": "i", "futureField": 2}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        });
        let before: Pod = serde_json::from_value(raw.clone()).unwrap();
        let mut after = before.clone();
        after
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("sanctum.dev/status".into(), "x".into());
        let spec = after.spec.as_mut().unwrap();
        spec.containers[0].args = Some(vec!["--x".into()]);
        spec.init_containers
            .as_mut()
            .unwrap()
            .insert(0, Container { name: "ours".into(), ..Default::default() });
        spec.volumes.as_mut().unwrap().push(Default::default());
        let patch = pod_patch(&before, &after);
        let mut doc = raw;
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["sanctum.dev/status"], "x");
        assert_eq!(doc["spec"]["containers"][0]["futureField"], 1);
        assert_eq!(doc["spec"]["containers"][0]["args"][0], "--x");
        assert_eq!(doc["spec"]["initContainers"][0]["name"], "ours");
        assert_eq!(doc["spec"]["initContainers"][1]["futureField"], 2);
        assert_eq!(doc["spec"]["volumes"].as_array().unwrap().len(), 2);
        // Nothing to do: an empty patch.
        assert!(pod_patch(&before, &before).0.is_empty());
    }
}
