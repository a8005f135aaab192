//! Budget and rate-limit state: in memory for one replica, or in Redis for several.
//!
//! Redis keys per run share the hash tag `{txn}` (one cluster slot): `sanctum:{txn}:spent`
//! (hash: `spent`, `limit`), `sanctum:{txn}:resv` (hash: reservation id → `tokens:expires`),
//! `sanctum:{txn}:done` (hash: reservation id → tokens charged, so that a settlement retried
//! after a lost answer is counted once) and `sanctum:{txn}:rate` (GCRA TAT, ms). Every decision is one Lua script, so it is atomic
//! across replicas; the rate script reads Redis' own clock, so replica clocks need not agree.
//! Spent tokens live in Redis: a gateway restart loses none of them. Records expire an hour
//! after the TraT's `exp` (no request can use them afterwards).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use thiserror::Error;

use super::budget::{Admission, RunBudget, decide};
use super::ratelimit::{RateDecision, RateLimit, gcra};

/// Seconds a run's record is kept after its TraT expires.
const KEEP_AFTER_EXP: u64 = 3600;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("the shared state store (Redis) failed: {0}; check that Redis is reachable")]
    Redis(String),
    #[error("'{0}' is not a state URL: use 'memory' or 'redis://HOST:PORT[/DB]'")]
    BadUrl(String),
}

impl From<redis::RedisError> for StateError {
    fn from(e: redis::RedisError) -> Self {
        // The Redis error may echo a URL with a password: keep only its kind and detail.
        StateError::Redis(format!("{:?}: {}", e.kind(), e.detail().unwrap_or("no detail")))
    }
}

/// A budget and rate store: one method per limit, each atomic for the runs it keys on. A
/// new limit is one method here and one in each implementation ([`MemoryStore`],
/// [`RedisStore`]); [`State`] picks the implementation (`--state`).
pub trait Store: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Whether the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StateError>> + Send;

    /// One request against run `txn`'s rate `limit`. `now_ms` is the gateway's clock (a
    /// shared store may use its own); the record lives until `keep_until` (Unix s) plus an
    /// hour.
    fn check_rate(
        &self,
        txn: &str,
        limit: RateLimit,
        now_ms: u64,
        keep_until: u64,
    ) -> impl Future<Output = Result<RateDecision, StateError>> + Send;

    /// Reserves `asked` tokens of the run's `limit` under reservation `id`, for `ttl` s from
    /// `now` (Unix s).
    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &self,
        txn: &str,
        limit: u64,
        id: &str,
        asked: u64,
        now: u64,
        ttl: u64,
        keep_until: u64,
    ) -> impl Future<Output = Result<Admission, StateError>> + Send;

    /// Releases reservation `id` and adds `used` tokens; the run's new total. Idempotent per
    /// `id`, so a failed call may be retried.
    fn settle(
        &self,
        txn: &str,
        id: &str,
        used: u64,
        now: u64,
        keep_until: u64,
    ) -> impl Future<Output = Result<u64, StateError>> + Send;

    /// [`Store::settle`] at once when it needs no I/O; `None`: call `settle` instead.
    fn settle_now(&self, _txn: &str, _id: &str, _used: u64) -> Option<u64> {
        None
    }

    /// Forgets records of runs whose TraT expired over an hour before `now` (a store that
    /// expires its own records does nothing).
    fn prune(&self, _now: u64) {}
}

/// The records of one replica.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    runs: HashMap<String, RunBudget>,
    rates: HashMap<String, (u64, u64)>, // txn → (TAT ms, keep until s)
}

