//! The transaction tokens of ended runs. Gateways poll this list (`/revoked` on the admin
//! port) and refuse those tokens from then on, long before their `exp`. The document is
//! the wire contract [`sanctum_common::revoked::RevokedList`].
//!
//! The list survives restarts: it is kept in the ConfigMap `sanctum-revoked` (key
//! `revoked.json`, the same document `/revoked` serves) in the operator's namespace,
//! written within a second of a new entry and read back at start-up, before the operator reports
//! ready or serves `/revoked` (until then `/revoked` answers 503, so gateways keep the list
//! they have instead of taking an empty one). At start-up every ended or deleting run is
//! revoked again as well. Every unfinished run holds the finalizer `sanctum.dev/revoke`: it
//! is removed only once the run's entry is in the saved ConfigMap ([`Revoked::is_saved`]), so
//! no deleted run's `txn` is ever forgotten. Saves are batched (one write a second at most
//! from the save loop), so a thousand runs ending at once cost a few writes, not a thousand. Each entry is kept until its
//! token's `exp` (an upper bound) has passed; the gateway refuses expired tokens anyway.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sanctum_common::revoked::{RevokedEntry, RevokedList};

/// Where the list is kept, in the operator's namespace.
pub const CONFIGMAP: &str = "sanctum-revoked";
pub const CONFIGMAP_KEY: &str = "revoked.json";
/// Held by every unfinished run, so its deletion waits until its `txn` is saved as revoked.
pub const FINALIZER: &str = "sanctum.dev/revoke";

/// One revoked `txn`: until when, and the change that added it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Seconds since the epoch: after it the token is dead anyway.
    exp: u64,
    /// The [`Revoked::changes`] number of the insert (0: read back from the saved list).
    change: u64,
}

#[derive(Debug, Default)]
pub struct Revoked {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Changes made so far (each new or extended entry is one).
    changes: AtomicU64,
    /// Changes up to this number are in the saved ConfigMap.
    saved: AtomicU64,
    /// The saved list was read back (or found absent) after start-up.
    restored: AtomicBool,
    /// Held while a save is built and written, so an older list never overwrites a newer.
    pub save_lock: tokio::sync::Mutex<()>,
}

impl Revoked {
    /// Returns true when the txn was not listed before (it then needs saving).
    pub fn revoke(&self, txn: &str, exp: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let old = entries.get(txn).copied();
        if old.is_none_or(|old| old.exp != exp) {
            // Under the lock: a save that reads `changes` first holds every entry up to it.
            let change = self.changes.fetch_add(1, Ordering::AcqRel) + 1;
            entries.insert(txn.to_owned(), Entry { exp, change });
        }
        old.is_none()
    }

    /// Whether changes were made since the last recorded save.
    pub fn is_dirty(&self) -> bool {
        self.unsaved().is_some()
    }

    /// The change number a save about to be built covers, or `None` when there is nothing
    /// to save. Read it before [`Revoked::to_configmap`], and pass it to
    /// [`Revoked::mark_saved`] once the write succeeded.
    pub fn unsaved(&self) -> Option<u64> {
        let changes = self.changes.load(Ordering::Acquire);
        (self.saved.load(Ordering::Acquire) < changes).then_some(changes)
    }

    /// Records that a save holding every change up to `change` was written.
    pub fn mark_saved(&self, change: u64) {
        self.saved.fetch_max(change, Ordering::AcqRel);
    }

    /// Whether `txn` is listed and its entry is in the saved ConfigMap.
    pub fn is_saved(&self, txn: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(txn).is_some_and(|e| e.change <= self.saved.load(Ordering::Acquire))
    }

