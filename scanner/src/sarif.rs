//! SARIF 2.1.0 (OASIS, <https://docs.oasis-open.org/sarif/sarif/v2.1.0/sarif-v2.1.0.html>)
//! from the accepted findings, built with `serde-sarif`.
//!
//! - one run whose `tool.driver` is `sanctum-scanner` with one `reportingDescriptor` per
//!   rule id (§3.19.23 `rules`, §3.49), each carrying the CWE as a tag and the highest
//!   `security-severity` of its results;
//! - one `result` per finding (§3.27): `ruleId` + `ruleIndex`, `level` from the severity
//!   (critical/high → `error`, medium → `warning`, low/note → `note`; §3.27.10), a
//!   `physicalLocation` whose `artifactLocation.uri` is relative to the `%SRCROOT%`
//!   `uriBaseId` (§3.4.4, declared in `run.originalUriBaseIds`, §3.14.14) and a `region` of
//!   1-based lines (§3.30), and properties `security-severity` (the CVSS-like score GitHub code
//!   scanning reads) and `severity`;
//! - one `invocation` (§3.20) with `executionSuccessful` and, when the run went wrong, a
//!   `toolExecutionNotification` that says why: a partial SARIF still says it is partial.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use serde_sarif::sarif::{
    ArtifactLocation, Invocation, Location, Message, Notification, PhysicalLocation, PropertyBag,
    Region, ReportingDescriptor, Result as SarifResult, ResultLevel, Run, RunAutomationDetails,
    Sarif, ToolComponent,
};

use crate::finding::{Finding, Severity};

/// The base id every result's location is relative to.
pub const SRCROOT: &str = "%SRCROOT%";

/// The JSON schema URI written to `$schema`.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// What the SARIF says about the run besides its findings.
pub struct RunInfo<'a> {
    /// The repository, absolute: `%SRCROOT%` points at it.
    pub repo: &'a Path,
    /// The run's name (`automationDetails.id`).
    pub run: Option<&'a str>,
    /// What went wrong, when something did.
    pub error: Option<&'a str>,
}

/// SARIF `level` for a severity.
pub fn level(s: Severity) -> ResultLevel {
    match s {
        Severity::Critical | Severity::High => ResultLevel::Error,
        Severity::Medium => ResultLevel::Warning,
        Severity::Low | Severity::Note => ResultLevel::Note,
    }
}

/// The `security-severity` score (a string holding 0.0–10.0, as GitHub code scanning reads
/// it: ≥ 9.0 critical, 7.0–8.9 high, 4.0–6.9 medium, 0.1–3.9 low).
pub fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Note => "0.0",
    }
}

