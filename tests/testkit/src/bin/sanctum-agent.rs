//! sanctum-agent: the entrypoint of the `sanctum-agent` test image. Runs the native Claude Code
//! CLI once (`claude -p PROMPT --output-format json`), turns its result object into the run
//! summary of the design contract and writes it to the termination log.
//!
//! Environment (all optional):
//! - `SANCTUM_PROMPT`: the prompt (default: a one-word reply).
//! - `SANCTUM_MAX_TURNS`: passed as `--max-turns`.
//! - `SANCTUM_CLAUDE`: the CLI (default `/usr/local/bin/claude`).
//! - `SANCTUM_TERMINATION_LOG`: where the summary goes (default `/dev/termination-log`).
//! - `HOME`, `TMPDIR`, `ANTHROPIC_*`: passed through to the CLI as the pod sets them.
//!
//! Exit status: 0 when the CLI succeeded and reported `is_error: false`, 1 otherwise.
//!
//! Other modes, for the end-to-end suite's pods (what a real node must do to a real process):
//! - `sanctum-agent probe HOST:PORT...`: tries a TCP connection to each (3 s each) and writes
//!   the summary with `"probes": {"HOST:PORT": "connected" | "refused" | "timeout" | …}`;
//! - `sanctum-agent sleep SECONDS`: does nothing for that long (a run past its deadline);
//! - `sanctum-agent eat-memory`: touches memory 8 MiB at a time until the kernel kills it.

use std::process::{Command, ExitCode, Stdio};

use serde_json::{Value, json};

const DEFAULT_PROMPT: &str = "Reply with the single word: ready.";
const DEFAULT_CLAUDE: &str = "/usr/local/bin/claude";
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Kubernetes keeps at most 4096 bytes of a termination message.
const SUMMARY_LIMIT: usize = 4096;

/// What the CLI's JSON result says, or why there is none.
struct Outcome {
    cost_usd: f64,
    turns: u64,
    error: Option<String>,
}

/// Finds the `{"type":"result",...}` object: the whole output, or the last element of an array
/// (older CLIs printed every message).
fn result_object(stdout: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(stdout.trim()).ok()? {
        Value::Array(items) => items
            .into_iter()
            .rev()
            .find(|v| v.get("type").and_then(Value::as_str) == Some("result")),
        v @ Value::Object(_) => Some(v),
        _ => None,
    }
}

fn outcome(status_ok: bool, status: &str, stdout: &str) -> Outcome {
    let Some(result) = result_object(stdout) else {
        let head: String = stdout.chars().take(300).collect();
        return Outcome {
            cost_usd: 0.0,
            turns: 0,
            error: Some(format!("claude ({status}) printed no JSON result object: {head:?}")),
        };
    };
    let cost_usd = result.get("total_cost_usd").and_then(Value::as_f64).unwrap_or(0.0);
    let turns = result.get("num_turns").and_then(Value::as_u64).unwrap_or(0);
    let is_error = result.get("is_error").and_then(Value::as_bool).unwrap_or(true);
    let error = if is_error || !status_ok {
        let detail = result
            .get("result")
            .or_else(|| result.get("subtype"))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default();
        Some(format!("claude ({status}) reported an error: {detail}"))
    } else {
        None
    };
    Outcome { cost_usd, turns, error }
}

