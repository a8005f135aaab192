//! Bedrock's answers → the Messages API's: the binary event stream of
//! `InvokeModelWithResponseStream` into SSE, and Bedrock's error JSON into Anthropic's error
//! shape.
//!
//! The stream is AWS event-stream framing (prelude with lengths and CRC32, headers, payload,
//! CRC32), decoded with `aws-smithy-eventstream`. Each message is one of (Bedrock runtime API
//! reference, `ResponseStream`):
//! - `:message-type: event`, `:event-type: chunk`, payload `{"bytes": "<base64>"}` whose
//!   bytes are one Anthropic stream event JSON. It becomes `event: <type>\ndata: <json>\n\n`
//!   with the JSON as Bedrock sent it, except that `message_stop`'s
//!   `amazon-bedrock-invocationMetrics` is read and dropped.
//! - `:message-type: exception`, `:exception-type: throttlingException` (or
//!   `validationException`, `modelStreamErrorException`, `internalServerException`,
//!   `modelTimeoutException`, `serviceUnavailableException`), payload `{"message": …}`:
//!   becomes an SSE `error` event in Anthropic's shape, and ends the stream.
//! - `:message-type: error` (`:error-code`, `:error-message`): likewise, as `api_error`.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::usage::{SseUsage, Usage};

/// Content type of Bedrock's streamed answer.
pub const EVENTSTREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Largest event-stream message accepted (the event-stream format's own limit is 16 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("Bedrock's event stream is corrupt: {0}")]
    Frame(String),
    #[error("Bedrock's event stream announced a {0}-byte message (the limit is 16 MiB)")]
    TooLarge(u32),
    #[error("Bedrock's event stream chunk is not what the Messages API sends: {0}")]
    Chunk(String),
    #[error("Bedrock's event stream ended in the middle of a message ({0} bytes left over)")]
    Truncated(usize),
}

/// `amazon-bedrock-invocationMetrics` of the last event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationMetrics {
    #[serde(default)]
    pub input_token_count: u64,
    #[serde(default)]
    pub output_token_count: u64,
    /// Milliseconds.
    #[serde(default)]
    pub invocation_latency: u64,
    /// Milliseconds.
    #[serde(default)]
    pub first_byte_latency: u64,
    #[serde(default)]
    pub cache_read_input_token_count: u64,
    #[serde(default)]
    pub cache_write_input_token_count: u64,
}

/// The streaming translator. Input may be split at any byte; output is whole SSE events.
#[derive(Debug, Default)]
pub struct EventStreamToSse {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    /// Length of the message whose prelude is being waited for (checked against the cap).
    frame_len: Option<u32>,
    usage: SseUsage,
    metrics: Option<InvocationMetrics>,
    /// An exception or error message arrived: nothing after it is translated.
    ended: bool,
    /// A decoding error was returned: later input is ignored.
    failed: bool,
}

impl EventStreamToSse {
    pub fn new() -> Self {
        Self::default()
    }

