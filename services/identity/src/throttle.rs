//! Throttling of password guesses: logins and sensitive-action solutions, per account and per
//! client address, with exponential backoff. The service that owns the secret throttles the
//! guesses at it, so every route that checks a password is covered, through any gateway.
//!
//! Rule: each key (`account:<local name>`, `address:<ip>`) may fail [`FREE_ACCOUNT_FAILURES`]
//! (resp. [`FREE_ADDRESS_FAILURES`]) times; from then on every further check waits
//! `BASE_BACKOFF · 2^(failures − free)` (at most [`MAX_BACKOFF`]) after the latest failure and is
//! refused before any hashing until then (RESOURCE_EXHAUSTED with a retry hint: 429 with
//! `Retry-After` over HTTP). Failures are forgotten [`FAILURE_MEMORY`] after the latest one; a
//! correct password clears its account's failures (not its address's). Refusals are not
//! failures: a locked-out guesser cannot extend the lock of the account it attacks, and the
//! owner gets in as soon as the backoff ends. Once an account has failures, one check of it
//! runs at a time (a running mark, lapsing after [`RUNNING_MARK_TTL`]): guesses arriving
//! meanwhile wait [`BUSY_RETRY`], so a burst in flight cannot slip through together when a
//! backoff ends. An account without failures is checked in parallel (its owner's devices).
//!
//! State lives in Redis in production (shared by every identity replica, so a guesser gains
//! nothing by spreading over replicas) or in process in embedded mode. The in-process map is
//! bounded ([`MAX_MEMORY_KEYS`]): when full, expired keys are dropped, then the oldest.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument as _;

use anyhow::Context as _;

/// Failures an account may have before backoff starts.
pub const FREE_ACCOUNT_FAILURES: u32 = 3;
/// Failures one client address may have (over all accounts) before backoff starts.
pub const FREE_ADDRESS_FAILURES: u32 = 20;
/// The first backoff.
pub const BASE_BACKOFF: Duration = Duration::from_secs(2);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long failures are remembered after the latest one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// How long a running mark lasts if its check never records (a cancelled request).
pub const RUNNING_MARK_TTL: Duration = Duration::from_secs(10);
/// What a guess arriving while another check of its account runs is told to wait.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Most keys the in-process store keeps.
pub const MAX_MEMORY_KEYS: usize = 100_000;

/// Failures of one key: how many, and when the latest was (UNIX ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures {
    /// Failures remembered.
    pub count: u32,
    /// UNIX milliseconds of the latest.
    pub latest_ms: u64,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where failures are counted.
pub trait FailureStore: Send + Sync + 'static {
    /// The failures of `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Failures>>;
    /// Counts one more failure of `key` at `now_ms`; returns the new state.
    fn record<'a>(&'a self, key: &'a str, now_ms: u64) -> BoxFuture<'a, anyhow::Result<Failures>>;
    /// Forgets `key`'s failures.
    fn clear<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Marks a check of `key` as running, unless one already is; the mark lapses after `ttl`
    /// if [`FailureStore::end`] never comes (a cancelled check).
    fn try_begin<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Clears the mark of [`FailureStore::try_begin`].
    fn end<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// The in-process store (embedded mode, one replica).
#[derive(Debug, Default)]
pub struct MemoryFailureStore {
    map: Mutex<HashMap<String, Failures>>,
    running: Mutex<HashMap<String, std::time::Instant>>,
}

