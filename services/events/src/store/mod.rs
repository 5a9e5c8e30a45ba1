//! Storage of the event log, implementations side by side: [`redis`] for production (shared by
//! every replica, Redis Streams) and [`memory`] for embedded mode (`polyproto up`, one
//! process). One conformance suite runs against both (`tests/service/store.rs`).
//!
//! What a store keeps (the contract; the suite checks every line):
//!
//! - **A log per session**: positions 1, 2, 3, … assigned on append, never reused while the
//!   session's counter lives (it survives a close for [`Limits::closed_ttl`], so a session
//!   reopened in that time continues its numbering); at most
//!   [`Limits::max_events_per_session`] events, the oldest dropped first.
//! - **Open sessions**: actor → its open sessions (each with the time it was last refreshed),
//!   server → actors with open sessions. A membership is refreshed by every gateway call of the
//!   session and expires [`Limits::membership_ttl`] after the last one. At most
//!   [`Limits::max_sessions_per_actor`] per actor and [`Limits::max_actors`] actors: beyond
//!   either, the least recently refreshed membership (or actor) is dropped together with its
//!   log, cursor and delivery record (if that session calls again it is reopened with an empty
//!   log and positions from 1, which its Subscribe streams report as a reset).
//! - **Fan-out on write**: a publication is appended to the log of every open session of its
//!   audience, atomically per session log, and wakes that session's subscribers
//!   ([`crate::wake`]). The whole fan-out is not one transaction; a retried publication (same
//!   idempotency key) skips the sessions that already have it and reaches the rest.
//! - **Idempotency**: a key whose publication completed within [`Limits::idempotency_ttl`] is
//!   a repeat: nothing is appended. At most [`Limits::max_idempotency_keys`] keys are kept;
//!   beyond, the oldest is forgotten early (a repeat of it after that appends again).
//! - **Close**: drops the session's membership, log, cursor and delivery record, wakes its
//!   subscribers (they end with `closed`), and marks it closed for [`Limits::closed_ttl`]:
//!   during that time gateway calls (whose caller assertions may outlive the session by up to
//!   their lifetime) and session-addressed publications do not reopen it; an explicit open
//!   does.
//! - **Cursor and delivery record**: the polling cursor (the last position returned by a poll
//!   or recorded as delivered; it never moves back) and the delivery record of the session's
//!   last gateway connection (as many deliveries as the log holds; older ones are dropped and
//!   remembered as "trimmed through sequence N").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::invalidations::{Batch, Hub};
use crate::model::{Audience, Delivered, LogRead, NewEvent, PollOutcome, ResumeState, SessionKey};
use crate::wake::Wakeups;

pub mod memory;
pub mod redis;

pub use self::redis::RedisEventStore;
pub use memory::MemoryEventStore;