    /// Translates the next bytes, appending whole SSE events to `out`.
    ///
    /// Errors: a frame that fails its CRC or length checks, an oversized message, or a
    /// chunk that is not base64 JSON. The caller ends the stream with an SSE `error` event
    /// (what was appended to `out` before the error is valid and should be sent); later
    /// input is ignored.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), StreamError> {
        if self.ended || self.failed {
            return Ok(());
        }
        let result = self.decode(input, out);
        if result.is_err() {
            self.failed = true;
            self.buf.clear();
        }
        result
    }

    fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), StreamError> {
        self.buf.extend_from_slice(input);
        loop {
            if self.frame_len.is_none() && self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if len as usize > MAX_MESSAGE {
                    return Err(StreamError::TooLarge(len));
                }
                self.frame_len = Some(len);
            }
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Incomplete) => return Ok(()),
                Ok(DecodedFrame::Complete(message)) => {
                    self.frame_len = None;
                    let start = out.len();
                    self.message(&message, out)?;
                    self.usage.feed(&out[start..]);
                    if self.ended {
                        self.buf.clear();
                        return Ok(());
                    }
                }
                Err(e) => return Err(StreamError::Frame(e.to_string())),
            }
        }
    }

    /// The body ended. Errors: [`StreamError::Truncated`] when part of a message is left.
    pub fn finish(&mut self, _out: &mut BytesMut) -> Result<(), StreamError> {
        if self.ended || self.failed {
            return Ok(());
        }
        // A started message may already have moved its prelude into the decoder.
        if !self.buf.is_empty() || self.frame_len.is_some() {
            return Err(StreamError::Truncated(self.buf.len()));
        }
        Ok(())
    }

    /// Usage read from `message_start` and `message_delta` (cumulative, as in
    /// [`crate::usage`]); when the stream carried none, the invocation metrics' counts.
    pub fn usage(&self) -> Usage {
        match (self.usage.seen, self.metrics) {
            (false, Some(m)) => Usage {
                input_tokens: m.input_token_count,
                output_tokens: m.output_token_count,
                cache_read_input_tokens: m.cache_read_input_token_count,
                cache_creation_input_tokens: m.cache_write_input_token_count,
            },
            _ => self.usage.usage(),
        }
    }

    /// Whether `message_stop` was translated (the answer is complete).
    pub fn stopped(&self) -> bool {
        self.usage.stopped
    }

    /// Whether an exception or error message ended the stream.
    pub fn ended_by_error(&self) -> bool {
        self.ended
    }

    /// `amazon-bedrock-invocationMetrics`, once `message_stop` carried them.
    pub fn invocation_metrics(&self) -> Option<InvocationMetrics> {
        self.metrics
    }

    fn message(&mut self, message: &Message, out: &mut BytesMut) -> Result<(), StreamError> {
        let header = |name: &str| {
            message.headers().iter().find(|h| h.name().as_str() == name).and_then(|h| {
                match h.value() {
                    HeaderValue::String(s) => Some(s.as_str().to_owned()),
                    _ => None,
                }
            })
        };
        match header(":message-type").as_deref() {
            Some("event") => {}
            Some("exception") => {
                let kind = header(":exception-type").unwrap_or_else(|| "unknownException".into());
                let message = payload_message(message.payload())
                    .unwrap_or_else(|| format!("Amazon Bedrock raised {kind}"));
                out.extend_from_slice(&error_event(exception_error_type(&kind), &scrub(&message)));
                self.ended = true;
                return Ok(());
            }
            Some("error") => {
                let code = header(":error-code").unwrap_or_default();
                let text = header(":error-message").unwrap_or_default();
                let msg = format!("Amazon Bedrock stream error {code}: {text}");
                out.extend_from_slice(&error_event("api_error", &scrub(&msg)));
                self.ended = true;
                return Ok(());
            }
            other => {
                tracing::debug!(message_type = ?other, "bedrock: skipping an event-stream message of unknown type");
                return Ok(());
            }
        }
        if header(":event-type").as_deref() != Some("chunk") {
            tracing::debug!(event_type = ?header(":event-type"), "bedrock: skipping a non-chunk event");
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Chunk {
            bytes: String,
        }
        let chunk: Chunk = serde_json::from_slice(message.payload())
            .map_err(|e| StreamError::Chunk(format!("payload is not {{\"bytes\": …}}: {e}")))?;
        let json = base64::engine::general_purpose::STANDARD
            .decode(chunk.bytes.as_bytes())
            .map_err(|e| StreamError::Chunk(format!("bytes is not base64: {e}")))?;
        let mut event: Value = serde_json::from_slice(&json)
            .map_err(|e| StreamError::Chunk(format!("the event is not JSON: {e}")))?;
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .ok_or_else(|| StreamError::Chunk("the event has no valid \"type\"".into()))?
            .to_owned();
        let metrics =
            event.as_object_mut().and_then(|o| o.remove("amazon-bedrock-invocationMetrics"));
        let data: Bytes = if let Some(m) = metrics {
            match serde_json::from_value::<InvocationMetrics>(m) {
                Ok(m) => {
                    self.metrics = Some(m);
                    self.cross_check(&m);
                }
                Err(e) => tracing::warn!(error = %e, "bedrock: unreadable invocation metrics"),
            }
            Bytes::from(event.to_string())
        } else if json.contains(&b'\n') || json.contains(&b'\r') {
            // Pretty-printed JSON would break SSE framing: newlines in JSON are only whitespace.
            Bytes::from(event.to_string())
        } else {
            Bytes::from(json)
        };
        out.reserve(data.len() + ty.len() + 16);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\n\n");
        Ok(())
    }

    fn cross_check(&self, m: &InvocationMetrics) {
        let u = self.usage.usage();
        if self.usage.seen
            && (u.input_tokens != m.input_token_count || u.output_tokens != m.output_token_count)
        {
            tracing::warn!(
                events_input = u.input_tokens,
                events_output = u.output_tokens,
                metrics_input = m.input_token_count,
                metrics_output = m.output_token_count,
                "bedrock: the stream's usage and its invocation metrics disagree; metering the stream's usage"
            );
        }
    }
}

