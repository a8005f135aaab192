//! [`Misbehaving`]: a stand-in upstream written on raw TCP, for the faults a well-behaved
//! HTTP server library will not produce — the ones real upstreams (providers, gateways,
//! load balancers) were seen to produce in the field (issue 13):
//!
//! - [`Fault::RefuseFromHead`]: answers from the request head alone and closes at once,
//!   without reading the body (a server with no lingering close): the client still
//!   writing its body gets a broken pipe or a reset.
//! - [`Fault::ConflictingFraming`]: streams a Messages API SSE answer framed with
//!   `Transfer-Encoding: chunked` *and* a `Content-Length` of the first event only.
//! - [`Fault::CloseIdleAfter`]: a keep-alive server that closes a connection idle for this
//!   long (a gateway's keep-alive timeout), answering each request with a short JSON body.
//!
//! Each connection is counted ([`Misbehaving::connections`]) and each complete request
//! too ([`Misbehaving::requests`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{DEFAULT_ANSWER, Reply, Usage};

/// What the stand-in does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `status` with an Anthropic error body and `Connection: close`, from the head alone.
    RefuseFromHead { status: u16 },
    /// SSE with both `Transfer-Encoding: chunked` and the first event's `Content-Length`.
    ConflictingFraming,
    /// Keep-alive; a connection idle this long is closed.
    CloseIdleAfter(Duration),
}

/// A running misbehaving upstream; stops when dropped.
pub struct Misbehaving {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Misbehaving {
    /// Listens on a free loopback port.
    pub async fn start(fault: Fault) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let r = r.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, fault, &r).await;
                });
            }
        });
        Ok(Self { addr, connections, requests, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Complete requests read so far (not counting ones refused from the head).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Reads one request head; `None` at end of stream. Returns the head and the body bytes
/// read past it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((head, length));
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, length: usize) -> Option<()> {
    while buf.len() < length {
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..length);
    Some(())
}

async fn connection(mut stream: TcpStream, fault: Fault, requests: &AtomicU64) -> Option<()> {
    let mut buf = Vec::new();
    loop {
        let head = match fault {
            Fault::CloseIdleAfter(idle) => {
                match tokio::time::timeout(idle, read_head(&mut stream, &mut buf)).await {
                    Ok(head) => head?,
                    // Idle too long: close, as a server's keep-alive timeout does.
                    Err(_) => return None,
                }
            }
            _ => read_head(&mut stream, &mut buf).await?,
        };
        let (_, length) = head;
        match fault {
            Fault::RefuseFromHead { status } => {
                let body = format!(
                    r#"{{"type":"error","error":{{"type":"request_too_large","message":"stand-in: refused from the head with {status}"}}}}"#
                );
                let answer = format!(
                    "HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\n\
                     x-should-retry: false\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.ok()?;
                // No lingering close: the unread body makes the kernel send a reset.
                return None;
            }
            Fault::ConflictingFraming => {
                read_body(&mut stream, &mut buf, length).await?;
                requests.fetch_add(1, Ordering::Relaxed);
                let events = crate::sse::message_events(
                    "msg_framing",
                    "claude-test",
                    &Reply::Text(DEFAULT_ANSWER.to_owned()),
                    &Usage::default(),
                    4,
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     transfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n",
                    events[0].len()
                );
                stream.write_all(head.as_bytes()).await.ok()?;
                for event in &events {
                    stream.write_all(format!("{:x}\r\n", event.len()).as_bytes()).await.ok()?;
                    stream.write_all(event).await.ok()?;
                    stream.write_all(b"\r\n").await.ok()?;
                    stream.flush().await.ok()?;
                }
                stream.write_all(b"0\r\n\r\n").await.ok()?;
            }
            Fault::CloseIdleAfter(_) => {
                read_body(&mut stream, &mut buf, length).await?;
                let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
                let body = format!(r#"{{"type":"message","request":{n}}}"#);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.ok()?;
            }
        }
    }
}
