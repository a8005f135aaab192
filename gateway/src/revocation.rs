//! The operator's revoked-run list (`GET <operator admin>/revoked`):
//! `{"revoked":[{"txn":"…","exp":1700000000}]}`. `exp` is when that TraT would have expired
//! anyway, so entries past it are pruned: an expired TraT is refused on `exp` alone. The
//! document is the wire contract [`sanctum_common::revoked::RevokedList`].

use std::collections::HashMap;

use sanctum_common::revoked::RevokedList;
use thiserror::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSet {
    /// txn → exp
    txns: HashMap<String, u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("is not a revoked list ({0}); expected {{\"revoked\":[{{\"txn\":…,\"exp\":…}}]}}")]
pub struct RevokedParseError(String);

impl RevokedSet {
    pub fn parse(bytes: &[u8], now: u64) -> Result<Self, RevokedParseError> {
        let doc = RevokedList::parse(bytes).map_err(|e| RevokedParseError(e.to_string()))?;
        let txns = doc
            .revoked
            .into_iter()
            // An entry without exp is kept for as long as the operator lists it.
            .map(|e| (e.txn.into_owned(), e.exp.unwrap_or(u64::MAX)))
            .filter(|(_, exp)| *exp >= now)
            .collect();
        Ok(Self { txns })
    }

    pub fn is_revoked(&self, txn: &str) -> bool {
        self.txns.contains_key(txn)
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prunes() {
        let set = RevokedSet::parse(
            br#"{"revoked":[{"txn":"a","exp":2000},{"txn":"old","exp":10},{"txn":"b"}]}"#,
            1000,
        )
        .unwrap();
        assert!(set.is_revoked("a") && set.is_revoked("b") && !set.is_revoked("old"));
        assert!(!set.is_revoked("c"));
        assert_eq!(set.len(), 2);
        assert!(RevokedSet::parse(br#"{"revoked":[]}"#, 0).unwrap().is_empty());
        assert!(RevokedSet::parse(b"[]", 0).is_err());
        assert!(RevokedSet::parse(br#"{"revoked":[{"exp":1}]}"#, 0).is_err());
    }
}