/// The run summary (≤ 4 KiB): no findings (this agent does not review), cost, turns, and the
/// error shortened until the whole fits.
fn summary(o: &Outcome) -> String {
    let mut error = o.error.clone();
    loop {
        let mut v = json!({
            "findings": {"critical": 0, "high": 0, "medium": 0, "low": 0, "note": 0},
            "costUsd": o.cost_usd,
            "turns": o.turns,
            "sarif": "",
        });
        if let Some(e) = &error {
            v["error"] = json!(e);
        }
        let text = v.to_string();
        match &mut error {
            Some(e) if text.len() > SUMMARY_LIMIT => {
                let keep = e.len().saturating_sub(text.len() - SUMMARY_LIMIT + 3);
                let mut cut = keep;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
            _ => return text,
        }
    }
}

/// The outcome of a TCP connection attempt, in the words the e2e suite asserts on.
fn probe(target: &str) -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs = match target.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return format!("unresolved: {e}"),
    };
    let Some(addr) = addrs.first() else { return "unresolved".into() };
    match TcpStream::connect_timeout(addr, std::time::Duration::from_secs(3)) {
        Ok(_) => "connected".into(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// The modes other than one turn; `None` when `args` asks for none of them.
fn other_mode(args: &[String], log: &str) -> Option<ExitCode> {
    match args.first().map(String::as_str)? {
        "probe" => {
            let probes: serde_json::Map<String, Value> =
                args[1..].iter().map(|t| (t.clone(), Value::String(probe(t)))).collect();
            let text = json!({
                "findings": {"critical": 0, "high": 0, "medium": 0, "low": 0, "note": 0},
                "costUsd": 0.0,
                "sarif": "",
                "probes": probes,
            })
            .to_string();
            println!("{text}");
            Some(if std::fs::write(log, text).is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        "sleep" => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3600);
            std::thread::sleep(std::time::Duration::from_secs(secs));
            Some(ExitCode::SUCCESS)
        }
        "eat-memory" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                // Written, not only allocated, so the pages really count against the limit.
                held.push(vec![1u8; 8 << 20]);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        other => {
            eprintln!("sanctum-agent: unknown mode '{other}' (probe, sleep, eat-memory, or none)");
            Some(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let env = |k: &str, d: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_owned())
    };
    let claude = env("SANCTUM_CLAUDE", DEFAULT_CLAUDE);
    let log = env("SANCTUM_TERMINATION_LOG", DEFAULT_TERMINATION_LOG);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = other_mode(&args, &log) {
        return code;
    }
    let mut cmd = Command::new(&claude);
    cmd.args(["-p", &env("SANCTUM_PROMPT", DEFAULT_PROMPT), "--output-format", "json"])
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Ok(turns) = std::env::var("SANCTUM_MAX_TURNS")
        && !turns.is_empty()
    {
        cmd.args(["--max-turns", &turns]);
    }
    let outcome = match cmd.output() {
        Ok(out) => outcome(
            out.status.success(),
            &out.status.to_string(),
            &String::from_utf8_lossy(&out.stdout),
        ),
        Err(e) => Outcome {
            cost_usd: 0.0,
            turns: 0,
            error: Some(format!("start {claude}: {e} (set SANCTUM_CLAUDE to the CLI's path)")),
        },
    };
    let text = summary(&outcome);
    println!("{text}");
    if let Err(e) = std::fs::write(&log, &text) {
        eprintln!("sanctum-agent: write the summary to {log}: {e} (set SANCTUM_TERMINATION_LOG)");
        return ExitCode::FAILURE;
    }
    if let Some(e) = &outcome.error {
        eprintln!("sanctum-agent: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tells_connected_from_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert_eq!(probe(&open), "connected");
        assert_eq!(probe(&closed), "refused");
        assert!(probe("no-such-host.invalid:80").starts_with("unresolved"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let code = other_mode(&["probe".into(), open.clone()], log.to_str().unwrap());
        assert_eq!(code, Some(ExitCode::SUCCESS));
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
        assert_eq!(summary["probes"][&open], "connected");
        assert_eq!(summary["findings"]["high"], 0);
        assert_eq!(other_mode(&[], "unused"), None);
    }

    #[test]
    fn a_success_result_gives_cost_and_turns() {
        let o = outcome(
            true,
            "exit status: 0",
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.25,"result":"ready"}"#,
        );
        assert!(o.error.is_none());
        let v: Value = serde_json::from_str(&summary(&o)).unwrap();
        assert_eq!(v["costUsd"], 0.25);
        assert_eq!(v["turns"], 2);
        assert_eq!(v["findings"]["high"], 0);
        assert_eq!(v["sarif"], "");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn an_error_or_no_json_is_reported_and_the_summary_stays_under_4_kib() {
        let o = outcome(
            false,
            "exit status: 1",
            r#"{"type":"result","is_error":true,"result":"API Error: 500"}"#,
        );
        assert!(o.error.as_deref().unwrap().contains("API Error: 500"));
        let o = outcome(false, "exit status: 1", &"x".repeat(10_000));
        assert!(o.error.as_deref().unwrap().contains("no JSON result"));
        let long = Outcome { cost_usd: 0.0, turns: 0, error: Some("é".repeat(5000)) };
        let s = summary(&long);
        assert!(s.len() <= SUMMARY_LIMIT, "{}", s.len());
        assert!(
            serde_json::from_str::<Value>(&s).unwrap()["error"].as_str().unwrap().ends_with('…')
        );
    }
}
