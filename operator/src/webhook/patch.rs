//! The JSONPatch from a pod, as the API server sent it, to its injected form.
//!
//! The API server applies the patch to the pod *as it received it*, which may carry fields
//! that this build's Kubernetes types do not know (`env[].valueFrom.fileKeyRef` of
//! Kubernetes 1.34+ read as `valueFrom: {}` by k8s-openapi's `v1_33` types, issue 13 item
//! 7). So the injected pod is never re-serialized from those types: [`overlay`] lays the
//! typed injection result over the raw JSON, keeping every raw value the injection did not
//! change, and [`pod_patch`] diffs raw against raw. The patch adds the injected init
//! containers in front of the pod's own, appends the volumes, and replaces only the
//! containers' fields that changed (the agent `env`, whose untouched entries are the raw
//! ones). Istio's and Linkerd's injectors patch the same way: from the raw object, never
//! from a round-trip through typed structs.

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use serde_json::{Map, Value};

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(ops: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    ops.push(PatchOperation::Add(AddOperation { path, value }));
}

fn replace(ops: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    ops.push(PatchOperation::Replace(ReplaceOperation { path, value }));
}

/// The injected object as raw JSON: `after` (the typed result, serialized) laid over `raw`
/// (what the API server sent), where `before` is `raw` read into the typed form and
/// serialized again. Whatever the typed form does not know (a field absent from `before`)
/// is kept from `raw`; a subtree the injection did not change is `raw`'s, byte for byte;
/// only what changed comes from `after`.
///
/// Arrays are matched element by element: an element of `after` equal to an unused one of
/// `before` is that element's raw value; one with the `name` of an unused element of
/// `before` (a container whose `env` changed) is overlaid on it; anything else is new.
pub fn overlay(raw: &Value, before: &Value, after: &Value) -> Value {
    if before == after {
        return raw.clone();
    }
    match (raw, before, after) {
        (Value::Object(r), Value::Object(b), Value::Object(a)) => {
            let mut out = Map::new();
            for (key, value) in r {
                match (b.get(key), a.get(key)) {
                    // Changed or kept by the injection.
                    (_, Some(new)) => {
                        let old = b.get(key).unwrap_or(&Value::Null);
                        out.insert(key.clone(), overlay(value, old, new));
                    }
                    // Known to the typed form and removed by the injection.
                    (Some(_), None) => {}
                    // Unknown to the typed form (a newer field): kept.
                    (None, None) => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            for (key, new) in a {
                // Set by the injection where `raw` had nothing (not a typed-form artefact
                // such as the `metadata: {}` of a template without metadata).
                if !r.contains_key(key) && b.get(key) != Some(new) {
                    out.insert(key.clone(), new.clone());
                }
            }
            Value::Object(out)
        }
        (Value::Array(r), Value::Array(b), Value::Array(a)) if r.len() == b.len() => {
            let mut used = vec![false; b.len()];
            let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
            let out = a
                .iter()
                .map(|new| {
                    let same = (0..b.len()).find(|&j| !used[j] && b[j] == *new);
                    let named = || {
                        let n = name(new)?;
                        (0..b.len()).find(|&j| !used[j] && name(&b[j]).as_ref() == Some(&n))
                    };
                    match same.or_else(named) {
                        Some(j) => {
                            used[j] = true;
                            overlay(&r[j], &b[j], new)
                        }
                        None => new.clone(),
                    }
                })
                .collect();
            Value::Array(out)
        }
        _ => after.clone(),
    }
}

/// Field-level changes of one object (a container, the pod spec): each top-level key that
/// differs is added, replaced or removed as a whole; keys in `skip` are left out. `after`
/// is consumed: the patch takes its values rather than copies.
fn object_fields(
    ops: &mut Vec<PatchOperation>,
    base: &[&str],
    before: &Value,
    after: Value,
    skip: &[&str],
) {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = match after {
        Value::Object(a) => a,
        _ => Map::new(),
    };
    let path = |key: &str| {
        let mut path = base.to_vec();
        path.push(key);
        pointer(&path)
    };
    // Removals last, as keys of `before` missing from `after`; listed before `after` is
    // taken apart.
    let removed: Vec<PointerBuf> = b
        .keys()
        .filter(|k| !a.contains_key(*k) && !skip.contains(&k.as_str()))
        .map(|k| path(k))
        .collect();
    for (key, value) in a {
        if skip.contains(&key.as_str()) {
            continue;
        }
        match b.get(&key) {
            None => add(ops, path(&key), value),
            Some(old) if *old != value => replace(ops, path(&key), value),
            Some(_) => {}
        }
    }
    for path in removed {
        ops.push(PatchOperation::Remove(json_patch::RemoveOperation { path }));
    }
}

fn array<'a>(v: &'a Value, key: &str) -> Option<&'a [Value]> {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice)
}