/// The store chosen by `--state`.
pub enum State {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Records shared by every replica, in Redis; each decision one Lua script.
pub struct RedisStore {
    conn: ConnectionManager,
    reserve: redis::Script,
    settle: redis::Script,
    rate: redis::Script,
}

const RESERVE_LUA: &str = r"
local limit = tonumber(ARGV[1])
local asked = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local n, exp = string.match(all[i + 1], '^(%d+):(%d+)$')
  if n == nil or tonumber(exp) <= now then
    redis.call('HDEL', KEYS[2], all[i])
  else
    reserved = reserved + tonumber(n)
  end
end
local admitted = 0
if spent < limit and spent + asked <= limit and spent + reserved + asked <= limit then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  admitted = 1
end
redis.call('HSET', KEYS[1], 'limit', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {admitted, tostring(spent), tostring(reserved)}
";

// Idempotent: a settlement whose answer was lost (a timeout while Redis was paused) is
// retried, and Redis may run both the late original and the retry.
const SETTLE_LUA: &str = r"
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then
  return tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
end
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
local spent = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return spent
";

const RATE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - tolerance - now}
end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', new - now + 60000)
return {1, 0}
";

fn key(txn: &str, what: &str) -> String {
    format!("sanctum:{{{txn}}}:{what}")
}

/// Runs `$e` on whichever store `$self` holds.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            State::Memory($s) => $e,
            State::Redis($s) => $e,
        }
    };
}

impl State {
    pub fn memory() -> Self {
        State::Memory(MemoryStore::default())
    }