    /// Adds the entries of a saved document (`revoked.json`); a malformed one is an error
    /// naming the ConfigMap (fix or delete it).
    pub fn restore(&self, json: &str) -> Result<usize, String> {
        let bad = |why: String| {
            format!(
                "ConfigMap {CONFIGMAP} key {CONFIGMAP_KEY} is not a revoked list ({why}); fix or delete it"
            )
        };
        let doc = RevokedList::parse(json.as_bytes()).map_err(|e| bad(e.to_string()))?;
        // The operator always writes `exp`; a saved entry without one was not written here.
        if let Some(e) = doc.revoked.iter().find(|e| e.exp.is_none()) {
            return Err(bad(format!("the entry for txn {} has no exp", e.txn)));
        }
        let n = doc.revoked.len();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for e in doc.revoked {
            let saved = e.exp.unwrap_or(0);
            match entries.get_mut(e.txn.as_ref()) {
                // Revoked here since start-up: keep the later exp; its save is still due.
                Some(entry) => entry.exp = entry.exp.max(saved),
                None => {
                    entries.insert(e.txn.into_owned(), Entry { exp: saved, change: 0 });
                }
            }
        }
        Ok(n)
    }

    /// The saved list is back: `/revoked` may be served.
    pub fn mark_restored(&self) {
        self.restored.store(true, Ordering::Release);
    }

    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// The ConfigMap holding the list (pruned at `now`), for a server-side apply.
    pub fn to_configmap(&self, namespace: &str, now: u64) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    crate::names::LABEL_MANAGED_BY.to_owned(),
                    crate::names::MANAGER.to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(CONFIGMAP_KEY.to_owned(), self.to_json(now))])),
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `{"revoked":[{"txn":…,"exp":…}]}`, dropping entries expired before `now`.
    pub fn to_json(&self, now: u64) -> String {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.exp >= now);
        RevokedList {
            revoked: entries
                .iter()
                .map(|(txn, e)| RevokedEntry { txn: txn.into(), exp: Some(e.exp) })
                .collect(),
        }
        .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_prunes() {
        let r = Revoked::default();
        assert!(r.revoke("a", 100));
        assert!(!r.revoke("a", 100));
        r.revoke("b", 10);
        assert_eq!(r.to_json(50), r#"{"revoked":[{"txn":"a","exp":100}]}"#);
        assert_eq!(r.len(), 1);
    }

    /// Issue 12 item 12: the list goes into a ConfigMap and comes back after a restart.
    #[test]
    fn survives_a_restart_through_its_configmap() {
        let before = Revoked::default();
        assert!(!before.is_dirty());
        before.revoke("a", 100);
        before.revoke("b", 200);
        assert!(before.is_dirty());
        let change = before.unsaved().expect("two changes to save");
        let cm = before.to_configmap("sanctum-system", 50);
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP));
        assert!(!before.is_saved("a"));
        before.mark_saved(change);
        assert!(!before.is_dirty() && before.unsaved().is_none());
        assert!(before.is_saved("a") && before.is_saved("b") && !before.is_saved("c"));

        let after = Revoked::default();
        assert!(!after.is_restored());
        let saved = &cm.data.unwrap()[CONFIGMAP_KEY];
        assert_eq!(after.restore(saved), Ok(2));
        after.mark_restored();
        assert_eq!(after.to_json(50), before.to_json(50));
        assert!(after.is_restored());
        let err = after.restore("[]").unwrap_err();
        assert!(err.contains("sanctum-revoked") && err.contains("fix or delete"), "{err}");
    }

    /// A finished run's finalizer waits for the save that holds its entry, not for an
    /// earlier one, and not for later entries of other runs.
    #[test]
    fn is_saved_follows_the_save_that_covers_the_entry() {
        let r = Revoked::default();
        r.revoke("a", 100);
        let first = r.unsaved().unwrap();
        r.revoke("b", 100); // after the first save was built
        r.mark_saved(first);
        assert!(r.is_saved("a") && !r.is_saved("b") && r.is_dirty());
        let second = r.unsaved().unwrap();
        r.mark_saved(second);
        assert!(r.is_saved("b") && !r.is_dirty());
        // Restored entries were saved already; a longer exp is a change to save.
        let restored = Revoked::default();
        restored.restore(r#"{"revoked":[{"txn":"a","exp":100}]}"#).unwrap();
        assert!(restored.is_saved("a") && !restored.is_dirty());
        restored.revoke("a", 200);
        assert!(!restored.is_saved("a") && restored.is_dirty());
    }
}
