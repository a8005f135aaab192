//! Claude Code, headless: the command line and environment the scanner runs it with, the MCP
//! config that gives it the `report_finding` tool, and what its `stream-json` output says
//! (observed with the native CLI 2.1.332; see `shared/CLIENTS.md`).
//!
//! The result event, the last line of `--output-format stream-json --verbose`, looks like
//! `{"type":"result","subtype":"success"|"error_max_turns"|…,"is_error":bool,"num_turns":N,
//! "total_cost_usd":F,"api_error_status":429|null,"api_error":"connection_failed"|…,
//! "terminal_reason":"api_error"|"max_turns"|…,"result":"API Error: …"}`.

use std::path::Path;

use serde_json::{Value, json};

use crate::mcp;

/// Built-in tools the model gets: reading and searching only. No Bash, no Edit/Write, no web.
/// (Claude Code 2.1.332 has no separate `LS` tool: `Glob` lists directories.)
pub const READ_ONLY_TOOLS: [&str; 3] = ["Read", "Grep", "Glob"];

/// Tools refused even if some setting offered them (the allow list is the real guard).
pub const DENIED_TOOLS: [&str; 9] = [
    "Bash",
    "Edit",
    "Write",
    "MultiEdit",
    "NotebookEdit",
    "WebFetch",
    "WebSearch",
    "Task",
    "Agent",
];

/// Retries of a failed model call unless the environment chooses: Claude Code's own default
/// (10, over about three minutes) would keep a run with a dead bridge waiting for minutes.
pub const DEFAULT_MAX_RETRIES: &str = "3";

/// The MCP config (`--mcp-config`): one stdio server, this executable's `mcp` subcommand, told
/// the repository and the findings file through its environment.
pub fn mcp_config(exe: &Path, repo: &Path, findings: &Path) -> Value {
    json!({"mcpServers": {mcp::SERVER_NAME: {
        "type": "stdio",
        "command": exe,
        "args": ["mcp"],
        "env": {"SANCTUM_REPO": repo, (mcp::FINDINGS_ENV): findings},
    }}})
}

/// The command-line arguments after the program name.
///
/// `--restricted` makes Claude Code ignore the repository's own `.claude/` settings (a
/// reviewed repository could otherwise bring hooks that run commands) and confines the file
/// tools to the working directory; `--permission-mode dontAsk` denies anything not allowed
/// up front instead of asking (works as root, unlike `bypassPermissions`).
pub fn args(prompt: &str, max_turns: Option<u32>, mcp_config: &Path) -> Vec<String> {
    let mut allowed: Vec<&str> = READ_ONLY_TOOLS.to_vec();
    allowed.push(mcp::TOOL);
    let mut a: Vec<String> = vec![
        "-p".into(),
        prompt.into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
        "--restricted".into(),
        "--tools".into(),
        READ_ONLY_TOOLS.join(","),
        "--allowedTools".into(),
        allowed.join(","),
        "--disallowedTools".into(),
        DENIED_TOOLS.join(","),
        "--permission-mode".into(),
        "dontAsk".into(),
        "--mcp-config".into(),
        mcp_config.to_string_lossy().into_owned(),
        "--strict-mcp-config".into(),
    ];
    if let Some(n) = max_turns {
        a.extend(["--max-turns".into(), n.to_string()]);
    }
    a
}

/// Environment set on Claude Code over the inherited one; `inherited` says whether a name is
/// already set (then the operator's or user's choice stands, except where noted).
pub fn env(inherited: impl Fn(&str) -> bool) -> Vec<(&'static str, &'static str)> {
    let mut e = vec![
        // Newer CLIs hide MCP tools behind a tool-search tool; the model must see report_finding.
        ("ENABLE_TOOL_SEARCH", "false"),
    ];
    for (k, v) in [
        ("CLAUDE_CODE_MAX_RETRIES", DEFAULT_MAX_RETRIES),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
    ] {
        if !inherited(k) {
            e.push((k, v));
        }
    }
    e
}

/// What the stream said, line by line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stream {
    /// The model of the `system`/`init` event.
    pub model: Option<String>,
    /// Status of our MCP server in the `init` event (`connected`, `failed`, …).
    pub mcp_status: Option<String>,
    /// Tool calls the model made, by name, in order.
    pub tool_calls: Vec<String>,
    /// The final `result` event.
    pub result: Option<Value>,
}

