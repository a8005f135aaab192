//! Every size cap and timeout of the proxy path, in one place.
//!
//! There is deliberately **no total deadline** on a request or response: a model turn can
//! stream for many minutes. What is bounded is silence — the time to the first byte of a
//! head, the time for an upstream to answer, and the gap between two body frames.

use std::time::Duration;

/// Size caps and timeouts shared by the proxy server and the upstream client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted from a client; larger
    /// heads get 431 from hyper or 400 from the head guard. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head once it started one, and the
    /// longest a keep-alive connection may sit idle between requests. Default 60 s.
    pub header_read_timeout: Duration,
    /// Time a client has to complete its TLS handshake on a TLS listener; it counts
    /// against the connection cap meanwhile. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Most client connections open at once on a listener; one more is closed as soon as
    /// it is accepted (with a log line). Bounds the file descriptors clients can hold.
    /// Default 1024.
    pub max_connections: usize,
    /// Time to open a connection to the upstream (socket connect, plus TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response head. Non-streaming model
    /// calls answer only when the whole turn is done, so this is long. Default 10 min.
    pub response_head_timeout: Duration,
    /// Longest gap between two body frames, in either direction. The Messages API sends
    /// `ping` events during long turns, so a stream silent this long is dead. Default 5 min.
    pub body_idle_timeout: Duration,
    /// How long an idle pooled upstream connection is kept. Default 50 s: it must be
    /// shorter than the upstream's keep-alive timeout (ours is `header_read_timeout`, 60 s),
    /// or a request can be sent on a connection the upstream is closing at that moment.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per upstream. Default 64.
    pub pool_max_idle: usize,
    /// How long in-flight requests may finish after a shutdown signal. Default 30 s.
    pub grace_period: Duration,
    /// Lingering close (RFC 9112 §9.6): after the server's last response on a connection,
    /// how long it keeps reading and discarding what the client still sends, so that a
    /// client still uploading a body gets the answer (e.g. a 413 decided from the head)
    /// instead of a reset. Default 5 s.
    pub linger_timeout: Duration,
    /// Most bytes discarded during a lingering close. Default 64 MiB.
    pub linger_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
            response_head_timeout: Duration::from_secs(600),
            body_idle_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(50),
            pool_max_idle: 64,
            grace_period: Duration::from_secs(30),
            linger_timeout: Duration::from_secs(5),
            linger_max_bytes: 64 << 20,
        }
    }
}
