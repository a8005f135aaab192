//! Starting the real `sanctum-bridge` binary for tests: on free loopback ports, with its
//! socket and token files in `dir` (`llm.sock`, `jwt`, `trat.jwt`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `bin` and waits for its "ready" log line; returns the child, the listen address
/// and the admin address.
pub fn spawn(bin: &Path, dir: &Path, extra_args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--upstream-socket")
        .arg(dir.join("llm.sock"))
        .arg("--jwt-file")
        .arg(dir.join("jwt"))
        .arg("--trat-file")
        .arg(dir.join("trat.jwt"))
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sanctum-bridge");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut found = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "sanctum-bridge ready"
        {
            let listen = v["listen"].as_str().expect("listen").parse().expect("listen addr");
            let admin = v["admin"].as_str().expect("admin").parse().expect("admin addr");
            found = Some((listen, admin));
            break;
        }
    }
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let (listen, admin) = found.expect("sanctum-bridge exited before it was ready");
    (child, listen, admin)
}
