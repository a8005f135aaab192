//! The response body: in memory (refusals), or the provider's answer metered on its way to
//! the client — usage read from the SSE events or the JSON, the run settled once when the
//! answer ends, breaks or is abandoned. A provider whose answer is not the Messages API's
//! has it translated ([`Translate`]) before it is metered, so metering is the same for all.
//!
//! SSE is passed on whole events at a time, so an `error` event the gateway adds (the
//! provider broke off) never lands inside a half-sent one.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use sanctum_common::ApiError;
use sanctum_common::proxy::ProxyBody;

use super::provider::{Answer, Translate};
use super::settle::{Finish, Seen};
use super::usage::{self, SseUsage, Usage};

/// An error a body frame may carry.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Non-streaming responses larger than this are passed on but not parsed for usage.
const MAX_JSON_USAGE: usize = 8 << 20;

/// The response body: in memory (errors), or the provider's stream metered on its way.
pub struct GatewayBody {
    kind: BodyKind,
}

enum BodyKind {
    Full(Option<Bytes>),
    Metered(Box<Metered>),
}

struct Metered {
    inner: ProxyBody,
    /// The provider's bytes into the Messages API's; `None`: they already are.
    translate: Option<Box<dyn Translate>>,
    sse: bool,
    sse_usage: SseUsage,
    json: Option<Vec<u8>>,
    /// SSE bytes after the last complete event, held so an error event never lands inside
    /// a half-sent one.
    pending: BytesMut,
    ended: bool,
    status: u16,
    finish: Option<Finish>,
}

impl GatewayBody {
    pub fn full(bytes: Bytes) -> Self {
        Self { kind: BodyKind::Full(if bytes.is_empty() { None } else { Some(bytes) }) }
    }

    /// The provider's answer `inner`, read as `answer` says, settled through `finish`.
    pub(crate) fn metered(inner: ProxyBody, answer: Answer, finish: Finish) -> Self {
        let Answer { sse, translate } = answer;
        let status = finish.audit.status;
        Self {
            kind: BodyKind::Metered(Box::new(Metered {
                inner,
                translate,
                sse,
                sse_usage: SseUsage::default(),
                json: if sse { None } else { Some(Vec::new()) },
                pending: BytesMut::new(),
                ended: false,
                status,
                finish: Some(finish),
            })),
        }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

/// End of the last complete SSE event in `buf` (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n' {
            if buf[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 3 && buf[i - 2] == b'\r' && buf[i - 3] == b'\n' {
                return Some(i);
            }
        }
        i -= 1;
    }
    None
}

impl Metered {
    /// Meters the next Messages API bytes; what to pass on now, if anything. `last`: the
    /// provider's body ended with them.
    fn take(&mut self, data: Bytes, last: bool) -> Option<Bytes> {
        if self.sse {
            self.sse_usage.feed(&data);
            self.pending.extend_from_slice(&data);
            if last {
                self.ended = true;
                self.complete(true);
                return (!self.pending.is_empty()).then(|| self.pending.split().freeze());
            }
            return last_event_end(&self.pending).map(|end| self.pending.split_to(end).freeze());
        }
        if let Some(buf) = &mut self.json {
            if buf.len() + data.len() <= MAX_JSON_USAGE {
                buf.extend_from_slice(&data);
            } else {
                self.json = None;
            }
        }
        if last {
            self.ended = true;
            self.complete(true);
        }
        (!data.is_empty()).then_some(data)
    }

    /// The provider's answer broke off (or could not be translated): settle what was seen;
    /// an SSE stream ends with an `error` event the way the API reports errors, dropping the
    /// half event; a JSON answer ends with `error`.
    fn broke(
        &mut self,
        error: BoxError,
        message: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.complete(false);
        if self.sse {
            self.pending.clear();
            return Poll::Ready(Some(Ok(Frame::data(error_event(message)))));
        }
        Poll::Ready(Some(Err(error)))
    }

    /// The usage reported so far, and whether it is the whole report. `ended` says whether
    /// the provider's body was read to its end.
    fn usage(&self, ended: bool) -> (Usage, Seen) {
        if self.sse {
            // `message_stop` follows the last `message_delta`, whose usage is final.
            let full = ended && self.sse_usage.stopped;
            return (self.sse_usage.usage(), if full { Seen::Full } else { Seen::Partly });
        }
        let parsed = if ended { self.json.as_deref().and_then(usage::from_json) } else { None };
        match parsed {
            Some(u) => (u, Seen::Full),
            // An error answer read in full: the provider did not run the model.
            None if ended && !(200..300).contains(&self.status) => (Usage::default(), Seen::Full),
            None => (Usage::default(), Seen::Partly),
        }
    }

    /// Settles once. `ended`: the provider's body was read to its end (not broken off, not
    /// abandoned by the client).
    fn complete(&mut self, ended: bool) {
        if let Some(finish) = self.finish.take() {
            let (usage, seen) = self.usage(ended);
            finish.done(self.status, usage, seen, None);
        }
    }
}

fn error_event(message: &str) -> Bytes {
    let body = ApiError::bad_gateway(message).body();
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let m = match &mut self.get_mut().kind {
            BodyKind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Metered(m) => m,
        };
        loop {
            if m.ended {
                return Poll::Ready(None);
            }
            let (data, last) = match Pin::new(&mut m.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: the Messages API sends none
                    };
                    // hyper stops polling a body once its content-length is written, so the
                    // end is noticed here, not only from a final `None`.
                    (data, m.inner.is_end_stream())
                }
                Poll::Ready(Some(Err(error))) => {
                    if let Some(f) = &m.finish {
                        f.gw.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(request_id = %f.audit.request_id, %error, "provider stream broke");
                    }
                    return m.broke(
                        Box::new(error),
                        "the provider's stream broke off before the message was complete; \
                         retry the request",
                    );
                }
                Poll::Ready(None) => (Bytes::new(), true),
            };
            let data = match m.translate.as_mut() {
                None => data,
                Some(t) => {
                    let mut out = BytesMut::new();
                    let done = t.feed(&data, &mut out).and_then(|()| match last {
                        true => t.finish(&mut out),
                        false => Ok(()),
                    });
                    if let Err(error) = done {
                        if let Some(f) = &m.finish {
                            tracing::warn!(request_id = %f.audit.request_id, %error, "provider answer untranslatable");
                        }
                        return m.broke(
                            Box::new(error),
                            "the provider's answer could not be translated to the Messages API; \
                             retry the request",
                        );
                    }
                    out.freeze()
                }
            };
            if let Some(frame) = m.take(data, last) {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if last {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(b) => b.is_none(),
            BodyKind::Metered(m) => m.ended && m.pending.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BodyKind::Metered(m) if !m.sse && m.translate.is_none() => m.inner.size_hint(),
            BodyKind::Metered(_) => SizeHint::default(),
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away mid-response (or never read it): settle what was seen.
        self.complete(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries() {
        assert_eq!(last_event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(last_event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(last_event_end(b"data: x\n"), None);
        assert_eq!(last_event_end(b""), None);
        assert_eq!(last_event_end(b"\n\n\n"), Some(3));
    }

    #[test]
    fn error_event_is_sse() {
        let e = error_event("broke");
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: error\ndata: {\"type\":\"error\""));
        assert!(text.ends_with("\n\n"));
    }
}
