//! Per-org request policy: which models, which `anthropic-beta` values and which
//! provider-side tools a run of the org may ask for, and which query string reaches the
//! provider (issue 12 item 14).
//!
//! The request's content is otherwise the agent's choice, and a prompt-injected agent would
//! choose features that run on the provider's side with network access — an `mcp_servers`
//! entry (the MCP connector), the `web_fetch` and `web_search` tools — and so reach around
//! the pod's NetworkPolicy. Those are refused unless the org's policy names them.
//!
//! Tools are judged by their `type`: no type, or `custom`, is a tool the client runs; the
//! Anthropic-defined tools the client runs (`bash_*`, `text_editor_*`, `computer_*`,
//! `memory_*`) pass too. Every other typed tool runs at the provider and is refused unless
//! allowed by its name without the version date (`web_search_20250305` → `web_search`), so
//! a provider-side tool released tomorrow is refused by default, not allowed.
//!
//! Patterns (`models`, `betas`) are exact strings where `*` matches any run of characters.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use super::reject::Reason;

/// The config file: the request policy is its `models`, `betas` and `serverTools` keys.
pub use super::config::{ConfigError, ConfigFile as PolicyFile, OrgSpec as PolicySpec};

/// What the policy looks at in one request.
#[derive(Debug, Default)]
pub struct Asked<'a> {
    pub model: Option<&'a str>,
    /// Every `anthropic-beta` value, already split on commas and trimmed.
    pub betas: &'a [&'a str],
    /// The raw JSON of the top-level `tools` array, if any.
    pub tools: Option<&'a [u8]>,
    /// Whether the request has a top-level `mcp_servers` field (other than `null` or `[]`).
    pub mcp_servers: bool,
}

/// Why the policy refused a request (each a 403, never retried).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("model '{model}' is not allowed for org '{org}' (allowed: {allowed})")]
    Model { org: String, model: String, allowed: String },
    #[error("the request names no model, and org '{org}' allows only {allowed}")]
    NoModel { org: String, allowed: String },
    #[error("anthropic-beta '{beta}' is not allowed for org '{org}' (allowed: {allowed})")]
    Beta { org: String, beta: String, allowed: String },
    #[error(
        "the provider-side tool '{tool}' is not allowed for org '{org}': it runs at the \
         provider, outside the run's network policy"
    )]
    ServerTool { org: String, tool: String },
    #[error("the 'tools' field is not an array of tool objects")]
    BadTools,
}

impl PolicyError {
    /// The metrics and audit label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Model { .. } | Self::NoModel { .. } => Reason::PolicyModel,
            Self::Beta { .. } => Reason::PolicyBeta,
            Self::ServerTool { .. } => Reason::PolicyServerTool,
            Self::BadTools => Reason::InvalidTools,
        }
    }
}

/// One org's compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    models: Vec<String>,
    betas: Vec<String>,
    server_tools: Vec<String>,
}

/// The compiled policies; [`Policies::default`] is the built-in one for every org.
#[derive(Debug, Clone)]
pub struct Policies {
    default: Policy,
    orgs: BTreeMap<String, Policy>,
}

impl Default for Policies {
    fn default() -> Self {
        Self::new(&PolicyFile::default())
    }
}

fn any() -> Vec<String> {
    vec!["*".into()]
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn allowed(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| glob(p, value))
}

/// Tool types the client runs itself (by prefix): Anthropic defines their schema, but the
/// provider never executes them.
const CLIENT_TOOL_PREFIXES: &[&str] = &["bash_", "text_editor_", "computer_", "memory_"];

