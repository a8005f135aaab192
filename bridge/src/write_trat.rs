//! `sanctum-bridge write-trat`: the `write-trat` init container of ScannerRun pods (and of
//! pods annotated `sanctum.dev/trat-secret`) — copy the TraT from the mounted Secret to
//! `/run/sage/trat.jwt`, owner-only, atomically (the bridge never sees half a token).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args as ClapArgs;
use sanctum_common::defaults;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The TraT file of the mounted Secret.
    #[arg(long, env = "SANCTUM_FROM")]
    pub from: PathBuf,
    /// Where to write it (mode 0600).
    #[arg(long, env = "SANCTUM_OUT", default_value = defaults::TRAT_FILE)]
    pub out: PathBuf,
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file in the same directory
/// and a rename, so a reader sees the old file or the whole new one, never a part.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("token");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // Created 0600 from the start (the umask can only take bits away): no moment
        // when another user could open it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| {
                format!("cannot create {} (is {} writable?)", tmp.display(), dir.display())
            })?;
        file.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move the token into place at {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.from).with_context(|| {
        format!("cannot read the TraT at {} (is the run's Secret mounted?)", args.from.display())
    })?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("{} is empty: the Secret holds no TraT", args.from.display());
    }
    if let Err(e) = sanctum_common::claims::unverified_expiry(token) {
        anyhow::bail!("the TraT in {} {e}", args.from.display());
    }
    write_owner_only(&args.out, token.as_bytes())?;
    eprintln!("write-trat: wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn copies_owner_only_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in");
        let out = dir.path().join("sage/trat.jwt");
        std::fs::create_dir(dir.path().join("sage")).unwrap();
        std::fs::write(&from, "a.eyJleHAiOjk5OTk5OTk5OTl9.c\n").unwrap();
        run(Args { from: from.clone(), out: out.clone() }).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a.eyJleHAiOjk5OTk5OTk5OTl9.c");
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&from, "not a jwt").unwrap();
        let err = run(Args { from: from.clone(), out: out.clone() }).unwrap_err().to_string();
        assert!(err.contains("is not a JWT"), "{err}");
        let err = run(Args { from: dir.path().join("missing"), out }).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("Secret"), "{err}");
    }
}
