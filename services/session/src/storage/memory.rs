//! The in-process [`ChallengeStore`] of embedded mode (`polyproto up` without Redis): a map
//! behind a mutex, expiry measured with `tokio::time::Instant` (so tests can pause time), a
//! bounded number of entries in all and per owner, and expired entries purged
//! opportunistically by writes.
//!
//! Next to the entries it keeps, per owner, the set of that owner's keys: a put checks the
//! owner's bound in O(owner limit) (pruning that owner's expired keys when it is at the bound),
//! never by scanning the whole map, and a take frees the slot at once. An owner's set is
//! dropped with its last key, so owners cost nothing once their entries are gone.
//!
//! One process only: replicas of the session service must share Redis instead.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, ChallengeStore, StoreError};

pub use super::DEFAULT_CAPACITY;

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
    /// Owner → keys in `entries` it owns (expired ones not yet purged included). Never holds
    /// an empty set.
    owners: HashMap<String, HashSet<String>>,
    next_purge: Instant,
}

#[derive(Debug)]
struct Entry {
    value: String,
    owner: String,
    expires_at: Instant,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl Inner {
    /// Removes `key` from the entries and from its owner's set (dropping an emptied set).
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(keys) = self.owners.get_mut(&entry.owner) {
            keys.remove(key);
            if keys.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| !entry.is_live(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        self.next_purge = now + PURGE_INTERVAL;
    }

    /// Whether `owner` holds `limit` live entries or more. Only an owner at the bound pays
    /// for dropping its expired entries (O(limit)); below it, counting them changes nothing.
    fn is_at(&mut self, owner: &str, limit: usize, now: Instant) -> bool {
        let Some(keys) = self.owners.get(owner) else {
            return limit == 0;
        };
        if keys.len() < limit {
            return false;
        }
        let expired: Vec<String> = keys
            .iter()
            .filter(|key| {
                self.entries
                    .get(*key)
                    .is_none_or(|entry| !entry.is_live(now))
            })
            .cloned()
            .collect();
        for key in expired {
            self.remove(&key);
        }
        self.owners.get(owner).map_or(0, HashSet::len) >= limit
    }
}

impl MemoryChallengeStore {
    /// A store holding at most `capacity` live entries, all owners together.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                owners: HashMap::new(),
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

    /// Number of owners with at least one entry held (expired ones not yet purged included):
    /// what the per-owner bookkeeping costs.
    pub fn owners(&self) -> usize {
        self.lock().owners.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code path panics while holding the lock, and the maps stay consistent even if one
        // did: recover rather than poison every later call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put_now(
        &self,
        key: &str,
        value: &str,
        owner: &str,
        owner_limit: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if now >= inner.next_purge || inner.entries.len() >= self.capacity {
            inner.purge_expired(now);
        }
        match inner.entries.get(key) {
            Some(entry) if entry.is_live(now) => return Ok(false),
            // An expired entry under this key goes first, so it counts against nobody.
            Some(_) => {
                inner.remove(key);
            }
            None => {}
        }
        // The owner's bound first: an owner at its limit learns that it is its own doing.
        if inner.is_at(owner, owner_limit, now) {
            return Err(StoreError::OwnerFull { limit: owner_limit });
        }
        if inner.entries.len() >= self.capacity {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        inner.entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                owner: owner.to_owned(),
                expires_at: now + ttl,
            },
        );
        inner
            .owners
            .entry(owner.to_owned())
            .or_default()
            .insert(key.to_owned());
        Ok(true)
    }

    fn take_now(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.lock()
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
        owner: &'a str,
        owner_limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        // All work happens under the lock, synchronously; nothing is held across an await.
        Box::pin(std::future::ready(self.put_now(
            key,
            value,
            owner,
            owner_limit,
            ttl,
        )))
    }

    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.take_now(key))))
    }
}
