//! BYOK provider keys: `--keys-dir DIR` holds one file per org, `DIR/<org_id>`, whose content
//! (trailing whitespace trimmed) is the key — the shape of a Kubernetes Secret volume.
//!
//! Re-read on change: each key is re-checked with one `stat` at most every `recheck`, and
//! re-read when its modification time, size or inode changed (a Secret update swaps the
//! `..data` symlink, which changes the inode of the resolved file).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;
use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "org id '{0}' cannot name a key file (use letters, digits, '.', '-', '_'; no leading '.')"
    )]
    InvalidOrg(String),
    #[error("no provider key for org '{org}': create {path} with the org's API key")]
    UnknownOrg { org: String, path: String },
    #[error("provider key file {0} is empty: write the org's API key into it")]
    Empty(String),
    #[error("provider key file {0} holds characters that cannot be sent in a header")]
    NotHeaderSafe(String),
    #[error("cannot read provider key file {path}: {reason}")]
    Io { path: String, reason: String },
}

impl KeyError {
    /// Whether the fault is the org's configuration (403) rather than the gateway's (503).
    pub fn is_unknown_org(&self) -> bool {
        matches!(self, KeyError::InvalidOrg(_) | KeyError::UnknownOrg { .. })
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Stamp {
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
    ino: u64,
}

struct Cached {
    key: HeaderValue,
    stamp: Stamp,
    checked: Instant,
}

pub struct ProviderKeys {
    dir: PathBuf,
    recheck: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

pub fn valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 253
        && !org.starts_with('.')
        && org.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl ProviderKeys {
    pub fn new(dir: impl Into<PathBuf>, recheck: Duration) -> Self {
        Self { dir: dir.into(), recheck, cache: Mutex::new(HashMap::new()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The org's key as a header value marked sensitive (never logged by hyper or us).
    pub fn get(&self, org: &str) -> Result<HeaderValue, KeyError> {
        if !valid_org(org) {
            return Err(KeyError::InvalidOrg(org.to_owned()));
        }
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(org)
                && now.duration_since(c.checked) < self.recheck
            {
                return Ok(c.key.clone());
            }
        }
        let path = self.dir.join(org);
        let shown = path.display().to_string();
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(KeyError::UnknownOrg { org: org.to_owned(), path: shown }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(org);
                return Err(KeyError::UnknownOrg { org: org.to_owned(), path: shown });
            }
            Err(e) => return Err(KeyError::Io { path: shown, reason: e.to_string() }),
        };
        let stamp = Stamp {
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            len: meta.len(),
            ino: meta.ino(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get_mut(org)
            && c.stamp == stamp
        {
            c.checked = now;
            return Ok(c.key.clone());
        }
        drop(cache);
        let raw = std::fs::read(&path)
            .map_err(|e| KeyError::Io { path: shown.clone(), reason: e.to_string() })?;
        let trimmed = raw.trim_ascii_end();
        let trimmed = trimmed.trim_ascii_start();
        if trimmed.is_empty() {
            return Err(KeyError::Empty(shown));
        }
        let mut key =
            HeaderValue::from_bytes(trimmed).map_err(|_| KeyError::NotHeaderSafe(shown))?;
        key.set_sensitive(true);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org.to_owned(), Cached { key: key.clone(), stamp, checked: now });
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trims_and_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ProviderKeys::new(dir.path(), Duration::ZERO);
        std::fs::write(dir.path().join("acme"), "sk-one\n\n").unwrap();
        assert_eq!(keys.get("acme").unwrap(), "sk-one");
        assert!(keys.get("acme").unwrap().is_sensitive());
        // Rotation the way a Secret volume does it: a new file renamed over the old one.
        std::fs::write(dir.path().join(".tmp"), "sk-two-longer \t\r\n").unwrap();
        std::fs::rename(dir.path().join(".tmp"), dir.path().join("acme")).unwrap();
        assert_eq!(keys.get("acme").unwrap(), "sk-two-longer");
        std::fs::remove_file(dir.path().join("acme")).unwrap();
        assert!(matches!(keys.get("acme"), Err(KeyError::UnknownOrg { .. })));
    }

    #[test]
    fn refuses_bad_orgs_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ProviderKeys::new(dir.path(), Duration::ZERO);
        for org in ["", "..", "../etc/passwd", "a/b", ".hidden", "a b"] {
            assert!(matches!(keys.get(org), Err(KeyError::InvalidOrg(_))), "{org}");
        }
        assert!(matches!(keys.get("nobody"), Err(KeyError::UnknownOrg { .. })));
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        assert!(matches!(keys.get("empty"), Err(KeyError::Empty(_))));
        std::fs::write(dir.path().join("nl"), "a\nb").unwrap();
        assert!(matches!(keys.get("nl"), Err(KeyError::NotHeaderSafe(_))));
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        assert!(matches!(keys.get("adir"), Err(KeyError::UnknownOrg { .. })));
        // Error messages name the file, never its content.
        std::fs::write(dir.path().join("secret"), "a\nSECRETVALUE").unwrap();
        assert!(!keys.get("secret").unwrap_err().to_string().contains("SECRETVALUE"));
    }

    #[test]
    fn caches_between_rechecks() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ProviderKeys::new(dir.path(), Duration::from_secs(3600));
        std::fs::write(dir.path().join("acme"), "k1").unwrap();
        assert_eq!(keys.get("acme").unwrap(), "k1");
        std::fs::write(dir.path().join("acme"), "k2").unwrap();
        assert_eq!(keys.get("acme").unwrap(), "k1");
    }
}
