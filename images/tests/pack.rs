//! `sanctum-images pack`: the archive follows the OCI image-layout rules, the same inputs give
//! the same bytes, and containerd imports it under its reference (when containerd is here).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const REF: &str = "example.test/sanctum/pack:1";

fn pack(dir: &Path, out: &str, epoch: Option<&str>) -> PathBuf {
    let script = dir.join("hello.txt");
    std::fs::write(&script, "hello\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = dir.join(out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sanctum-images"));
    cmd.args(["pack", "--ref", REF, "--out"])
        .arg(&out)
        .args(["--entrypoint", "/usr/bin/echo", "--arg", "hello", "--arg", "world"])
        .args(["--file", "/bin/echo=/usr/bin/echo"])
        .arg("--file")
        .arg(format!("{}=/srv/data/hello.txt", script.display()))
        .args(["--user", "65532", "--env", "A=1", "--env", "B=2", "--with-libs"])
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e);
    }
    let status = cmd.status().expect("run sanctum-images");
    assert!(status.success(), "pack failed");
    out
}

#[test]
fn pack_writes_a_valid_layout_with_the_files_libs_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), "a.tar", None);
    let image = common::check(&out, REF);
    assert_eq!(image.layers.len(), 1, "pack writes one layer");

    let cfg = image.config.config().as_ref().expect("a runtime config");
    assert_eq!(cfg.entrypoint().as_deref(), Some(&["/usr/bin/echo".to_owned()][..]));
    assert_eq!(cfg.cmd().as_deref(), Some(&["hello".to_owned(), "world".to_owned()][..]));
    assert_eq!(cfg.user().as_deref(), Some("65532"));
    assert_eq!(cfg.env().as_deref(), Some(&["A=1".to_owned(), "B=2".to_owned()][..]));
    assert_eq!(image.config.created().as_deref(), Some("1970-01-01T00:00:00Z"));

    let entry = |p: &str| {
        image
            .layer
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} is in the layer: {:?}", image.layer))
            .clone()
    };
    assert_eq!(entry("usr/bin/echo").mode & 0o111, 0o111, "the entrypoint is executable");
    assert_eq!(entry("srv/data/hello.txt").mode, 0o640, "modes are kept");
    assert_eq!(entry("srv/data").kind, tar::EntryType::Directory, "parents are created");
    // --with-libs: the loader at its PT_INTERP path and libc where the loader looks.
    assert_eq!(entry("lib64/ld-linux-x86-64.so.2").kind, tar::EntryType::Regular);
    assert!(image.layer.iter().any(|e| e.path.ends_with("/libc.so.6")));
    for e in &image.layer {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{} has no host owner or time", e.path);
    }
}

#[test]
fn pack_is_reproducible_and_follows_source_date_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(pack(dir.path(), "a.tar", None)).unwrap();
    let b = std::fs::read(pack(dir.path(), "b.tar", None)).unwrap();
    assert!(a == b, "two builds of the same inputs are byte-identical");

    let c = pack(dir.path(), "c.tar", Some("1700000000"));
    let image = common::check(&c, REF);
    assert_eq!(image.config.created().as_deref(), Some("2023-11-14T22:13:20Z"));
    assert!(image.layer.iter().all(|e| e.mtime == 1_700_000_000));
    assert!(std::fs::read(c).unwrap() != a);
}

#[test]
fn pack_refuses_an_entrypoint_that_is_not_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sanctum-images"))
        .args(["pack", "--ref", REF, "--out"])
        .arg(dir.path().join("x.tar"))
        .args(["--entrypoint", "/missing", "--file", "/bin/true=/bin/true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--entrypoint /missing"), "{stderr}");
}

/// The real consumer: containerd's `ctr images import` tags the archive by its reference, and
/// the image runs (as 65532, with only the packed files and libraries).
#[test]
fn containerd_imports_and_runs_the_archive() {
    let Some(bin) = common::containerd_bin() else {
        eprintln!("SKIPPED: no containerd + ctr here (set SANCTUM_CONTAINERD_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), "a.tar", None);
    let digest = common::check(&out, REF).manifest_digest;
    let ctd = common::containerd::Private::start(&bin, dir.path());
    let listed = ctd.ctr(&["images", "import", out.to_str().unwrap()]);
    assert!(listed.contains(REF), "import names the image: {listed}");
    let listed = ctd.ctr(&["images", "ls"]);
    assert!(listed.contains(REF) && listed.contains(&digest), "{listed}");
    let ran = ctd.ctr(&["run", "--rm", REF, "pack-test"]);
    assert_eq!(ran.trim_end(), "hello world", "the entrypoint ran with its Cmd");
}
