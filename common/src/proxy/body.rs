//! [`ProxyBody`]: the single body type of the proxy path, on requests and responses.
//!
//! It streams frame by frame — nothing is buffered whole — and it enforces an *idle*
//! timeout between frames, never a total deadline. Dropping it drops the underlying hyper
//! body, which is how a client disconnect cancels the upstream request: hyper drops the
//! response body when the client goes away, and that closes the upstream connection.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use crate::proxy::client::Checkin;

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
/// (error answers, test responses). `Unpin`, so callers can poll it in place.
pub struct ProxyBody {
    kind: Kind,
    /// The idle timer, made the first time the stream has no frame ready: a body whose
    /// frames are all there when polled (a small request or answer) never arms a timer.
    /// Boxed to keep the body `Unpin`.
    idle: Option<Pin<Box<Sleep>>>,
    /// Zero: no idle timeout.
    idle_for: Duration,
    /// The upstream connection this response body arrives on, handed back to the
    /// client's pool once the body has been read to its end (see [`Checkin`]).
    checkin: Option<Checkin>,
}

enum Kind {
    Stream(Incoming),
    Full(Option<Bytes>),
    /// A reader of a [`Replay`]: the frames kept so far from `pos` on, then the source.
    Replay {
        shared: Arc<Mutex<ReplayState>>,
        pos: usize,
    },
}

/// The shared state of a replayable body: its source and the data frames read from it so
/// far, while they fit in the cap.
struct ReplayState {
    source: ProxyBody,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    cap: usize,
    /// Frames were read that are not kept (over the cap, trailers, or released): the
    /// body can no longer be started again.
    lost: bool,
}

/// A handle to restart a body made with [`ProxyBody::replayable`].
pub struct Replay {
    shared: Arc<Mutex<ReplayState>>,
}

impl Replay {
    /// A new reader that yields every frame from the start (the kept frames, then the rest
    /// of the source); `None` when frames were read that were not kept.
    pub fn restart(&self) -> Option<ProxyBody> {
        let state = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if state.lost {
            return None;
        }
        drop(state);
        Some(ProxyBody::kind(Kind::Replay { shared: self.shared.clone(), pos: 0 }))
    }

    /// Stops keeping frames and frees the kept ones: no restart is needed any more.
    pub fn release(&self) {
        let mut state = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        state.lost = true;
        state.kept = Vec::new();
    }
}

impl ProxyBody {
    fn kind(kind: Kind) -> Self {
        Self { kind, idle: None, idle_for: Duration::ZERO, checkin: None }
    }

    /// Hands `checkin`'s connection back to its pool when this (streamed) body ends; if
    /// the body is dropped before its end, the connection is closed instead.
    pub(crate) fn with_checkin(mut self, checkin: Checkin) -> Self {
        if self.is_end_stream() {
            checkin.done();
        } else {
            self.checkin = Some(checkin);
        }
        self
    }

    /// This body, readable again from the start through the returned [`Replay`] as long as
    /// at most `cap` bytes of it were read (the frames are kept, not copied: `Bytes` are
    /// reference-counted). Used to send a request again when it provably never left.
    pub fn replayable(self, cap: usize) -> (Self, Replay) {
        let shared = Arc::new(Mutex::new(ReplayState {
            source: self,
            kept: Vec::new(),
            kept_bytes: 0,
            cap,
            lost: false,
        }));
        let body = Self::kind(Kind::Replay { shared: shared.clone(), pos: 0 });
        (body, Replay { shared })
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body of these bytes, sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::kind(Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }))
    }

    /// Fails the stream with [`BodyError::Idle`] when no frame arrives for `idle`.
    /// Does nothing for in-memory bodies.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        if matches!(self.kind, Kind::Stream(_)) {
            self.idle_for = idle;
        }
        self
    }

    /// True for a body that is streamed from a connection (not held in memory).
    pub fn is_streaming(&self) -> bool {
        match &self.kind {
            Kind::Stream(_) => true,
            Kind::Full(_) => false,
            Kind::Replay { shared, .. } => {
                shared.lock().unwrap_or_else(PoisonError::into_inner).source.is_streaming()
            }
        }
    }
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        Self::kind(Kind::Stream(body))
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
            Kind::Replay { shared, pos } => {
                let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(kept) = state.kept.get(*pos) {
                    *pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(kept.clone()))));
                }
                let frame = ready!(Pin::new(&mut state.source).poll_frame(cx));
                if let Some(Ok(frame)) = &frame {
                    match frame.data_ref() {
                        Some(data) if !state.lost && state.kept_bytes + data.len() <= state.cap => {
                            state.kept_bytes += data.len();
                            state.kept.push(data.clone());
                            *pos += 1;
                        }
                        _ => {
                            state.lost = true;
                            state.kept = Vec::new();
                        }
                    }
                }
                Poll::Ready(frame)
            }
            Kind::Stream(incoming) => match Pin::new(&mut *incoming).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(idle) = this.idle.as_mut() {
                        idle.as_mut().reset(Instant::now() + this.idle_for);
                    }
                    // The end, seen as `None` or (hyper counts a Content-Length down) as
                    // the last frame: the connection can carry the next request.
                    let end = match &frame {
                        None => true,
                        Some(Ok(_)) => incoming.is_end_stream(),
                        Some(Err(_)) => false,
                    };
                    if end && let Some(checkin) = this.checkin.take() {
                        checkin.done();
                    }
                    Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
                }
                Poll::Pending if this.idle_for.is_zero() => Poll::Pending,
                Poll::Pending => {
                    let idle_for = this.idle_for;
                    let idle = this.idle.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(Instant::now() + idle_for))
                    });
                    ready!(idle.as_mut().poll(cx));
                    Poll::Ready(Some(Err(BodyError::Idle(idle_for))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(incoming) => incoming.is_end_stream(),
            Kind::Replay { shared, pos } => {
                let state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                *pos >= state.kept.len() && state.source.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(incoming) => incoming.size_hint(),
            Kind::Replay { shared, pos } => {
                // What this reader has still to yield: the kept frames after `pos`, then
                // what the source has left (hyper counts a Content-Length body down).
                let state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let kept: u64 = state.kept.iter().skip(*pos).map(|b| b.len() as u64).sum();
                let rest = state.source.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + kept);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + kept);
                }
                hint
            }
        }
    }
}
