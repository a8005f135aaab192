//! `sanctum-images build`: each of Sanctum's images holds its binaries, their libraries, the
//! `nonroot` user and (where TLS goes out) the CA bundle, runs as 65532, has no shell, carries
//! the OCI annotations, and builds reproducibly; an unchanged image is not rebuilt.
//!
//! The binaries are stand-ins (copies of `/bin/true`) so the test does not wait for release
//! builds; `the_real_standin_image_runs_in_containerd` uses the real release binary when built.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sanctum_images::catalog::{self, IMAGES, Input};

/// A workspace-shaped directory whose "release binaries" and native CLI are `/bin/true`.
fn fake_root(with_scanner: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let release = root.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    for def in IMAGES {
        for (input, _) in def.files {
            let dest = match input {
                Input::Release { bin, .. } if *bin == "sanctum-scanner" && !with_scanner => {
                    continue;
                }
                Input::Release { bin, .. } => release.join(bin),
                Input::NativeClaude => root.path().join(catalog::NATIVE_CLAUDE),
            };
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy("/bin/true", &dest).unwrap();
            // npm leaves the CLI 0644 at times: the image must still make it executable.
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    root
}

fn build(root: &Path, out: &Path, names: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sanctum-images"))
        .arg("build")
        .arg("--root")
        .arg(root)
        .arg("--out")
        .arg(out)
        .args(names)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn reference(name: &str) -> String {
    format!("ghcr.io/sanctum-dev/{name}:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn every_image_has_its_files_user_annotations_and_no_shell() {
    let root = fake_root(true);
    let out = root.path().join("images");
    let (ok, stdout, stderr) = build(root.path(), &out, &[]);
    assert!(ok, "{stdout}{stderr}");
    for def in IMAGES {
        let image = common::check(&out.join(format!("{}.tar", def.name)), &reference(def.name));
        let has = |p: &str| image.layer.iter().any(|e| e.path == p.trim_start_matches('/'));
        for (_, dest) in def.files {
            let e = image.layer.iter().find(|e| e.path == dest.trim_start_matches('/')).unwrap();
            assert_eq!(e.mode & 0o111, 0o111, "{} {dest} is executable", def.name);
        }
        assert!(has("/lib64/ld-linux-x86-64.so.2") && has("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(has("/etc/passwd") && has("/etc/group"));
        assert!(!has("/bin/sh") && !has("/usr/bin/sh"), "{} has no shell", def.name);
        assert_eq!(has(sanctum_images::image::CA_BUNDLE), def.ca_certificates, "{}", def.name);
        let home = image.layer.iter().find(|e| e.path == "home/nonroot").unwrap();
        assert_eq!((home.uid, home.gid), (65532, 65532));

        let cfg = image.config.config().as_ref().unwrap();
        assert_eq!(cfg.user().as_deref(), Some("65532:65532"));
        let entrypoint: Vec<String> = def.entrypoint.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(cfg.entrypoint().as_ref(), Some(&entrypoint));

        let ann = image.manifest.annotations().as_ref().unwrap();
        assert_eq!(ann["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            ann["org.opencontainers.image.source"],
            "https://github.com/sanctum-dev/sanctum"
        );
        assert_eq!(ann["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
        assert!(!ann["org.opencontainers.image.revision"].is_empty());
    }
    let passwd = {
        let image = common::check(&out.join("sanctum-bridge.tar"), &reference("sanctum-bridge"));
        String::from_utf8(image.file("etc/passwd").expect("etc/passwd")).unwrap()
    };
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let gateway = common::check(&out.join("sanctum-gateway.tar"), &reference("sanctum-gateway"));
    assert_eq!(
        gateway.config.config().as_ref().unwrap().entrypoint().as_deref(),
        Some(&["/usr/local/bin/sanctum-gateway".to_owned()][..])
    );
}

/// The agent and scanner images carry the native CLI alone in an identical bottom layer, so
/// containerd stores and unpacks it once for both; their own files are in a top layer each.
#[test]
fn the_claude_images_share_the_cli_as_their_first_layer() {
    let root = fake_root(true);
    let out = root.path().join("images");
    let names = ["sanctum-agent", "sanctum-scanner", "sanctum-bridge"];
    let (ok, stdout, stderr) = build(root.path(), &out, &names);
    assert!(ok, "{stdout}{stderr}");
    let check = |n: &str| common::check(&out.join(format!("{n}.tar")), &reference(n));
    let (agent, scanner) = (check("sanctum-agent"), check("sanctum-scanner"));
    assert_eq!(agent.layers.len(), 2, "the CLI's layer, then the image's own");
    assert_eq!(scanner.layers.len(), 2);
    assert_eq!(check("sanctum-bridge").layers.len(), 1, "an image without the CLI has one layer");

    let (shared, other) = (&agent.layers[0], &scanner.layers[0]);
    assert_eq!(shared.digest, other.digest, "the first layer is the same blob in both");
    assert_eq!(agent.manifest.layers()[0], scanner.manifest.layers()[0]);
    let claude = catalog::CLAUDE_IN_IMAGE.trim_start_matches('/');
    assert_eq!(shared.paths(), ["usr", "usr/local", "usr/local/bin", claude], "only the CLI");
    let cli = shared.entries.iter().find(|e| e.path == claude).unwrap();
    assert_eq!((cli.mode, cli.uid, cli.gid), (0o555, 0, 0), "read-only executable, root's");
    assert_eq!(agent.file(claude).unwrap(), std::fs::read("/bin/true").unwrap());

    let (agent_top, scanner_top) = (&agent.layers[1], &scanner.layers[1]);
    assert_ne!(agent_top.digest, scanner_top.digest, "each image's own files differ");
    for (image, top, bin) in
        [(&agent, agent_top, "sanctum-agent"), (&scanner, scanner_top, "sanctum-scanner")]
    {
        assert!(!top.paths().contains(&claude), "{bin}: the CLI is only in the shared layer");
        // The root filesystem holds what the single layer held before.
        let all: BTreeSet<&str> = image.layer.iter().map(|e| e.path.as_str()).collect();
        let own = format!("usr/local/bin/{bin}");
        for p in [
            own.as_str(),
            claude,
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
            "etc/passwd",
            "etc/group",
            "home/nonroot",
            "tmp",
        ] {
            assert!(all.contains(p), "{bin} holds {p}: {all:?}");
        }
        assert!(top.paths().contains(&own.as_str()) && top.paths().contains(&"etc/passwd"));
    }
}

/// The real consumer: containerd imports both Claude images, commits the CLI's layer as one
/// snapshot (its chain id is its diff_id, being the bottom layer) that both images' top
/// snapshots sit on, and runs the CLI from the lower layer with the libraries of the top one.
#[test]
fn containerd_unpacks_the_shared_cli_layer_once() {
    let Some(bin) = common::containerd_bin() else {
        eprintln!("SKIPPED: no containerd + ctr here (set SANCTUM_CONTAINERD_BIN)");
        return;
    };
    let root = fake_root(true);
    let out = root.path().join("images");
    let names = ["sanctum-agent", "sanctum-scanner"];
    let (ok, stdout, stderr) = build(root.path(), &out, &names);
    assert!(ok, "{stdout}{stderr}");
    let agent = common::check(&out.join("sanctum-agent.tar"), &reference("sanctum-agent"));
    let shared = agent.layers[0].digest.as_str();
    let ctd = common::containerd::Private::start(&bin, root.path());
    for n in names {
        ctd.ctr(&["images", "import", out.join(format!("{n}.tar")).to_str().unwrap()]);
    }
    let snapshots = ctd.ctr(&["snapshots", "ls"]);
    let committed: Vec<&str> = snapshots.lines().filter(|l| l.contains("Committed")).collect();
    assert_eq!(committed.len(), 3, "the CLI's layer once, a top layer per image: {snapshots}");
    let column =
        |i: usize| committed.iter().filter(|l| l.split_whitespace().nth(i) == Some(shared)).count();
    assert_eq!(column(0), 1, "{snapshots}");
    assert_eq!(column(1), 2, "both top layers sit on the CLI's: {snapshots}");
    let r = reference("sanctum-scanner");
    ctd.ctr(&["run", "--rm", "--read-only", &r, "shared-cli", catalog::CLAUDE_IN_IMAGE]);
}

#[test]
fn builds_are_reproducible_and_unchanged_images_are_kept() {
    let root = fake_root(true);
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let names = ["sanctum-bridge", "sanctum-agent"];
    let (ok, first, err) = build(root.path(), &a, &names);
    assert!(ok, "{err}");
    assert!(build(root.path(), &b, &names).0);
    for n in names {
        let (x, y) = (a.join(format!("{n}.tar")), b.join(format!("{n}.tar")));
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{n} is byte-identical");
    }
    let (ok, again, _) = build(root.path(), &a, &names);
    assert!(ok);
    assert_eq!(again.matches("(up to date)").count(), 2, "{again}");
    let digest = |s: &str| s.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(digest(&first), digest(&again));

    // A changed binary is rebuilt.
    let bridge: PathBuf = root.path().join("target/release/sanctum-bridge");
    std::fs::copy("/bin/false", &bridge).unwrap();
    let (ok, changed, _) = build(root.path(), &a, &["sanctum-bridge"]);
    assert!(ok && !changed.contains("up to date"), "{changed}");
    assert_ne!(digest(&first), digest(&changed));
}

#[test]
fn a_missing_scanner_is_skipped_unless_asked_for() {
    let root = fake_root(false);
    let out = root.path().join("images");
    let (ok, stdout, stderr) = build(root.path(), &out, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("skipped sanctum-scanner"), "{stderr}");
    assert!(stdout.contains("sanctum-operator") && !stdout.contains("sanctum-scanner"));
    let (ok, _, stderr) = build(root.path(), &out, &["sanctum-scanner"]);
    assert!(!ok);
    assert!(stderr.contains("cargo build --release -p sanctum-scanner"), "{stderr}");
}

/// The real release binary of the stand-in, packed with its libraries, runs in containerd as
/// 65532 on a read-only root.
#[test]
fn the_real_standin_image_runs_in_containerd() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    if !ws.join("target/release/sanctum-standin").is_file() {
        eprintln!(
            "SKIPPED: target/release/sanctum-standin is not built (scripts/images builds it)"
        );
        return;
    }
    let Some(bin) = common::containerd_bin() else {
        eprintln!("SKIPPED: no containerd + ctr here (set SANCTUM_CONTAINERD_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = build(ws, dir.path(), &["sanctum-standin"]);
    assert!(ok, "{stderr}");
    let ctd = common::containerd::Private::start(&bin, dir.path());
    let r = reference("sanctum-standin");
    ctd.ctr(&["images", "import", dir.path().join("sanctum-standin.tar").to_str().unwrap()]);
    let help = ctd.ctr(&[
        "run",
        "--rm",
        "--read-only",
        &r,
        "standin-help",
        "/usr/local/bin/sanctum-standin",
        "--help",
    ]);
    assert!(help.contains("--listen"), "{help}");
}
