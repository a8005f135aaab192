//! The token service's wire contract: how an injected pod's `write-trat` container
//! (`sanctum-bridge fetch-trat`) trades its projected ServiceAccount token for a TraT at the
//! operator (design contract "Command lines" and "Identity and tokens", `shared/DESIGN.md`):
//!
//! ```text
//! POST <token-service>/v1/trat       Authorization: Bearer <projected SA token>, no body
//! 200     {"token":"<TraT>","expiresAt":<unix seconds>}
//! 4xx/5xx {"error":"<what failed and what to do>"}
//! ```
//!
//! The ServiceAccount token must be projected for [`SA_TOKEN_AUDIENCE`]: the operator's
//! TokenReview asks for that audience, so a token minted for anything else (the API server,
//! the gateway) is refused.

use serde::{Deserialize, Serialize};

/// Path of the exchange, under the token service's base URL.
pub const PATH: &str = "/v1/trat";

/// Audience of the projected ServiceAccount token a pod presents to the token service (the
/// injection projects it; the TokenReview requires it).
pub const SA_TOKEN_AUDIENCE: &str = "sanctum";

/// The `200` answer: the TraT and its `exp` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TratReply {
    pub token: String,
    /// Seconds since the Unix epoch; 0 when a server leaves it out (the TraT's own `exp`
    /// claim is authoritative).
    #[serde(default)]
    pub expires_at: u64,
}

/// The body of every refusal: a message a person can act on (never a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

impl TratReply {
    pub fn to_json(&self) -> String {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ErrorReply {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form() {
        let ok = TratReply { token: "t".into(), expires_at: 5 };
        assert_eq!(ok.to_json(), r#"{"token":"t","expiresAt":5}"#);
        assert_eq!(serde_json::from_str::<TratReply>(r#"{"token":"t"}"#).unwrap().expires_at, 0);
        let no = ErrorReply { error: "why \"quoted\"".into() };
        assert_eq!(no.to_json(), r#"{"error":"why \"quoted\""}"#);
    }
}
