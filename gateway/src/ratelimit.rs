//! Per-run request rate: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! number). `rate` requests per minute with bursts of `burst`; the state is the theoretical
//! arrival time (TAT). The same arithmetic runs in Redis (see `state.rs`) for shared state.

use super::gateway::{Gateway, now_ms};
use super::reject::{self, Rejection};
use super::state::Store as _;

/// The pipeline's rate step: one request against run `txn`'s rate (`None`: the org has no
/// limit). `keep_until` (Unix s) is how long the store keeps the run's record.
pub async fn check(
    gw: &Gateway,
    limit: Option<RateLimit>,
    txn: &str,
    keep_until: u64,
) -> Result<(), Rejection> {
    let Some(limit) = limit else { return Ok(()) };
    match gw.state.check_rate(txn, limit, now_ms(), keep_until).await {
        Ok(RateDecision::Allow) => Ok(()),
        Ok(RateDecision::Deny { retry_after_ms }) => Err(reject::rate_limited(txn, retry_after_ms)),
        Err(e) => Err(reject::state_unavailable(&e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Milliseconds between requests at the sustained rate.
    pub interval_ms: u64,
    /// How far ahead of `now` the TAT may run: `interval * (burst - 1)`.
    pub tolerance_ms: u64,
}

impl RateLimit {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn per_minute(per_minute: u32, burst: u32) -> Option<Self> {
        if per_minute == 0 {
            return None;
        }
        let interval_ms = (60_000 / u64::from(per_minute)).max(1);
        Some(Self { interval_ms, tolerance_ms: interval_ms * u64::from(burst.max(1) - 1) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Denied; the client may try again after this many milliseconds.
    Deny {
        retry_after_ms: u64,
    },
}

/// One GCRA step: the decision and the new TAT (unchanged when denied).
pub fn gcra(limit: RateLimit, tat: Option<u64>, now_ms: u64) -> (RateDecision, u64) {
    let tat = tat.unwrap_or(now_ms).max(now_ms);
    if tat - now_ms > limit.tolerance_ms {
        return (RateDecision::Deny { retry_after_ms: tat - limit.tolerance_ms - now_ms }, tat);
    }
    (RateDecision::Allow, tat + limit.interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady() {
        let l = RateLimit::per_minute(60, 3).unwrap(); // 1/s, burst 3
        let mut tat = None;
        for _ in 0..3 {
            let (d, t) = gcra(l, tat, 10_000);
            assert_eq!(d, RateDecision::Allow);
            tat = Some(t);
        }
        let (d, _) = gcra(l, tat, 10_000);
        assert_eq!(d, RateDecision::Deny { retry_after_ms: 1000 });
        let (d, t) = gcra(l, tat, 11_000);
        assert_eq!(d, RateDecision::Allow);
        let (d, _) = gcra(l, Some(t), 11_500);
        assert_eq!(d, RateDecision::Deny { retry_after_ms: 500 });
        // Idle for long: back to a full burst.
        let (d, _) = gcra(l, Some(t), 100_000);
        assert_eq!(d, RateDecision::Allow);
        assert_eq!(RateLimit::per_minute(0, 5), None);
        assert_eq!(RateLimit::per_minute(120_000, 0).unwrap().interval_ms, 1);
    }
}
