//! The load generator: sequential requests on one keep-alive connection (latency) and
//! closed-loop keep-alive connections (throughput at saturation). Every request is bounded in
//! time; a failure (connect error, transport error, timeout, non-200 answer, broken answer
//! body) is counted, the connection opened again, never hidden.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Longest a single request (or connect) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send, and the headers that authenticate there.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub headers: Vec<(&'static str, String)>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        Some(sender)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.ok().flatten()
}

fn request(t: &Target, body: &Bytes) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post("/v1/messages")
        .header("host", t.addr.to_string())
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    for (k, v) in &t.headers {
        req = req.header(*k, v);
    }
    req.body(Full::new(body.clone())).expect("a valid request")
}

/// One request: `Ok` when it was answered 200 with a whole body within the timeout, else
/// what went wrong (status and the head of the answer, for a start-up failure message).
async fn one(sender: &mut Sender, t: &Target, body: &Bytes) -> Result<(), String> {
    let fut = async {
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let resp =
            sender.send_request(request(t, body)).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let answer =
            resp.into_body().collect().await.map_err(|e| format!("answer body: {e}"))?.to_bytes();
        if status == 200 {
            Ok(())
        } else {
            let head = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
            Err(format!("answered {status}: {head}"))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

/// A connection that is opened again after a failure.
struct Conn {
    sender: Option<Sender>,
}

impl Conn {
    async fn send(&mut self, t: &Target, body: &Bytes) -> bool {
        self.send_described(t, body).await.is_ok()
    }

    async fn send_described(&mut self, t: &Target, body: &Bytes) -> Result<(), String> {
        if self.sender.is_none() {
            self.sender = connect(t.addr).await;
        }
        let Some(sender) = self.sender.as_mut() else {
            // Connection refused: do not spin; the failure is counted by the caller.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Err(format!("cannot connect to {}", t.addr));
        };
        let result = one(sender, t, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// A Messages request body of about `size` bytes (non-streaming, `max_tokens` 64).
pub fn body(size: usize) -> Bytes {
    let filler = "Refactor the handler so the retry policy is applied once. ".repeat(size / 58 + 1);
    let mut text = filler;
    text.truncate(size.saturating_sub(120));
    Bytes::from(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
            .to_string(),
    )
}

/// Sequential requests on one keep-alive connection.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// µs, over the successful requests (NaN when none succeeded).
    pub p50: f64,
    pub p99: f64,
    pub failed: u64,
}

/// p50 and p99 of at most `n` sequential requests (after a 10 % warm-up) and at most `limit`.
pub async fn latency(t: &Target, body: &Bytes, n: usize, limit: Duration) -> Latency {
    let mut conn = Conn { sender: None };
    let deadline = Instant::now() + limit;
    for _ in 0..(n / 10).max(5) {
        conn.send(t, body).await;
        if Instant::now() > deadline {
            break;
        }
    }
    let mut us = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        if Instant::now() > deadline {
            break;
        }
        let start = Instant::now();
        if conn.send(t, body).await {
            us.push(start.elapsed().as_secs_f64() * 1e6);
        } else {
            failed += 1;
        }
    }
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if us.is_empty() { f64::NAN } else { us[((us.len() as f64 - 1.0) * p) as usize] }
    };
    Latency { p50: pct(0.5), p99: pct(0.99), failed }
}

/// Closed-loop load at saturation.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Successful requests per second of wall time (until the last connection stopped).
    pub rps: f64,
    pub failed: u64,
}

/// `conns` keep-alive connections, each sending its next request as soon as the last one is
/// answered, for `secs` (plus the requests in flight at the end, each at most 10 s).
pub async fn throughput(t: &Target, body: &Bytes, conns: usize, secs: f64) -> Rate {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (t, body) = (t.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn { sender: None };
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                if conn.send(&t, &body).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await {
            Ok((o, f)) => (ok, failed) = (ok + o, failed + f),
            Err(_) => failed += 1, // a panicked connection task: at least one failure
        }
    }
    Rate { rps: ok as f64 / start.elapsed().as_secs_f64(), failed }
}

/// Sends `body` until one request succeeds (at most `limit`): the subject is ready. `Err`:
/// the last failure.
pub async fn until_ok(t: &Target, body: &Bytes, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut conn = Conn { sender: None };
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        match conn.send_described(t, body).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}
