//! The transaction tokens of ended runs. Gateways poll this list (`/revoked` on the admin
//! port) and refuse those tokens from then on, long before their `exp`. The document is
//! the wire contract [`sanctum_common::revoked::RevokedList`].
//!
//! The list survives restarts: it is kept in the ConfigMap `sanctum-revoked` (key
//! `revoked.json`, the same document `/revoked` serves) in the operator's namespace,
//! written after each new entry and read back at start-up, before the operator reports
//! ready or serves `/revoked` (until then `/revoked` answers 503, so gateways keep the list
//! they have instead of taking an empty one). At start-up every ended or deleting run is
//! revoked again as well. A run deleted while it runs is revoked through the finalizer
//! `sanctum.dev/revoke`: the entry is written to the ConfigMap before the finalizer is
//! removed, so no deleted run's `txn` is ever forgotten. Each entry is kept until its
//! token's `exp` (an upper bound) has passed; the gateway refuses expired tokens anyway.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sanctum_common::revoked::{RevokedEntry, RevokedList};

/// Where the list is kept, in the operator's namespace.
pub const CONFIGMAP: &str = "sanctum-revoked";
pub const CONFIGMAP_KEY: &str = "revoked.json";
/// Held by every unfinished run, so its deletion waits until its `txn` is saved as revoked.
pub const FINALIZER: &str = "sanctum.dev/revoke";

#[derive(Debug, Default)]
pub struct Revoked {
    // txn -> exp (seconds since the epoch): after exp the token is dead anyway.
    entries: Mutex<BTreeMap<String, u64>>,
    /// Entries were added since the last save.
    dirty: AtomicBool,
    /// The saved list was read back (or found absent) after start-up.
    restored: AtomicBool,
}

impl Revoked {
    /// Returns true when the txn was not listed before (it then needs saving).
    pub fn revoke(&self, txn: &str, exp: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let old = entries.insert(txn.to_owned(), exp);
        let new = old.is_none_or(|old| old != exp);
        if new {
            self.dirty.store(true, Ordering::Release);
        }
        old.is_none()
    }

    /// Whether entries were added since the last [`Revoked::take_dirty`].
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Clears the flag before a save, returning it; call [`Revoked::set_dirty`] when the
    /// save failed. (Cleared first, so an entry added during the save is saved next time.)
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub fn set_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
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
            let exp = entries.get(e.txn.as_ref()).copied().unwrap_or(0).max(e.exp.unwrap_or(0));
            entries.insert(e.txn.into_owned(), exp);
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
        entries.retain(|_, exp| *exp >= now);
        RevokedList {
            revoked: entries
                .iter()
                .map(|(txn, exp)| RevokedEntry { txn: txn.into(), exp: Some(*exp) })
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
        let cm = before.to_configmap("sanctum-system", 50);
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP));
        assert!(before.take_dirty());
        assert!(!before.is_dirty());

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
}
