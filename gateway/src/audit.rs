//! Audit log: one JSON line per request — who (txn, run, org, SPIFFE ID), what (model,
//! status, tokens, latency), and why it was refused or redacted. Never a body, never a token,
//! never a key: the record has no field that could hold one.
//!
//! Lines are appended with one write each (see [`open`]); a line that cannot be written is
//! counted (`sanctum_gateway_audit_dropped_total`) and logged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::io::Write as _;
use std::sync::Mutex;

use serde::Serialize;

use super::reject::Reason;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Gateway-assigned id of this request (also sent back as `request-id`).
    pub request_id: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The namespace the run or pod lives in (`tctx.namespace`; absent in TraTs of older
    /// operators).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    /// Rejection reason label (the metrics label), when the gateway refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Reason>,
    /// DLP rule(s) that blocked or were redacted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp_rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlp_action: Option<&'static str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// Tokens charged to the run's budget: the reported usage when the gateway saw it in
    /// full, else at least the request's reservation.
    pub charged_tokens: u64,
    pub latency_ms: f64,
    /// The gateway did not see the whole answer (the stream ended before `message_stop`, the
    /// provider broke off, or the client went away), so usage may be missing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

enum Sink {
    Off,
    Stdout,
    File(Mutex<std::fs::File>),
}

pub struct AuditLog {
    sink: Sink,
    /// Lines that could not be written.
    pub dropped: AtomicU64,
}

impl AuditRecord {
    /// The record of a request as it arrives: the time, a new request id, the method and the
    /// path (at most 256 characters).
    pub fn begin(method: &http::Method, path: &str) -> Self {
        Self {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            method: method.to_string(),
            path: path.chars().take(256).collect(),
            ..Self::default()
        }
    }
}

/// Where audit lines go: `-` is standard output.
///
/// Each line is one `write(2)` on an `O_APPEND` file, made by the request's own task: a write
/// into the page cache costs a few microseconds, less than handing the line to another
/// thread, and concurrent lines never interleave. Nothing is fsync'ed per line.
pub async fn open(path: Option<PathBuf>) -> std::io::Result<AuditLog> {
    let sink = match path {
        None => Sink::Off,
        Some(p) if p.as_os_str() == "-" => Sink::Stdout,
        Some(p) => {
            let file =
                std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open audit log {} ({e}); fix --audit-log", p.display()),
                    )
                })?;
            Sink::File(Mutex::new(file))
        }
    };
    Ok(AuditLog { sink, dropped: AtomicU64::new(0) })
}

impl AuditLog {
    pub fn write(&self, record: &AuditRecord) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let result = match &self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(file) => file.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line),
        };
        if let Err(error) = result {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, request_id = %record.request_id, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = open(Some(path.clone())).await.unwrap();
        let mut r = AuditRecord {
            request_id: "r1".into(),
            status: 200,
            txn: Some("t".into()),
            ..Default::default()
        };
        log.write(&r);
        r.request_id = "r2".into();
        r.rejected = Some(Reason::DlpBlock);
        r.dlp_rules = vec!["github-token".into()];
        log.write(&r);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["txn"], "t");
        assert!(lines[0].get("rejected").is_none());
        assert_eq!(lines[1]["rejected"], "dlp_block");
        assert_eq!(lines[1]["dlp_rules"][0], "github-token");
    }
}
