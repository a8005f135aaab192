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

#[derive(Default)]
pub struct Memory {
    runs: HashMap<String, RunBudget>,
    rates: HashMap<String, (u64, u64)>, // txn → (TAT ms, keep until s)
}

pub enum State {
    Memory(Mutex<Memory>),
    Redis(RedisState),
}

pub struct RedisState {
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

impl State {
    pub fn memory() -> Self {
        State::Memory(Mutex::new(Memory::default()))
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
        Ok(State::Redis(RedisState {
            conn,
            reserve: redis::Script::new(RESERVE_LUA),
            settle: redis::Script::new(SETTLE_LUA),
            rate: redis::Script::new(RATE_LUA),
        }))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            State::Memory(_) => "memory",
            State::Redis(_) => "redis",
        }
    }

    fn mem(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            State::Memory(_) => Ok(()),
            State::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
        }
    }

    /// One request against the run's rate. `now_ms` is used by the memory store only.
    pub async fn check_rate(
        &self,
        txn: &str,
        limit: RateLimit,
        now_ms: u64,
        keep_until: u64,
    ) -> Result<RateDecision, StateError> {
        match self {
            State::Memory(m) => {
                let mut mem = Self::mem(m);
                let tat = mem.rates.get(txn).map(|(t, _)| *t);
                let (decision, tat) = gcra(limit, tat, now_ms);
                mem.rates.insert(txn.to_owned(), (tat, keep_until));
                Ok(decision)
            }
            State::Redis(r) => {
                let mut conn = r.conn.clone();
                let (allowed, retry_ms): (u64, u64) = r
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
        }
    }

    /// Reserves `asked` tokens of the run's `limit` under reservation `id`.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        txn: &str,
        limit: u64,
        id: &str,
        asked: u64,
        now: u64,
        ttl: u64,
        keep_until: u64,
    ) -> Result<Admission, StateError> {
        match self {
            State::Memory(m) => {
                let mut mem = Self::mem(m);
                let run = mem.runs.entry(txn.to_owned()).or_default();
                run.keep_until = run.keep_until.max(keep_until);
                Ok(run.reserve(limit, id, asked, now, ttl))
            }
            State::Redis(r) => {
                let mut conn = r.conn.clone();
                let keep = keep_until.saturating_sub(now).saturating_add(KEEP_AFTER_EXP);
                let (admitted, spent, reserved): (u64, String, String) = r
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
        }
    }

    /// Releases reservation `id` and adds `used` tokens. Returns the run's new total.
    /// Idempotent per `id` in Redis, so a failed call may be retried.
    pub async fn settle(
        &self,
        txn: &str,
        id: &str,
        used: u64,
        now: u64,
        keep_until: u64,
    ) -> Result<u64, StateError> {
        match self {
            State::Memory(m) => {
                let mut mem = Self::mem(m);
                Ok(mem.runs.entry(txn.to_owned()).or_default().settle(id, used))
            }
            State::Redis(r) => {
                let mut conn = r.conn.clone();
                let keep = keep_until.saturating_sub(now).saturating_add(KEEP_AFTER_EXP);
                let spent: u64 = r
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
    }

    /// Settles at once when the state is in memory (no I/O); `None` for Redis, which the
    /// caller settles asynchronously with [`State::settle`].
    pub fn settle_in_memory(&self, txn: &str, id: &str, used: u64) -> Option<u64> {
        match self {
            State::Memory(m) => {
                Some(Self::mem(m).runs.entry(txn.to_owned()).or_default().settle(id, used))
            }
            State::Redis(_) => None,
        }
    }

    /// Forgets memory records of runs whose TraT expired long ago (Redis expires its own).
    pub fn prune(&self, now: u64) {
        if let State::Memory(m) = self {
            let mut mem = Self::mem(m);
            mem.runs.retain(|_, r| r.keep_until.saturating_add(KEEP_AFTER_EXP) > now);
            mem.rates.retain(|_, (_, keep)| keep.saturating_add(KEEP_AFTER_EXP) > now);
        }
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
