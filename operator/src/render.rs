//! `sanctum-operator render`: the objects the controller would create for each ScannerRun
//! in a YAML stream, without a cluster. Pure: text in, text out.

use std::fmt::Write as _;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::OperatorConfig;
use crate::crd::ScannerRun;
use crate::objects::{BuildError, build};
use crate::tokens::Signer;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("document {doc}: not YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc} ({name}): {path}: {message}")]
    Field { doc: usize, name: String, path: String, message: String },
    #[error("document {doc} ({name}): {source}")]
    Build { doc: usize, name: String, source: BuildError },
    #[error("cannot write YAML: {0}")]
    Output(String),
}

/// A stable stand-in for the UID the API server would assign, so a file renders the same
/// way twice and two runs in one file never share a `txn`.
fn placeholder_uid(namespace: &str, name: &str) -> String {
    let h = hex(&Sha256::digest(format!("{namespace}/{name}").as_bytes())[..16]);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn to_yaml<T: serde::Serialize>(out: &mut String, value: &T) -> Result<(), RenderError> {
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(value).map_err(|e| RenderError::Output(e.to_string()))?);
    Ok(())
}

/// Renders every ScannerRun of `text`; other kinds are skipped (their kinds are returned).
pub fn render(
    text: &str,
    config: &OperatorConfig,
    signer: &Signer,
    now: u64,
) -> Result<(String, Vec<String>), RenderError> {
    let mut out = String::new();
    let mut skipped = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| RenderError::Yaml { doc, message: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("<no kind>").to_owned();
        let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
        if kind != "ScannerRun" || !api_version.starts_with("sanctum.dev/") {
            skipped.push(format!("document {doc}: {api_version} {kind}"));
            continue;
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map_or_else(|| "ScannerRun without a name".to_owned(), |n| format!("ScannerRun {n}"));
        let mut run: ScannerRun =
            serde_path_to_error::deserialize(value).map_err(|e| RenderError::Field {
                doc,
                name: name.clone(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        let namespace = run.metadata.namespace.get_or_insert_with(|| "default".into()).clone();
        if run.metadata.uid.is_none() {
            let n = run.metadata.name.clone().unwrap_or_default();
            run.metadata.uid = Some(placeholder_uid(&namespace, &n));
        }
        let objects = build(&run, config, signer, now).map_err(|source| RenderError::Build {
            doc,
            name,
            source,
        })?;
        to_yaml(&mut out, &objects.pod)?;
        to_yaml(&mut out, &objects.secret)?;
        to_yaml(&mut out, &objects.network_policy)?;
    }
    Ok((out, skipped))
}
