//! Anthropic model names → Amazon Bedrock model ids, from an org's map.
//!
//! Bedrock names Anthropic models by its own ids (`anthropic.claude-sonnet-4-5-20250929-v1:0`,
//! or an inference profile such as `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, or an ARN);
//! clients keep sending Anthropic names (`claude-sonnet-4-5-20250929`). An org lists the
//! names it allows; anything else is refused with the list, so the fix is obvious.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error(
        "model '{model}' is not available on this org's Amazon Bedrock; allowed models: {}",
        allowed_list(.allowed)
    )]
    Unmapped { model: String, allowed: Vec<String> },
    #[error("the request names no model: send \"model\" in the body")]
    Missing,
}

fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none (the org's model map is empty)".to_owned()
    } else {
        allowed.join(", ")
    }
}

/// An org's model map. Keys are Anthropic model names; a key ending in `*` matches every
/// name with that prefix (`claude-haiku-4-5*` covers the dated and undated names). An exact
/// key wins over a pattern; among patterns the longest prefix wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    exact: BTreeMap<String, String>,
    /// `(prefix, id)`, longest prefix first.
    prefixes: Vec<(String, String)>,
}

impl ModelMap {
    pub fn new(map: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut exact = BTreeMap::new();
        let mut prefixes = Vec::new();
        for (name, id) in map {
            match name.strip_suffix('*') {
                Some(prefix) => prefixes.push((prefix.to_owned(), id)),
                None => {
                    exact.insert(name, id);
                }
            }
        }
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { exact, prefixes }
    }

    /// The Bedrock model id for `model`.
    ///
    /// Errors: [`ModelError::Unmapped`] naming `model` and every allowed name.
    pub fn bedrock_id(&self, model: &str) -> Result<&str, ModelError> {
        if let Some(id) = self.exact.get(model) {
            return Ok(id);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix.as_str()))
            .map(|(_, id)| id.as_str())
            .ok_or_else(|| ModelError::Unmapped {
                model: model.to_owned(),
                allowed: self.allowed(),
            })
    }

    /// The allowed names as configured (patterns keep their `*`), sorted.
    pub fn allowed(&self) -> Vec<String> {
        let mut all: Vec<String> = self.exact.keys().cloned().collect();
        all.extend(self.prefixes.iter().map(|(p, _)| format!("{p}*")));
        all.sort();
        all
    }
}

impl<'de> serde::Deserialize<'de> for ModelMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(BTreeMap::<String, String>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ModelMap {
        ModelMap::new([
            (
                "claude-sonnet-4-5-20250929".into(),
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0".into(),
            ),
            ("claude-haiku-4-5*".into(), "anthropic.claude-haiku-4-5-20251001-v1:0".into()),
            ("claude-*".into(), "anthropic.claude-fallback-v1:0".into()),
        ])
    }

    #[test]
    fn exact_then_longest_prefix() {
        let m = map();
        assert_eq!(
            m.bedrock_id("claude-sonnet-4-5-20250929").unwrap(),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            m.bedrock_id("claude-haiku-4-5-20251001").unwrap(),
            "anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        assert_eq!(m.bedrock_id("claude-opus-4").unwrap(), "anthropic.claude-fallback-v1:0");
    }

    #[test]
    fn unmapped_names_the_model_and_the_allowed_ones() {
        let m = ModelMap::new([("claude-sonnet-4-5".into(), "x".into())]);
        let err = m.bedrock_id("gpt-4").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("'gpt-4'") && text.contains("claude-sonnet-4-5"), "{text}");
        let empty = ModelMap::default().bedrock_id("claude").unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
    }

    #[test]
    fn deserializes_from_yaml() {
        let m: ModelMap =
            serde_yaml::from_str("claude-haiku-4-5*: h\nclaude-sonnet-4-5: s\n").unwrap();
        assert_eq!(m.allowed(), vec!["claude-haiku-4-5*", "claude-sonnet-4-5"]);
        assert_eq!(m.bedrock_id("claude-haiku-4-5-x").unwrap(), "h");
    }
}
