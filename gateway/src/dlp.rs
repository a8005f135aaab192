//! DLP: secrets in request bodies.
//!
//! All rules are compiled into one multi-pattern regex (regex-automata's meta engine): the
//! body is scanned once, in a single pass over its bytes, whatever the number of rules; the
//! literal prefixes of the rules (`AKIA`, `ghp_`, `-----BEGIN`, `eyJ` …) drive a SIMD
//! prefilter, so clean text is skipped at memory speed. A match reports which rule it is.
//!
//! Rules: built-in defaults plus an optional YAML/JSON file (`--dlp-rules`):
//! ```yaml
//! action: block        # default for rules without one (else --dlp-action)
//! builtin: true        # keep the built-in rules (default)
//! disable: [jwt]       # built-in rules to switch off
//! rules:
//!   - id: acme-internal-token
//!     description: ACME internal service token
//!     regex: 'acme_(?P<secret>[a-z0-9]{32})'   # only the `secret` group is redacted
//!     action: redact
//! ```
//! What is scanned is the text the provider will read: a secret spelled with JSON escapes
//! (`\u0073k-ant-…`) is decoded first (see [`super::unescape`]; bodies without such escapes,
//! the usual case, are scanned as they are), and offsets are reported in the body.
//!
//! Block: the request is refused (400) naming the rule, never the secret. Redact: each match
//! (or its `secret` group) becomes `[REDACTED:<rule>]` before the body leaves; if that would
//! break the body's JSON (a match crossing a string boundary), the request is refused instead.

use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternID};
use serde::Deserialize;
use thiserror::Error;

use super::unescape::{self, Decoded};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    Block,
    Redact,
}

impl std::str::FromStr for DlpAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Self::Block),
            "redact" => Ok(Self::Redact),
            other => Err(format!("unknown DLP action '{other}': use block or redact")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub regex: String,
    #[serde(default)]
    pub action: Option<DlpAction>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub action: Option<DlpAction>,
    #[serde(default)]
    pub builtin: Option<bool>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Error)]
pub enum DlpConfigError {
    #[error("DLP rules file is not valid YAML/JSON of the documented shape: {0}")]
    Parse(String),
    #[error("DLP rule '{id}' has an invalid regex: {reason}")]
    Regex { id: String, reason: String },
    #[error("DLP rule id '{0}' is used twice; ids must be unique")]
    Duplicate(String),
    #[error("DLP rule id '{0}' is invalid: use letters, digits, '-', '_'")]
    BadId(String),
    #[error("'disable' names '{0}', which is not a built-in rule")]
    UnknownDisable(String),
    #[error("DLP rules could not be compiled together: {0}")]
    Build(String),
}

