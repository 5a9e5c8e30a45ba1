//! The Redis [`ChallengeStore`] of production: `SET key value NX EX ttl` to put, `GETDEL` to
//! take (atomic, Redis ≥ 6.2), so every replica of the session service shares one set of
//! challenges and a challenge is accepted at most once across all of them.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;

use super::{BoxFuture, ChallengeStore, StoreError};

/// Prefix of every key this service writes: `p2:challenge:<challenge>`.
pub const DEFAULT_PREFIX: &str = "p2:";

/// The Redis challenge store.
#[derive(Clone)]
pub struct RedisChallengeStore {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisChallengeStore {
    /// A store writing keys `<prefix><logical key>` through `conn` (which reconnects by
    /// itself). Production uses [`DEFAULT_PREFIX`]; tests use a unique prefix each.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
        }
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }
}

/// `EX` takes whole seconds: round up, so a value never expires early, and at least 1 (Redis
/// rejects 0).
fn whole_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

impl ChallengeStore for RedisChallengeStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let reply: Option<String> = redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("NX")
                .arg("EX")
                .arg(whole_seconds(ttl))
                .query_async(&mut conn)
                .await
                .context("Redis SET NX EX of a challenge")?;
            // "OK" when set; nil when NX found the key.
            Ok(reply.is_some())
        })
    }

    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let value: Option<String> = redis::cmd("GETDEL")
                .arg(self.key(key))
                .query_async(&mut conn)
                .await
                .context("Redis GETDEL of a challenge")?;
            Ok(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds_and_never_reach_zero() {
        assert_eq!(whole_seconds(Duration::from_secs(300)), 300);
        assert_eq!(whole_seconds(Duration::from_millis(300_001)), 301);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