/// `file:///path/` with a trailing slash (a base URI must end with one, §3.14.14), with the
/// characters that may not appear in a URI path percent-encoded.
pub fn dir_uri(path: &Path) -> String {
    let mut out = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// A relative path as a URI reference: each segment percent-encoded where needed.
fn file_uri(rel: &str) -> String {
    let mut out = String::new();
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn props(pairs: impl IntoIterator<Item = (&'static str, Value)>, tags: Vec<String>) -> PropertyBag {
    let map: BTreeMap<String, Value> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut bag = PropertyBag::builder().additional_properties(map).build();
    if !tags.is_empty() {
        bag.tags = Some(tags);
    }
    bag
}

/// The SARIF log for `findings`.
pub fn build(findings: &[Finding], info: &RunInfo<'_>) -> Sarif {
    // One rule per rule id, in order of first appearance.
    let mut rule_ids: Vec<&str> = Vec::new();
    for f in findings {
        if !rule_ids.contains(&f.rule_id.as_str()) {
            rule_ids.push(&f.rule_id);
        }
    }
    let rules: Vec<ReportingDescriptor> = rule_ids
        .iter()
        .map(|id| {
            let of_rule: Vec<&Finding> = findings.iter().filter(|f| f.rule_id == *id).collect();
            let first = of_rule[0];
            let worst = of_rule.iter().map(|f| f.severity).min().unwrap_or(first.severity);
            let mut tags = vec!["security".to_owned()];
            tags.extend(first.cwe.clone());
            let mut rule = ReportingDescriptor::builder()
                .id(*id)
                .name(*id)
                .short_description(&first.title)
                .properties(props([("security-severity", json!(security_severity(worst)))], tags))
                .build();
            if let Some(n) = first.cwe.as_deref().and_then(|c| c.strip_prefix("CWE-")) {
                rule.help_uri = Some(format!("https://cwe.mitre.org/data/definitions/{n}.html"));
            }
            rule
        })
        .collect();
    let results: Vec<SarifResult> = findings
        .iter()
        .map(|f| {
            let index = rule_ids.iter().position(|r| *r == f.rule_id).unwrap_or(0) as i64;
            let mut text = format!("{}: {}", f.title, f.description);
            if let Some(fix) = &f.remediation {
                text.push_str(&format!(" Remediation: {fix}"));
            }
            let location = Location::builder()
                .physical_location(
                    PhysicalLocation::builder()
                        .artifact_location(
                            ArtifactLocation::builder()
                                .uri(file_uri(&f.file))
                                .uri_base_id(SRCROOT)
                                .build(),
                        )
                        .region(
                            Region::builder()
                                .start_line(f.start_line as i64)
                                .end_line(f.end_line as i64)
                                .build(),
                        )
                        .build(),
                )
                .build();
            let mut pairs = vec![
                ("security-severity", json!(security_severity(f.severity))),
                ("severity", json!(f.severity.as_str())),
            ];
            if let Some(cwe) = &f.cwe {
                pairs.push(("cwe", json!(cwe)));
            }
            SarifResult::builder()
                .rule_id(f.rule_id.clone())
                .rule_index(index)
                .level(level(f.severity))
                .message(Message::builder().text(text).build())
                .locations(vec![location])
                .properties(props(pairs, Vec::new()))
                .build()
        })
        .collect();
    let driver = ToolComponent::builder()
        .name("sanctum-scanner")
        .version(env!("CARGO_PKG_VERSION"))
        .information_uri("https://github.com/sanctum-dev/sanctum")
        .rules(rules)
        .build();
    let mut invocation = Invocation::builder().execution_successful(info.error.is_none()).build();
    if let Some(error) = info.error {
        invocation.tool_execution_notifications = Some(vec![
            Notification::builder()
                .message(Message::builder().text(error).build())
                .level(json!("error"))
                .build(),
        ]);
    }
    let base = ArtifactLocation::builder().uri(dir_uri(info.repo)).build();
    let mut run = Run::builder()
        .tool(driver)
        .results(results)
        .invocations(vec![invocation])
        .original_uri_base_ids(BTreeMap::from([(SRCROOT.to_owned(), base)]))
        .build();
    if let Some(id) = info.run {
        run.automation_details = Some(RunAutomationDetails::builder().id(format!("{id}/")).build());
    }
    Sarif::builder()
        .schema(SCHEMA)
        .version(serde_sarif::sarif::Version::V2_1_0.to_string())
        .runs(vec![run])
        .build()
}

/// The SARIF as pretty JSON.
pub fn to_json(sarif: &Sarif) -> String {
    serde_json::to_string_pretty(sarif).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(rule: &str, severity: Severity, line: u64) -> Finding {
        Finding {
            rule_id: rule.into(),
            title: format!("{rule} title"),
            description: "desc".into(),
            severity,
            file: "app/my file.py".into(),
            start_line: line,
            end_line: line + 1,
            cwe: Some("CWE-89".into()),
            remediation: Some("fix".into()),
        }
    }

    #[test]
    fn findings_become_rules_and_results() {
        let findings = [
            finding("sql-injection", Severity::Medium, 3),
            finding("sql-injection", Severity::Critical, 9),
            finding("secret", Severity::Note, 1),
        ];
        let info = RunInfo { repo: Path::new("/repo"), run: Some("r1"), error: None };
        let v: Value = serde_json::from_str(&to_json(&build(&findings, &info))).unwrap();
        let run = &v["runs"][0];
        assert_eq!(v["version"], "2.1.0");
        assert_eq!(run["tool"]["driver"]["name"], "sanctum-scanner");
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["properties"]["security-severity"], "9.5");
        assert_eq!(rules[0]["properties"]["tags"], json!(["security", "CWE-89"]));
        let results = run["results"].as_array().unwrap();
        assert_eq!(
            results.iter().map(|r| r["level"].as_str().unwrap()).collect::<Vec<_>>(),
            ["warning", "error", "note"]
        );
        assert_eq!(results[2]["ruleIndex"], 1);
        let loc = &results[1]["locations"][0]["physicalLocation"];
        assert_eq!(
            loc["artifactLocation"],
            json!({"uri": "app/my%20file.py", "uriBaseId": "%SRCROOT%"})
        );
        assert_eq!(loc["region"], json!({"startLine": 9, "endLine": 10}));
        assert_eq!(run["originalUriBaseIds"]["%SRCROOT%"]["uri"], "file:///repo/");
        assert_eq!(run["invocations"][0]["executionSuccessful"], true);
        assert_eq!(run["automationDetails"]["id"], "r1/");
    }

    #[test]
    fn a_failed_run_says_so() {
        let info = RunInfo { repo: Path::new("/r"), run: None, error: Some("turn limit") };
        let v: Value = serde_json::from_str(&to_json(&build(&[], &info))).unwrap();
        let inv = &v["runs"][0]["invocations"][0];
        assert_eq!(inv["executionSuccessful"], false);
        assert_eq!(inv["toolExecutionNotifications"][0]["message"]["text"], "turn limit");
        assert_eq!(v["runs"][0]["results"], json!([]));
    }
}
