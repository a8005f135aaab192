//! A finding as the model reports it through the `report_finding` tool, and the checks that
//! decide whether it is accepted: it must point at lines that exist in a file inside the
//! repository. A refused finding goes back to the model with the reason, so it can correct
//! itself (MCP spec, "Tools" → "Error Handling": tool execution errors are reported in the
//! result with `isError: true`, not as protocol errors).

use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How bad a finding is. Serialized lower case, as in the tool's input schema.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Note,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Note];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Note => "note",
        }
    }
}

/// The `report_finding` tool's input, as the model sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FindingInput {
    /// Short stable identifier of the kind of flaw, e.g. "sql-injection".
    pub rule_id: String,
    /// One-line title, e.g. "SQL injection in /login".
    pub title: String,
    /// What is wrong, how an attacker exploits it, and why it matters.
    pub description: String,
    /// One of critical, high, medium, low, note.
    pub severity: Severity,
    /// Path of the file, relative to the repository root (e.g. "app/db.py").
    pub file: String,
    /// First line of the flaw, 1-based.
    pub start_line: u64,
    /// Last line of the flaw, 1-based, not before start_line; defaults to start_line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_line: Option<u64>,
    /// CWE identifier, e.g. "CWE-89".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<String>,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// An accepted finding: the path normalised (relative, `/`-separated), `end_line` filled in,
/// the CWE written `CWE-<n>`. One JSON line of the findings file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule_id: String,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub file: String,
    pub start_line: u64,
    pub end_line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// Why a finding was refused; the message is what the model reads, so it says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0} is empty: give a non-empty value")]
    Empty(&'static str),
    #[error("file {0:?} is absolute: give the path relative to the repository root{1}")]
    Absolute(String, String),
    #[error("file {0:?} leaves the repository (a '..' component): give a path inside it")]
    Escapes(String),
    #[error(
        "file {0:?} resolves outside the repository (a symbolic link): report the file inside the repository"
    )]
    SymlinkEscape(String),
    #[error("file {0:?} does not exist in the repository: check the path with Glob or Grep")]
    Missing(String),
    #[error("file {0:?} is not a regular text file")]
    NotAFile(String),
    #[error(
        "start_line {start} is not a line of {file:?}: lines are 1-based, the file has {lines} lines"
    )]
    StartLine { file: String, start: u64, lines: u64 },
    #[error(
        "end_line {end} is before start_line {start}: give end_line >= start_line or leave it out"
    )]
    EndBeforeStart { start: u64, end: u64 },
    #[error("end_line {end} is past the end of {file:?}, which has {lines} lines")]
    EndLine { file: String, end: u64, lines: u64 },
    #[error("cwe {0:?} is not a CWE identifier: write it as CWE-<number>, e.g. CWE-89")]
    Cwe(String),
}

/// `CWE-89`, `cwe-89` and `89` become `CWE-89`; anything else is refused.
pub fn normalise_cwe(cwe: &str) -> Result<String, Refusal> {
    let t = cwe.trim();
    let digits = t.get(..4).filter(|p| p.eq_ignore_ascii_case("cwe-")).map_or(t, |_| &t[4..]);
    if !digits.is_empty() && digits.len() <= 7 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(format!("CWE-{}", digits.trim_start_matches('0')))
    } else {
        Err(Refusal::Cwe(cwe.to_owned()))
    }
}

/// The path's components when it is relative and stays inside the repository lexically.
fn relative_parts(repo: &Path, file: &str) -> Result<Vec<String>, Refusal> {
    let path = Path::new(file);
    if path.is_absolute() {
        // Helpful when the model passes the absolute path its Read tool used.
        let hint = path
            .strip_prefix(repo)
            .ok()
            .map(|r| format!(", e.g. {:?}", r.to_string_lossy()))
            .unwrap_or_default();
        return Err(Refusal::Absolute(file.to_owned(), hint));
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::Escapes(file.to_owned()));
            }
        }
    }
    if parts.is_empty() {
        return Err(Refusal::Empty("file"));
    }
    Ok(parts)
}