    /// `memory` or `redis://…`. Connects lazily: a Redis outage makes requests fail with 503
    /// (and `/readyz` say why), it does not stop the gateway from starting.
    pub fn from_url(url: &str) -> Result<Self, StateError> {
        if url == "memory" {
            return Ok(Self::memory());
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(StateError::BadUrl(url.to_owned()));
        }
        let client = redis::Client::open(url).map_err(|_| StateError::BadUrl(url.to_owned()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(State::Redis(RedisStore {
            conn,
            reserve: redis::Script::new(RESERVE_LUA),
            settle: redis::Script::new(SETTLE_LUA),
            rate: redis::Script::new(RATE_LUA),
        }))
    }

    /// Settles at once when the store is in memory (no I/O); `None` for Redis, which the
    /// caller settles asynchronously with [`State::settle`].
    pub fn settle_in_memory(&self, txn: &str, id: &str, used: u64) -> Option<u64> {
        self.settle_now(txn, id, used)
    }
}

impl Store for State {
    fn kind(&self) -> &'static str {
        each!(self, s => s.kind())
    }

    async fn ping(&self) -> Result<(), StateError> {
        each!(self, s => s.ping().await)
    }

    async fn check_rate(
        &self,
        txn: &str,
        limit: RateLimit,
        now_ms: u64,
        keep_until: u64,
    ) -> Result<RateDecision, StateError> {
        each!(self, s => s.check_rate(txn, limit, now_ms, keep_until).await)
    }

    async fn reserve(
        &self,
        txn: &str,
        limit: u64,
        id: &str,
        asked: u64,
        now: u64,
        ttl: u64,
        keep_until: u64,
    ) -> Result<Admission, StateError> {
        each!(self, s => s.reserve(txn, limit, id, asked, now, ttl, keep_until).await)
    }

    async fn settle(
        &self,
        txn: &str,
        id: &str,
        used: u64,
        now: u64,
        keep_until: u64,
    ) -> Result<u64, StateError> {
        each!(self, s => s.settle(txn, id, used, now, keep_until).await)
    }

    fn settle_now(&self, txn: &str, id: &str, used: u64) -> Option<u64> {
        each!(self, s => s.settle_now(txn, id, used))
    }

    fn prune(&self, now: u64) {
        each!(self, s => s.prune(now))
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn check_rate(
        &self,
        txn: &str,
        limit: RateLimit,
        now_ms: u64,
        keep_until: u64,
    ) -> Result<RateDecision, StateError> {
        let mut mem = self.lock();
        let tat = mem.rates.get(txn).map(|(t, _)| *t);
        let (decision, tat) = gcra(limit, tat, now_ms);
        mem.rates.insert(txn.to_owned(), (tat, keep_until));
        Ok(decision)
    }

    async fn reserve(
        &self,
        txn: &str,
        limit: u64,
        id: &str,
        asked: u64,
        now: u64,
        ttl: u64,
        keep_until: u64,
    ) -> Result<Admission, StateError> {
        let mut mem = self.lock();
        let run = mem.runs.entry(txn.to_owned()).or_default();
        run.keep_until = run.keep_until.max(keep_until);
        Ok(run.reserve(limit, id, asked, now, ttl))
    }

    async fn settle(
        &self,
        txn: &str,
        id: &str,
        used: u64,
        _now: u64,
        _keep_until: u64,
    ) -> Result<u64, StateError> {
        Ok(self.lock().runs.entry(txn.to_owned()).or_default().settle(id, used))
    }

    fn settle_now(&self, txn: &str, id: &str, used: u64) -> Option<u64> {
        Some(self.lock().runs.entry(txn.to_owned()).or_default().settle(id, used))
    }

    fn prune(&self, now: u64) {
        let mut mem = self.lock();
        mem.runs.retain(|_, r| r.keep_until.saturating_add(KEEP_AFTER_EXP) > now);
        mem.rates.retain(|_, (_, keep)| keep.saturating_add(KEEP_AFTER_EXP) > now);
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn check_rate(
        &self,
        txn: &str,
        limit: RateLimit,
        _now_ms: u64,
        _keep_until: u64,
    ) -> Result<RateDecision, StateError> {
        // The script reads Redis' own clock, so replica clocks need not agree.
        let mut conn = self.conn.clone();
        let (allowed, retry_ms): (u64, u64) = self
            .rate
            .key(key(txn, "rate"))
            .arg(limit.interval_ms)
            .arg(limit.tolerance_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            RateDecision::Allow
        } else {
            RateDecision::Deny { retry_after_ms: retry_ms }
        })
    }

    async fn reserve(
        &self,
        txn: &str,
        limit: u64,
        id: &str,
        asked: u64,
        now: u64,
        ttl: u64,
        keep_until: u64,
    ) -> Result<Admission, StateError> {
        let mut conn = self.conn.clone();
        let keep = keep_until.saturating_sub(now).saturating_add(KEEP_AFTER_EXP);
        let (admitted, spent, reserved): (u64, String, String) = self
            .reserve
            .key(key(txn, "spent"))
            .key(key(txn, "resv"))
            .arg(limit)
            .arg(id)
            .arg(asked)
            .arg(now)
            .arg(now.saturating_add(ttl))
            .arg(keep)
            .invoke_async(&mut conn)
            .await?;
        if admitted == 1 {
            return Ok(Admission::Admitted);
        }
        // Lua numbers are doubles; they come back as decimal text.
        let num = |s: &str| s.parse::<f64>().map(|f| f as u64).unwrap_or(u64::MAX);
        Ok(decide(limit, num(&spent), num(&reserved), asked))
    }

    async fn settle(
        &self,
        txn: &str,
        id: &str,
        used: u64,
        now: u64,
        keep_until: u64,
    ) -> Result<u64, StateError> {
        let mut conn = self.conn.clone();
        let keep = keep_until.saturating_sub(now).saturating_add(KEEP_AFTER_EXP);
        let spent: u64 = self
            .settle
            .key(key(txn, "spent"))
            .key(key(txn, "resv"))
            .key(key(txn, "done"))
            .arg(id)
            .arg(used)
            .arg(keep)
            .invoke_async(&mut conn)
            .await?;
        Ok(spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store() {
        let s = State::memory();
        assert_eq!(s.reserve("t", 100, "a", 60, 0, 60, 1000).await.unwrap(), Admission::Admitted);
        assert!(matches!(
            s.reserve("t", 100, "b", 60, 0, 60, 1000).await.unwrap(),
            Admission::Busy { .. }
        ));
        assert_eq!(s.settle("t", "a", 70, 0, 1000).await.unwrap(), 70);
        assert!(matches!(
            s.reserve("t", 100, "b", 60, 0, 60, 1000).await.unwrap(),
            Admission::TooLarge { remaining: 30, asked: 60 }
        ));
        let l = RateLimit::per_minute(60, 1).unwrap();
        assert_eq!(s.check_rate("t", l, 0, 1000).await.unwrap(), RateDecision::Allow);
        assert!(matches!(s.check_rate("t", l, 10, 1000).await.unwrap(), RateDecision::Deny { .. }));
        s.prune(1000 + KEEP_AFTER_EXP + 1);
        assert_eq!(s.check_rate("t", l, 20, 1000).await.unwrap(), RateDecision::Allow);
        assert!(State::from_url("http://x").is_err());
        assert_eq!(State::from_url("memory").unwrap().kind(), "memory");
    }
}