fn payload_message(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithMessage {
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    serde_json::from_slice::<WithMessage>(payload).ok()?.message
}

/// The Anthropic error type for a Bedrock exception name (either case of its first letter).
pub fn exception_error_type(exception: &str) -> &'static str {
    let name = exception.split(':').next().unwrap_or("").to_ascii_lowercase();
    match name.as_str() {
        "throttlingexception"
        | "servicequotaexceededexception"
        | "serviceunavailableexception"
        | "modelnotreadyexception" => "overloaded_error",
        "validationexception" => "invalid_request_error",
        "accessdeniedexception" => "permission_error",
        "resourcenotfoundexception" => "not_found_error",
        _ => "api_error",
    }
}

/// Status and Anthropic error type for a Bedrock HTTP error (status, and the exception name
/// of `x-amzn-ErrorType` when there is one). Statuses the Messages API clients know are
/// kept; Bedrock's own (408 model timeout, 424 model error) become 504 and 502.
pub fn error_status(status: u16, exception: Option<&str>) -> (u16, &'static str) {
    let by_status = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    // The exception name is more precise than the status, except that a 429 stays a
    // rate_limit_error (clients back off on it).
    let kind = match exception.map(exception_error_type) {
        Some("api_error") | None => by_status,
        Some(_) if status == 429 => by_status,
        Some(k) => k,
    };
    let status = match status {
        408 => 504,
        424 => 502,
        s if (400..600).contains(&s) => s,
        _ => 502,
    };
    (status, kind)
}

/// Bedrock's error body (`{"message": …}`, or `{"Message": …}`) in Anthropic's error shape,
/// `{"type":"error","error":{"type":…,"message":"Amazon Bedrock: …"}}`, with the status to
/// answer. `exception` is `x-amzn-ErrorType` (e.g. `ValidationException:http://…`).
pub fn error_json(status: u16, exception: Option<&str>, body: &[u8]) -> (u16, Bytes) {
    let (status, kind) = error_status(status, exception);
    let name = exception.and_then(|e| e.split(':').next()).filter(|e| !e.is_empty());
    let message = match (payload_message(body), name) {
        (Some(m), _) => format!("Amazon Bedrock: {}", scrub(&m)),
        (None, Some(n)) => format!("Amazon Bedrock answered HTTP {status} ({n})"),
        (None, None) => format!("Amazon Bedrock answered HTTP {status}"),
    };
    (status, anthropic_error(kind, &message))
}

/// `{"type":"error","error":{"type":kind,"message":message}}`.
pub fn anthropic_error(kind: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
            .to_string(),
    )
}