/// `web_search_20250305` → `web_search`: the type without a trailing `_<8 digits>`.
fn tool_name(ty: &str) -> &str {
    match ty.rsplit_once('_') {
        Some((name, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => ty,
    }
}

impl Policies {
    pub fn new(file: &PolicyFile) -> Self {
        let d = &file.default;
        let default = Policy {
            models: d.models.clone().unwrap_or_else(any),
            betas: d.betas.clone().unwrap_or_else(any),
            server_tools: d.server_tools.clone().unwrap_or_default(),
        };
        let orgs = file
            .orgs
            .iter()
            .map(|(org, o)| {
                let p = Policy {
                    models: o.models.clone().unwrap_or_else(|| default.models.clone()),
                    betas: o.betas.clone().unwrap_or_else(|| default.betas.clone()),
                    server_tools: o
                        .server_tools
                        .clone()
                        .unwrap_or_else(|| default.server_tools.clone()),
                };
                (org.clone(), p)
            })
            .collect();
        Self { default, orgs }
    }

    /// The `default:` entry's policy.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }

    /// The policy of `org` (the default one for an org not listed).
    pub fn policy(&self, org: &str) -> &Policy {
        self.orgs.get(org).unwrap_or(&self.default)
    }

    /// Checks one request of `org`.
    pub fn check(&self, org: &str, asked: &Asked<'_>) -> Result<(), PolicyError> {
        self.policy(org).check(org, asked)
    }
}

impl Policy {
    /// Checks one request of `org` (named in errors) against this policy.
    pub fn check(&self, org: &str, asked: &Asked<'_>) -> Result<(), PolicyError> {
        let p = self;
        let list = |v: &[String]| v.join(", ");
        match asked.model {
            Some(m) if !allowed(&p.models, m) => {
                return Err(PolicyError::Model {
                    org: org.into(),
                    model: m.chars().take(128).collect(),
                    allowed: list(&p.models),
                });
            }
            None if !allowed(&p.models, "") => {
                return Err(PolicyError::NoModel { org: org.into(), allowed: list(&p.models) });
            }
            _ => {}
        }
        for beta in asked.betas {
            if !allowed(&p.betas, beta) {
                return Err(PolicyError::Beta {
                    org: org.into(),
                    beta: beta.chars().take(128).collect(),
                    allowed: list(&p.betas),
                });
            }
        }
        if asked.mcp_servers && !p.server_tools.iter().any(|t| t == "mcp_servers") {
            return Err(PolicyError::ServerTool { org: org.into(), tool: "mcp_servers".into() });
        }
        if let Some(raw) = asked.tools {
            #[derive(Deserialize)]
            struct Tool {
                #[serde(rename = "type")]
                ty: Option<String>,
            }
            let tools: Option<Vec<Tool>> =
                serde_json::from_slice(raw).map_err(|_| PolicyError::BadTools)?;
            for tool in tools.unwrap_or_default() {
                let Some(ty) = tool.ty else { continue };
                if ty == "custom" || CLIENT_TOOL_PREFIXES.iter().any(|p| ty.starts_with(p)) {
                    continue;
                }
                let name = tool_name(&ty);
                if !p.server_tools.iter().any(|t| t == name) {
                    return Err(PolicyError::ServerTool {
                        org: org.into(),
                        tool: ty.chars().take(128).collect(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The query string sent to the provider: only `beta=true` (what Claude Code and the SDKs
/// send to opt into beta features, which `anthropic-beta` then names) is kept; any other
/// parameter is the agent's to invent, so it is dropped.
pub fn upstream_query(query: Option<&str>) -> Option<&'static str> {
    query.and_then(|q| q.split('&').any(|kv| kv == "beta=true").then_some("beta=true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> Policies {
        Policies::new(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything") && glob("*", ""));
        assert!(glob("claude-sonnet-4-5*", "claude-sonnet-4-5-20250929"));
        assert!(!glob("claude-sonnet-4-5*", "claude-opus-4-1"));
        assert!(glob("claude-*-4-5", "claude-haiku-4-5") && !glob("claude-*-4-5", "claude-4-5x"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
        assert!(glob("a*b*c", "a-b-b-c") && !glob("a*b*c", "a-c-b"));
    }

    #[test]
    fn built_in_default_allows_models_and_betas_but_no_server_tools() {
        let p = Policies::default();
        let tools = br#"[{"name":"Bash","input_schema":{}},{"type":"custom","name":"x"},
            {"type":"bash_20250124","name":"bash"},{"type":"text_editor_20250728","name":"e"}]"#;
        let ok = Asked {
            model: Some("claude-opus-4-1"),
            betas: &["claude-code-20250219", "interleaved-thinking-2025-05-14"],
            tools: Some(tools),
            mcp_servers: false,
        };
        assert_eq!(p.check("acme", &ok), Ok(()));
        for (raw, tool) in [
            (
                &br#"[{"type":"web_search_20250305","name":"web_search"}]"#[..],
                "web_search_20250305",
            ),
            (br#"[{"type":"web_fetch_20250910","name":"web_fetch"}]"#, "web_fetch_20250910"),
            (br#"[{"type":"code_execution_20250825","name":"c"}]"#, "code_execution_20250825"),
            (br#"[{"type":"some_future_tool_20300101","name":"f"}]"#, "some_future_tool_20300101"),
            (br#"[{"type":"web\u005fsearch_20250305","name":"w"}]"#, "web_search_20250305"),
        ] {
            let asked = Asked { tools: Some(raw), ..Default::default() };
            assert_eq!(
                p.check("acme", &asked),
                Err(PolicyError::ServerTool { org: "acme".into(), tool: tool.into() })
            );
        }
        let mcp = Asked { mcp_servers: true, ..Default::default() };
        assert_eq!(p.check("acme", &mcp).unwrap_err().reason(), Reason::PolicyServerTool);
        let bad = Asked { tools: Some(b"{\"a\":1}"), ..Default::default() };
        assert_eq!(p.check("acme", &bad), Err(PolicyError::BadTools));
    }

    #[test]
    fn org_entries_override_the_default() {
        let p = file(
            "default:\n  models: ['claude-sonnet-4-5*']\n  betas: ['claude-code-*']\n\
             orgs:\n  research:\n    serverTools: [web_search]\n  big:\n    models: ['*']\n",
        );
        let model = |m| Asked { model: Some(m), ..Default::default() };
        assert_eq!(p.check("acme", &model("claude-sonnet-4-5-20250929")), Ok(()));
        assert_eq!(
            p.check("acme", &model("claude-opus-4-1")).unwrap_err().reason(),
            Reason::PolicyModel
        );
        assert_eq!(p.check("big", &model("claude-opus-4-1")), Ok(()));
        assert_eq!(p.check("acme", &Asked::default()).unwrap_err().reason(), Reason::PolicyModel);
        let beta = Asked {
            model: Some("claude-sonnet-4-5"),
            betas: &["mcp-client-2025-04-04"],
            ..Default::default()
        };
        assert_eq!(p.check("research", &beta).unwrap_err().reason(), Reason::PolicyBeta);
        let search = Asked {
            model: Some("claude-sonnet-4-5"),
            tools: Some(br#"[{"type":"web_search_20250305","name":"web_search"}]"#),
            ..Default::default()
        };
        assert_eq!(p.check("research", &search), Ok(()));
        assert!(p.check("acme", &search).is_err());
        assert!(serde_yaml::from_str::<PolicyFile>("default:\n  model: ['x']\n").is_err());
        assert!(serde_yaml::from_str::<PolicyFile>("org: {}\n").is_err());
    }

    #[test]
    fn only_beta_true_reaches_the_provider() {
        assert_eq!(upstream_query(Some("beta=true")), Some("beta=true"));
        assert_eq!(upstream_query(Some("x=1&beta=true&y=2")), Some("beta=true"));
        assert_eq!(upstream_query(Some("beta=false")), None);
        assert_eq!(upstream_query(Some("url=http://evil")), None);
        assert_eq!(upstream_query(None), None);
    }
}
