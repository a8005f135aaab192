//! Token usage reported by the Messages API, for settling budgets.
//!
//! JSON responses carry `usage`; SSE streams carry it in `message_start` (`message.usage`:
//! input and cache tokens, an initial `output_tokens`) and in each `message_delta` (`usage`,
//! cumulative: a later value replaces an earlier one). `input_tokens` excludes cached
//! tokens; `cache_creation_input_tokens` and `cache_read_input_tokens` are counted on top,
//! as the API defines them, so a run's spend is the sum of all four.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

/// A usage object as sent, where every field may be absent or null.
#[derive(Debug, Default, Deserialize)]
struct PartialUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl PartialUsage {
    /// Cumulative semantics: a field present here replaces the one in `into`.
    fn merge(self, into: &mut Usage) {
        if let Some(v) = self.input_tokens {
            into.input_tokens = v;
        }
        if let Some(v) = self.output_tokens {
            into.output_tokens = v;
        }
        if let Some(v) = self.cache_creation_input_tokens {
            into.cache_creation_input_tokens = v;
        }
        if let Some(v) = self.cache_read_input_tokens {
            into.cache_read_input_tokens = v;
        }
    }
}

/// `usage` of a non-streaming JSON response.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Resp {
        usage: Option<PartialUsage>,
    }
    let resp: Resp = serde_json::from_slice(body).ok()?;
    let mut u = Usage::default();
    resp.usage?.merge(&mut u);
    Some(u)
}

/// Longest SSE line kept while waiting for its end; longer lines are skipped (they are
/// content deltas, never usage).
const MAX_LINE: usize = 1 << 20;

/// Incremental SSE reader that follows usage across chunks split anywhere.
#[derive(Debug, Default)]
pub struct SseUsage {
    partial: Vec<u8>,
    skipping: bool,
    usage: Usage,
    /// Whether `message_start` or `message_delta` usage was seen.
    pub seen: bool,
    /// Whether `message_stop` was seen (the stream completed).
    pub stopped: bool,
}

impl SseUsage {
    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            let (line, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
        }
        if !chunk.is_empty() && !self.skipping {
            if self.partial.len() + chunk.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Only events that can carry usage are parsed; content deltas are skipped cheaply.
        if !contains(data, b"\"message_") {
            return;
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(rename = "type")]
            ty: String,
            message: Option<Message>,
            usage: Option<PartialUsage>,
        }
        #[derive(Deserialize)]
        struct Message {
            usage: Option<PartialUsage>,
        }
        let Ok(event) = serde_json::from_slice::<Event>(data.trim_ascii()) else {
            return;
        };
        match event.ty.as_str() {
            "message_start" => {
                if let Some(u) = event.message.and_then(|m| m.usage) {
                    u.merge(&mut self.usage);
                    self.seen = true;
                }
            }
            "message_delta" => {
                if let Some(u) = event.usage {
                    u.merge(&mut self.usage);
                    self.seen = true;
                }
            }
            "message_stop" => self.stopped = true,
            _ => {}
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod recorded {
    //! SSE sequences as the Messages API sends them.

    pub const TOOL_USE: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":2}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking the weather\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    pub const CACHED: &str = "event: message_start\r\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":2048,\"cache_read_input_tokens\":10240,\"output_tokens\":1}}}\r\n\r\n\
event: ping\r\n\
data: {\"type\": \"ping\"}\r\n\r\n\
event: message_delta\r\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n\
event: message_delta\r\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":2048,\"cache_read_input_tokens\":10240,\"output_tokens\":40}}\r\n\r\n\
event: message_stop\r\n\
data: {\"type\":\"message_stop\"}\r\n\r\n";
}

#[cfg(test)]
mod tests {
    use super::recorded::*;
    use super::*;

    #[test]
    fn json_usage() {
        let u = from_json(
            br#"{"id":"m","usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(u.total(), 115);
        assert_eq!(from_json(b"{}"), None);
        assert_eq!(from_json(b"not json"), None);
    }

    fn run(sse: &str, chunk: usize) -> SseUsage {
        let mut s = SseUsage::default();
        for c in sse.as_bytes().chunks(chunk) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn tool_use_stream_every_split() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let s = run(TOOL_USE, chunk);
            assert!(s.seen && s.stopped, "chunk {chunk}");
            assert_eq!(
                s.usage(),
                Usage { input_tokens: 472, output_tokens: 89, ..Default::default() },
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn cache_tokens_and_crlf() {
        for chunk in [1, 5, 4096] {
            let s = run(CACHED, chunk);
            assert_eq!(
                s.usage(),
                Usage {
                    input_tokens: 12,
                    output_tokens: 40,
                    cache_creation_input_tokens: 2048,
                    cache_read_input_tokens: 10240
                }
            );
            assert_eq!(s.usage().total(), 12 + 40 + 2048 + 10240);
        }
    }

    #[test]
    fn truncated_stream_keeps_what_was_seen() {
        let cut = &TOOL_USE[..TOOL_USE.find("event: message_delta").unwrap()];
        let s = run(cut, 10);
        assert!(s.seen && !s.stopped);
        assert_eq!(s.usage().input_tokens, 472);
        assert_eq!(s.usage().output_tokens, 2);
    }

    #[test]
    fn huge_lines_and_garbage_are_survived() {
        let mut s = SseUsage::default();
        s.feed(&vec![b'x'; MAX_LINE + 10]);
        s.feed(b"still the long line\n");
        s.feed(b"data: {not json \"message_start\"\n");
        s.feed(TOOL_USE.as_bytes());
        assert_eq!(s.usage().output_tokens, 89);
    }
}
