//! Token budget of a run (`txn`): when a request is admitted, tokens are reserved for the
//! most it can cost — `max_tokens` plus an upper bound of its input taken from the body size
//! ([`reservation`]) — so concurrent requests cannot together overshoot. When it ends, the
//! reservation is replaced by what it cost ([`charge`]): the usage the provider reported if
//! the gateway saw it in full, else at least the reservation. A reservation lives at most
//! `ttl`: if a gateway dies mid-request, its reservation frees itself instead of starving
//! the run.

use std::collections::HashMap;

use super::gateway::Gateway;
use super::reject::{self, Rejection};
use super::state::Store as _;

/// A reservation made by the pipeline's budget step.
#[derive(Debug, Default)]
pub struct Reserved {
    /// Reservation id (the request id); `None` when nothing was reserved (`count_tokens`).
    pub id: Option<String>,
    /// Tokens reserved (0 when nothing was).
    pub tokens: u64,
}

/// The pipeline's budget step: refuses a run with spend still being recorded, then reserves
/// `max_tokens` plus the input bound of a `body_len`-byte body against the run's `limit`.
/// `count_tokens` (`max_tokens` 0 and `counting`) reserves nothing.
#[allow(clippy::too_many_arguments)]
pub async fn reserve(
    gw: &Gateway,
    txn: &str,
    limit: u64,
    request_id: &str,
    counting: bool,
    max_tokens: u64,
    body_len: usize,
    now: u64,
    keep_until: u64,
) -> Result<Reserved, Rejection> {
    if counting {
        return Ok(Reserved::default());
    }
    if gw.unsettled.holds(txn) {
        return Err(reject::settlement_pending(txn));
    }
    let per_token = gw.settings.body_bytes_per_token;
    let asked = reservation(body_len, max_tokens, per_token);
    let admission = gw
        .state
        .reserve(txn, limit, request_id, asked, now, gw.settings.reservation_ttl, keep_until)
        .await
        .map_err(|e| reject::state_unavailable(&e))?;
    match admission {
        Admission::Admitted => Ok(Reserved { id: Some(request_id.to_owned()), tokens: asked }),
        Admission::Exhausted { spent, limit } => Err(reject::budget_exhausted(txn, spent, limit)),
        Admission::TooLarge { remaining, asked } => Err(reject::budget_too_large(
            txn,
            remaining,
            asked,
            max_tokens,
            input_bound(body_len, per_token),
            body_len,
        )),
        Admission::Busy { remaining, reserved, .. } => {
            Err(reject::budget_busy(txn, remaining, reserved))
        }
    }
}

/// Request-body bytes counted as one input token when reserving (the default of
/// `--body-bytes-per-token`).
///
/// Why 3: Claude's tokenizer averages 3.5–4 bytes of English or code per token, and the
/// JSON around the text (keys, quotes, `\n` escapes) adds bytes but no tokens, so a body
/// of N bytes holds fewer than N/3 input tokens in practice. It is not a proof: text made to
/// tokenize badly (random symbols) can reach one token per byte, and a small, near-blank
/// image can cost more tokens than its base64 bytes. Such a request still settles at its
/// reported usage, and the next admission sees it; 1 makes the bound hold for any text.
pub const BODY_BYTES_PER_TOKEN: u64 = 3;

/// Tokens reserved for a request: `max_tokens` plus its input bounded from the body size,
/// `ceil(body_bytes / bytes_per_token)` (`bytes_per_token` 0 is taken as 1).
pub fn reservation(body_bytes: usize, max_tokens: u64, bytes_per_token: u64) -> u64 {
    input_bound(body_bytes, bytes_per_token).saturating_add(max_tokens)
}

/// The input-token bound of a body of `body_bytes` bytes (see [`BODY_BYTES_PER_TOKEN`]).
pub fn input_bound(body_bytes: usize, bytes_per_token: u64) -> u64 {
    (body_bytes as u64).div_ceil(bytes_per_token.max(1))
}

