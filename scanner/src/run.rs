//! `sanctum-scanner run`: check the repository, run Claude Code over it with the
//! `report_finding` tool, then write the SARIF and the summary — in every case, a partial
//! SARIF and a summary with `error` when something went wrong — and exit with a status that
//! says what happened ([`Exit`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::claude::{self, Ending, Stream};
use crate::config::{ConfigError, RunConfig};
use crate::finding::Finding;
use crate::sarif;
use crate::summary::{Counts, Summary};

/// The exit status of `sanctum-scanner run`; the summary's `error` says the same in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The review completed (with or without findings).
    Ok = 0,
    /// The run is misconfigured: a missing setting, an unreadable repository, Claude Code not
    /// found, the output not writable.
    Config = 2,
    /// The repository holds no file: nothing to review, the model was not called.
    EmptyRepo = 3,
    /// The model could not be reached: connection refused or 5xx after the retries.
    Unreachable = 4,
    /// The gateway refused with 429 and no retry: the run's budget (or rate) is spent.
    Budget = 5,
    /// The turn limit (`SANCTUM_MAX_TURNS`) was reached before the review finished.
    MaxTurns = 6,
    /// Claude Code failed otherwise (another API error, a crash, the MCP tool did not start).
    AgentFailed = 7,
    /// The scanner was told to stop (SIGTERM, SIGINT) before Claude Code finished.
    Interrupted = 8,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub exit: Exit,
    pub summary: Summary,
    pub findings: Vec<Finding>,
}

/// True when the repository holds no regular file outside `.git` (symbolic links are not
/// followed).
///
/// # Errors
/// The repository (or a directory in it) cannot be read.
pub fn repo_is_empty(repo: &Path) -> std::io::Result<bool> {
    let mut dirs = vec![repo.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_file() || kind.is_symlink() {
                return Ok(false);
            }
            if kind.is_dir() && entry.file_name() != ".git" {
                dirs.push(entry.path());
            }
        }
    }
    Ok(true)
}

/// The findings file's accepted findings, in order; a missing file is none, a malformed line
/// is skipped. A finding of the same rule at the same place as an earlier one is a duplicate
/// (models do report a flaw twice, worded differently) and is dropped.
pub fn read_findings(path: &Path) -> Vec<Finding> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<Finding> = Vec::new();
    for line in text.lines() {
        if let Ok(f) = serde_json::from_str::<Finding>(line)
            && !out
                .iter()
                .any(|o| (&o.rule_id, &o.file, o.start_line) == (&f.rule_id, &f.file, f.start_line))
        {
            out.push(f);
        }
    }
    out
}

/// The exit status and error text for how Claude Code's run ended; `detail` (its exit status
/// and the tail of its standard error) explains a run that printed no result.
pub fn judge(ending: &Ending, stream: &Stream, detail: &str) -> (Exit, Option<String>) {
    // The tool worked if the model used it, whatever the init event said (a slow server can
    // be listed as "pending" there and connect a moment later).
    let tool_worked = stream.mcp_status.as_deref() == Some("connected")
        || stream.tool_calls.iter().any(|t| t == crate::mcp::TOOL);
    match ending {
        Ending::Completed => match stream.mcp_status.as_deref() {
            _ if tool_worked => (Exit::Ok, None),
            status => (
                Exit::AgentFailed,
                Some(format!(
                    "the report_finding MCP server did not start in Claude Code (status: {}); \
                     findings could not be reported",
                    status.unwrap_or("not listed")
                )),
            ),
        },
        Ending::MaxTurns => (
            Exit::MaxTurns,
            Some(format!(
                "the turn limit was reached after {} turns; the SARIF holds the findings so far \
                 (raise spec.agent.maxTurns)",
                stream.turns()
            )),
        ),
        Ending::Unreachable(m) => (
            Exit::Unreachable,
            Some(format!(
                "the model could not be reached through ANTHROPIC_BASE_URL after retries: {m} \
                 (is the sanctum-bridge sidecar running and the gateway reachable?)"
            )),
        ),
        Ending::Refused429(m) => (
            Exit::Budget,
            Some(format!(
                "the gateway refused further model calls (429, budget or rate limit spent): {m}"
            )),
        ),
        Ending::Failed(m) => (Exit::AgentFailed, Some(format!("Claude Code failed: {m}"))),
        Ending::NoResult => (
            Exit::AgentFailed,
            Some(format!("Claude Code ended without a result ({})", detail.trim())),
        ),
    }
}

