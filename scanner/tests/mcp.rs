//! `sanctum-scanner mcp` as Claude Code meets it: a process speaking MCP (JSON-RPC 2.0, one
//! message per line) on stdin/stdout. The tool list, one accepted finding, and every way a
//! finding is refused — each a tool result with `isError: true` and a reason the model can act
//! on (MCP spec, "Tools" → "Error Handling") — with only the accepted one in the findings file.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(repo: &std::path::Path, findings: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sanctum-scanner"))
            .arg("mcp")
            .env_clear()
            .env("SANCTUM_REPO", repo)
            .env("SANCTUM_FINDINGS_FILE", findings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sanctum-scanner mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = Self { child, stdin, stdout, next_id: 0 };
        let init = s.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "scanner-test", "version": "1"}}),
        );
        assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, msg: &Value) {
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the server closed stdout");
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["id"] == id {
                return msg;
            }
        }
    }

    /// Calls report_finding; returns (is_error, text).
    fn report(&mut self, args: Value) -> (bool, String) {
        let r = self.request("tools/call", json!({"name": "report_finding", "arguments": args}));
        let result = &r["result"];
        assert!(result.is_object(), "a tool result, not a protocol error: {r}");
        (result["isError"] == true, result["content"][0]["text"].as_str().unwrap().to_owned())
    }
}

fn finding(file: &str, start: u64, end: Option<u64>) -> Value {
    let mut f = json!({"rule_id": "sql-injection", "title": "SQL injection", "description": "d",
        "severity": "high", "file": file, "start_line": start, "cwe": "CWE-89"});
    if let Some(e) = end {
        f["end_line"] = json!(e);
    }
    f
}

#[test]
fn report_finding_accepts_real_lines_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(repo.join("app/db.py"), "import sqlite3\nq = '%s' % x\ndb.execute(q)\n")
        .unwrap();
    std::fs::write(dir.path().join("outside.py"), "secret = 1\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.py"), repo.join("link.py")).unwrap();
    let findings = dir.path().join("findings.jsonl");
    let mut s = Server::start(&repo, &findings);

    let tools = s.request("tools/list", json!({}));
    let tool = &tools["result"]["tools"][0];
    assert_eq!(tool["name"], "report_finding");
    assert_eq!(tools["result"]["tools"].as_array().unwrap().len(), 1);
    let schema = &tool["inputSchema"];
    let mut required: Vec<&str> =
        schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort_unstable();
    assert_eq!(required, ["description", "file", "rule_id", "severity", "start_line", "title"]);
    assert!(schema.to_string().contains("critical"), "the severities are in the schema: {schema}");

    let (err, text) = s.report(finding("app/db.py", 2, Some(3)));
    assert!(!err, "{text}");
    assert!(text.contains("Recorded high finding"), "{text}");

    let abs = repo.join("app/db.py").to_string_lossy().into_owned();
    for (args, reason) in [
        (finding(&abs, 2, None), "is absolute"),
        (finding("../outside.py", 1, None), "leaves the repository"),
        (finding("link.py", 1, None), "resolves outside the repository"),
        (finding("app/nope.py", 1, None), "does not exist"),
        (finding("app", 1, None), "not a regular text file"),
        (finding("app/db.py", 0, None), "start_line 0 is not a line"),
        (finding("app/db.py", 4, None), "the file has 3 lines"),
        (finding("app/db.py", 3, Some(2)), "end_line 2 is before start_line 3"),
        (finding("app/db.py", 1, Some(9)), "end_line 9 is past the end"),
    ] {
        let (err, text) = s.report(args.clone());
        assert!(err, "{args} must be refused: {text}");
        assert!(
            text.starts_with("Finding refused: ") && text.contains(reason),
            "{text:?} / {reason}"
        );
    }

    let lines = std::fs::read_to_string(&findings).unwrap();
    let recorded: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recorded.len(), 1, "{lines}");
    assert_eq!(
        recorded[0],
        json!({"rule_id": "sql-injection", "title": "SQL injection", "description": "d",
               "severity": "high", "file": "app/db.py", "start_line": 2, "end_line": 3, "cwe": "CWE-89"})
    );
}

#[test]
fn without_its_environment_it_says_who_starts_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_sanctum-scanner"))
        .arg("mcp")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SANCTUM_REPO is not set") && err.contains("sanctum-scanner run"),
        "{err}"
    );
}