/// What a finished request costs its run, in tokens.
///
/// `reported` is the usage total the provider reported; `in_full` says whether the gateway
/// saw that report complete (a JSON answer read to its end, or an SSE stream up to
/// `message_stop`). A request seen only in part — the client hung up, the stream broke, the
/// answer was too large to read — may have cost anything up to its reservation, so it is
/// charged at least `reserved` (issue 12 item 7: agents that close each stream before the
/// final `message_delta` were charged only the `message_start` usage).
pub fn charge(reported: u64, in_full: bool, reserved: u64) -> u64 {
    if in_full { reported } else { reported.max(reserved) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Nothing left: `spent >= limit`. Retrying cannot help.
    Exhausted {
        spent: u64,
        limit: u64,
    },
    /// Even alone this request could exceed the budget (`spent + reservation > limit`).
    /// Retrying the same request cannot help; a smaller `max_tokens` or prompt can.
    TooLarge {
        remaining: u64,
        asked: u64,
    },
    /// Only the reservations of requests in flight stand in the way: retry shortly.
    Busy {
        remaining: u64,
        reserved: u64,
        asked: u64,
    },
}

/// Decides admission from the numbers alone (shared by memory and Redis).
pub fn decide(limit: u64, spent: u64, reserved: u64, asked: u64) -> Admission {
    if spent >= limit {
        Admission::Exhausted { spent, limit }
    } else if asked > limit - spent {
        Admission::TooLarge { remaining: limit - spent, asked }
    } else if reserved.saturating_add(asked) > limit - spent {
        Admission::Busy { remaining: limit - spent, reserved, asked }
    } else {
        Admission::Admitted
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunBudget {
    pub spent: u64,
    /// reservation id → (tokens, expires at, unix seconds)
    reservations: HashMap<String, (u64, u64)>,
    /// When this record may be forgotten (the TraT's `exp`: afterwards no request can come).
    pub keep_until: u64,
}

impl RunBudget {
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|(n, _)| *n).sum()
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.reservations.len()
    }

    pub fn reserve(&mut self, limit: u64, id: &str, asked: u64, now: u64, ttl: u64) -> Admission {
        self.reservations.retain(|_, (_, exp)| *exp > now);
        let decision = decide(limit, self.spent, self.reserved(), asked);
        if decision == Admission::Admitted {
            self.reservations.insert(id.to_owned(), (asked, now.saturating_add(ttl)));
        }
        decision
    }

    /// Releases the reservation and adds what was really used. Returns the new `spent`.
    pub fn settle(&mut self, id: &str, used: u64) -> u64 {
        self.reservations.remove(id);
        self.spent = self.spent.saturating_add(used);
        self.spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decide(100, 0, 0, 100), Admission::Admitted);
        assert_eq!(decide(100, 100, 0, 1), Admission::Exhausted { spent: 100, limit: 100 });
        assert_eq!(decide(100, 120, 0, 1), Admission::Exhausted { spent: 120, limit: 100 });
        assert_eq!(decide(100, 50, 0, 60), Admission::TooLarge { remaining: 50, asked: 60 });
        assert_eq!(
            decide(100, 10, 50, 60),
            Admission::Busy { remaining: 90, reserved: 50, asked: 60 }
        );
        assert_eq!(
            decide(u64::MAX, u64::MAX - 1, u64::MAX, u64::MAX),
            Admission::TooLarge { remaining: 1, asked: u64::MAX }
        );
    }

    #[test]
    fn reservations_bound_the_input_and_charges_fall_back_to_them() {
        assert_eq!(reservation(30_000, 1, 3), 10_001);
        assert_eq!(reservation(1, 1, 3), 2);
        assert_eq!(reservation(10, 5, 0), 15);
        assert_eq!(reservation(usize::MAX, u64::MAX, 1), u64::MAX);
        assert_eq!(charge(60, true, 500), 60);
        assert_eq!(charge(11, false, 1060), 1060);
        assert_eq!(charge(2000, false, 1060), 2000);
    }

    #[test]
    fn concurrent_reservations_cannot_overshoot() {
        let mut b = RunBudget::default();
        assert_eq!(b.reserve(1000, "a", 400, 0, 60), Admission::Admitted);
        assert_eq!(b.reserve(1000, "b", 400, 0, 60), Admission::Admitted);
        assert!(matches!(b.reserve(1000, "c", 400, 0, 60), Admission::Busy { .. }));
        assert_eq!(b.settle("a", 150), 150);
        assert_eq!(b.reserve(1000, "c", 400, 1, 60), Admission::Admitted);
        assert_eq!(b.reserved(), 800);
        b.settle("b", 400);
        b.settle("c", 450);
        assert_eq!(b.spent, 1000);
        assert!(matches!(b.reserve(1000, "d", 1, 2, 60), Admission::Exhausted { .. }));
    }

    #[test]
    fn expired_reservations_free_themselves() {
        let mut b = RunBudget::default();
        assert_eq!(b.reserve(100, "a", 100, 0, 60), Admission::Admitted);
        assert!(matches!(b.reserve(100, "b", 100, 59, 60), Admission::Busy { .. }));
        assert_eq!(b.reserve(100, "b", 100, 60, 60), Admission::Admitted);
        assert_eq!(b.in_flight(), 1);
        // Settling an expired reservation still counts the usage.
        assert_eq!(b.settle("a", 30), 30);
    }
}
