//! `sanctum-operator inject -f FILE`: every pod and pod template of a file injected
//! exactly as the webhook would (the same [`admission::decide`] and the same JSONPatch,
//! applied to the raw template, so fields this build's types do not know are kept), for
//! GitOps users and for review.
//!
//! Shapes read, as `kubectl apply -f` reads them: a YAML stream of `---` separated
//! documents, a JSON object or a stream of them, and lists (`kind: List`, what `kubectl
//! get -o yaml` prints, or `<Kind>List` of the API, whose items may omit `kind`), nested
//! or not. An object that is none of the workload kinds is printed as it came, byte for
//! byte, unless it holds a pod template that asks for injection: then the whole run fails
//! with a one-line reason, because passing an opted-in workload through uninjected would
//! leave its real key in place in silence (issue 13 item 9). JSON input gives JSON output
//! (kubectl reads a file that starts with `{` as a JSON stream), YAML gives YAML.

use serde_json::Value;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::webhook::admission::{self, OptIn, Refusal, Settings, Verdict};

#[derive(Debug, Error)]
pub enum InjectFileError {
    #[error("document {doc}: not YAML or JSON: {message}")]
    Yaml { doc: usize, message: String },
    #[error("{at}: {path}: {message}")]
    Template { at: String, path: String, message: String },
    #[error("{at}: {source}")]
    Refused { at: String, source: Refusal },
    #[error(
        "{at}: {kind} is not a kind inject -f can inject (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob), but its pod template at {pointer} asks for injection; let the webhook inject it at admission, or annotate that template sanctum.dev/inject: \"false\""
    )]
    Unsupported { at: String, kind: String, pointer: String },
    #[error("cannot write the output: {0}")]
    Output(String),
}

/// JSON pointer of the pod template in a workload of `kind`; `""` for a Pod itself.
pub fn template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(""),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some("/spec/template")
        }
        ("batch/v1", "Job") => Some("/spec/template"),
        ("batch/v1", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Splits a YAML stream at its `---` lines, keeping each document's text.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

/// What the injection needs besides the object.
struct Run<'a> {
    config: &'a OperatorConfig,
    settings: &'a Settings,
    opt_in: OptIn,
}

