//! The revoked-list document, the wire contract between the operator, which serves it on its
//! admin port at [`PATH`], and the gateways, which poll it (`--revoked-url`) and refuse the
//! listed TraTs from then on (design contract "Identity and tokens", Revocation, and
//! "Command lines", `shared/DESIGN.md`):
//!
//! ```text
//! {"revoked":[{"txn":"<the TraT's txn claim>","exp":<unix seconds>}]}
//! ```
//!
//! `exp` is when that TraT would have expired anyway (its `exp` claim, an upper bound): an
//! entry past it may be dropped, since the gateway refuses an expired TraT on `exp` alone.
//! The operator always writes `exp`; a reader keeps an entry without one for as long as the
//! list names it. The operator also keeps this same document in its ConfigMap so the list
//! survives restarts.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Where the operator's admin port serves the list.
pub const PATH: &str = crate::defaults::REVOKED_PATH;

/// `{"revoked":[…]}`. Borrows the `txn` strings from the input where it can.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedList<'a> {
    #[serde(borrow)]
    pub revoked: Vec<RevokedEntry<'a>>,
}

/// One revoked run: its TraT's `txn` and `exp` (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry<'a> {
    #[serde(borrow)]
    pub txn: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

impl<'a> RevokedList<'a> {
    /// Parses a document; the error is serde_json's (what is wrong and where).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"revoked":[]}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_wire_form() {
        let text = r#"{"revoked":[{"txn":"a","exp":100},{"txn":"b"}]}"#;
        let list = RevokedList::parse(text.as_bytes()).unwrap();
        assert_eq!(list.revoked[0], RevokedEntry { txn: "a".into(), exp: Some(100) });
        assert_eq!(list.revoked[1].exp, None);
        assert_eq!(list.to_json(), text);
        assert!(RevokedList::parse(b"[]").is_err());
        assert!(RevokedList::parse(br#"{"revoked":[{"exp":1}]}"#).is_err());
    }
}
