//! The review prompt: the run's own (`SANCTUM_PROMPT`) or the default security review, always
//! followed by how to report (the tool, relative paths, real lines), since the SARIF is built
//! only from what arrives through `report_finding`.

/// The default task when the run gives none: the OWASP Top 10 (2021) and the usual suspects.
pub const DEFAULT_TASK: &str = "\
You are a security reviewer. Review the source code in the current directory (the repository) \
for security vulnerabilities an attacker could exploit. Look in particular for:
- injection: SQL (CWE-89), OS command (CWE-78), code/template injection (CWE-94), LDAP/XPath/NoSQL;
- broken access control and authentication bypass (CWE-284, CWE-287, CWE-639), missing authorization checks;
- secrets in code: hard-coded passwords, API keys, tokens, private keys (CWE-798);
- path traversal (CWE-22) and unrestricted file upload (CWE-434);
- server-side request forgery, SSRF (CWE-918);
- unsafe deserialisation (CWE-502): pickle, yaml.load, Java/PHP/.NET object streams;
- cross-site scripting (CWE-79) and open redirects (CWE-601);
- cryptographic failures: weak hashes for passwords, broken ciphers, predictable randomness (CWE-327, CWE-330);
- security misconfiguration: debug mode in production, permissive CORS, disabled TLS verification (CWE-295);
- vulnerable and outdated components named in dependency manifests;
- logging of secrets or personal data, and missing integrity checks.
Read the code with the Read, Grep and Glob tools; you cannot run or change anything.";

/// How to report, appended to every prompt.
pub const REPORTING: &str = "\
Report EVERY vulnerability you find by calling the report_finding tool once per finding, with: \
rule_id (short kebab-case kind, e.g. sql-injection), title, description (what is wrong and how \
it is exploited), severity (critical, high, medium, low or note), file (path relative to the \
repository root, e.g. app/db.py), start_line and optionally end_line (1-based lines of that \
file, as the Read tool numbers them), cwe (e.g. CWE-89) and remediation. Only findings reported \
through the tool count. If the tool refuses a finding, read the reason, correct it and report \
it again. Report only real, exploitable issues you can point to in the code. When done, answer \
with a short summary.";

/// The full prompt for a run: `task` (or [`DEFAULT_TASK`] when empty) then [`REPORTING`].
pub fn build(task: Option<&str>) -> String {
    let task = task.map(str::trim).filter(|t| !t.is_empty()).unwrap_or(DEFAULT_TASK);
    format!("{task}\n\n{REPORTING}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_own_task() {
        assert!(build(None).starts_with(DEFAULT_TASK));
        assert!(build(Some("  ")).starts_with(DEFAULT_TASK));
        let own = build(Some("Check auth only."));
        assert!(own.starts_with("Check auth only.\n\n") && own.contains("report_finding"));
    }
}