/// A boxed, sendable future: what [`EventStore`] methods return, so the store can be chosen at
/// start (`Arc<dyn EventStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Default of `--max-events-per-session`.
pub const DEFAULT_MAX_EVENTS_PER_SESSION: u64 = 1000;
/// Largest `--max-events-per-session`: with [`crate::model::MAX_DATA_JSON_BYTES`] per event,
/// a log never exceeds 640 MiB even then (a real one holds a few KiB per event).
pub const MAX_EVENTS_PER_SESSION: u64 = 10_000;
/// Default of `--max-sessions-per-actor` (as identity's: sessions beyond it cannot exist).
pub const DEFAULT_MAX_SESSIONS_PER_ACTOR: u64 = 256;
/// Default bound on actors with open sessions (the server-wide audience); beyond, the least
/// recently refreshed actor's sessions are dropped.
pub const DEFAULT_MAX_ACTORS: usize = 1_000_000;
/// How long a membership lives without a gateway call of its session: 60 days, longer than an
/// ID-Cert (at most 60 days, spec 6.1) can keep a session alive without renewal.
pub const DEFAULT_MEMBERSHIP_TTL: Duration = Duration::from_secs(60 * 24 * 3600);
/// How long a closed session stays marked closed: 15 minutes, longer than any caller
/// assertion lives (`--assertion-ttl-ms` is at most 10 minutes).
pub const DEFAULT_CLOSED_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an idempotency key is remembered: 24 hours (publishers retry from a durable
/// outbox within that).
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most idempotency keys remembered (each at most 128 bytes: a few tens of MB at most).
pub const DEFAULT_MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// The bounds and lifetimes of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most events one session's log holds (oldest dropped).
    pub max_events_per_session: usize,
    /// Most open sessions per actor (least recently refreshed dropped).
    pub max_sessions_per_actor: usize,
    /// Most actors with open sessions (least recently refreshed dropped).
    pub max_actors: usize,
    /// Lifetime of a membership (and of its session's data) after its last refresh.
    pub membership_ttl: Duration,
    /// How long a closed session stays marked closed.
    pub closed_ttl: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Most idempotency keys remembered.
    pub max_idempotency_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events_per_session: DEFAULT_MAX_EVENTS_PER_SESSION as usize,
            max_sessions_per_actor: DEFAULT_MAX_SESSIONS_PER_ACTOR as usize,
            max_actors: DEFAULT_MAX_ACTORS,
            membership_ttl: DEFAULT_MEMBERSHIP_TTL,
            closed_ttl: DEFAULT_CLOSED_TTL,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            max_idempotency_keys: DEFAULT_MAX_IDEMPOTENCY_KEYS,
        }
    }
}

/// Whole milliseconds of `duration`, at least 1 (Redis refuses 0 as an expiry).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The event log's storage. See the module documentation for the contract.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `event` to the log of every open session of `audience` (a session audience is
    /// opened implicitly unless closed recently) and wakes their subscribers, unless
    /// `idempotency_key` was published already. Returns how many logs received it, `None`
    /// for a repeat.
    fn publish<'a>(
        &'a self,
        audience: &'a Audience,
        event: &'a NewEvent,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<u32>>>;

    /// Opens `session` (idempotent): actor- and server-wide events reach it from now on. Clears
    /// a recent close.
    fn open<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Opens `session` unless it was closed recently, or refreshes its membership. `false`:
    /// closed recently (nothing changed).
    fn touch<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<bool>>;

    /// Closes `session` (idempotent): drops its membership, log, cursor and delivery record,
    /// marks it closed and wakes its subscribers.
    fn close<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The session's log after position `after`, at most `limit` events (at least 1), with the
    /// log's bounds, read at one instant.
    fn read<'a>(
        &'a self,
        session: &'a SessionKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<LogRead>>;

    /// The events after the session's cursor (at most `limit`, the newest when more are
    /// pending), advancing the cursor to the last one returned. Nothing for a session closed
    /// recently.
    fn poll<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<PollOutcome>>;

    /// Records what the gateway connection `connection_id` delivered (replacing the record of
    /// an earlier connection) and moves the cursor up to the highest position recorded (never
    /// past the last assigned one, never back). Nothing for a session closed recently.
    fn record<'a>(
        &'a self,
        session: &'a SessionKey,
        connection_id: &'a str,
        delivered: &'a [Delivered],
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The delivery record and the log's bounds, read at one instant.
    fn resume_state<'a>(
        &'a self,
        session: &'a SessionKey,
    ) -> BoxFuture<'a, anyhow::Result<ResumeState>>;

    /// The registry this store's appends and closes wake.
    fn wakeups(&self) -> &Arc<Wakeups>;

    /// This process's hub of the gateways' invalidation feeds, which [`EventStore::broadcast`]s
    /// of every replica reach.
    fn invalidations(&self) -> &Arc<Hub>;

    /// Hands `batch` to every invalidation feed of every replica (in process: this one's).
    fn broadcast<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The bounds this store was built with.
    fn limits(&self) -> &Limits;

    /// Whether the store answers now (readiness probes); the in-process store always does.
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}
