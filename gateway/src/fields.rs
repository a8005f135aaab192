//! The few top-level fields of a Messages request the gateway needs (`model`, `max_tokens`,
//! `stream`, and where `tools` and `mcp_servers` are for the request policy), read without parsing the whole body: the conversation (often 100 KB of string
//! content) is skipped with `memchr` jumps from quote to quote, which is an order of
//! magnitude faster than a full JSON parse. The provider parses the body fully; the gateway
//! only has to agree with it on these fields, so a top-level key given twice — where parsers
//! differ on which one wins — is refused.

use thiserror::Error;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields {
    pub model: Option<String>,
    pub max_tokens: Option<serde_json::Value>,
    pub stream: Option<serde_json::Value>,
    /// Byte range of the raw `tools` value in the body.
    pub tools: Option<std::ops::Range<usize>>,
    /// Whether `mcp_servers` is given with a value other than `null` or `[]`.
    pub mcp_servers: bool,
}

/// Top-level keys the gateway reads; each may appear once.
const READ: &[&str] = &["model", "max_tokens", "stream", "tools", "mcp_servers"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FieldsError {
    #[error("is not a JSON object")]
    NotObject,
    #[error("is not well-formed JSON (at byte {0})")]
    Malformed(usize),
    #[error("gives the top-level field '{0}' twice")]
    Duplicate(String),
    #[error("has a '{0}' field that is not valid JSON")]
    BadValue(&'static str),
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self) -> FieldsError {
        FieldsError::Malformed(self.i)
    }

    /// Skips a string starting at its opening quote; returns its raw content.
    fn string(&mut self) -> Result<&'a [u8], FieldsError> {
        let start = self.i + 1;
        let mut j = start;
        loop {
            let k = memchr::memchr2(b'"', b'\\', &self.b[j..]).ok_or(FieldsError::Malformed(j))?;
            j += k;
            if self.b[j] == b'\\' {
                j += 2;
                if j > self.b.len() {
                    return Err(FieldsError::Malformed(j));
                }
            } else {
                self.i = j + 1;
                return Ok(&self.b[start..j]);
            }
        }
    }

    /// Skips any value; returns its raw bytes.
    fn value(&mut self) -> Result<&'a [u8], FieldsError> {
        self.ws();
        let start = self.i;
        match self.peek().ok_or_else(|| self.err())? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek().ok_or_else(|| self.err())? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b'}' | b']') {
                    self.i += 1;
                }
            }
        }
        Ok(self.b[start..self.i].trim_ascii_end())
    }
}

