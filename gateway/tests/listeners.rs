//! Idle connections to an admin port cannot starve a data port (issue 12 item 11): the real
//! binaries, their file-descriptor limit lowered with `prlimit` after start, hundreds of
//! idle TCP connections to the admin port, and then a request on the data port, which must
//! still be answered. On the old code the idle connections held every descriptor and the
//! data port's accept failed with EMFILE until they went away (they never did: no deadline).

mod gateway_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_support::*;
use sanctum_testkit::{DEFAULT_ANSWER, Provider, ProviderConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Far below the default, so that the test's idle connections would exceed it.
const NOFILE: u32 = 128;
/// More idle connections than `NOFILE`: on the old code they use up every descriptor.
const IDLE: usize = 200;

/// Lowers the soft and hard open-files limit of the running process `pid`.
fn limit_fds(pid: u32) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed: {status}");
}

/// Opens `n` TCP connections to `addr` that never send a byte.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        // The kernel completes the handshake from the backlog even when the process cannot
        // accept; the connection then sits there.
        held.push(TcpStream::connect(addr).await.expect("connect to the admin port"));
    }
    // Give the server time to accept what it will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    held
}

/// Whether the server closed `stream` (end of stream or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_data_port_answers_while_its_admin_port_is_flooded_with_idle_connections() {
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let setup = Setup::new();
    let gw = setup.gateway(&provider.url().unwrap(), &[]).await;
    limit_fds(gw.child.id());

    let mut idle = idle_connections(gw.admin, IDLE).await;
    let started = Instant::now();
    let (svid, trat) = (setup.svid("run-1"), setup.trat("run-1", "txn-1"));
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        call(&gw, Some(&svid), Some(&trat), messages_body(false, 5, "hi")),
    )
    .await
    .expect("the data port answers while the admin port holds idle connections");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains(DEFAULT_ANSWER));

    // The admin port closes a connection that never sends a request head (10 s deadline),
    // and then answers probes again.
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(20)).await,
        "an idle admin connection was kept open"
    );
    assert!(started.elapsed() >= Duration::from_secs(5), "closed before the deadline");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = gw.metrics().await;
    assert!(metrics.contains("sanctum"), "admin answers again: {metrics}");
}

struct Forwarder {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_forwarder(socket: &Path, upstream: &str) -> Forwarder {
    let mut child = Command::new(
        Path::new(env!("CARGO_BIN_EXE_sanctum-gateway")).with_file_name("sanctum-forwarder"),
    )
    .args(["forward", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
    .args(["--upstream", upstream, "--allow-insecure-upstream"])
    .arg("--listen-socket")
    .arg(socket)
    .env("RUST_LOG", "info")
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .expect("spawn sanctum-forwarder");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for line in lines.by_ref() {
        let line = line.expect("read log");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "sanctum-forwarder forward ready"
        {
            let admin = v["admin"].as_str().expect("admin").parse().expect("admin addr");
            std::thread::spawn(move || for _ in lines {});
            return Forwarder { child, admin };
        }
    }
    let _ = child.wait();
    panic!("sanctum-forwarder exited before it was ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_socket_answers_while_its_admin_port_is_flooded_with_idle_connections() {
    let provider = Provider::start_tcp("127.0.0.1:0".parse().unwrap(), ProviderConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("llm.sock");
    let fwd = spawn_forwarder(&socket, &provider.url().unwrap());
    limit_fds(fwd.child.id());

    let _idle = idle_connections(fwd.admin, IDLE).await;
    let body = messages_body(false, 5, "hi");
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = UnixStream::connect(&socket).await.expect("connect to the socket");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.read_to_string(&mut out).await
    })
    .await;
    assert!(answered.is_ok(), "the data socket did not answer while the admin port was flooded");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(DEFAULT_ANSWER));
}