/// Injects every opted-in pod (template) of `text`. `opt_in` is the rule of the webhook
/// entry the objects would meet: [`OptIn::Namespace`] for a labelled namespace.
///
/// # Errors
/// A document that is not YAML/JSON, a pod the webhook would refuse, or an opted-in pod
/// template in a kind this command cannot inject; each names the document (1-based) and,
/// inside a list, the item (0-based).
pub fn inject_file(
    text: &str,
    config: &OperatorConfig,
    settings: &Settings,
    opt_in: OptIn,
) -> Result<String, InjectFileError> {
    let run = Run { config, settings, opt_in };
    if text.trim_start().starts_with('{') {
        return inject_json_stream(text, &run);
    }
    let mut out = String::new();
    let mut first = true;
    for (i, raw) in split_documents(text).into_iter().enumerate() {
        let doc = i + 1;
        let yaml: serde_yaml::Value = serde_yaml::from_str(raw)
            .map_err(|e| InjectFileError::Yaml { doc, message: one_line(&e.to_string()) })?;
        if yaml.is_null() {
            continue;
        }
        if !first {
            out.push_str("---\n");
        }
        first = false;
        let mut value: Value = serde_json::to_value(&yaml)
            .map_err(|e| InjectFileError::Yaml { doc, message: one_line(&e.to_string()) })?;
        if inject_object(&mut value, &format!("document {doc}"), None, &run)? {
            let text = serde_yaml::to_string(&value)
                .map_err(|e| InjectFileError::Output(e.to_string()))?;
            out.push_str(&text);
        } else {
            out.push_str(raw);
            if !raw.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// A JSON object or a stream of them (what `kubectl apply` reads from a file starting
/// with `{`): each injected object pretty-printed, the others as they came.
fn inject_json_stream(text: &str, run: &Run<'_>) -> Result<String, InjectFileError> {
    let mut out = String::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    let mut doc = 0;
    while let Some(next) = stream.next() {
        doc += 1;
        let mut value =
            next.map_err(|e| InjectFileError::Yaml { doc, message: one_line(&e.to_string()) })?;
        let end = stream.byte_offset();
        if inject_object(&mut value, &format!("document {doc}"), None, run)? {
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| InjectFileError::Output(e.to_string()))?;
            out.push_str(&text);
            out.push('\n');
        } else {
            let raw = text[start..end].trim_start_matches(['\n', '\r']);
            out.push_str(raw);
            if !raw.ends_with('\n') {
                out.push('\n');
            }
        }
        start = end;
    }
    Ok(out)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Injects `value` in place: a workload, or a list of them. `typed` is the (apiVersion,
/// kind) of an item of a `<Kind>List` that omits them. Returns whether anything changed.
fn inject_object(
    value: &mut Value,
    at: &str,
    typed: Option<(&str, &str)>,
    run: &Run<'_>,
) -> Result<bool, InjectFileError> {
    let (api_version, kind) = match typed {
        Some((v, k)) if str_at(value, "/kind").is_empty() => (v.to_owned(), k.to_owned()),
        _ => (str_at(value, "/apiVersion").to_owned(), str_at(value, "/kind").to_owned()),
    };
    let name = str_at(value, "/metadata/name").to_owned();
    let at =
        if name.is_empty() { format!("{at} ({kind})") } else { format!("{at} ({kind} {name})") };

    // A list: `kind: List`, or `<Kind>List` whose items may omit apiVersion and kind.
    if let Some(element) = kind.strip_suffix("List")
        && let Some(items) = value.get_mut("items").and_then(Value::as_array_mut)
    {
        let item_type = (!element.is_empty()).then_some((api_version.as_str(), element));
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            changed |= inject_object(item, &format!("{at}, item {i}"), item_type, run)?;
        }
        return Ok(changed);
    }

    let Some(pointer) = template_pointer(&api_version, &kind) else {
        return match opted_in_template(value, "", run.opt_in) {
            Some(pointer) => {
                let kind = format!("{kind} of apiVersion '{api_version}'");
                Err(InjectFileError::Unsupported { at, kind, pointer })
            }
            None => Ok(false),
        };
    };
    let namespace = str_at(value, "/metadata/namespace").to_owned();
    let Some(template) = value.pointer_mut(pointer) else { return Ok(false) };
    let verdict = admission::decide(template, &namespace, run.opt_in, run.config, run.settings)
        .map_err(|source| match source {
            Refusal::Pod(message) => {
                InjectFileError::Template { at: at.clone(), path: pointer.to_owned(), message }
            }
            source => InjectFileError::Refused { at: at.clone(), source },
        })?;
    let Verdict::Inject(patch) = verdict else { return Ok(false) };
    json_patch::patch(template, &patch).map_err(|e| InjectFileError::Template {
        at: at.clone(),
        path: pointer.to_owned(),
        message: format!("the injection patch does not apply: {e}"),
    })?;
    Ok(true)
}

/// The JSON pointer of the first pod template inside `value` (an object with `metadata`
/// and a `spec.containers` list) that asks for injection under `opt_in`, and is not
/// already injected.
fn opted_in_template(value: &Value, at: &str, opt_in: OptIn) -> Option<String> {
    use crate::names::{ANNOTATION_INJECT, ANNOTATION_STATUS, STATUS_INJECTED};
    match value {
        Value::Object(map) => {
            let is_template = value.pointer("/spec/containers").is_some_and(Value::is_array);
            if is_template {
                let annotation = |key: &str| {
                    value
                        .pointer("/metadata/annotations")
                        .and_then(|a| a.get(key))
                        .and_then(Value::as_str)
                        .map(str::trim)
                };
                let asks = match opt_in {
                    OptIn::Annotation => annotation(ANNOTATION_INJECT) == Some("true"),
                    OptIn::Namespace => annotation(ANNOTATION_INJECT) != Some("false"),
                };
                if asks && annotation(ANNOTATION_STATUS) != Some(STATUS_INJECTED) {
                    return Some(if at.is_empty() { "(root)".into() } else { at.to_owned() });
                }
            }
            map.iter().find_map(|(k, v)| {
                let key = k.replace('~', "~0").replace('/', "~1");
                opted_in_template(v, &format!("{at}/{key}"), opt_in)
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| opted_in_template(v, &format!("{at}/{i}"), opt_in)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separator_lines_only() {
        let docs = split_documents("a: 1\n---\nb: '---'\n--- \nc: 3");
        assert_eq!(docs, ["a: 1\n", "b: '---'\n", "c: 3"]);
    }

    #[test]
    fn other_kinds_pass_through_byte_for_byte() {
        let text = "# keep me\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let out =
            inject_file(text, &OperatorConfig::default(), &Settings::default(), OptIn::Annotation)
                .unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn opted_in_templates_are_found_anywhere() {
        let v = serde_json::json!({"spec": {"a/b": [{"metadata": {"annotations":
            {"sanctum.dev/inject": "true"}}, "spec": {"containers": []}}]}});
        assert_eq!(opted_in_template(&v, "", OptIn::Annotation).as_deref(), Some("/spec/a~1b/0"));
        let off = serde_json::json!({"metadata": {"annotations": {"sanctum.dev/inject": "false"}},
            "spec": {"containers": []}});
        assert_eq!(opted_in_template(&off, "", OptIn::Namespace), None);
        assert_eq!(opted_in_template(&off, "", OptIn::Annotation), None);
        let plain = serde_json::json!({"spec": {"containers": []}});
        assert_eq!(opted_in_template(&plain, "", OptIn::Namespace).as_deref(), Some("(root)"));
    }
}
