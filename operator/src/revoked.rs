//! The transaction tokens of ended runs. Gateways poll this list (`/revoked` on the admin
//! port) and refuse those tokens from then on, long before their `exp`. It is rebuilt after
//! a restart because every ended run is reconciled again at start-up.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Revoked {
    // txn -> exp (seconds since the epoch): after exp the token is dead anyway.
    entries: Mutex<BTreeMap<String, u64>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    txn: &'a str,
    exp: u64,
}

#[derive(Serialize)]
struct Document<'a> {
    revoked: Vec<Entry<'a>>,
}

impl Revoked {
    /// Returns true when the txn was not listed before.
    pub fn revoke(&self, txn: &str, exp: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(txn.to_owned(), exp).is_none()
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
        let doc = Document {
            revoked: entries.iter().map(|(txn, exp)| Entry { txn, exp: *exp }).collect(),
        };
        serde_json::to_string(&doc).unwrap_or_else(|_| r#"{"revoked":[]}"#.into())
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
}
