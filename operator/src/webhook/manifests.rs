//! `sanctum-operator inject -f FILE`: every pod and pod template of a YAML stream injected
//! exactly as the webhook would (the same [`admission::decide`] and the same JSONPatch,
//! applied to the template), for GitOps users and for review. Documents that are not
//! workloads, or that do not opt in, are printed as they came, byte for byte.

use serde_json::Value;
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::webhook::admission::{self, OptIn, Refusal, Settings, Verdict};

#[derive(Debug, Error)]
pub enum InjectFileError {
    #[error("document {doc}: not YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc} ({kind} {name}): {path}: {message}")]
    Template { doc: usize, kind: String, name: String, path: String, message: String },
    #[error("document {doc} ({kind} {name}): {source}")]
    Refused { doc: usize, kind: String, name: String, source: Refusal },
    #[error("cannot write YAML: {0}")]
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

/// Injects every opted-in pod (template) of `text`. `opt_in` is the rule of the webhook
/// entry the objects would meet: [`OptIn::Namespace`] for a labelled namespace.
pub fn inject_file(
    text: &str,
    config: &OperatorConfig,
    settings: &Settings,
    opt_in: OptIn,
) -> Result<String, InjectFileError> {
    let mut out = String::new();
    let mut first = true;
    for (i, raw) in split_documents(text).into_iter().enumerate() {
        let doc = i + 1;
        let yaml: serde_yaml::Value = serde_yaml::from_str(raw)
            .map_err(|e| InjectFileError::Yaml { doc, message: e.to_string() })?;
        if yaml.is_null() {
            continue;
        }
        if !first {
            out.push_str("---\n");
        }
        first = false;
        let injected = inject_document(doc, &yaml, config, settings, opt_in)?;
        match injected {
            Some(text) => out.push_str(&text),
            None => {
                out.push_str(raw);
                if !raw.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn inject_document(
    doc: usize,
    yaml: &serde_yaml::Value,
    config: &OperatorConfig,
    settings: &Settings,
    opt_in: OptIn,
) -> Result<Option<String>, InjectFileError> {
    let mut value: Value = serde_json::to_value(yaml)
        .map_err(|e| InjectFileError::Yaml { doc, message: e.to_string() })?;
    let (api_version, kind) = (str_at(&value, "/apiVersion"), str_at(&value, "/kind"));
    let Some(pointer) = template_pointer(api_version, kind) else { return Ok(None) };
    let kind = kind.to_owned();
    let name = str_at(&value, "/metadata/name").to_owned();
    let namespace = str_at(&value, "/metadata/namespace").to_owned();
    let Some(template) = value.pointer_mut(pointer) else { return Ok(None) };
    // A template has no apiVersion/kind; the Pod type needs neither to read it.
    let pod: k8s_openapi::api::core::v1::Pod = serde_path_to_error::deserialize(template.clone())
        .map_err(|e| InjectFileError::Template {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    let namespace = if namespace.is_empty() {
        pod.metadata.namespace.clone().unwrap_or_default()
    } else {
        namespace
    };
    let verdict =
        admission::decide(&pod, &namespace, opt_in, config, settings).map_err(|source| {
            InjectFileError::Refused { doc, kind: kind.clone(), name: name.clone(), source }
        })?;
    let Verdict::Inject(patch) = verdict else { return Ok(None) };
    // Templates may lack metadata or annotations; the patch adds to what is there.
    if template.get("metadata").is_none()
        && let Some(obj) = template.as_object_mut()
    {
        obj.insert("metadata".into(), Value::Object(Default::default()));
    }
    json_patch::patch(template, &patch).map_err(|e| InjectFileError::Template {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        path: String::new(),
        message: format!("the injection patch does not apply: {e}"),
    })?;
    serde_yaml::to_string(&value).map(Some).map_err(|e| InjectFileError::Output(e.to_string()))
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
}
