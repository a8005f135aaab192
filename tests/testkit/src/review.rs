//! A scripted security review, played by the stand-in provider when a request offers a
//! `…report_finding` tool (as the reference scanner's Claude Code does). Stateless: the next
//! step follows from the conversation in the request, counted in `tool_result` blocks.
//!
//! 1. `Grep` for dangerous calls (files with matches);
//! 2. `Read` of the `app.py` the grep found (`examples/vulnerable-app`);
//! 3. `report_finding` for the SQL injection at line 9999, past the end of the file: the
//!    scanner must refuse it as a tool error;
//! 4. the same finding, corrected to the line the `Read` result shows;
//! 5. more findings ([`FINDINGS`]), one call each;
//! 6. a closing text, `end_turn`.
//!
//! Line numbers come from the `Read` result (`cat -n` style, `   29\t…` or `29→…`), found by
//! each finding's snippet, so the script follows edits to the example app.

use serde_json::{Value, json};

use crate::Reply;

/// The line the deliberately bad first report names: past the end of any example file.
pub const BAD_LINE: u64 = 9999;

/// The file every scripted finding is in, relative to the repository.
pub const FILE: &str = "app.py";

/// One scripted finding: rule, title, what is wrong, severity, CWE and the snippet that
/// locates its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planted {
    pub rule_id: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub severity: &'static str,
    pub cwe: &'static str,
    pub snippet: &'static str,
}

/// What the script reports after the refused one, in order.
pub const FINDINGS: [Planted; 3] = [
    Planted {
        rule_id: "sql-injection",
        title: "SQL injection in /login",
        description: "The form's username and password are formatted into the SQL text, so a crafted value changes the query.",
        severity: "high",
        cwe: "CWE-89",
        snippet: "query = \"SELECT",
    },
    Planted {
        rule_id: "command-injection",
        title: "OS command injection in /ping",
        description: "The host parameter reaches a shell (shell=True): `;` or `$(...)` in it runs commands.",
        severity: "critical",
        cwe: "CWE-78",
        snippet: "shell=True",
    },
    Planted {
        rule_id: "hardcoded-secret",
        title: "Hard-coded payment API key",
        description: "A payment API key is in the source, readable by anyone who can read the repository.",
        severity: "medium",
        cwe: "CWE-798",
        snippet: "PAYMENT_API_KEY = \"",
    },
];

/// The closing answer.
pub const SUMMARY: &str =
    "Review complete: SQL injection, OS command injection and a hard-coded key reported.";

/// True when the request offers a tool named `report_finding` (any MCP prefix).
pub fn wants_review(request: &Value) -> bool {
    tool_names(request).iter().any(|n| n == "report_finding" || n.ends_with("__report_finding"))
}

fn tool_names(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

/// The `tool_result` blocks of the conversation, in order: (text, is_error).
fn tool_results(request: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for m in request["messages"].as_array().into_iter().flatten() {
        for b in m["content"].as_array().into_iter().flatten() {
            if b["type"] != "tool_result" {
                continue;
            }
            let text = match &b["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => {
                    parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")
                }
                _ => String::new(),
            };
            out.push((text, b["is_error"] == true));
        }
    }
    out
}

/// The 1-based line whose text contains `snippet` in a `cat -n` style listing.
pub fn line_of(listing: &str, snippet: &str) -> Option<u64> {
    listing.lines().find_map(|l| {
        let t = l.trim_start();
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().ok()?;
        t[digits.len()..].contains(snippet).then_some(n)
    })
}

/// The absolute path of `app.py`: from the grep result, else the working directory that
/// Claude Code names in its system prompt.
fn app_path(request: &Value, grep_result: &str) -> String {
    if let Some(p) = grep_result.lines().map(str::trim).find(|l| l.ends_with(&format!("/{FILE}"))) {
        return p.to_owned();
    }
    let system = request["system"].to_string();
    let cwd = system
        .split("Working directory: ")
        .nth(1)
        .and_then(|rest| rest.split(['\\', '\n', '"']).next())
        .unwrap_or(".");
    format!("{cwd}/{FILE}")
}

fn finding(p: &Planted, line: u64) -> Value {
    json!({
        "rule_id": p.rule_id,
        "title": p.title,
        "description": p.description,
        "severity": p.severity,
        "file": FILE,
        "start_line": line,
        "cwe": p.cwe,
        "remediation": "Do not pass untrusted input to this call; see the CWE entry.",
    })
}