/// Built-in rules: (id, description, regex). Anchored on distinctive literal prefixes so the
/// prefilter does the work; lengths and alphabets follow each issuer's documented format, so
/// that near misses (one character short, wrong alphabet) do not match.
pub const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "private-key",
        "PEM private key",
        r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:,]|\\[nrt]|-[A-Za-z0-9])*(?:-----END[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
    ),
    (
        "aws-access-key-id",
        "AWS access key ID",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}\b",
    ),
    (
        "aws-secret-access-key",
        "AWS secret access key",
        r#"(?i:aws_?secret_?access_?key|aws_?secret)(?:\\?["'])?\s{0,4}[:=]\s{0,4}(?:\\?["'])?(?P<secret>[A-Za-z0-9/+=]{40})\b"#,
    ),
    ("gcp-api-key", "Google Cloud API key", r"\bAIza[0-9A-Za-z_-]{35}"),
    (
        "gcp-service-account-key",
        "Google Cloud service account key id",
        r#"private_key_id\\?"\s*:\s*\\?"(?P<secret>[0-9a-f]{40})"#,
    ),
    ("google-oauth-token", "Google OAuth access token", r"\bya29\.[0-9A-Za-z_-]{30,}"),
    ("github-token", "GitHub token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b"),
    ("github-fine-grained-pat", "GitHub fine-grained token", r"\bgithub_pat_[A-Za-z0-9_]{82}\b"),
    ("gitlab-token", "GitLab personal access token", r"\bglpat-[A-Za-z0-9_-]{20}\b"),
    ("slack-token", "Slack token", r"\bxox[abposr]-[0-9]{6,}-[A-Za-z0-9-]{6,}"),
    (
        "slack-webhook",
        "Slack incoming webhook URL",
        r"hooks\.slack\.com(?:/|\\/)services(?:/|\\/)T[A-Z0-9]{6,}(?:/|\\/)B[A-Z0-9]{6,}(?:/|\\/)[A-Za-z0-9]{20,}",
    ),
    (
        "anthropic-api-key",
        "Anthropic API key",
        r"\bsk-ant-(?:api|admin|oat|ort|sid)[0-9]{2}-[A-Za-z0-9_-]{32,}",
    ),
    (
        "openai-api-key",
        "OpenAI API key",
        r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",
    ),
    ("stripe-secret-key", "Stripe secret key", r"\b(?:sk|rk)_live_[A-Za-z0-9]{24,}"),
    ("npm-token", "npm access token", r"\bnpm_[A-Za-z0-9]{36}\b"),
    ("pypi-token", "PyPI upload token", r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
    ("huggingface-token", "Hugging Face token", r"\bhf_[A-Za-z0-9]{34}\b"),
    ("sendgrid-api-key", "SendGrid API key", r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b"),
    (
        "azure-storage-key",
        "Azure storage account key",
        r"AccountKey=(?P<secret>[A-Za-z0-9+/]{86}==)",
    ),
    ("jwt", "JSON Web Token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
];

struct CompiledRule {
    id: String,
    description: String,
    action: DlpAction,
}

/// The compiled rule set.
pub struct Scanner {
    regex: Regex,
    rules: Vec<CompiledRule>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("rules", &self.rule_ids()).finish()
    }
}

/// The pipeline's DLP step: the body to send (redacted when a rule says so), or the
/// refusal; counts matches by rule and fills the audit record's DLP fields.
pub fn screen(
    gw: &super::gateway::Gateway,
    body: bytes::Bytes,
    audit: &mut super::audit::AuditRecord,
) -> Result<bytes::Bytes, super::reject::Rejection> {
    use super::reject;
    match gw.dlp.scan(&body) {
        Verdict::Clean => Ok(body),
        Verdict::Block { rule, description, offset } => {
            gw.metrics.dlp(&rule, "block");
            audit.dlp_rules = vec![rule.clone()];
            audit.dlp_action = Some("block");
            Err(reject::dlp_block(&rule, &description, offset))
        }
        Verdict::Redacted { body: redacted, rules } => {
            audit.dlp_rules = rules.clone();
            if serde_json::from_slice::<serde::de::IgnoredAny>(&redacted).is_err() {
                // A match crossed JSON structure: redacting would corrupt the request.
                audit.dlp_action = Some("block");
                for r in &rules {
                    gw.metrics.dlp(r, "block");
                }
                return Err(reject::dlp_block(&rules[0], "secret that cannot be redacted", 0));
            }
            for r in &rules {
                gw.metrics.dlp(r, "redact");
            }
            audit.dlp_action = Some("redact");
            Ok(bytes::Bytes::from(redacted))
        }
    }
}

/// The result of scanning one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// Refuse: the rule id and description, and the byte offset (never the secret).
    Block {
        rule: String,
        description: String,
        offset: usize,
    },
    /// The body with every match redacted, and the ids of the rules that matched.
    Redacted {
        body: Vec<u8>,
        rules: Vec<String>,
    },
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(Regex::config().utf8_empty(false))
        .build(pattern)
        .map_err(|e| e.to_string())
}