impl Stream {
    /// Takes one line of output; lines that are not JSON events are ignored. Returns the name
    /// of a tool the model called in this line, if any (for the progress log).
    pub fn observe(&mut self, line: &str) -> Vec<String> {
        let Ok(event) = serde_json::from_str::<Value>(line) else { return Vec::new() };
        match event["type"].as_str() {
            Some("system") if event["subtype"] == "init" => {
                self.model = event["model"].as_str().map(str::to_owned);
                self.mcp_status = event["mcp_servers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["name"] == mcp::SERVER_NAME)
                    .and_then(|s| s["status"].as_str())
                    .map(str::to_owned);
                Vec::new()
            }
            Some("assistant") => {
                let calls: Vec<String> = event["message"]["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "tool_use")
                    .filter_map(|b| b["name"].as_str().map(str::to_owned))
                    .collect();
                self.tool_calls.extend(calls.iter().cloned());
                calls
            }
            Some("result") => {
                self.result = Some(event);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    pub fn cost_usd(&self) -> f64 {
        self.result.as_ref().and_then(|r| r["total_cost_usd"].as_f64()).unwrap_or(0.0)
    }

    pub fn turns(&self) -> u64 {
        self.result.as_ref().and_then(|r| r["num_turns"].as_u64()).unwrap_or(0)
    }

    /// How the run ended, from the result event.
    pub fn ending(&self) -> Ending {
        let Some(r) = &self.result else { return Ending::NoResult };
        let text = r["result"].as_str().unwrap_or_default().to_owned();
        if r["subtype"] == "error_max_turns" || r["terminal_reason"] == "max_turns" {
            return Ending::MaxTurns;
        }
        if r["is_error"] != true && r["subtype"] == "success" {
            return Ending::Completed;
        }
        let status = r["api_error_status"].as_u64();
        let api_error = r["api_error"].as_str().unwrap_or_default();
        match status {
            Some(429) => Ending::Refused429(text),
            Some(500..=599) => Ending::Unreachable(text),
            None if api_error == "connection_failed"
                || (r["terminal_reason"] == "api_error"
                    && (text.contains("Connection") || text.contains("ECONNREFUSED"))) =>
            {
                Ending::Unreachable(text)
            }
            _ => {
                let subtype = r["subtype"].as_str().unwrap_or("error");
                let what = if text.is_empty() { subtype.to_owned() } else { text };
                Ending::Failed(match status {
                    Some(s) => format!("{what} (HTTP {s})"),
                    None => what,
                })
            }
        }
    }
}

/// How Claude Code's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Completed,
    MaxTurns,
    /// The model could not be reached: connection failed or 5xx after the retries.
    Unreachable(String),
    /// A 429 that was not (or no longer) retried: budget spent or rate limit.
    Refused429(String),
    /// Any other error the result event reports.
    Failed(String),
    /// Claude Code printed no result event (it crashed or was killed).
    NoResult,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(result: Value) -> Ending {
        let mut s = Stream::default();
        s.observe(
            &json!({"type":"system","subtype":"init","model":"m",
            "mcp_servers":[{"name":"sanctum","status":"connected"}]})
            .to_string(),
        );
        s.observe(&result.to_string());
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(s.mcp_status.as_deref(), Some("connected"));
        s.ending()
    }

    #[test]
    fn endings_as_observed() {
        assert_eq!(
            ending(json!({"type":"result","subtype":"success","is_error":false,"num_turns":3})),
            Ending::Completed
        );
        assert_eq!(
            ending(json!({"type":"result","subtype":"error_max_turns","is_error":true})),
            Ending::MaxTurns
        );
        let refused = "API Error: Connection refused (ECONNREFUSED)";
        assert_eq!(
            ending(json!({"type":"result","subtype":"success","is_error":true,
                "api_error_status":null,"api_error":"connection_failed","result":refused})),
            Ending::Unreachable(refused.into())
        );
        assert!(matches!(
            ending(json!({"type":"result","is_error":true,"api_error_status":503})),
            Ending::Unreachable(_)
        ));
        assert!(matches!(
            ending(json!({"type":"result","is_error":true,"api_error_status":429,"result":"budget"})),
            Ending::Refused429(m) if m == "budget"
        ));
        assert_eq!(
            ending(json!({"type":"result","is_error":true,"api_error_status":401,"result":"bad"})),
            Ending::Failed("bad (HTTP 401)".into())
        );
        assert_eq!(Stream::default().ending(), Ending::NoResult);
    }

    #[test]
    fn command_line_is_read_only() {
        let a = args("review", Some(7), Path::new("/tmp/mcp.json"));
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("--tools"), "Read,Grep,Glob");
        assert_eq!(after("--allowedTools"), "Read,Grep,Glob,mcp__sanctum__report_finding");
        assert!(after("--disallowedTools").contains("Bash"));
        assert_eq!(after("--max-turns"), "7");
        assert!(a.contains(&"--strict-mcp-config".to_owned()));
        let e = env(|k| k == "CLAUDE_CODE_MAX_RETRIES");
        assert!(e.contains(&("ENABLE_TOOL_SEARCH", "false")));
        assert!(!e.iter().any(|(k, _)| *k == "CLAUDE_CODE_MAX_RETRIES"));
    }
}