/// Runs the review described by the environment; writes the SARIF and the summary.
pub async fn run_from_env() -> Outcome {
    match RunConfig::from_env(|k| std::env::var(k).ok()) {
        Ok(config) => run(&config).await,
        Err(e) => config_failure(&e),
    }
}

fn config_failure(e: &ConfigError) -> Outcome {
    // Without SANCTUM_OUTPUT there is nowhere for SARIF; the summary still goes out.
    let log = std::env::var_os("SANCTUM_TERMINATION_LOG")
        .map_or_else(|| PathBuf::from(crate::config::TERMINATION_LOG), PathBuf::from);
    let summary = Summary {
        findings: Counts::default(),
        cost_usd: 0.0,
        turns: 0,
        model: std::env::var("ANTHROPIC_MODEL").ok(),
        sarif: String::new(),
        error: Some(e.to_string()),
    };
    let _ = std::fs::write(&log, summary.to_json());
    Outcome { exit: Exit::Config, summary, findings: Vec::new() }
}

/// Runs the review of `config`; writes the SARIF and the summary.
pub async fn run(config: &RunConfig) -> Outcome {
    let (exit, error, stream, findings) = review(config).await;
    finish(config, exit, error, &stream, findings)
}

async fn review(config: &RunConfig) -> (Exit, Option<String>, Stream, Vec<Finding>) {
    let fail = |exit, msg: String| (exit, Some(msg), Stream::default(), Vec::new());
    let repo = match std::fs::canonicalize(&config.repo) {
        Ok(r) if r.is_dir() => r,
        _ => {
            return fail(
                Exit::Config,
                format!("SANCTUM_REPO={} is not a readable directory", config.repo.display()),
            );
        }
    };
    match repo_is_empty(&repo) {
        Ok(true) => {
            return fail(
                Exit::EmptyRepo,
                format!("the repository {} holds no file: nothing to review", repo.display()),
            );
        }
        Ok(false) => {}
        Err(e) => {
            return fail(
                Exit::Config,
                format!("cannot read the repository {}: {e}", repo.display()),
            );
        }
    }
    let work = config.tmp.join(format!("sanctum-scanner-{}", std::process::id()));
    let findings_path = work.join("findings.jsonl");
    let mcp_path = work.join("mcp.json");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(Exit::Config, format!("cannot find this executable: {e}")),
    };
    let mcp = claude::mcp_config(&exe, &repo, &findings_path);
    if let Err(e) =
        std::fs::create_dir_all(&work).and_then(|()| std::fs::write(&mcp_path, mcp.to_string()))
    {
        return fail(
            Exit::Config,
            format!(
                "cannot write the MCP config in {} (TMPDIR must be writable): {e}",
                work.display()
            ),
        );
    }
    let prompt = crate::prompt::build(config.prompt.as_deref());
    let mut cmd = tokio::process::Command::new(&config.claude);
    cmd.args(claude::args(&prompt, config.max_turns, &mcp_path))
        .envs(claude::env(|k| std::env::var_os(k).is_some()))
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                Exit::Config,
                format!(
                    "cannot start Claude Code at {:?}: {e} (set SANCTUM_CLAUDE to its path)",
                    config.claude
                ),
            );
        }
    };
    eprintln!("sanctum-scanner: reviewing {} with Claude Code", repo.display());
    let (mut stream, stderr_tail, interrupted) = follow(&mut child).await;
    let findings = read_findings(&findings_path);
    let _ = std::fs::remove_dir_all(&work);
    if interrupted {
        let msg = "interrupted (SIGTERM/SIGINT) before Claude Code finished; the SARIF holds the findings so far";
        return (Exit::Interrupted, Some(msg.to_owned()), stream, findings);
    }
    if stream.model.is_none() {
        stream.model.clone_from(&config.model);
    }
    let (exit, error) = judge(&stream.ending(), &stream, &stderr_tail);
    (exit, error, stream, findings)
}

