//! Where the load goes: a TCP address or a Unix socket, one HTTP/1.1 keep-alive connection
//! per virtual user (hyper's low-level client, no pool in the way of the measurement).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

pub type Sender = SendRequest<Full<Bytes>>;

impl Target {
    pub async fn connect(&self) -> anyhow::Result<Sender> {
        match self {
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connect {addr}"))?;
                stream.set_nodelay(true)?;
                handshake(TokioIo::new(stream)).await
            }
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connect {}", path.display()))?;
                handshake(TokioIo::new(stream)).await
            }
        }
    }

    /// Waits until something accepts connections here (at most ~10 s).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        for _ in 0..200 {
            let ok = match self {
                Target::Tcp(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
                Target::Unix(p) => tokio::net::UnixStream::connect(p).await.is_ok(),
            };
            if ok {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::bail!("{self:?} did not start accepting within 10 s")
    }
}

async fn handshake<I>(io: I) -> anyhow::Result<Sender>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A Messages API request as Claude Code sends it (placeholder key included).
pub fn messages_request(body: &Bytes, extra: &[(&'static str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/v1/messages?beta=true")
        .header("host", "127.0.0.1:8082")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "gateway-injected")
        .header("user-agent", "claude-cli/2.1.112 (external, sdk-cli)")
        .header("x-app", "cli");
    for (n, v) in extra {
        builder = builder.header(*n, *v);
    }
    builder.body(Full::new(body.clone())).expect("static request is valid")
}

/// A request body of about `size` bytes.
pub fn body_of_size(size: usize, stream: bool) -> Bytes {
    let filler = "x".repeat(size.saturating_sub(120));
    Bytes::from(
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": filler}]})
        .to_string(),
    )
}