/// An SSE `error` event in Anthropic's shape.
pub fn error_event(kind: &str, message: &str) -> Bytes {
    let json = anthropic_error(kind, message);
    let mut out = BytesMut::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// Longest Bedrock error message passed on.
const MAX_MESSAGE_TEXT: usize = 1024;

/// Cuts what must not reach a client: a SigV4 `SignatureDoesNotMatch` message quotes the
/// canonical request, which holds the signed headers' values (the session token among
/// them); and very long messages.
fn scrub(message: &str) -> String {
    let cut = ["The Canonical String", "The String-to-Sign"]
        .iter()
        .filter_map(|m| message.find(m))
        .min()
        .unwrap_or(message.len());
    let mut s = message[..cut].trim_end().to_owned();
    if s.len() > MAX_MESSAGE_TEXT {
        let mut end = MAX_MESSAGE_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Collects a non-streaming Bedrock error body and writes it in Anthropic's shape at
/// [`JsonErrorToAnthropic::finish`] (the body is small; at most 64 KiB is kept).
#[derive(Debug)]
pub struct JsonErrorToAnthropic {
    status: u16,
    exception: Option<String>,
    buf: Vec<u8>,
}

impl JsonErrorToAnthropic {
    /// `status` and `x-amzn-ErrorType` of Bedrock's answer.
    pub fn new(status: u16, exception: Option<String>) -> Self {
        Self { status, exception, buf: Vec::new() }
    }

    pub fn feed(&mut self, input: &[u8], _out: &mut BytesMut) {
        let room = (64 * 1024usize).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
    }

    pub fn finish(&mut self, out: &mut BytesMut) {
        let (_, body) = error_json(self.status, self.exception.as_deref(), &self.buf);
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;

    fn chunk(event: &str) -> Vec<u8> {
        let payload = serde_json::json!({
            "bytes": base64::engine::general_purpose::STANDARD.encode(event),
            "p": "abcdefghij"
        });
        let msg = Message::new(payload.to_string().into_bytes())
            .add_header(Header::new(":event-type", HeaderValue::String("chunk".into())))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ))
            .add_header(Header::new(":message-type", HeaderValue::String("event".into())));
        let mut out = Vec::new();
        write_message_to(&msg, &mut out).unwrap();
        out
    }

    fn exception(kind: &str, message: &str) -> Vec<u8> {
        let msg = Message::new(serde_json::json!({"message": message}).to_string().into_bytes())
            .add_header(Header::new(":exception-type", HeaderValue::String(kind.to_owned().into())))
            .add_header(Header::new(":message-type", HeaderValue::String("exception".into())));
        let mut out = Vec::new();
        write_message_to(&msg, &mut out).unwrap();
        out
    }

    const EVENTS: [&str; 6] = [
        r#"{"type":"message_start","message":{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":2048,"cache_read_input_tokens":10240,"output_tokens":2}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":472,"outputTokenCount":89,"invocationLatency":1200,"firstByteLatency":300,"cacheReadInputTokenCount":10240,"cacheWriteInputTokenCount":2048}}"#,
    ];

    fn stream() -> Vec<u8> {
        EVENTS.iter().flat_map(|e| chunk(e)).collect()
    }

    fn expected_sse() -> String {
        let mut s = String::new();
        for e in &EVENTS[..5] {
            let v: Value = serde_json::from_str(e).unwrap();
            s.push_str(&format!("event: {}\ndata: {e}\n\n", v["type"].as_str().unwrap()));
        }
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s
    }

    #[test]
    fn translates_at_every_split() {
        let bytes = stream();
        for size in [1, 2, 3, 5, 11, 12, 13, 64, 1000, bytes.len()] {
            let mut t = EventStreamToSse::new();
            let mut out = BytesMut::new();
            for piece in bytes.chunks(size) {
                t.feed(piece, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            assert_eq!(String::from_utf8_lossy(&out), expected_sse(), "split {size}");
            assert!(t.stopped());
            assert_eq!(
                t.usage(),
                Usage {
                    input_tokens: 472,
                    output_tokens: 89,
                    cache_creation_input_tokens: 2048,
                    cache_read_input_tokens: 10240
                }
            );
            let m = t.invocation_metrics().unwrap();
            assert_eq!(
                (m.input_token_count, m.output_token_count, m.first_byte_latency),
                (472, 89, 300)
            );
        }
    }

    #[test]
    fn exceptions_become_error_events_and_end_the_stream() {
        for (kind, want) in [
            ("throttlingException", "overloaded_error"),
            ("validationException", "invalid_request_error"),
            ("modelStreamErrorException", "api_error"),
            ("internalServerException", "api_error"),
        ] {
            let mut bytes = chunk(EVENTS[0]);
            bytes.extend(exception(kind, "Too many tokens, please wait"));
            bytes.extend(chunk(EVENTS[1]));
            let mut t = EventStreamToSse::new();
            let mut out = BytesMut::new();
            t.feed(&bytes, &mut out).unwrap();
            t.finish(&mut out).unwrap();
            let text = String::from_utf8(out.to_vec()).unwrap();
            let (_, last) = text.trim_end().rsplit_once("\n\n").unwrap();
            let data: Value =
                serde_json::from_str(last.strip_prefix("event: error\ndata: ").unwrap()).unwrap();
            assert_eq!(data["type"], "error");
            assert_eq!(data["error"]["type"], want, "{kind}");
            assert_eq!(data["error"]["message"], "Too many tokens, please wait");
            assert!(t.ended_by_error() && !t.stopped());
            assert!(!text.contains("content_block_start"));
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let mut bytes = stream();
        let n = bytes.len();
        bytes[n - 10] ^= 0x01; // inside the last message: its CRC no longer matches
        let mut t = EventStreamToSse::new();
        let mut out = BytesMut::new();
        assert!(matches!(t.feed(&bytes, &mut out), Err(StreamError::Frame(_))));
        // Nothing more after a failure.
        let before = out.len();
        t.feed(&stream(), &mut out).unwrap();
        assert_eq!(out.len(), before);
        // Everything before the damaged message was translated.
        assert_eq!(String::from_utf8_lossy(&out).matches("event: ").count(), 5);

        let bytes = stream();
        let mut t = EventStreamToSse::new();
        let mut out = BytesMut::new();
        t.feed(&bytes[..bytes.len() - 3], &mut out).unwrap();
        assert!(matches!(t.finish(&mut out), Err(StreamError::Truncated(_))));

        let mut t = EventStreamToSse::new();
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(t.feed(&huge, &mut BytesMut::new()), Err(StreamError::TooLarge(_))));

        let mut t = EventStreamToSse::new();
        let bad = chunk("not json");
        assert!(matches!(t.feed(&bad, &mut BytesMut::new()), Err(StreamError::Chunk(_))));
    }

    #[test]
    fn pretty_json_is_made_compact() {
        let mut t = EventStreamToSse::new();
        let mut out = BytesMut::new();
        t.feed(&chunk("{\n  \"type\": \"ping\"\n}"), &mut out).unwrap();
        assert_eq!(&out[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    #[test]
    fn http_errors_in_anthropic_shape() {
        let (status, body) = error_json(
            429,
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(status, 429);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            v["error"]["message"],
            "Amazon Bedrock: Too many requests, please wait before trying again."
        );
        assert_eq!(error_status(400, Some("ValidationException")), (400, "invalid_request_error"));
        assert_eq!(error_status(424, Some("ModelErrorException")), (502, "api_error"));
        assert_eq!(error_status(408, None), (504, "api_error"));
        assert_eq!(
            error_status(503, Some("ServiceUnavailableException")),
            (503, "overloaded_error")
        );
        assert_eq!(error_status(404, Some("ResourceNotFoundException")), (404, "not_found_error"));
        let (_, body) = error_json(500, None, b"<html>");
        assert!(String::from_utf8_lossy(&body).contains("Amazon Bedrock answered HTTP 500"));
    }

    #[test]
    fn signature_errors_do_not_echo_the_canonical_request() {
        let msg = r#"{"message":"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'POST\n/model/x/invoke\n\nhost:h\nx-amz-security-token:SESSIONTOKEN\n'\n\nThe String-to-Sign should have been ..."}"#;
        let (status, body) = error_json(403, Some("InvalidSignatureException"), msg.as_bytes());
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 403);
        assert!(!text.contains("SESSIONTOKEN") && text.contains("does not match"), "{text}");
        let mut t = JsonErrorToAnthropic::new(403, None);
        let mut out = BytesMut::new();
        t.feed(msg.as_bytes(), &mut out);
        t.finish(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("SESSIONTOKEN"));
    }
}
