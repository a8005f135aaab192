//! The processes of the benchmark: each in its own process group, killed whole on drop (and on
//! SIGINT/SIGTERM/SIGHUP of the benchmark), paused and resumed whole, RSS read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process groups alive now: killed by the signal handler if the benchmark is interrupted
/// (a child in its own group does not get the terminal's SIGINT).
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The run's temporary directory, removed by the signal handler too (`exit` runs no drop).
static TEMP_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn kill_group(pgid: u32, sig: &str) {
    let _ =
        Command::new("kill").args([sig, "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

/// Kills every live group, removes `temp_dir`, then exits: SIGINT, SIGTERM or SIGHUP of the
/// benchmark leaves no gateway, stand-in or redis-server behind.
pub fn kill_all_on_signal(temp_dir: &Path) {
    *TEMP_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(temp_dir.to_path_buf());
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("cannot install signal handlers: an interrupted run may leave processes");
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {}, _ = hup.recv() => {} }
        for pgid in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            kill_group(pgid, "-KILL");
        }
        if let Some(dir) = TEMP_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        eprintln!("interrupted: every benchmark process group killed");
        std::process::exit(130);
    });
}

pub struct Proc {
    child: Child,
    stderr: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.child.id(), "-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != self.child.id());
    }
}

impl Proc {
    /// Starts `cmd` as the leader of a new process group; standard error goes to `stderr`
    /// (read back by [`Proc::stderr_tail`] when it fails to start) or nowhere.
    pub fn spawn(name: &str, cmd: &mut Command, stderr: Option<&Path>) -> Result<Self, String> {
        use std::os::unix::process::CommandExt as _;
        let err = match stderr {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());
        Ok(Self { child, stderr: stderr.map(Path::to_path_buf) })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Waits until `addr` accepts a TCP connection; `Err` (with the exit status and the
    /// standard error) as soon as the process has exited, or after `limit`.
    pub async fn wait_listening(
        &mut self,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "exited ({status}) before listening on {addr}: {}",
                    self.stderr_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on {addr} within {limit:?}: {}",
                    self.stderr_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP/SIGCONT of the whole group: only the subject being measured runs, so an idle
    /// peer's background work (LiteLLM's event loop, a gateway's timers) takes no CPU.
    pub fn pause(&self, paused: bool) {
        kill_group(self.pid(), if paused { "-STOP" } else { "-CONT" });
    }

    /// The last ~2 KB of the process's standard error, for a failure message.
    pub fn stderr_tail(&self) -> String {
        let text =
            self.stderr.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let start = text.len().saturating_sub(2048);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text[start..].trim().to_owned()
    }

    /// Resident memory (KiB) of the process and its direct children (LiteLLM's workers).
    pub fn rss_kib(&self) -> u64 {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid()))
            .unwrap_or_default();
        rss_of(self.pid())
            + children.split_whitespace().filter_map(|p| p.parse().ok()).map(rss_of).sum::<u64>()
    }

    /// Threads of the process whose name starts with `prefix` (tokio names its worker and
    /// blocking-pool threads `tokio-runtime-worker` or `tokio-rt-worker`, cut to 15 bytes):
    /// the thread budget as observed, not only as asked for.
    pub fn threads_named(&self, prefix: &str) -> usize {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else { return 0 };
        tasks
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
            })
            .count()
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

/// A private `redis-server` (Debian package `redis-server`) on a free loopback port, no
/// persistence (`--save '' --appendonly no`), as the gateway's Redis tests start it.
/// `Ok(None)` when it is not installed.
pub async fn redis(dir: &Path) -> Result<Option<(Proc, String)>, String> {
    let binary = ["redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(binary) = binary else { return Ok(None) };
    let addr = free_port();
    let port = addr.port().to_string();
    let mut cmd = Command::new(binary);
    cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    let mut proc_ = Proc::spawn("redis-server", &mut cmd, Some(&dir.join("redis.stderr")))?;
    proc_
        .wait_listening(addr, Duration::from_secs(10))
        .await
        .map_err(|e| format!("redis-server {e}"))?;
    Ok(Some((proc_, format!("redis://{addr}"))))
}

/// Environment variable that turns this benchmark executable into the stand-in provider
/// (its value: the loopback address to listen on), so the stand-in runs in a process and a
/// thread budget of its own rather than in the load generator's runtime.
pub const STANDIN_ENV: &str = "SANCTUM_BENCH_STANDIN_LISTEN";

/// Starts this executable again as the stand-in provider with `threads` runtime threads.
pub async fn standin(dir: &Path, threads: usize) -> Result<(Proc, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let addr = free_port();
    let mut cmd = Command::new(exe);
    cmd.env(STANDIN_ENV, addr.to_string()).env("TOKIO_WORKER_THREADS", threads.to_string());
    let mut proc_ = Proc::spawn("stand-in", &mut cmd, Some(&dir.join("standin.stderr")))?;
    proc_
        .wait_listening(addr, Duration::from_secs(20))
        .await
        .map_err(|e| format!("the stand-in {e}"))?;
    Ok((proc_, addr))
}

/// The stand-in mode of this executable: serves on `addr` until killed.
pub fn serve_standin(addr: &str) -> ! {
    use sanctum_testkit::{Provider, ProviderConfig};
    let addr: SocketAddr = addr.parse().expect("stand-in address");
    // The multi-thread runtime reads TOKIO_WORKER_THREADS (set by the parent).
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("stand-in runtime");
    runtime.block_on(async {
        let _provider = Provider::start_tcp(
            addr,
            ProviderConfig { record: false, ..ProviderConfig::default() },
        )
        .await
        .expect("stand-in listen");
        std::future::pending::<()>().await;
    });
    unreachable!("the stand-in serves until it is killed")
}