fn forgotten(failures: &Failures, now_ms: u64) -> bool {
    now_ms.saturating_sub(failures.latest_ms) > duration_ms(FAILURE_MEMORY)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl FailureStore for MemoryFailureStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Failures>> {
        Box::pin(async move {
            let now = p2_runtime::internal::unix_now_ms();
            let map = self
                .map
                .lock()
                .map_err(|_| anyhow::anyhow!("failure map poisoned"))?;
            Ok(map
                .get(key)
                .filter(|f| !forgotten(f, now))
                .copied()
                .unwrap_or_default())
        })
    }

    fn record<'a>(&'a self, key: &'a str, now_ms: u64) -> BoxFuture<'a, anyhow::Result<Failures>> {
        Box::pin(async move {
            let mut map = self
                .map
                .lock()
                .map_err(|_| anyhow::anyhow!("failure map poisoned"))?;
            if map.len() >= MAX_MEMORY_KEYS && !map.contains_key(key) {
                map.retain(|_, f| !forgotten(f, now_ms));
                if map.len() >= MAX_MEMORY_KEYS
                    && let Some(oldest) = map
                        .iter()
                        .min_by_key(|(_, f)| f.latest_ms)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            let entry = map.entry(key.to_owned()).or_default();
            if forgotten(entry, now_ms) {
                *entry = Failures::default();
            }
            entry.count = entry.count.saturating_add(1);
            entry.latest_ms = now_ms;
            Ok(*entry)
        })
    }

    fn clear<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.map
                .lock()
                .map_err(|_| anyhow::anyhow!("failure map poisoned"))?
                .remove(key);
            Ok(())
        })
    }

    fn try_begin<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let now = std::time::Instant::now();
            let mut running = self
                .running
                .lock()
                .map_err(|_| anyhow::anyhow!("running map poisoned"))?;
            if running.len() >= MAX_MEMORY_KEYS {
                running.retain(|_, until| *until > now);
            }
            match running.get(key) {
                Some(until) if *until > now => Ok(false),
                _ => {
                    running.insert(key.to_owned(), now + ttl);
                    Ok(true)
                }
            }
        })
    }

    fn end<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.running
                .lock()
                .map_err(|_| anyhow::anyhow!("running map poisoned"))?
                .remove(key);
            Ok(())
        })
    }
}

/// The Redis store of production: `<prefix><key>` is a hash `{count, latest}` that expires
/// [`FAILURE_MEMORY`] after the latest failure; one script per update keeps it atomic across
/// replicas.
#[derive(Clone)]
pub struct RedisFailureStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

/// Prefix of the throttle's Redis keys.
pub const REDIS_PREFIX: &str = "p2:throttle:";

const RECORD_SCRIPT: &str = r"
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('HSET', KEYS[1], 'latest', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return count
";

impl RedisFailureStore {
    /// A store on `conn` under `prefix`.
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl FailureStore for RedisFailureStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Failures>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (count, latest): (Option<u32>, Option<u64>) = redis::cmd("HMGET")
                .arg(self.key(key))
                .arg("count")
                .arg("latest")
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("throttle_read"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("identity", "throttle_read"))
                .context("reading password failures from Redis")?;
            Ok(Failures {
                count: count.unwrap_or(0),
                latest_ms: latest.unwrap_or(0),
            })
        })
    }

    fn record<'a>(&'a self, key: &'a str, now_ms: u64) -> BoxFuture<'a, anyhow::Result<Failures>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let count: u32 = redis::cmd("EVAL")
                .arg(RECORD_SCRIPT)
                .arg(1)
                .arg(self.key(key))
                .arg(now_ms)
                .arg(duration_ms(FAILURE_MEMORY))
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("throttle_write"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("identity", "throttle_write"))
                .context("counting a password failure in Redis")?;
            Ok(Failures {
                count,
                latest_ms: now_ms,
            })
        })
    }

    fn clear<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("DEL")
                .arg(self.key(key))
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("throttle_write"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("identity", "throttle_write"))
                .context("clearing password failures in Redis")?;
            Ok(())
        })
    }

    fn try_begin<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(self.key(&format!("running:{key}")))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(duration_ms(ttl))
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("throttle_write"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("identity", "throttle_write"))
                .context("marking a password check in Redis")?;
            Ok(set.is_some())
        })
    }

    fn end<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("DEL")
                .arg(self.key(&format!("running:{key}")))
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("throttle_write"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("identity", "throttle_write"))
                .context("clearing a password check mark in Redis")?;
            Ok(())
        })
    }
}

