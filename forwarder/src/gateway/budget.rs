//! Token budget of a run (`txn`): tokens are reserved against the request's `max_tokens`
//! when it is admitted — so concurrent requests cannot together overshoot — and settled from
//! the usage the provider reports. A reservation lives at most `ttl`: if a gateway dies
//! mid-request, its reservation frees itself instead of starving the run.
//!
//! Input tokens are not known before the provider answers, so they are counted at settlement
//! only; a run can end above its budget by at most the input of its last admitted requests.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Nothing left: `spent >= limit`. Retrying cannot help.
    Exhausted {
        spent: u64,
        limit: u64,
    },
    /// Even alone this request could exceed the budget (`spent + max_tokens > limit`).
    /// Retrying the same request cannot help; a smaller `max_tokens` can.
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
