//! The Messages API answer as JSON and as the SSE event sequence of a streamed answer:
//! `message_start` (usage) → `content_block_start` → `ping` → `content_block_delta`… →
//! `content_block_stop` → `message_delta` (`stop_reason`, cumulative `usage`) → `message_stop`.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{Reply, Usage};

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "output_tokens": u.output_tokens,
    })
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Splits `s` into `n` roughly equal pieces on char boundaries (at least one piece).
fn split(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(n).max(1);
    let mut out: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// The non-streaming answer.
pub fn message_json(id: &str, model: &str, reply: &Reply, usage: &Usage) -> Value {
    let (content, stop) = match reply {
        Reply::Text(text) => (json!([{ "type": "text", "text": text }]), "end_turn"),
        Reply::ToolUse { name, input } => (
            json!([{ "type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": input }]),
            "tool_use",
        ),
    };
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

/// The streamed answer: one `Bytes` per SSE event, `deltas` content deltas.
pub fn message_events(
    id: &str,
    model: &str,
    reply: &Reply,
    usage: &Usage,
    deltas: usize,
) -> Vec<Bytes> {
    let start_usage = Usage { output_tokens: 1, ..*usage };
    let mut events = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage_json(&start_usage)}}),
    )];
    let (block, pieces, stop) = match reply {
        Reply::Text(text) => {
            let block = json!({"type": "text", "text": ""});
            let pieces = split(text, deltas)
                .into_iter()
                .map(|p| json!({"type": "text_delta", "text": p}))
                .collect::<Vec<_>>();
            (block, pieces, "end_turn")
        }
        Reply::ToolUse { name, input } => {
            let block =
                json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}});
            let pieces = split(&input.to_string(), deltas)
                .into_iter()
                .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                .collect::<Vec<_>>();
            (block, pieces, "tool_use")
        }
    };
    events.push(event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    events.push(event("ping", &json!({"type": "ping"})));
    for delta in pieces {
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": usage_json(usage)}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_sequence() {
        let events = message_events(
            "m1",
            "claude-x",
            &Reply::Text("hello world".into()),
            &Usage::default(),
            3,
        );
        let names: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8_lossy(e).lines().next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("event: message_start"));
        assert_eq!(names.iter().filter(|n| *n == "event: content_block_delta").count(), 3);
        assert_eq!(names.last().map(String::as_str), Some("event: message_stop"));
        let text: String = events
            .iter()
            .filter_map(|e| {
                let s = String::from_utf8_lossy(e).into_owned();
                let data = s.lines().nth(1)?.strip_prefix("data: ")?.to_owned();
                let v: Value = serde_json::from_str(&data).ok()?;
                v["delta"]["text"].as_str().map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "hello world");
    }
}
