//! `sanctum-scanner mcp`: the `report_finding` tool, an MCP server over stdio (rmcp), started
//! by Claude Code from the config that [`crate::claude::mcp_config`] writes.
//!
//! Every accepted finding is appended as one JSON line ([`crate::finding::Finding`]) to the
//! findings file that `run` reads after Claude Code exits. A refused one is answered with a
//! tool error (`isError: true`, MCP spec 2025-06-18 "Tools" → "Error Handling") carrying the
//! reason, which the model reads and can act on.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ErrorData, ServiceExt as _, tool, tool_router};

use crate::finding::{self, FindingInput};

/// Environment variable naming the findings file (JSON lines), set in the MCP config.
pub const FINDINGS_ENV: &str = "SANCTUM_FINDINGS_FILE";
/// The MCP server's name in the config; Claude Code names the tool `mcp__sanctum__report_finding`.
pub const SERVER_NAME: &str = "sanctum";
/// The tool's name as the model sees it.
pub const TOOL: &str = "mcp__sanctum__report_finding";

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("{0} is not set: `sanctum-scanner mcp` is started by `sanctum-scanner run`")]
    MissingEnv(&'static str),
    #[error("repository {path}: {source}")]
    Repo { path: PathBuf, source: std::io::Error },
    #[error("MCP transport failed: {0}")]
    Transport(String),
}

/// The server: the repository (canonical path) and the findings file.
pub struct Reporter {
    repo: PathBuf,
    findings: PathBuf,
    // One append at a time, so two concurrent calls never interleave a line.
    lock: Mutex<()>,
}

#[tool_router(server_handler)]
impl Reporter {
    /// Records one security finding. Refuses (as a tool error with the reason) a finding
    /// whose file is not in the repository or whose lines are not in the file.
    #[tool(
        name = "report_finding",
        description = "Record one security vulnerability you found in the repository. Call it once per \
        finding. `file` is relative to the repository root; `start_line`/`end_line` are 1-based \
        lines of that file. A finding that does not point at real lines is refused with the \
        reason: correct it and call again."
    )]
    fn report_finding(
        &self,
        Parameters(input): Parameters<FindingInput>,
    ) -> Result<CallToolResult, ErrorData> {
        match finding::check(&self.repo, input) {
            Ok(f) => match self.append(&f) {
                Ok(()) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                    "Recorded {} finding {:?} at {}:{}-{}.",
                    f.severity.as_str(),
                    f.rule_id,
                    f.file,
                    f.start_line,
                    f.end_line
                ))])),
                Err(e) => Err(ErrorData::internal_error(
                    format!("cannot write the findings file {}: {e}", self.findings.display()),
                    None,
                )),
            },
            Err(refusal) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "Finding refused: {refusal}."
            ))])),
        }
    }
}

impl Reporter {
    /// A reporter for `repo`, appending to `findings`.
    ///
    /// # Errors
    /// [`McpError::Repo`] when the repository cannot be resolved.
    pub fn new(repo: PathBuf, findings: PathBuf) -> Result<Self, McpError> {
        let repo =
            std::fs::canonicalize(&repo).map_err(|source| McpError::Repo { path: repo, source })?;
        Ok(Self { repo, findings, lock: Mutex::new(()) })
    }

    fn append(&self, f: &finding::Finding) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(f)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.findings)?;
        file.write_all(&line)
    }
}

/// Serves the tool on stdin/stdout until the client closes them.
///
/// # Errors
/// A missing `SANCTUM_REPO` / [`FINDINGS_ENV`], an unresolvable repository, a broken transport.
pub async fn serve_stdio() -> Result<(), McpError> {
    let repo = std::env::var_os("SANCTUM_REPO").ok_or(McpError::MissingEnv("SANCTUM_REPO"))?;
    let findings = std::env::var_os(FINDINGS_ENV).ok_or(McpError::MissingEnv(FINDINGS_ENV))?;
    let server = Reporter::new(repo.into(), findings.into())?;
    let service = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Transport(e.to_string()))?;
    service.waiting().await.map_err(|e| McpError::Transport(e.to_string()))?;
    Ok(())
}
