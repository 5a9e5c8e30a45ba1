//! Storage of the session service, implementations side by side:
//!
//! - [`sql`]: [`SessionStore`], the `sessions` table (token hashes → fid, session ID, admin
//!   flag), the current certs of foreign sessions (`foreign_certs`), completed key trials
//!   (`key_trials`) and, beside them, the event outbox its writes queue
//!   `OpenSession`/`CloseSession` (and op 3) into. One portable implementation over sqlx's
//!   `Any` driver serves SQLite (embedded) and PostgreSQL (production).
//! - [`ChallengeStore`]: short-lived single-use values (challenge strings and key trials):
//!   put-if-absent with a time to live, and take-once. [`redis`] for production (shared by
//!   every replica), [`memory`] for embedded mode (one process).
//!
//! Tests run one conformance suite against every implementation: `tests/session_store.rs`
//! (SQLite, PostgreSQL) and `tests/challenge_store.rs` (memory, Redis).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod memory;
pub mod redis;
pub mod sql;

pub use self::redis::RedisChallengeStore;
pub use memory::MemoryChallengeStore;
pub use sql::{ForeignCert, KeyTrialRow, MIGRATIONS, SessionRow, SessionStore};

/// A boxed, sendable future: what [`ChallengeStore`] methods return, so the store can be
/// chosen at start (`Arc<dyn ChallengeStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Default bound on live entries of a store, all owners together: far above what one server
/// hands out within a challenge's lifetime, and small enough (a few tens of MB, in process or
/// in Redis) that a flood cannot exhaust memory.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Why a [`ChallengeStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store holds its maximum number of live entries, all owners together.
    #[error("the challenge store already holds its maximum of {capacity} live entries")]
    Full {
        /// The configured bound.
        capacity: usize,
    },
    /// The owner named in the put already holds the most live entries it may hold. Only this
    /// owner is refused; everyone else's puts go on.
    #[error("this owner already holds its maximum of {limit} live entries")]
    OwnerFull {
        /// The bound the caller gave.
        limit: usize,
    },
    /// The backend failed (Redis unreachable, protocol error...).
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

/// Short-lived, single-use values keyed by text: challenge strings (`challenge:<challenge>`)
/// and key trials (`keytrial:<trial>`, owned by the client address they were handed to). Keys are logical; an implementation may prefix them (Redis stores
/// `p2:challenge:<challenge>`).
///
/// Every value has an *owner* (for challenges: the session it was issued to), and the store
/// bounds both the live entries of one owner (a limit given with each put, so the rule stays
/// with the caller) and all live entries together (a capacity given at construction). At
/// either bound a put is refused ([`StoreError::OwnerFull`], [`StoreError::Full`]); nothing
/// already stored is evicted, so one owner filling its share cannot push out anyone else's.
///
/// Contract (checked by the conformance suite):
/// - [`put_if_absent`](Self::put_if_absent) stores only when no live value has the key, and the
///   value lives for `ttl` (rounded up to whole milliseconds by Redis);
/// - a put beyond the owner's limit or the store's capacity is refused and changes nothing;
/// - [`take`](Self::take) returns a live value and removes it in the same atomic step, so of
///   any number of concurrent takes of one key exactly one gets the value, and its owner's
///   slot is free again at once;
/// - an expired value behaves as absent and no longer counts against any bound; the
///   bookkeeping of expired values is pruned, so memory stays bounded by live values.
pub trait ChallengeStore: Send + Sync + 'static {
    /// Stores `value` under `key` for `ttl`, owned by `owner`, unless a live value already has
    /// that key. `Ok(true)` when stored, `Ok(false)` when the key was taken (nothing changed);
    /// [`StoreError::OwnerFull`] when `owner` already holds `owner_limit` live values,
    /// [`StoreError::Full`] when the store is at capacity (nothing changed either way). The
    /// check and the write are one atomic step: concurrent puts of one owner never exceed
    /// `owner_limit`.
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        owner: &'a str,
        owner_limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes and returns the live value under `key`, freeing its owner's slot; `Ok(None)`
    /// when there is none (never stored, already taken, or expired).
    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Whether the store answers now (readiness probes); the in-process store always does.
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}