/// Follows Claude Code's output until it exits, or until a stop signal (then kills it).
/// Returns the stream, its exit status with the last 2 KiB of its standard error, and
/// whether it was interrupted.
async fn follow(child: &mut tokio::process::Child) -> (Stream, String, bool) {
    let mut stream = Stream::default();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Keep only the tail: a chatty or looping CLI must not grow the scanner's memory.
    let stderr_task = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        if let Some(mut e) = stderr {
            while let Ok(n @ 1..) = e.read(&mut chunk).await {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2048 {
                    tail.drain(..tail.len() - 2048);
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut interrupted = false;
    if let Some(out) = stdout {
        let mut lines = BufReader::new(out).lines();
        loop {
            let stop = async {
                match term.as_mut() {
                    Some(t) => {
                        tokio::select! { _ = t.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        for tool in stream.observe(&line) {
                            eprintln!("sanctum-scanner: the model called {tool}");
                        }
                    }
                    _ => break,
                },
                () = stop => { interrupted = true; break; }
            }
        }
    }
    if interrupted {
        let _ = child.start_kill();
    }
    let status = child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
    let tail = stderr_task.await.unwrap_or_default();
    let tail = tail.trim();
    let detail = if tail.is_empty() { status } else { format!("{status}: {tail}") };
    (stream, detail, interrupted)
}

/// Writes the SARIF and the summary; a failure to write the SARIF becomes the error.
fn finish(
    config: &RunConfig,
    mut exit: Exit,
    mut error: Option<String>,
    stream: &Stream,
    findings: Vec<Finding>,
) -> Outcome {
    let sarif_path = config.sarif_path();
    let repo = std::fs::canonicalize(&config.repo).unwrap_or_else(|_| config.repo.clone());
    let doc = sarif::build(
        &findings,
        &sarif::RunInfo { repo: &repo, run: config.run.as_deref(), error: error.as_deref() },
    );
    let written = std::fs::create_dir_all(&config.output)
        .and_then(|()| std::fs::write(&sarif_path, sarif::to_json(&doc)));
    if let Err(e) = written {
        let msg =
            format!("cannot write {} (SANCTUM_OUTPUT must be writable): {e}", sarif_path.display());
        error = Some(match error {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
        if exit == Exit::Ok {
            exit = Exit::Config;
        }
    }
    let summary = Summary {
        findings: Counts::of(&findings),
        cost_usd: stream.cost_usd(),
        turns: stream.turns(),
        model: stream.model.clone().or_else(|| config.model.clone()),
        sarif: sarif_path.to_string_lossy().into_owned(),
        error,
    };
    if let Err(e) = std::fs::write(&config.termination_log, summary.to_json()) {
        eprintln!(
            "sanctum-scanner: cannot write the summary to {}: {e}",
            config.termination_log.display()
        );
    }
    Outcome { exit, summary, findings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_no_file_outside_git() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".git/objects")).unwrap();
        std::fs::write(d.path().join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(d.path().join("src/empty")).unwrap();
        assert!(repo_is_empty(d.path()).unwrap());
        std::fs::write(d.path().join("src/empty/a.py"), "x").unwrap();
        assert!(!repo_is_empty(d.path()).unwrap());
    }

    #[test]
    fn findings_file_tolerates_junk_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let f = r#"{"rule_id":"r","title":"t","description":"d","severity":"low","file":"a","start_line":1,"end_line":1}"#;
        let reworded = f.replace(r#""title":"t""#, r#""title":"again""#);
        let elsewhere = f.replace(r#""start_line":1"#, r#""start_line":2"#);
        std::fs::write(
            d.path().join("f"),
            format!("{f}\nnot json\n{f}\n{reworded}\n{elsewhere}\n"),
        )
        .unwrap();
        let got = read_findings(&d.path().join("f"));
        assert_eq!(
            got.iter().map(|f| (f.title.as_str(), f.start_line)).collect::<Vec<_>>(),
            [("t", 1), ("t", 2)]
        );
        assert!(read_findings(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn a_completed_run_needs_the_tool() {
        let s = Stream { mcp_status: Some("failed".into()), ..Stream::default() };
        let (exit, err) = judge(&Ending::Completed, &s, "");
        assert_eq!(exit, Exit::AgentFailed);
        assert!(err.unwrap().contains("status: failed"));
        let s = Stream { mcp_status: Some("connected".into()), ..Stream::default() };
        assert_eq!(judge(&Ending::Completed, &s, ""), (Exit::Ok, None));
        let s = Stream {
            mcp_status: Some("pending".into()),
            tool_calls: vec![crate::mcp::TOOL.into()],
            ..Stream::default()
        };
        assert_eq!(judge(&Ending::Completed, &s, ""), (Exit::Ok, None));
        assert_eq!(judge(&Ending::Completed, &Stream::default(), "").0, Exit::AgentFailed);
    }
}