/// Takes `key` out of `v` (when `v` is an object holding it).
fn take(v: &mut Value, key: &str) -> Option<Value> {
    v.as_object_mut()?.remove(key)
}

/// The array `v` holds, or none.
fn into_array(v: Option<Value>) -> Option<Vec<Value>> {
    match v {
        Some(Value::Array(a)) => Some(a),
        _ => None,
    }
}

fn spec_patch(ops: &mut Vec<PatchOperation>, before: &Value, mut after: Value) {
    // Containers: field by field, index by index (injection never adds or removes one).
    let a_containers = take(&mut after, "containers");
    match (array(before, "containers"), a_containers) {
        (Some(b), Some(Value::Array(a))) if b.len() == a.len() => {
            for (i, (b, a)) in b.iter().zip(a).enumerate() {
                if *b != a {
                    let i = i.to_string();
                    object_fields(ops, &["spec", "containers", &i], b, a, &[]);
                }
            }
        }
        (_, a) => {
            if before.get("containers") != a.as_ref() {
                let value = into_array(a).map_or(Value::Null, Value::Array);
                replace(ops, pointer(&["spec", "containers"]), value);
            }
        }
    }

    // Init containers: ours go in front of the pod's own.
    let b_init_given = array(before, "initContainers");
    let b_init = b_init_given.unwrap_or(&[]);
    let a_init = into_array(take(&mut after, "initContainers")).unwrap_or_default();
    if b_init != a_init.as_slice() {
        let n = a_init.len().checked_sub(b_init.len());
        let prefix = n.filter(|&n| a_init[n..] == *b_init);
        match (b_init_given.is_some(), prefix) {
            (true, Some(n)) => {
                for (i, c) in a_init.into_iter().take(n).enumerate() {
                    let i = i.to_string();
                    add(ops, pointer(&["spec", "initContainers", &i]), c);
                }
            }
            (false, Some(_)) => {
                add(ops, pointer(&["spec", "initContainers"]), Value::Array(a_init))
            }
            (_, None) => replace(ops, pointer(&["spec", "initContainers"]), Value::Array(a_init)),
        }
    }

    // Volumes: ours are appended.
    let b_vol_given = array(before, "volumes");
    let b_vol = b_vol_given.unwrap_or(&[]);
    let a_vol = into_array(take(&mut after, "volumes")).unwrap_or_default();
    if b_vol != a_vol.as_slice() {
        let appended = a_vol.len() >= b_vol.len() && a_vol[..b_vol.len()] == *b_vol;
        match (b_vol_given.is_some(), appended) {
            (true, true) => {
                for v in a_vol.into_iter().skip(b_vol.len()) {
                    add(ops, pointer(&["spec", "volumes", "-"]), v);
                }
            }
            (false, true) => add(ops, pointer(&["spec", "volumes"]), Value::Array(a_vol)),
            (_, false) => replace(ops, pointer(&["spec", "volumes"]), Value::Array(a_vol)),
        }
    }

    // Anything else of the spec, field by field (the three lists are out of `after` now,
    // and skipped in `before`).
    object_fields(ops, &["spec"], before, after, &["containers", "initContainers", "volumes"]);
}