/// Reads `model`, `max_tokens` and `stream` from the top level of `body`.
pub fn read(body: &[u8]) -> Result<Fields, FieldsError> {
    let mut c = Cursor { b: body, i: 0 };
    c.ws();
    if c.peek() != Some(b'{') {
        return Err(FieldsError::NotObject);
    }
    c.i += 1;
    let mut fields = Fields::default();
    let mut seen = std::collections::HashSet::new();
    c.ws();
    if c.peek() == Some(b'}') {
        return Ok(fields);
    }
    loop {
        c.ws();
        if c.peek() != Some(b'"') {
            return Err(c.err());
        }
        let key = c.string()?;
        c.ws();
        if c.peek() != Some(b':') {
            return Err(c.err());
        }
        c.i += 1;
        let value_start = {
            c.ws();
            c.i
        };
        let raw = c.value()?;
        if raw.is_empty() {
            return Err(c.err());
        }
        // Keys are compared unescaped, as the provider's parser will see them.
        let key: String = if key.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(key.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(key);
            quoted.push(b'"');
            serde_json::from_slice(&quoted).map_err(|_| FieldsError::Malformed(c.i))?
        } else {
            String::from_utf8_lossy(key).into_owned()
        };
        if READ.contains(&key.as_str()) {
            if !seen.insert(key.clone()) {
                return Err(FieldsError::Duplicate(key));
            }
            match key.as_str() {
                "model" => {
                    let v: serde_json::Value =
                        serde_json::from_slice(raw).map_err(|_| FieldsError::BadValue("model"))?;
                    fields.model = v.as_str().map(str::to_owned);
                }
                "max_tokens" => {
                    fields.max_tokens = Some(
                        serde_json::from_slice(raw)
                            .map_err(|_| FieldsError::BadValue("max_tokens"))?,
                    );
                }
                "tools" => fields.tools = Some(value_start..value_start + raw.len()),
                "mcp_servers" => {
                    let empty = raw == b"null"
                        || raw.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")).is_some_and(
                            |inner| inner.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
                        );
                    fields.mcp_servers = !empty;
                }
                _ => {
                    fields.stream = Some(
                        serde_json::from_slice(raw).map_err(|_| FieldsError::BadValue("stream"))?,
                    );
                }
            }
        }
        c.ws();
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b'}') => {
                c.i += 1;
                c.ws();
                return if c.i == body.len() { Ok(fields) } else { Err(c.err()) };
            }
            _ => return Err(c.err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_fields_and_skips_the_rest() {
        let body = json!({
            "messages": [{"role": "user", "content": "a \"quoted\" } ] { [ \\ text"},
                         {"role": "assistant", "content": [{"type": "tool_use", "input": {"max_tokens": 1}}]}],
            "model": "claude-sonnet-4-5", "system": [{"type": "text", "text": "x"}],
            "max_tokens": 32000, "stream": true, "metadata": {"user_id": "u"}, "temperature": 0.5
        })
        .to_string();
        let f = read(body.as_bytes()).unwrap();
        assert_eq!(f.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(f.max_tokens, Some(json!(32000)));
        assert_eq!(f.stream, Some(json!(true)));
        let f = read(b" { \"max_tokens\" : 5 , \"x\":null } \n").unwrap();
        assert_eq!(f.max_tokens, Some(json!(5)));
        assert_eq!(read(b"{}").unwrap(), Fields::default());
        let body =
            br#"{"tools": [{"type":"web_search_20250305"}] ,"mcp\u005fservers":[{"url":"u"}]}"#;
        let f = read(body).unwrap();
        assert_eq!(&body[f.tools.unwrap()], br#"[{"type":"web_search_20250305"}]"#);
        assert!(f.mcp_servers);
        assert!(!read(br#"{"mcp_servers":[ ]}"#).unwrap().mcp_servers);
        assert!(!read(br#"{"mcp_servers":null}"#).unwrap().mcp_servers);
        assert_eq!(
            read(br#"{"tools":[],"tools":[{"type":"web_fetch_20250910"}]}"#),
            Err(FieldsError::Duplicate("tools".into()))
        );
    }

    #[test]
    fn agrees_with_serde_on_random_shapes() {
        for body in [
            r#"{"a":[1,2,{"b":"}"}],"max_tokens":7}"#,
            r#"{"a":"\\","max_tokens":8,"stream":false}"#,
            r#"{"a":"\"max_tokens\":1","max_tokens":9}"#,
            r#"{"max_tokens":1.5}"#,
        ] {
            let want: serde_json::Value = serde_json::from_str(body).unwrap();
            let got = read(body.as_bytes()).unwrap();
            assert_eq!(got.max_tokens.as_ref(), want.get("max_tokens"), "{body}");
        }
    }

    #[test]
    fn refuses_duplicates_and_garbage() {
        assert_eq!(
            read(br#"{"max_tokens":1,"max_tokens":100000}"#),
            Err(FieldsError::Duplicate("max_tokens".into()))
        );
        // An escaped key is the same key to the provider.
        assert_eq!(
            read(br#"{"max_tokens":1,"max\u005ftokens":100000}"#),
            Err(FieldsError::Duplicate("max_tokens".into()))
        );
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"{",
            b"{\"a\"",
            b"{\"a\":}",
            b"{\"a\":1",
            b"{\"a\":\"x}",
            b"{\"a\":1} trailing",
            b"{\"max_tokens\":nope}",
            b"{\"a\" 1}",
            b"{\"a\":\"\\",
        ] {
            assert!(read(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