impl Scanner {
    /// The built-in rules with `default_action`, amended by `file` when given.
    pub fn new(
        default_action: DlpAction,
        file: Option<&RulesFile>,
    ) -> Result<Self, DlpConfigError> {
        let empty = RulesFile::default();
        let file = file.unwrap_or(&empty);
        let action = file.action.unwrap_or(default_action);
        let mut specs: Vec<RuleSpec> = Vec::new();
        for name in &file.disable {
            if !BUILTIN.iter().any(|(id, _, _)| id == name) {
                return Err(DlpConfigError::UnknownDisable(name.clone()));
            }
        }
        if file.builtin.unwrap_or(true) {
            for (id, description, regex) in BUILTIN {
                if file.disable.iter().any(|d| d == id) {
                    continue;
                }
                specs.push(RuleSpec {
                    id: (*id).into(),
                    description: Some((*description).into()),
                    regex: (*regex).into(),
                    action: None,
                });
            }
        }
        for rule in &file.rules {
            // A file rule with a built-in's id replaces that built-in.
            specs.retain(|s| s.id != rule.id);
            if file.rules.iter().filter(|r| r.id == rule.id).count() > 1 {
                return Err(DlpConfigError::Duplicate(rule.id.clone()));
            }
            specs.push(rule.clone());
        }
        let mut patterns = Vec::with_capacity(specs.len());
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            if !valid_id(&spec.id) {
                return Err(DlpConfigError::BadId(spec.id));
            }
            // Compile alone first, so a bad rule is named in the error.
            compile(&spec.regex)
                .map_err(|reason| DlpConfigError::Regex { id: spec.id.clone(), reason })?;
            patterns.push(spec.regex);
            rules.push(CompiledRule {
                description: spec.description.unwrap_or_else(|| spec.id.clone()),
                id: spec.id,
                action: spec.action.unwrap_or(action),
            });
        }
        let regex = Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(Regex::config().utf8_empty(false))
            .build_many(&patterns)
            .map_err(|e| DlpConfigError::Build(e.to_string()))?;
        Ok(Self { regex, rules })
    }

    /// Parses a rules file (YAML, or JSON which is YAML).
    pub fn parse_file(text: &str) -> Result<RulesFile, DlpConfigError> {
        serde_yaml::from_str(text).map_err(|e| DlpConfigError::Parse(e.to_string()))
    }

    pub fn rule_ids(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.id.as_str()).collect()
    }

    /// The span to redact for a match of `pid` at `start..end`: its `secret` group if any.
    fn secret_span(&self, body: &[u8], pid: PatternID, start: usize, end: usize) -> (usize, usize) {
        let info = self.regex.group_info();
        if info.to_index(pid, "secret").is_none() {
            return (start, end);
        }
        let mut caps = self.regex.create_captures();
        let input = Input::new(body).range(start..end).anchored(Anchored::Pattern(pid));
        self.regex.search_captures(&input, &mut caps);
        caps.get_group_by_name("secret").map_or((start, end), |s| (s.start, s.end))
    }

    /// Scans `body` once, as the provider will decode it. The first blocking match refuses
    /// the request; otherwise every redacting match is replaced (in the body as sent, whole
    /// escapes included).
    pub fn scan(&self, body: &[u8]) -> Verdict {
        match unescape::decode(body) {
            None => self.scan_text(body, body, None),
            Some(decoded) => self.scan_text(&decoded.bytes, body, Some(&decoded)),
        }
    }

    /// Scans `text` (the body, or its `decoded` copy) and answers in `body`'s offsets.
    fn scan_text(&self, text: &[u8], body: &[u8], decoded: Option<&Decoded>) -> Verdict {
        let span = |s: usize, e: usize| decoded.map_or((s, e), |d| d.body_span(s, e));
        let mut redactions: Vec<(usize, usize, usize)> = Vec::new();
        for m in self.regex.find_iter(text) {
            let rule = &self.rules[m.pattern().as_usize()];
            match rule.action {
                DlpAction::Block => {
                    return Verdict::Block {
                        rule: rule.id.clone(),
                        description: rule.description.clone(),
                        offset: span(m.start(), m.end()).0,
                    };
                }
                DlpAction::Redact => {
                    let (s, e) = self.secret_span(text, m.pattern(), m.start(), m.end());
                    let (s, e) = span(s, e);
                    redactions.push((s, e, m.pattern().as_usize()));
                }
            }
        }
        if redactions.is_empty() {
            return Verdict::Clean;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut at = 0;
        let mut ids: Vec<String> = Vec::new();
        for (s, e, idx) in redactions {
            let id = &self.rules[idx].id;
            out.extend_from_slice(&body[at..s]);
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(id.as_bytes());
            out.push(b']');
            at = e;
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        out.extend_from_slice(&body[at..]);
        Verdict::Redacted { body: out, rules: ids }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secrets assembled at run time so this file itself holds none.
    fn samples() -> Vec<(&'static str, String, String)> {
        let r = |c: char, n: usize| c.to_string().repeat(n);
        let alnum =
            |n: usize| "aB3dE5gH7jK9mN1pQ2sT4vW6yZ8".chars().cycle().take(n).collect::<String>();
        let pem_body = format!("MIIEv{}\\n{}==", alnum(60), alnum(40));
        vec![
            (
                "private-key",
                format!(
                    "-----BEGIN RSA PRIVATE KEY-----\\n{pem_body}\\n-----END RSA PRIVATE KEY-----"
                ),
                "-----BEGIN PUBLIC KEY-----\\nMIIB".to_string(),
            ),
            ("aws-access-key-id", format!("AKIA{}", r('Q', 16)), format!("AKIA{}", r('Q', 15))),
            (
                "aws-secret-access-key",
                format!("aws_secret_access_key = {}", alnum(40)),
                format!("aws_secret_access_key = {}", alnum(39)),
            ),
            ("gcp-api-key", format!("AIza{}", alnum(35)), format!("AIza{}", alnum(34))),
            (
                "gcp-service-account-key",
                format!("\\\"private_key_id\\\": \\\"{}\\\"", &"0123456789abcdef".repeat(3)[..40]),
                format!("\\\"private_key_id\\\": \\\"{}\\\"", &"0123456789abcdef".repeat(3)[..39]),
            ),
            ("google-oauth-token", format!("ya29.{}", alnum(40)), format!("ya29.{}", alnum(10))),
            ("github-token", format!("ghp_{}", alnum(36)), format!("ghp_{}", alnum(35))),
            (
                "github-fine-grained-pat",
                format!("github_pat_{}", alnum(82)),
                format!("github_pat_{}", alnum(20)),
            ),
            ("gitlab-token", format!("glpat-{}", alnum(20)), format!("glpat-{}", alnum(19))),
            ("slack-token", format!("xoxb-1234567890-{}", alnum(24)), "xoxb-12-ab".to_string()),
            (
                "slack-webhook",
                format!("https://hooks.slack.com/services/T0123ABCD/B0123ABCD/{}", alnum(24)),
                "https://hooks.slack.com/services/T0123ABCD/".to_string(),
            ),
            (
                "anthropic-api-key",
                format!("sk-ant-api03-{}", alnum(93)),
                format!("sk-ant-api03-{}", alnum(20)),
            ),
            ("openai-api-key", format!("sk-proj-{}", alnum(48)), format!("sk-proj-{}", alnum(10))),
            (
                "stripe-secret-key",
                format!("sk_live_{}", alnum(24)),
                format!("sk_test_{}", alnum(24)),
            ),
            ("npm-token", format!("npm_{}", alnum(36)), format!("npm_{}", alnum(35))),
            (
                "pypi-token",
                format!("pypi-AgEIcHlwaS5vcmc{}", alnum(60)),
                format!("pypi-AgEIcHlwaS5vcmc{}", alnum(20)),
            ),
            ("huggingface-token", format!("hf_{}", alnum(34)), format!("hf_{}", alnum(33))),
            (
                "sendgrid-api-key",
                format!("SG.{}.{}", alnum(22), alnum(43)),
                format!("SG.{}.{}", alnum(21), alnum(43)),
            ),
            (
                "azure-storage-key",
                format!("AccountKey={}==", alnum(86)),
                format!("AccountKey={}==", alnum(40)),
            ),
            (
                "jwt",
                format!("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.{}", alnum(40)),
                "eyJhbGciOiJFUzI1NiJ9.notapayload.x".to_string(),
            ),
        ]
    }

    fn body(text: &str) -> Vec<u8> {
        format!(
            r#"{{"model":"m","max_tokens":10,"messages":[{{"role":"user","content":"look: {text} ok"}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn every_builtin_has_a_sample() {
        let ids: Vec<_> = samples().iter().map(|s| s.0).collect();
        for (id, _, _) in BUILTIN {
            assert!(ids.contains(id), "no test sample for built-in rule {id}");
        }
    }

    #[test]
    fn blocks_every_builtin_and_names_it() {
        let s = Scanner::new(DlpAction::Block, None).unwrap();
        for (id, secret, near_miss) in samples() {
            match s.scan(&body(&secret)) {
                Verdict::Block { rule, .. } => assert_eq!(rule, id, "sample {secret}"),
                other => panic!("{id} not blocked: {other:?}"),
            }
            assert_eq!(s.scan(&body(&near_miss)), Verdict::Clean, "{id} near miss {near_miss}");
        }
    }

    #[test]
    fn redacts_every_builtin_and_keeps_json_valid() {
        let s = Scanner::new(DlpAction::Redact, None).unwrap();
        for (id, secret, _) in samples() {
            let Verdict::Redacted { body: out, rules } = s.scan(&body(&secret)) else {
                panic!("{id} not redacted");
            };
            assert_eq!(rules, vec![id.to_string()]);
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(text.contains(&format!("[REDACTED:{id}]")), "{text}");
            let v: serde_json::Value =
                serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{id}: {e}: {text}"));
            assert!(v["messages"][0]["content"].as_str().unwrap().ends_with(" ok"));
            assert_eq!(s.scan(&out), Verdict::Clean, "{id}: redacted output scans clean");
        }
    }

    #[test]
    fn secret_group_redacts_only_the_value() {
        let s = Scanner::new(DlpAction::Redact, None).unwrap();
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let Verdict::Redacted { body: out, .. } =
            s.scan(&body(&format!("aws_secret_access_key={secret}")))
        else {
            panic!()
        };
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("aws_secret_access_key=[REDACTED:aws-secret-access-key]"), "{text}");
    }

    #[test]
    fn file_rules() {
        let f = Scanner::parse_file(
            "action: redact\ndisable: [jwt]\nrules:\n  - id: acme\n    regex: 'acme_[a-z]{8}'\n    action: block\n",
        )
        .unwrap();
        let s = Scanner::new(DlpAction::Block, Some(&f)).unwrap();
        assert!(!s.rule_ids().contains(&"jwt"));
        assert!(
            matches!(s.scan(b"x acme_abcdefgh y"), Verdict::Block { rule, .. } if rule == "acme")
        );
        assert!(matches!(
            s.scan(format!("ghp_{}", "a".repeat(36)).as_bytes()),
            Verdict::Redacted { .. }
        ));
        let only =
            Scanner::parse_file(r#"{"builtin": false, "rules": [{"id": "x", "regex": "xyz"}]}"#)
                .unwrap();
        assert_eq!(Scanner::new(DlpAction::Block, Some(&only)).unwrap().rule_ids(), vec!["x"]);
        for bad in [
            "rules: [{id: x, regex: '('}]",
            "disable: [nope]",
            "rules: [{id: 'a b', regex: 'x'}]",
            "rules: [{id: a, regex: x}, {id: a, regex: y}]",
            "unknown: 1",
        ] {
            let parsed = Scanner::parse_file(bad);
            assert!(
                parsed.is_err() || Scanner::new(DlpAction::Block, Some(&parsed.unwrap())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn clean_text_is_clean() {
        let s = Scanner::new(DlpAction::Block, None).unwrap();
        let text =
            "fn main() { println!(\"AKIA is a prefix; ghp_ too; eyJ as well\"); } ".repeat(2000);
        assert_eq!(s.scan(text.as_bytes()), Verdict::Clean);
        assert_eq!(s.scan(b""), Verdict::Clean);
        assert_eq!(s.scan(&[0xff, 0xfe, 0x00]), Verdict::Clean);
    }

    /// Issue 12 item 15: the provider decodes JSON escapes, so the scan does too.
    #[test]
    fn secrets_written_with_json_escapes_are_found() {
        let s = Scanner::new(DlpAction::Block, None).unwrap();
        let r = Scanner::new(DlpAction::Redact, None).unwrap();
        let escape_all =
            |t: &str| t.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>();
        for (id, secret, near_miss) in samples() {
            for spelled in [
                format!("\\u{:04x}{}", secret.as_bytes()[0], &secret[1..]),
                escape_all(&secret),
                secret.replace('/', "\\/"),
            ] {
                let b = body(&spelled);
                if serde_json::from_slice::<serde_json::Value>(&b).is_err() {
                    continue; // escaping a sample's own `\"` would end its string
                }
                let at = b.windows(spelled.len()).position(|w| w == spelled.as_bytes()).unwrap();
                match s.scan(&b) {
                    Verdict::Block { rule, offset, .. } => {
                        assert_eq!(rule, id, "{spelled}");
                        // In the body as sent, inside the spelled secret.
                        assert!((at..at + spelled.len()).contains(&offset), "{spelled}: {offset}");
                    }
                    other => panic!("{id} spelled {spelled} not blocked: {other:?}"),
                }
                let Verdict::Redacted { body: out, .. } = r.scan(&b) else {
                    panic!("{id} spelled {spelled} not redacted")
                };
                let v: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{id}: {e}: {}", String::from_utf8_lossy(&out)));
                let text = v["messages"][0]["content"].as_str().unwrap();
                assert!(
                    text.contains(&format!("[REDACTED:{id}]")) && text.ends_with(" ok"),
                    "{text}"
                );
                assert_eq!(s.scan(&out), Verdict::Clean, "{id}: {text}");
            }
            assert_eq!(s.scan(&body(&escape_all(&near_miss))), Verdict::Clean, "{id} near miss");
        }
        // An escaped backslash before 'u' is no escape: the text is `\u0073k-ant…`.
        let key = format!("\\\\u0073k-ant-api03-{}", "a".repeat(40));
        assert_eq!(s.scan(&body(&key)), Verdict::Clean);
    }

    #[test]
    fn block_message_never_holds_the_secret() {
        let s = Scanner::new(DlpAction::Block, None).unwrap();
        let secret = format!("ghp_{}", "Z".repeat(36));
        let v = s.scan(&body(&secret));
        assert!(!format!("{v:?}").contains(&secret));
    }
}
