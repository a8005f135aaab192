//! BYOK provider keys: `--keys-dir DIR` holds one file per org, `DIR/<org_id>`, whose content
//! (trailing whitespace trimmed) is the key — the shape of a Kubernetes Secret volume.
//!
//! Re-read on change: each key is re-checked with one `stat` at most every `recheck`, and
//! re-read when its modification time, size or inode changed (a Secret update swaps the
//! `..data` symlink, which changes the inode of the resolved file).
//!
//! Readiness ([`ProviderKeys::readiness`]): the gateway is unready while an org the Anthropic
//! provider serves has no usable key — an org the config lists without its file, or a key
//! file that is empty (a Secret made with `--from-literal=acme="$UNSET_VARIABLE"`) — and
//! turns ready on the next probe once the key is written (no restart).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// The keys directory. Clones share one cache (the provider reads keys, readiness checks them).
#[derive(Clone)]
pub struct ProviderKeys {
    dir: PathBuf,
    recheck: Duration,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

/// Which orgs the keys directory serves, from the config file ([`crate::orgs::Orgs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyedOrgs {
    /// Orgs the config lists with provider `anthropic`: each needs a key file.
    pub listed: Vec<String>,
    /// Orgs the config gives another provider: a file of theirs here is not checked.
    pub elsewhere: Vec<String>,
    /// Whether orgs the config does not list use `anthropic` (the `default:` entry's
    /// provider): then every key file in the directory is checked, and when no other
    /// provider serves any org, at least one key must be there.
    pub unlisted: bool,
}

/// Why the keys directory cannot serve every org it should; the message names orgs and
/// files, never a key or any part of one.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KeysUnready {
    #[error(
        "no provider key in {dir}: write each org's API key into {dir}/<org-id> (in \
         Kubernetes, create the provider-keys Secret mounted there, one key per org id); ready \
         as soon as the file holds the key (a Secret update reaches the pod within a minute or \
         so), without a restart"
    )]
    NoKeys { dir: String },
    #[error(
        "no usable provider key: {faults} (in Kubernetes, fix the provider-keys Secret mounted \
         at {dir}, one key per org id); ready as soon as the file holds the key (a Secret \
         update reaches the pod within a minute or so), without a restart",
        faults = .faults.iter().map(|(org, e)| format!("org '{org}': {e}")).collect::<Vec<_>>().join("; ")
    )]
    Orgs { dir: String, faults: Vec<(String, KeyError)> },
    #[error("cannot list provider keys in {dir}: {reason}")]
    Io { dir: String, reason: String },
}

