//! Audit log: one JSON line per request — who (txn, run, org, SPIFFE ID), what (model,
//! status, tokens, latency), and why it was refused or redacted. Never a body, never a token,
//! never a key: the record has no field that could hold one.
//!
//! Lines go through a bounded channel to one writer task, so a slow disk never stalls a
//! request; when the channel is full the line is counted as dropped (and logged) instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    /// Rejection reason label (the metrics label), when the gateway refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<&'static str>,
    /// DLP rule(s) that blocked or were redacted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp_rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlp_action: Option<&'static str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub latency_ms: f64,
    /// The stream ended before `message_stop` (upstream died or the client went away).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

pub enum Sink {
    Off,
    Channel(mpsc::Sender<Vec<u8>>),
}

pub struct AuditLog {
    sink: Sink,
    pub dropped: AtomicU64,
}

/// Where audit lines go: `-` is standard output.
pub async fn open(path: Option<PathBuf>) -> std::io::Result<AuditLog> {
    let Some(path) = path else {
        return Ok(AuditLog { sink: Sink::Off, dropped: AtomicU64::new(0) });
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8192);
    let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if path.as_os_str() == "-" {
        Box::new(tokio::io::stdout())
    } else {
        let file =
            tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(
                |e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open audit log {} ({e}); fix --audit-log", path.display()),
                    )
                },
            )?;
        Box::new(file)
    };
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(line) = rx.recv().await {
            buf.extend_from_slice(&line);
            // Batch whatever else is queued into one write.
            while buf.len() < 60 * 1024 {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if let Err(error) = out.write_all(&buf).await {
                tracing::error!(%error, "cannot write the audit log");
            }
            let _ = out.flush().await;
            buf.clear();
        }
    });
    Ok(AuditLog { sink: Sink::Channel(tx), dropped: AtomicU64::new(0) })
}

impl AuditLog {
    pub fn write(&self, record: &AuditRecord) {
        let Sink::Channel(tx) = &self.sink else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(request_id = %record.request_id, "audit log queue full; line dropped");
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
        r.rejected = Some("dlp_block");
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
