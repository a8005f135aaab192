//! The run as the operator describes it in the environment (DESIGN.md "Run result contract").

use std::path::PathBuf;

/// Where the kubelet reads the container's summary from.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// One run's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// `SANCTUM_REPO`: the repository to review (read-only).
    pub repo: PathBuf,
    /// `SANCTUM_OUTPUT`: the directory `results.sarif` goes to.
    pub output: PathBuf,
    /// `SANCTUM_RUN`: the run's name, recorded in the SARIF (`automationDetails.id`).
    pub run: Option<String>,
    /// `SANCTUM_PROMPT`: the task; the default security review when unset or empty.
    pub prompt: Option<String>,
    /// `SANCTUM_MAX_TURNS`: Claude Code's `--max-turns`.
    pub max_turns: Option<u32>,
    /// `ANTHROPIC_MODEL`: the model, when chosen (Claude Code reads it too).
    pub model: Option<String>,
    /// `SANCTUM_CLAUDE`: the Claude Code executable; `claude` on `PATH` by default.
    pub claude: PathBuf,
    /// `SANCTUM_TERMINATION_LOG`: where the summary goes; `/dev/termination-log` by default.
    pub termination_log: PathBuf,
    /// `TMPDIR`: where the MCP config and the findings file are written.
    pub tmp: PathBuf,
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set: the operator sets it for a ScannerRun; set it to run by hand")]
    Missing(&'static str),
    #[error("SANCTUM_MAX_TURNS={0:?} is not a positive whole number")]
    MaxTurns(String),
}

impl RunConfig {
    /// Reads the settings through `var` (`std::env::var` in the binary).
    ///
    /// # Errors
    /// [`ConfigError`] when `SANCTUM_REPO` or `SANCTUM_OUTPUT` is unset or empty, or
    /// `SANCTUM_MAX_TURNS` is not a number ≥ 1.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let required = |k: &'static str| get(k).map(PathBuf::from).ok_or(ConfigError::Missing(k));
        let max_turns = match get("SANCTUM_MAX_TURNS") {
            None => None,
            Some(v) => Some(
                v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or(ConfigError::MaxTurns(v))?,
            ),
        };
        Ok(Self {
            repo: required("SANCTUM_REPO")?,
            output: required("SANCTUM_OUTPUT")?,
            run: get("SANCTUM_RUN"),
            prompt: get("SANCTUM_PROMPT"),
            max_turns,
            model: get("ANTHROPIC_MODEL"),
            claude: get("SANCTUM_CLAUDE").map_or_else(|| PathBuf::from("claude"), PathBuf::from),
            termination_log: get("SANCTUM_TERMINATION_LOG")
                .map_or_else(|| PathBuf::from(TERMINATION_LOG), PathBuf::from),
            tmp: get("TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from),
        })
    }

    /// `$SANCTUM_OUTPUT/results.sarif`.
    pub fn sarif_path(&self) -> PathBuf {
        self.output.join("results.sarif")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn reads_the_contract() {
        let c = RunConfig::from_env(env(&[
            ("SANCTUM_REPO", "/repo"),
            ("SANCTUM_OUTPUT", "/output"),
            ("SANCTUM_MAX_TURNS", "12"),
            ("SANCTUM_PROMPT", " "),
            ("TMPDIR", "/tmp/x"),
        ]))
        .unwrap();
        assert_eq!(c.sarif_path(), PathBuf::from("/output/results.sarif"));
        assert_eq!((c.max_turns, c.prompt), (Some(12), None));
        assert_eq!(c.claude, PathBuf::from("claude"));
        assert_eq!(c.termination_log, PathBuf::from(TERMINATION_LOG));
        assert_eq!(c.tmp, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(
            RunConfig::from_env(env(&[("SANCTUM_OUTPUT", "/o")])),
            Err(ConfigError::Missing("SANCTUM_REPO"))
        );
        let e = RunConfig::from_env(env(&[
            ("SANCTUM_REPO", "/r"),
            ("SANCTUM_OUTPUT", "/o"),
            ("SANCTUM_MAX_TURNS", "0"),
        ]));
        assert_eq!(e, Err(ConfigError::MaxTurns("0".into())));
    }
}
