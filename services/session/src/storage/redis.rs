//! The Redis [`ChallengeStore`] of production, shared by every replica of the session service,
//! so a challenge is accepted at most once across all of them and the bounds hold for the
//! deployment, not per replica.
//!
//! Layout (`<p>` is the prefix, [`DEFAULT_PREFIX`] in production):
//! - `<p><key>`: the value, with the entry's expiry (`PX`); what [`ChallengeStore::take`]
//!   returns. Challenges are `p2:challenge:<challenge>`.
//! - `<p>store:pending`: ZSET, logical key → expiry (UNIX ms): the live entries of all owners,
//!   against the capacity.
//! - `<p>store:owners`: HASH, logical key → owner, so a take knows whose slot it frees.
//! - `<p>store:owner:<owner>`: ZSET, logical key → expiry (UNIX ms): one owner's entries,
//!   against the limit given with each put.
//!
//! Both operations are one Lua script each, so the checks and the writes are atomic across
//! replicas; the scripts read the clock with `TIME` (Redis's own, not a replica's). Expired
//! members are pruned by every put (the owner's set whole, the shared structures in batches of
//! [`PRUNE_BATCH`], more than the one entry a put adds, so they cannot fall behind), only live
//! members are counted, and every structure expires with its last entry (`PEXPIREAT` its
//! latest expiry), so nothing outlives the entries it accounts for.
//!
//! The take script removes from an owner set whose name it reads from the owners hash: fine on
//! a single Redis (and its replicas), which is what [`p2_runtime::kv`] connects to; Redis
//! Cluster would need the keys hash-tagged into one slot. Needs Redis ≥ 6.2 (`GETDEL`).

use std::time::Duration;
use tracing::Instrument as _;

use anyhow::Context as _;
use redis::aio::ConnectionManager;

use super::{BoxFuture, ChallengeStore, DEFAULT_CAPACITY, StoreError};

/// Prefix of every key this service writes: `p2:challenge:<challenge>`, `p2:store:...`.
pub const DEFAULT_PREFIX: &str = "p2:";

/// How many expired members of the shared structures one put prunes at most: bounds the work
/// (and so the time Redis is blocked) of one script, while clearing far more than a put adds.
pub const PRUNE_BATCH: usize = 256;

/// KEYS: value key, pending ZSET, owners HASH, owner ZSET. ARGV: value, ttl ms, logical key,
/// owner, owner limit, capacity, prune batch. Returns 1 stored, 0 key taken, -1 owner at its
/// limit, -2 store at capacity.
const PUT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, k in ipairs(expired) do
  redis.call('HDEL', KEYS[3], k)
  redis.call('ZREM', KEYS[2], k)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then
  return -1
end
if redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') >= tonumber(ARGV[6]) then
  return -2
end
local expires = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[4], expires, ARGV[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
redis.call('PEXPIREAT', KEYS[3], last[2])
last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[4], last[2])
return 1
";

/// KEYS: value key, pending ZSET, owners HASH. ARGV: logical key, owner ZSET prefix. Returns
/// the value or nil; frees the entry's bookkeeping whether or not the value had expired.
const TAKE_SCRIPT: &str = r"
local value = redis.call('GETDEL', KEYS[1])
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', ARGV[2] .. owner, ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return value
";

/// The Redis challenge store.
#[derive(Clone)]
pub struct RedisChallengeStore {
    conn: ConnectionManager,
    prefix: String,
    capacity: usize,
}

impl RedisChallengeStore {
    /// A store writing keys `<prefix><logical key>` through `conn` (which reconnects by
    /// itself), holding at most [`DEFAULT_CAPACITY`] live entries. Production uses
    /// [`DEFAULT_PREFIX`]; tests use a unique prefix each.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// The same store holding at most `capacity` live entries, all owners and replicas
    /// together.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    fn pending_key(&self) -> String {
        self.key("store:pending")
    }

    fn owners_key(&self) -> String {
        self.key("store:owners")
    }

    fn owner_prefix(&self) -> String {
        self.key("store:owner:")
    }
}

/// `PX` takes whole milliseconds: round up, so a value never expires early, and at least 1
/// (Redis rejects 0).
fn whole_millis(ttl: Duration) -> u64 {
    let millis = ttl.as_millis() + u128::from(!ttl.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

impl ChallengeStore for RedisChallengeStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        owner: &'a str,
        owner_limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut owner_key = self.owner_prefix();
            owner_key.push_str(owner);
            // EVAL, not EVALSHA: Redis caches the compiled script by its hash either way, and
            // the body is a few hundred bytes.
            let reply: i64 = redis::cmd("EVAL")
                .arg(PUT_SCRIPT)
                .arg(4)
                .arg(self.key(key))
                .arg(self.pending_key())
                .arg(self.owners_key())
                .arg(owner_key)
                .arg(value)
                .arg(whole_millis(ttl))
                .arg(key)
                .arg(owner)
                .arg(owner_limit)
                .arg(self.capacity)
                .arg(PRUNE_BATCH)
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("challenge_put"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("session", "challenge_put"))
                .context("Redis put script of a challenge")?;
            match reply {
                1 => Ok(true),
                0 => Ok(false),
                -1 => Err(StoreError::OwnerFull { limit: owner_limit }),
                -2 => Err(StoreError::Full {
                    capacity: self.capacity,
                }),
                other => Err(StoreError::Backend(anyhow::anyhow!(
                    "the Redis put script answered {other}"
                ))),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(p2_runtime::kv::ping(&self.conn))
    }

    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let value: Option<String> = redis::cmd("EVAL")
                .arg(TAKE_SCRIPT)
                .arg(3)
                .arg(self.key(key))
                .arg(self.pending_key())
                .arg(self.owners_key())
                .arg(key)
                .arg(self.owner_prefix())
                .query_async(&mut conn)
                .instrument(p2_runtime::kv::span("challenge_take"))
                .await
                .inspect_err(|_| p2_runtime::metrics::redis_error("session", "challenge_take"))
                .context("Redis take script of a challenge")?;
            Ok(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds_and_never_reach_zero() {
        assert_eq!(whole_millis(Duration::from_secs(300)), 300_000);
        assert_eq!(whole_millis(Duration::from_micros(300_001)), 301);
        assert_eq!(whole_millis(Duration::from_nanos(1)), 1);
        assert_eq!(whole_millis(Duration::ZERO), 1);
    }
}
