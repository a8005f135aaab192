//! The run summary written to the termination log (DESIGN.md "Run result contract"):
//! `{"findings":{"critical":0,"high":2,"medium":1,"low":0,"note":0},"costUsd":0.42,
//! "turns":5,"model":"…","sarif":"/output/results.sarif","error":"…"}`, at most 4 KiB
//! (the kubelet keeps no more of `/dev/termination-log`).

use sanctum_common::text::truncate;
use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Severity};

/// The kubelet reads at most this many bytes of the termination log.
pub const MAX_BYTES: usize = 4096;

/// Findings per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub note: u64,
}

impl Counts {
    pub fn of(findings: &[Finding]) -> Self {
        let mut c = Counts::default();
        for f in findings {
            *c.get_mut(f.severity) += 1;
        }
        c
    }

    fn get_mut(&mut self, s: Severity) -> &mut u64 {
        match s {
            Severity::Critical => &mut self.critical,
            Severity::High => &mut self.high,
            Severity::Medium => &mut self.medium,
            Severity::Low => &mut self.low,
            Severity::Note => &mut self.note,
        }
    }

    pub fn total(&self) -> u64 {
        self.critical + self.high + self.medium + self.low + self.note
    }
}

/// The summary of one run. `costUsd` is in US dollars as Claude Code reports it
/// (`total_cost_usd` of its result event); `turns` is its `num_turns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub findings: Counts,
    pub cost_usd: f64,
    pub turns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Path of the SARIF file written.
    pub sarif: String,
    /// What went wrong, when something did; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Summary {
    /// The JSON document, at most [`MAX_BYTES`]: a long `error` (then `model`) is cut short,
    /// on a character boundary, with `…` to show it was.
    pub fn to_json(&self) -> String {
        let mut s = self.clone();
        loop {
            let json = serde_json::to_string(&s).unwrap_or_else(|_| "{}".to_owned());
            if json.len() <= MAX_BYTES {
                return json;
            }
            let over = json.len() - MAX_BYTES;
            let field = if s.error.as_ref().is_some_and(|e| e.len() > 1) {
                &mut s.error
            } else if s.model.as_ref().is_some_and(|m| m.len() > 1) {
                &mut s.model
            } else {
                // Only `sarif` is left to blame: a path this long is a configuration mistake.
                s.sarif = truncate(&s.sarif, s.sarif.len().saturating_sub(over + 8));
                continue;
            };
            if let Some(text) = field.as_mut() {
                // JSON escaping can make the text longer than its bytes: cut generously.
                *text = truncate(text, text.len().saturating_sub(over + 8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(error: Option<String>) -> Summary {
        Summary {
            findings: Counts { high: 2, medium: 1, ..Counts::default() },
            cost_usd: 0.42,
            turns: 5,
            model: Some("claude-sonnet-4-5".into()),
            sarif: "/output/results.sarif".into(),
            error,
        }
    }

    #[test]
    fn the_contract_shape() {
        let v: serde_json::Value = serde_json::from_str(&summary(None).to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"findings":{"critical":0,"high":2,"medium":1,"low":0,"note":0},
                "costUsd":0.42,"turns":5,"model":"claude-sonnet-4-5","sarif":"/output/results.sarif"})
        );
    }

    #[test]
    fn a_long_error_is_cut_to_4_kib() {
        let json = summary(Some("é\"".repeat(5000))).to_json();
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert!(back.error.unwrap().ends_with('…'));
        assert_eq!(back.findings.high, 2);
    }
}