/// The backoff after `failures` of a key allowed `free` of them.
pub fn backoff(failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let doublings = (failures - free).min(20);
    BASE_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

/// The throttle: which keys a guess counts against, and whether one may run now.
#[derive(Clone)]
pub struct Throttle {
    store: std::sync::Arc<dyn FailureStore>,
}

/// An admitted guess: whether it holds its account's running mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an admitted guess must be recorded or abandoned"]
pub struct Admission {
    marked: bool,
}

/// The keys one password check counts against.
#[derive(Debug, Clone)]
pub struct Guess {
    account: String,
    address: Option<String>,
}

impl Guess {
    /// A guess at `account`'s password (a normalised local name, or whatever an unknown
    /// actor's login named: unknown names are throttled like known ones), from `address`
    /// when the gateway told it.
    pub fn new(account: &str, address: Option<&str>) -> Self {
        Self {
            account: format!("account:{account}"),
            address: address.map(|a| format!("address:{a}")),
        }
    }
}

impl Throttle {
    /// A throttle counting in `store`.
    pub fn new(store: std::sync::Arc<dyn FailureStore>) -> Self {
        Self { store }
    }

    /// `Ok(())` when `guess` may be checked now (it is then marked running: one check per
    /// account at a time, so guesses in flight cannot all slip through when a backoff ends),
    /// else how long to wait. Every admitted guess must be [`Throttle::record`]ed.
    pub async fn admit(&self, guess: &Guess) -> anyhow::Result<Result<Admission, Duration>> {
        let now = p2_runtime::internal::unix_now_ms();
        let mut wait = Duration::ZERO;
        let mut account_failed = false;
        let keys = std::iter::once((&guess.account, FREE_ACCOUNT_FAILURES))
            .chain(guess.address.as_ref().map(|a| (a, FREE_ADDRESS_FAILURES)));
        for (key, free) in keys {
            let failures = self.store.get(key).await?;
            if key == &guess.account {
                account_failed = failures.count > 0;
            }
            let until = failures
                .latest_ms
                .saturating_add(duration_ms(backoff(failures.count, free)));
            wait = wait.max(Duration::from_millis(until.saturating_sub(now)));
        }
        if !wait.is_zero() {
            return Ok(Err(wait));
        }
        // An account under attack is checked one guess at a time; one without failures (its
        // owner on several devices) is not held up.
        if account_failed {
            if !self
                .store
                .try_begin(&guess.account, RUNNING_MARK_TTL)
                .await?
            {
                return Ok(Err(BUSY_RETRY));
            }
            return Ok(Ok(Admission { marked: true }));
        }
        Ok(Ok(Admission { marked: false }))
    }

    /// Records the outcome of a check that ran, and ends its running mark.
    pub async fn record(
        &self,
        guess: &Guess,
        admission: Admission,
        correct: bool,
    ) -> anyhow::Result<()> {
        let outcome = self.count(guess, correct).await;
        self.abandon(guess, admission).await?;
        outcome
    }

    /// Ends the running mark of an admitted guess (also one that was not judged because its
    /// check failed).
    pub async fn abandon(&self, guess: &Guess, admission: Admission) -> anyhow::Result<()> {
        if admission.marked {
            self.store.end(&guess.account).await?;
        }
        Ok(())
    }

    async fn count(&self, guess: &Guess, correct: bool) -> anyhow::Result<()> {
        if correct {
            return self.store.clear(&guess.account).await;
        }
        let now = p2_runtime::internal::unix_now_ms();
        let failures = self.store.record(&guess.account, now).await?;
        if let Some(address) = &guess.address {
            self.store.record(address, now).await?;
        }
        if failures.count >= FREE_ACCOUNT_FAILURES {
            tracing::warn!(key = %guess.account, failures = failures.count, "password guesses throttled");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_free_failures_and_doubles_to_a_cap() {
        assert_eq!(backoff(0, 3), Duration::ZERO);
        assert_eq!(backoff(2, 3), Duration::ZERO);
        assert_eq!(backoff(3, 3), BASE_BACKOFF);
        assert_eq!(backoff(4, 3), BASE_BACKOFF * 2);
        assert_eq!(backoff(5, 3), BASE_BACKOFF * 4);
        assert_eq!(backoff(1000, 3), MAX_BACKOFF);
    }
}
