//! The verified cache of foreign home servers' certs, shared by every replica of the session
//! service: Redis in production ([`RedisVerifiedCache`]), process memory in embedded mode
//! ([`MemoryVerifiedCache`]).
//!
//! Entries are the cache fields exactly as the home server served them (so they can be served
//! on unchanged), stored only after they verified, and re-verified on every read (a few
//! microseconds), so an entry is never used outside its cache window whatever the store's
//! clock does. Each lives until the end of its window (`PX`), at most 12 hours.
//!
//! Bound (CONVENTIONS 17): at most `capacity` entries of at most [`MAX_ENTRY_BYTES`] each; a
//! put beyond it evicts the entries that expire soonest (a cache miss costs one fetch from the
//! home server). A larger entry is not cached (it is used once and fetched again next time).
//! Redis layout (`<p>` the session prefix): `<p>fed:<key>` the entry, `<p>fed:index` a ZSET of
//! entry keys by expiry (UNIX ms) against the capacity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::aio::ConnectionManager;

use crate::storage::BoxFuture;

/// Largest cached entry, in bytes.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;
/// Default bound on cached entries.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// The verified cache.
pub trait VerifiedCache: Send + Sync + 'static {
    /// The live entry under `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<String>>>;
    /// Stores `value` under `key` for `ttl` (replacing an entry of that key).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// The in-process cache of embedded mode.
#[derive(Debug)]
pub struct MemoryVerifiedCache {
    capacity: usize,
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryVerifiedCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl VerifiedCache for MemoryVerifiedCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        Box::pin(async move {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(entries
                .get(key)
                .filter(|(_, expires)| *expires > Instant::now())
                .map(|(value, _)| value.clone()))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if value.len() > MAX_ENTRY_BYTES || ttl.is_zero() {
                return Ok(());
            }
            let now = Instant::now();
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !entries.contains_key(key) && entries.len() >= self.capacity {
                entries.retain(|_, (_, expires)| *expires > now);
                while entries.len() >= self.capacity {
                    let Some(soonest) = entries
                        .iter()
                        .min_by_key(|(_, (_, expires))| *expires)
                        .map(|(k, _)| k.clone())
                    else {
                        break;
                    };
                    entries.remove(&soonest);
                }
            }
            entries.insert(key.to_owned(), (value.to_owned(), now + ttl));
            Ok(())
        })
    }
}

/// KEYS: entry key, index ZSET. ARGV: value, ttl ms, capacity. Evicts expired members, then
/// the soonest-expiring ones while the index is full, then stores.
const PUT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZSCORE', KEYS[2], KEYS[1]) == false then
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]) + 1
  if over > 0 then
    local victims = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #victims, 2 do redis.call('DEL', victims[i]) end
  end
end
local expires = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], expires, KEYS[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
";

/// The Redis cache of production, shared by every replica.
#[derive(Clone)]
pub struct RedisVerifiedCache {
    redis: ConnectionManager,
    prefix: String,
    capacity: usize,
}

impl RedisVerifiedCache {
    /// A cache under `<prefix>fed:` of at most `capacity` entries.
    pub fn new(redis: ConnectionManager, prefix: &str, capacity: usize) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}fed:"),
            capacity: capacity.max(1),
        }
    }
}

impl VerifiedCache for RedisVerifiedCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let value: Option<String> = redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async(&mut redis)
                .await
                .context("reading the federation cache")?;
            Ok(value)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if value.len() > MAX_ENTRY_BYTES || ttl_ms == 0 {
                return Ok(());
            }
            let mut redis = self.redis.clone();
            // EVAL, as the challenge store does: Redis caches the compiled script by its hash.
            let _: i64 = redis::cmd("EVAL")
                .arg(PUT_SCRIPT)
                .arg(2)
                .arg(format!("{}{key}", self.prefix))
                .arg(format!("{}index", self.prefix))
                .arg(value)
                .arg(ttl_ms)
                .arg(self.capacity)
                .query_async(&mut redis)
                .await
                .context("writing the federation cache")?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_cache_keeps_its_bound_and_expires_entries() {
        let cache = MemoryVerifiedCache::new(2);
        cache.put("a", "1", Duration::from_secs(60)).await.unwrap();
        cache.put("b", "2", Duration::from_secs(30)).await.unwrap();
        cache.put("c", "3", Duration::from_secs(90)).await.unwrap();
        // "b" expired soonest: evicted.
        assert_eq!(cache.get("b").await.unwrap(), None);
        assert_eq!(cache.get("a").await.unwrap().as_deref(), Some("1"));
        assert_eq!(cache.get("c").await.unwrap().as_deref(), Some("3"));
        cache.put("d", "4", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(cache.get("d").await.unwrap(), None);
        let big = "x".repeat(MAX_ENTRY_BYTES + 1);
        cache.put("e", &big, Duration::from_secs(60)).await.unwrap();
        assert_eq!(cache.get("e").await.unwrap(), None);
    }
}
