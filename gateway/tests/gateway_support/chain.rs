//! The pod's side of the chain, every part a real binary: `sanctum-bridge` (loopback TCP) →
//! Unix socket → `sanctum-forwarder forward` → a running [`Gateway`]. Whatever provider the
//! gateway sends the org to, a client pointed at [`PodSide::bridge_addr`] takes the path an
//! agent in a pod takes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Gateway, Setup, skip_or_fail};

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary of the workspace built next to the gateway's.
pub fn sibling_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sanctum-gateway")).with_file_name(name)
}

/// The bridge binary, or `None` after a SKIP line (a failure when `SANCTUM_REQUIRE_ALL=1`).
pub fn bridge_binary() -> Option<PathBuf> {
    let bridge = sibling_binary("sanctum-bridge");
    if bridge.exists() {
        return Some(bridge);
    }
    skip_or_fail(&format!(
        "{} is not built: run `cargo build -p sanctum-bridge`",
        bridge.display()
    ));
    None
}

/// Mints the pod's SVID and TraT for `run`/`txn` and writes them where the bridge reads them
/// (`jwt`, `trat.jwt` in the setup's directory); returns `(svid, trat)`.
pub fn pod_tokens(s: &Setup, run: &str, txn: &str) -> (String, String) {
    let (svid, trat) = (s.svid(run), s.trat(run, txn));
    std::fs::write(s.path("jwt"), format!("{svid}\n")).unwrap();
    std::fs::write(s.path("trat.jwt"), &trat).unwrap();
    (svid, trat)
}

/// The forwarder and the bridge, running in front of a gateway.
pub struct PodSide {
    _forwarder: Kill,
    _bridge: Kill,
    /// Where the agent's client points (`ANTHROPIC_BASE_URL=http://{bridge_addr}`).
    pub bridge_addr: SocketAddr,
}

/// Starts `sanctum-forwarder forward` on `llm.sock` in the setup's directory (upstream: `gw`)
/// and the bridge on free loopback ports; returns once both listen.
pub async fn pod_side(bridge: &Path, s: &Setup, gw: &Gateway) -> PodSide {
    let socket = s.path("llm.sock");
    let forwarder = Kill(
        Command::new(sibling_binary("sanctum-forwarder"))
            // The test gateway serves plain http on loopback.
            .args(["forward", "--admin-listen", "127.0.0.1:0", "--allow-insecure-upstream"])
            .arg("--upstream")
            .arg(gw.url(""))
            .arg("--listen-socket")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sanctum-forwarder forward"),
    );
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (child, bridge_addr, _admin) = sanctum_testkit::bridge::spawn(bridge, s.tmp.path(), &[]);
    PodSide { _forwarder: forwarder, _bridge: Kill(child), bridge_addr }
}
