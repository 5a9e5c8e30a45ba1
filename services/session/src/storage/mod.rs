//! Storage of the session service, implementations side by side:
//!
//! - [`sql`]: [`SessionStore`], the `sessions` table (token hashes → fid, session ID, admin
//!   flag). One portable implementation over sqlx's `Any` driver serves SQLite (embedded) and
//!   PostgreSQL (production).
//! - [`ChallengeStore`]: short-lived single-use values (challenge strings now, key trials
//!   later): put-if-absent with a time to live, and take-once. [`redis`] for production
//!   (shared by every replica), [`memory`] for embedded mode (one process).
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
pub use sql::{MIGRATIONS, SessionRow, SessionStore};

/// A boxed, sendable future: what [`ChallengeStore`] methods return, so the store can be
/// chosen at start (`Arc<dyn ChallengeStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a [`ChallengeStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The in-process store holds its maximum number of live entries.
    #[error("the in-process store already holds its maximum of {capacity} live entries")]
    Full {
        /// The configured bound.
        capacity: usize,
    },
    /// The backend failed (Redis unreachable, protocol error...).
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

/// Short-lived, single-use values keyed by text: challenge strings (`challenge:<challenge>`)
/// and, later, key trials. Keys are logical; an implementation may prefix them (Redis stores
/// `p2:challenge:<challenge>`).
///
/// Contract (checked by the conformance suite):
/// - [`put_if_absent`](Self::put_if_absent) stores only when no live value has the key, and the
///   value lives for `ttl` (rounded up to whole seconds by Redis);
/// - [`take`](Self::take) returns a live value and removes it in the same atomic step, so of
///   any number of concurrent takes of one key exactly one gets the value;
/// - an expired value behaves as absent.
pub trait ChallengeStore: Send + Sync + 'static {
    /// Stores `value` under `key` for `ttl` unless a live value already has that key.
    /// `Ok(true)` when stored, `Ok(false)` when the key was taken (nothing changed).
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes and returns the live value under `key`; `Ok(None)` when there is none (never
    /// stored, already taken, or expired).
    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
}
