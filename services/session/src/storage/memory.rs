//! The in-process [`ChallengeStore`] of embedded mode (`polyproto up` without Redis): a map
//! behind a mutex, expiry measured with `tokio::time::Instant` (so tests can pause time), a
//! bounded number of entries, and expired entries purged opportunistically by writes.
//!
//! One process only: replicas of the session service must share Redis instead.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, ChallengeStore, StoreError};

/// Default bound on live entries: far above what one embedded server hands out within a
/// challenge's lifetime, and small enough (a few tens of MB) that a flood cannot exhaust memory.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How often a write sweeps out expired entries (also done whenever the store is full).
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// The in-process challenge store.
#[derive(Debug)]
pub struct MemoryChallengeStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<String, Entry>,
    next_purge: Instant,
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires_at: Instant,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl MemoryChallengeStore {
    /// A store holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                next_purge: Instant::now() + PURGE_INTERVAL,
            }),
        }
    }

    /// Number of entries held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code path panics while holding the lock, and the map stays consistent even if one
        // did: recover rather than poison every later call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put_now(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if now >= inner.next_purge || inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, entry| entry.is_live(now));
            inner.next_purge = now + PURGE_INTERVAL;
        }
        match inner.entries.get(key) {
            Some(entry) if entry.is_live(now) => return Ok(false),
            // An expired entry under this key is replaced in place: no growth.
            Some(_) => {}
            None if inner.entries.len() >= self.capacity => {
                return Err(StoreError::Full {
                    capacity: self.capacity,
                });
            }
            None => {}
        }
        inner.entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires_at: now + ttl,
            },
        );
        Ok(true)
    }

    fn take_now(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.lock()
            .entries
            .remove(key)
            .filter(|entry| entry.is_live(now))
            .map(|entry| entry.value)
    }
}

impl Default for MemoryChallengeStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ChallengeStore for MemoryChallengeStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        // All work happens under the lock, synchronously; nothing is held across an await.
        Box::pin(std::future::ready(self.put_now(key, value, ttl)))
    }

    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.take_now(key))))
    }
}
