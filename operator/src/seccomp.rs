//! `sanctum-operator seccomp-install`: puts the scanner seccomp profile into a node's kubelet
//! seccomp directory and keeps it there. The chart runs it as a DaemonSet with the kubelet
//! directory on a hostPath, so Sanctum's own image (no shell, no `cp`) installs the profile.
//!
//! The kubelet resolves `localhostProfile: sanctum/scanner.json` against
//! `<kubelet root>/seccomp/` (Kubernetes docs, "Restrict a Container's Syscalls with seccomp").

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the profile goes under the kubelet's seccomp directory (the operator config's
/// `pod.seccompLocalhostProfile` default names the same path).
pub const PROFILE_PATH: &str = "sanctum/scanner.json";

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("cannot read the profile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the profile {path} is not a JSON object: {why}")]
    NotJson { path: PathBuf, why: String },
    #[error("cannot write {path}: {source} (is the kubelet seccomp directory mounted writable?)")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What one pass did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The file was missing or different, and now holds the profile.
    Written(PathBuf),
    /// The file already held the profile byte for byte.
    Unchanged(PathBuf),
}

/// Copies `profile` to `<dir>/sanctum/scanner.json` unless it is there already, atomically
/// (a temporary file renamed over the old one), so the kubelet never reads half a profile.
pub fn install(profile: &Path, dir: &Path) -> Result<Installed, InstallError> {
    let bytes = std::fs::read(profile)
        .map_err(|source| InstallError::Read { path: profile.to_owned(), source })?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => {
            return Err(InstallError::NotJson {
                path: profile.to_owned(),
                why: "not an object".into(),
            });
        }
        Err(e) => {
            return Err(InstallError::NotJson { path: profile.to_owned(), why: e.to_string() });
        }
    }
    let target = dir.join(PROFILE_PATH);
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(Installed::Unchanged(target));
    }
    let write = |path: &Path, result: std::io::Result<()>| {
        result.map_err(|source| InstallError::Write { path: path.to_owned(), source })
    };
    let parent = target.parent().unwrap_or(dir);
    write(parent, std::fs::create_dir_all(parent))?;
    let tmp = parent.join(".scanner.json.tmp");
    write(&tmp, std::fs::write(&tmp, &bytes))?;
    write(&target, std::fs::rename(&tmp, &target))?;
    Ok(Installed::Written(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_then_leaves_it_and_restores_a_deleted_or_edited_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = tmp.path().join("scanner.json");
        std::fs::write(&profile, br#"{"defaultAction":"SCMP_ACT_ERRNO"}"#).unwrap();
        let dir = tmp.path().join("kubelet/seccomp");
        let target = dir.join("sanctum/scanner.json");
        assert_eq!(install(&profile, &dir).unwrap(), Installed::Written(target.clone()));
        assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&profile).unwrap());
        assert_eq!(install(&profile, &dir).unwrap(), Installed::Unchanged(target.clone()));
        std::fs::write(&target, b"{}").unwrap();
        assert_eq!(install(&profile, &dir).unwrap(), Installed::Written(target.clone()));
        std::fs::remove_file(&target).unwrap();
        assert_eq!(install(&profile, &dir).unwrap(), Installed::Written(target.clone()));
        assert!(!dir.join("sanctum/.scanner.json.tmp").exists());
    }

    #[test]
    fn refuses_what_is_not_a_profile_and_says_which_file() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = tmp.path().join("scanner.json");
        std::fs::write(&profile, b"not json").unwrap();
        let err = install(&profile, tmp.path()).unwrap_err().to_string();
        assert!(err.contains("scanner.json") && err.contains("not a JSON object"), "{err}");
        let err = install(&tmp.path().join("absent"), tmp.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read the profile"), "{err}");
        assert!(!tmp.path().join(PROFILE_PATH).exists());
    }

    #[test]
    fn the_chart_profile_installs() {
        let tmp = tempfile::tempdir().unwrap();
        let chart =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sanctum/files/scanner.json");
        assert!(matches!(install(&chart, tmp.path()).unwrap(), Installed::Written(_)));
    }
}