pub fn valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 253
        && !org.starts_with('.')
        && org.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl ProviderKeys {
    pub fn new(dir: impl Into<PathBuf>, recheck: Duration) -> Self {
        Self { dir: dir.into(), recheck, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Whether the orgs of `orgs` that use this directory have usable keys: each listed
    /// org's file, and (when unlisted orgs use it) every key file present, exists, is not
    /// empty or whitespace only, is readable and header-safe. One `read_dir` and at most one
    /// `stat` (or read, on change) per key file; cheap enough for every probe.
    ///
    /// `Ok(None)`: every org has a usable key. `Ok(Some(`[`KeysUnready::Orgs`]`))`: ready,
    /// but the orgs named (in name order) have no usable key, and their requests fail.
    ///
    /// Errors (not ready): [`KeysUnready::Orgs`] when no org checked has a usable key;
    /// [`KeysUnready::NoKeys`] when unlisted orgs use this directory, no other provider serves
    /// any org and no key file is there (a missing Secret mounts as an empty directory);
    /// [`KeysUnready::Io`] when the directory cannot be listed.
    pub fn readiness(&self, orgs: &KeyedOrgs) -> Result<Option<KeysUnready>, KeysUnready> {
        let dir = || self.dir.display().to_string();
        let mut checked: Vec<String> = orgs.listed.clone();
        if orgs.unlisted {
            let entries = std::fs::read_dir(&self.dir)
                .map_err(|e| KeysUnready::Io { dir: dir(), reason: e.to_string() })?;
            for entry in entries.flatten() {
                // Hidden names are the Secret volume's own (`..data`, `..2026_…`).
                let Ok(name) = entry.file_name().into_string() else { continue };
                if valid_org(&name) && !orgs.elsewhere.contains(&name) && !checked.contains(&name) {
                    checked.push(name);
                }
            }
        }
        checked.sort();
        let mut faults = Vec::new();
        let mut usable = 0usize;
        for org in checked {
            match self.get(&org) {
                Ok(_) => usable += 1,
                // A directory (or other non-file) under an unlisted name is not a key.
                Err(KeyError::UnknownOrg { .. }) if !orgs.listed.contains(&org) => {}
                Err(e) => faults.push((org, e)),
            }
        }
        if !faults.is_empty() {
            let why = KeysUnready::Orgs { dir: dir(), faults };
            // An unready pod leaves the Service for every org: one org's missing key must not
            // stop the others (its own requests get a 503 naming the file). Unready only when
            // no org this directory serves has a usable key.
            return if usable == 0 { Err(why) } else { Ok(Some(why)) };
        }
        if orgs.unlisted && orgs.elsewhere.is_empty() && usable == 0 {
            return Err(KeysUnready::NoKeys { dir: dir() });
        }
        Ok(None)
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
    fn readiness_names_orgs_without_a_usable_key_and_never_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ProviderKeys::new(dir.path(), Duration::ZERO);
        let unlisted = KeyedOrgs { unlisted: true, ..KeyedOrgs::default() };
        assert!(matches!(keys.readiness(&unlisted), Err(KeysUnready::NoKeys { .. })));
        // The Secret volume's own entries are not keys.
        std::fs::create_dir(dir.path().join("..2026_11_30")).unwrap();
        std::fs::write(dir.path().join("acme"), " \n\t").unwrap();
        let why = keys.readiness(&unlisted).unwrap_err().to_string();
        assert!(why.contains("org 'acme'") && why.contains("is empty"), "{why}");
        std::fs::write(dir.path().join("acme"), "sk-SECRETVALUE\n").unwrap();
        assert_eq!(keys.readiness(&unlisted), Ok(None));

        // Listed orgs need their file; another provider's org is not checked. While `acme`
        // has a key, `initech`'s missing one is reported but leaves the gateway ready.
        std::fs::write(dir.path().join("globex"), "").unwrap();
        let orgs = KeyedOrgs {
            listed: vec!["initech".into()],
            elsewhere: vec!["globex".into()],
            unlisted: true,
        };
        let why = keys.readiness(&orgs).unwrap().expect("initech reported").to_string();
        assert!(why.contains("org 'initech'") && !why.contains("globex"), "{why}");
        assert!(!why.contains("org 'acme'") && !why.contains("SECRETVALUE"), "{why}");
        // With no org that has a key, not ready.
        let only_initech = KeyedOrgs { unlisted: false, ..orgs.clone() };
        let why = keys.readiness(&only_initech).unwrap_err().to_string();
        assert!(why.contains("org 'initech'"), "{why}");
        std::fs::write(dir.path().join("initech"), "a\nSECRETVALUE").unwrap();
        let why = keys.readiness(&only_initech).unwrap_err().to_string();
        assert!(why.contains("cannot be sent in a header") && !why.contains("SECRETVALUE"));

        // Only another provider's orgs, and unlisted orgs not on Anthropic: nothing needed.
        let bedrock_only = KeyedOrgs { elsewhere: vec!["globex".into()], ..KeyedOrgs::default() };
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            ProviderKeys::new(empty.path(), Duration::ZERO).readiness(&bedrock_only),
            Ok(None)
        );
        let with_bedrock = KeyedOrgs { unlisted: true, ..bedrock_only };
        assert_eq!(
            ProviderKeys::new(empty.path(), Duration::ZERO).readiness(&with_bedrock),
            Ok(None)
        );
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