/// The next answer of the review, or `None` when the request is not one (no report tool).
pub fn reply(request: &Value) -> Option<Reply> {
    if !wants_review(request) {
        return None;
    }
    let names = tool_names(request);
    let tool = |short: &str| {
        names
            .iter()
            .find(|n| *n == short || n.ends_with(&format!("__{short}")))
            .cloned()
            .unwrap_or_else(|| short.to_owned())
    };
    let results = tool_results(request);
    let listing = results.get(1).map_or("", |(t, _)| t.as_str());
    let reply = match results.len() {
        0 => Reply::ToolUse {
            name: tool("Grep"),
            input: json!({
                "pattern": "execute\\(|shell=True|pickle\\.loads|requests\\.get|API_KEY",
                "output_mode": "files_with_matches",
            }),
        },
        1 => Reply::ToolUse {
            name: tool("Read"),
            input: json!({"file_path": app_path(request, &results[0].0)}),
        },
        2 => {
            Reply::ToolUse { name: tool("report_finding"), input: finding(&FINDINGS[0], BAD_LINE) }
        }
        n if n - 3 < FINDINGS.len() => {
            let p = &FINDINGS[n - 3];
            Reply::ToolUse {
                name: tool("report_finding"),
                input: finding(p, line_of(listing, p.snippet).unwrap_or(1)),
            }
        }
        _ => Reply::Text(SUMMARY.to_owned()),
    };
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(results: &[(&str, bool)]) -> Value {
        let mut messages = vec![json!({"role": "user", "content": "review"})];
        for (i, (text, err)) in results.iter().enumerate() {
            messages.push(json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": format!("t{i}"), "name": "x", "input": {}}]}));
            messages.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": format!("t{i}"), "content": text, "is_error": err}]}));
        }
        json!({"tools": [{"name": "Grep"}, {"name": "Read"}, {"name": "mcp__sanctum__report_finding"}],
               "system": [{"type": "text", "text": "Working directory: /repo\nx"}],
               "messages": messages})
    }

    fn tool_use(r: Option<Reply>) -> (String, Value) {
        match r {
            Some(Reply::ToolUse { name, input }) => (name, input),
            other => panic!("not a tool use: {other:?}"),
        }
    }

    #[test]
    fn plays_the_review_in_order() {
        assert_eq!(reply(&json!({"messages": [], "tools": [{"name": "Read"}]})), None);
        assert_eq!(tool_use(reply(&request(&[]))).0, "Grep");
        let (name, input) = tool_use(reply(&request(&[("Found 1 file\n/r/app.py", false)])));
        assert_eq!((name.as_str(), input["file_path"].as_str()), ("Read", Some("/r/app.py")));
        let (_, input) = tool_use(reply(&request(&[("No files found", false)])));
        assert_eq!(input["file_path"], "/repo/app.py");

        let listing =
            "    28\t    x\n    29\t    query = \"SELECT id\"\n40→out = run(shell=True)\n";
        let base = [("Found 1 file\n/r/app.py", false), (listing, false)];
        let (name, bad) = tool_use(reply(&request(&base)));
        assert_eq!(
            (name.as_str(), bad["start_line"].as_u64()),
            ("mcp__sanctum__report_finding", Some(BAD_LINE))
        );
        let mut conv = base.to_vec();
        conv.push(("refused", true));
        let (_, fixed) = tool_use(reply(&request(&conv)));
        assert_eq!(
            (fixed["rule_id"].as_str(), fixed["start_line"].as_u64()),
            (Some("sql-injection"), Some(29))
        );
        conv.push(("ok", false));
        assert_eq!(tool_use(reply(&request(&conv))).1["start_line"], 40);
        conv.push(("ok", false));
        assert_eq!(tool_use(reply(&request(&conv))).1["rule_id"], "hardcoded-secret");
        conv.push(("ok", false));
        assert_eq!(reply(&request(&conv)), Some(Reply::Text(SUMMARY.to_owned())));
    }

    #[test]
    fn snippets_are_in_the_example_app() {
        let app = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/vulnerable-app/app.py"),
        )
        .unwrap();
        let listing: String =
            app.lines().enumerate().map(|(i, l)| format!("{:>6}\t{l}\n", i + 1)).collect();
        for p in FINDINGS {
            let n = line_of(&listing, p.snippet)
                .unwrap_or_else(|| panic!("{} not in app.py", p.snippet));
            assert!(app.lines().nth(n as usize - 1).unwrap().contains(p.snippet));
        }
    }
}