/// Checks `input` against the repository at `repo` (an absolute, canonical path) and returns
/// the accepted finding. Reads the named file to count its lines.
///
/// # Errors
/// A [`Refusal`] when a required text is empty, the file is not inside the repository (absolute,
/// `..`, a symbolic link leading out), does not exist or is not a regular file, or the lines
/// are not lines of the file (0, past the end, end before start), or the CWE is malformed.
pub fn check(repo: &Path, input: FindingInput) -> Result<Finding, Refusal> {
    for (name, value) in [
        ("rule_id", &input.rule_id),
        ("title", &input.title),
        ("description", &input.description),
        ("file", &input.file),
    ] {
        if value.trim().is_empty() {
            return Err(Refusal::Empty(name));
        }
    }
    let file = input.file.trim();
    let parts = relative_parts(repo, file)?;
    let joined: PathBuf = parts.iter().collect();
    let full = repo.join(&joined);
    let real = std::fs::canonicalize(&full).map_err(|_| Refusal::Missing(file.to_owned()))?;
    if !real.starts_with(repo) {
        return Err(Refusal::SymlinkEscape(file.to_owned()));
    }
    if !real.is_file() {
        return Err(Refusal::NotAFile(file.to_owned()));
    }
    let bytes = std::fs::read(&real).map_err(|_| Refusal::NotAFile(file.to_owned()))?;
    let lines = count_lines(&bytes);
    let rel = parts.join("/");
    let start = input.start_line;
    if start == 0 || start > lines {
        return Err(Refusal::StartLine { file: rel, start, lines });
    }
    let end = input.end_line.unwrap_or(start);
    if end < start {
        return Err(Refusal::EndBeforeStart { start, end });
    }
    if end > lines {
        return Err(Refusal::EndLine { file: rel, end, lines });
    }
    let cwe =
        input.cwe.as_deref().filter(|c| !c.trim().is_empty()).map(normalise_cwe).transpose()?;
    let remediation = input.remediation.filter(|r| !r.trim().is_empty());
    Ok(Finding {
        rule_id: input.rule_id.trim().to_owned(),
        title: input.title.trim().to_owned(),
        description: input.description.trim().to_owned(),
        severity: input.severity,
        file: rel,
        start_line: start,
        end_line: end,
        cwe,
        remediation,
    })
}

/// Lines as an editor numbers them: a last line without a trailing newline still counts.
pub fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    if bytes.last().is_some_and(|&b| b != b'\n') { newlines + 1 } else { newlines }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(file: &str, start: u64, end: Option<u64>) -> FindingInput {
        FindingInput {
            rule_id: "sql-injection".into(),
            title: "SQL injection".into(),
            description: "user input in a query".into(),
            severity: Severity::High,
            file: file.into(),
            start_line: start,
            end_line: end,
            cwe: Some("cwe-89".into()),
            remediation: None,
        }
    }

    fn repo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/db.py"), "a\nb\nc").unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        (dir, real)
    }

    #[test]
    fn accepts_and_normalises() {
        let (_d, repo) = repo();
        let f = check(&repo, input("./app/db.py", 2, None)).unwrap();
        assert_eq!((f.file.as_str(), f.start_line, f.end_line), ("app/db.py", 2, 2));
        assert_eq!(f.cwe.as_deref(), Some("CWE-89"));
        assert_eq!(check(&repo, input("app/db.py", 1, Some(3))).unwrap().end_line, 3);
    }

    #[test]
    fn refuses_what_is_not_in_the_repository() {
        let (_d, repo) = repo();
        let abs = repo.join("app/db.py").to_string_lossy().into_owned();
        let e = check(&repo, input(&abs, 1, None)).unwrap_err();
        assert!(e.to_string().contains("\"app/db.py\""), "{e}");
        assert_eq!(
            check(&repo, input("app/../../etc/passwd", 1, None)),
            Err(Refusal::Escapes("app/../../etc/passwd".into()))
        );
        assert_eq!(
            check(&repo, input("nope.py", 1, None)),
            Err(Refusal::Missing("nope.py".into()))
        );
        assert_eq!(check(&repo, input("app", 1, None)), Err(Refusal::NotAFile("app".into())));
        std::os::unix::fs::symlink("/etc/hostname", repo.join("out")).unwrap();
        assert_eq!(check(&repo, input("out", 1, None)), Err(Refusal::SymlinkEscape("out".into())));
    }

    #[test]
    fn refuses_lines_that_are_not_in_the_file() {
        let (_d, repo) = repo();
        assert!(matches!(
            check(&repo, input("app/db.py", 0, None)),
            Err(Refusal::StartLine { .. })
        ));
        let e = check(&repo, input("app/db.py", 4, None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "start_line 4 is not a line of \"app/db.py\": lines are 1-based, the file has 3 lines"
        );
        assert_eq!(
            check(&repo, input("app/db.py", 2, Some(1))),
            Err(Refusal::EndBeforeStart { start: 2, end: 1 })
        );
        assert!(matches!(
            check(&repo, input("app/db.py", 2, Some(9))),
            Err(Refusal::EndLine { .. })
        ));
    }

    #[test]
    fn cwe_forms() {
        assert_eq!(normalise_cwe("89").unwrap(), "CWE-89");
        assert_eq!(normalise_cwe(" CWE-022 ").unwrap(), "CWE-22");
        assert!(normalise_cwe("SQLi").is_err());
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\n"), 1);
        assert_eq!(count_lines(b"a\nb"), 2);
    }
}
