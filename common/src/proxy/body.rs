//! [`ProxyBody`]: the single body type of the proxy path, on requests and responses.
//!
//! It streams frame by frame — nothing is buffered whole — and it enforces an *idle*
//! timeout between frames, never a total deadline. Dropping it drops the underlying hyper
//! body, which is how a client disconnect cancels the upstream request: hyper drops the
//! response body when the client goes away, and that closes the upstream connection.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use crate::proxy::metrics::InFlight;

/// Why a body stream ended early.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("no data for {0:?} (body idle timeout)")]
    Idle(Duration),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A streaming body: a hyper [`Incoming`] passed through frame by frame (with an idle
/// timeout when [`ProxyBody::idle_timeout`] set one), or a small body held in memory
/// (error answers, test responses). `Unpin`, as hyper's pooled client requires.
pub struct ProxyBody {
    kind: Kind,
    // Boxed to keep the body Unpin: one allocation per streamed body.
    idle: Option<Pin<Box<Sleep>>>,
    idle_for: Duration,
    in_flight: Option<InFlight>,
}

enum Kind {
    Stream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body of these bytes, sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let kind = Kind::Full(if bytes.is_empty() { None } else { Some(bytes) });
        Self { kind, idle: None, idle_for: Duration::ZERO, in_flight: None }
    }

    /// Fails the stream with [`BodyError::Idle`] when no frame arrives for `idle`.
    /// Does nothing for in-memory bodies.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        if matches!(self.kind, Kind::Stream(_)) {
            self.idle = Some(Box::pin(tokio::time::sleep(idle)));
            self.idle_for = idle;
        }
        self
    }

    /// Keeps `guard` alive as long as the body: in-flight gauges count whole streams.
    pub(crate) fn track(mut self, guard: InFlight) -> Self {
        self.in_flight = Some(guard);
        self
    }

    /// True for a body that is streamed from a connection (not held in memory).
    pub fn is_streaming(&self) -> bool {
        matches!(self.kind, Kind::Stream(_))
    }
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        Self { kind: Kind::Stream(body), idle: None, idle_for: Duration::ZERO, in_flight: None }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody").field("streaming", &self.is_streaming()).finish()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(incoming) => match Pin::new(incoming).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(idle) = this.idle.as_mut() {
                        idle.as_mut().reset(Instant::now() + this.idle_for);
                    }
                    Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
                }
                Poll::Pending => {
                    if let Some(idle) = this.idle.as_mut() {
                        ready!(idle.as_mut().poll(cx));
                        return Poll::Ready(Some(Err(BodyError::Idle(this.idle_for))));
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(incoming) => incoming.size_hint(),
        }
    }
}