/// The patch that turns the raw pod `before` into the raw pod `after` (see [`overlay`]):
/// metadata annotations and labels key by key, and the spec as above. Both are JSON
/// objects of a Pod (or of a pod template); an empty patch when nothing changed. `after`
/// is consumed: the operations take its values rather than copies of them.
pub fn pod_patch(before: &Value, mut after: Value) -> Patch {
    let mut ops = Vec::new();
    let null = Value::Null;
    let b_meta = before.get("metadata").unwrap_or(&null);
    let mut a_meta = take(&mut after, "metadata").unwrap_or(Value::Null);
    if !b_meta.is_object() {
        if a_meta.is_object() && *b_meta != a_meta {
            add(&mut ops, pointer(&["metadata"]), a_meta);
        }
    } else {
        for field in ["annotations", "labels"] {
            let (b, a) = (b_meta.get(field), take(&mut a_meta, field));
            if b == a.as_ref() {
                continue;
            }
            match (b.and_then(Value::as_object), a) {
                (Some(b), Some(Value::Object(a))) => {
                    for (k, v) in a {
                        match b.get(&k) {
                            None => add(&mut ops, pointer(&["metadata", field, &k]), v),
                            Some(old) if *old != v => {
                                replace(&mut ops, pointer(&["metadata", field, &k]), v)
                            }
                            Some(_) => {}
                        }
                    }
                }
                (None, Some(value @ Value::Object(_))) => {
                    if b.is_some() {
                        replace(&mut ops, pointer(&["metadata", field]), value);
                    } else {
                        add(&mut ops, pointer(&["metadata", field]), value);
                    }
                }
                _ => {}
            }
        }
    }
    match (before.get("spec"), take(&mut after, "spec")) {
        (Some(b), Some(a)) if *b != a => spec_patch(&mut ops, b, a),
        (None, Some(a)) => add(&mut ops, pointer(&["spec"]), a),
        _ => {}
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
    use serde_json::json;

    /// The typed round-trip of `raw`, changed by `change`, laid back over `raw`.
    fn injected(raw: &Value, change: impl FnOnce(&mut Pod)) -> Value {
        let typed: Pod = serde_json::from_value(raw.clone()).unwrap();
        let before = serde_json::to_value(&typed).unwrap();
        let mut after = typed;
        change(&mut after);
        overlay(raw, &before, &serde_json::to_value(&after).unwrap())
    }

    #[test]
    fn annotation_keys_with_slashes_are_escaped_and_unknown_fields_survive() {
        let raw = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": {"a": "b"}, "futureMeta": true},
            "spec": {
                "futureSpec": {"x": 1},
                "containers": [{"name": "c", "image": "i", "futureField": 1}],
                "initContainers": [{"name": "u", "image": "i", "futureField": 2}],
                "volumes": [{"name": "v", "emptyDir": {}, "futureVolume": 3}]
            }
        });
        let after = injected(&raw, |pod| {
            pod.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert("sanctum.dev/status".into(), "x".into());
            let spec = pod.spec.as_mut().unwrap();
            spec.containers[0].args = Some(vec!["--x".into()]);
            spec.init_containers
                .as_mut()
                .unwrap()
                .insert(0, Container { name: "ours".into(), ..Default::default() });
            spec.volumes.as_mut().unwrap().push(Default::default());
        });
        let patch = pod_patch(&raw, after.clone());
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after);
        assert_eq!(doc["metadata"]["annotations"]["sanctum.dev/status"], "x");
        assert_eq!(doc["metadata"]["futureMeta"], true);
        assert_eq!(doc["spec"]["futureSpec"]["x"], 1);
        assert_eq!(doc["spec"]["containers"][0]["futureField"], 1);
        assert_eq!(doc["spec"]["containers"][0]["args"][0], "--x");
        assert_eq!(doc["spec"]["initContainers"][0]["name"], "ours");
        assert_eq!(doc["spec"]["initContainers"][1]["futureField"], 2);
        assert_eq!(doc["spec"]["volumes"][0]["futureVolume"], 3);
        assert_eq!(doc["spec"]["volumes"].as_array().unwrap().len(), 2);
        // Nothing to do: an empty patch.
        assert!(pod_patch(&raw, raw.clone()).0.is_empty());
    }

    /// Issue 13 item 7: `valueFrom.fileKeyRef` (Kubernetes 1.34+) is unknown to the typed
    /// form, which reads it as `valueFrom: {}`; the entry must reach the API server as sent.
    #[test]
    fn env_entries_the_typed_form_cannot_read_are_kept_raw() {
        let file_key = json!({"name": "TOKEN", "valueFrom": {"fileKeyRef":
            {"volumeName": "cfg", "path": "app.env", "key": "TOKEN", "optional": false}}});
        let raw = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "env": [{"name": "ANTHROPIC_API_KEY", "value": "sk"}, file_key.clone(),
                        {"name": "KEEP", "value": "1", "futureEnvField": "y"}]}]}
        });
        let after = injected(&raw, |pod| {
            let env = pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap();
            env.remove(0);
            env.push(EnvVar { name: "NEW".into(), value: Some("2".into()), value_from: None });
        });
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &pod_patch(&raw, after.clone())).unwrap();
        assert_eq!(
            doc["spec"]["containers"][0]["env"],
            json!([file_key, {"name": "KEEP", "value": "1", "futureEnvField": "y"},
                   {"name": "NEW", "value": "2"}])
        );
    }

    /// A template without metadata gets the whole metadata object added.
    #[test]
    fn missing_metadata_is_added_whole() {
        let raw = json!({"spec": {"containers": [{"name": "c"}]}});
        let after = injected(&raw, |pod| {
            pod.metadata.annotations = Some([("k".to_owned(), "v".to_owned())].into());
        });
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &pod_patch(&raw, after.clone())).unwrap();
        assert_eq!(doc["metadata"], json!({"annotations": {"k": "v"}}));
        // An untouched template does not get an empty `metadata: {}`.
        assert_eq!(injected(&raw, |_| {}), raw);
    }
}
