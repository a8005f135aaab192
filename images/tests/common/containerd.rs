//! A private containerd (own root, state and socket under a temp dir, CRI off) for import tests,
//! so the tests never touch a node's containerd.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Private {
    child: Child,
    bin: PathBuf,
    sock: PathBuf,
}

impl Private {
    pub fn start(bin: &Path, dir: &Path) -> Self {
        let d = dir.join("containerd");
        std::fs::create_dir_all(&d).unwrap();
        let sock = d.join("sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 3\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\", \"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let child = Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not listen on {}", sock.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, bin: bin.to_owned(), sock }
    }

    /// Runs `ctr -n k8s.io ARGS` against this containerd; panics with its stderr on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new(self.bin.join("ctr"))
            .arg("--address")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
