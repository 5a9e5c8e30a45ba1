//! The transactional outbox of the services that cause gateway events (session: new and ended
//! sessions; identity: revoked actor certs, new server keys).
//!
//! A change that causes an event writes the event's RPC to the events service as a row of the
//! table `event_outbox` in the publisher's own database, in the same transaction as the change
//! ([`Outbox::enqueue`]): the change and its events commit, or roll back, together — also when
//! the request is cancelled halfway, since an uncommitted sqlx transaction rolls back on drop.
//! The operation itself never waits for the events service and never fails because of it. A
//! [`Relay`] task in every publishing process then delivers the rows.
//!
//! Delivery:
//! - **At least once.** A row is deleted only after the events service answered OK, so a crash
//!   or a lost answer sends it again. `Publish` carries the row's random idempotency key (the
//!   events service appends a repeat nowhere); `OpenSession` and `CloseSession` are idempotent.
//! - **In order**, by `(seq, idempotency_key)`. `seq` is one more than the highest `seq`
//!   queued when the row is written, so rows of one transaction keep their order, and an
//!   operation that starts after another one committed (a session closed after it was opened)
//!   queues behind it, whatever the replicas' clocks say. The head row blocks the rows behind
//!   it while it fails: order over throughput.
//! - **One relay per database at a time**, holding the lease row of `event_outbox_relay`
//!   ([`RelayOptions::lease`], renewed while it works, released on a clean stop), so replicas
//!   never send the same rows concurrently. The others poll every
//!   [`RelayOptions::poll_interval`] and take over when the lease expires (a crashed holder)
//!   or at once (a stopped one). A holder stalled beyond its lease may overlap its successor:
//!   duplicates, which the idempotency covers.
//! - **Retries** with exponential backoff ([`backoff`]: 100 ms doubling to 30 s, plus up to a
//!   quarter of jitter), forever, for every answer but one: `INVALID_ARGUMENT` (and a row this
//!   build cannot decode) would fail forever and stop every later event, so such a row is
//!   dropped with an error log and counted ([`OutboxStats::rejected`]). Until the events service
//!   implements an RPC it answers `UNIMPLEMENTED`, which is retried like `UNAVAILABLE`.
//! - Rows written by another replica or another process (`polyproto admin`) are found by the
//!   poll; rows written by this process wake the relay at once ([`Outbox::wake`]).
//!
//! **Bound** ([`OutboxConfig::capacity`], default [`DEFAULT_CAPACITY`]): when a write would
//! leave more than `capacity` rows, the oldest undelivered ones are deleted in the same
//! transaction, with an error log and [`OutboxStats::dropped`]; the change itself goes through.
//! A row is about 0.3–3 KB (an op 4 carries a certificate), so the default bounds the table at a
//! few hundred MB even when the events service is gone for good.
//!
//! Layout:
//! - [`OutboxConfig`]: the flags the publishers flatten into theirs (`--events-url`,
//!   `--outbox-capacity`).
//! - [`message`]: [`Message`], one queued RPC, and the audiences of `Publish`.
//! - [`queue`]: the schema ([`MIGRATION_SQL`]), [`Outbox`] (enqueue, the bound, counters) and
//!   [`pending`] (what is queued, for tests and operators).
//! - [`relay`]: [`Relay`], the delivery task, and [`backoff`].
//! - `testing` (feature `testing`): a fake events service for the publishers' tests.

pub mod message;
pub mod queue;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;

pub use message::Message;
pub use queue::{
    DEFAULT_CAPACITY, MIGRATION_DESCRIPTION, MIGRATION_SQL, Outbox, OutboxStats, PendingRow,
    pending,
};
pub use relay::{Relay, RelayOptions, backoff};

/// Default URL of the events service.
pub const DEFAULT_EVENTS_URL: &str = "http://127.0.0.1:50054";

/// Flags of a service that publishes gateway events (flattened into `SessionConfig` and
/// `IdentityConfig`).
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxConfig {
    /// URL of the events service, which this service's outbox relay delivers to (a
    /// comma-separated list balances over several). Unreachable: events wait in the outbox.
    #[arg(long = "events-url", env = "P2_EVENTS_URL", default_value = DEFAULT_EVENTS_URL)]
    pub events_url: String,
    /// Most undelivered events the outbox table holds (at least 1). Beyond, the oldest are
    /// dropped, logged as errors: only when the events service is unreachable for long.
    #[arg(long = "outbox-capacity", env = "P2_OUTBOX_CAPACITY", default_value_t = DEFAULT_CAPACITY, value_parser = clap::value_parser!(u64).range(1..))]
    pub capacity: u64,
}

impl OutboxConfig {
    /// The events service at `events_url`, the default capacity.
    pub fn new(events_url: impl Into<String>) -> Self {
        Self {
            events_url: events_url.into(),
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self::new(DEFAULT_EVENTS_URL)
    }
}
