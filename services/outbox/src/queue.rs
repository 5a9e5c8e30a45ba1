//! The outbox tables and writing to them.
//!
//! `event_outbox`: one row per queued RPC — `idempotency_key` (random, 32 hex characters; the
//! key of a `Publish`), `seq` (delivery order), `rpc` and `request` (see [`crate::message`]),
//! `created_at`, `attempts` and `next_attempt_at` (UNIX milliseconds). `event_outbox_relay`:
//! the one lease row that makes a single relay deliver at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use p2_runtime::storage::Database;
use sqlx::Row as _;
use tokio::sync::Notify;

use crate::Message;

/// Default of `--outbox-capacity`.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// Description of the migration that creates the outbox tables.
pub const MIGRATION_DESCRIPTION: &str = "event outbox";

/// The outbox tables, for a publisher's own migrations (portable SQL, like theirs). Each
/// publisher adds it as one new migration; like every released migration, it is never edited
/// (a change is a new migration in each publisher).
pub const MIGRATION_SQL: &str = "CREATE TABLE event_outbox (
        idempotency_key TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        rpc TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL
    );
    CREATE INDEX event_outbox_order ON event_outbox (seq, idempotency_key);
    CREATE TABLE event_outbox_relay (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    INSERT INTO event_outbox_relay (name, holder, expires_at) VALUES ('relay', '', 0);";

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// What a publisher's outbox did, since the process started (for logs, tests and metrics).
#[derive(Debug, Default)]
pub struct OutboxStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
}

impl OutboxStats {
    /// Rows the relay delivered (the events service answered OK).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Undelivered rows deleted at the bound to make room for new ones.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rows the events service refused for good (`INVALID_ARGUMENT`) or this build could not
    /// decode, deleted so that the rows behind them go on.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn count_delivered(&self, component: &'static str) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        p2_runtime::metrics::outbox_events(component, "delivered", 1);
    }

    pub(crate) fn count_rejected(&self, component: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        p2_runtime::metrics::outbox_events(component, "rejected", 1);
    }
}

/// A publisher's handle on its outbox: writes rows inside the caller's transaction and wakes
/// this process's relay. Cheap to clone (clones share the wake-up and the counters).
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    component: &'static str,
    capacity: u64,
    wake: Notify,
    stats: OutboxStats,
}

impl Outbox {
    /// The outbox of `component` (`session`, `identity`: names it in logs), holding at most
    /// `capacity` rows (at least 1).
    pub fn new(component: &'static str, capacity: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                component,
                capacity: capacity.max(1),
                wake: Notify::new(),
                stats: OutboxStats::default(),
            }),
        }
    }

    /// The component whose outbox this is.
    pub fn component(&self) -> &'static str {
        self.inner.component
    }

    /// The bound on rows.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The counters.
    pub fn stats(&self) -> &OutboxStats {
        &self.inner.stats
    }

    /// Queues `messages`, in this order, on `conn` — the transaction of the change that causes
    /// them, so that they commit or roll back with it. Call [`Self::wake`] after the commit.
    /// At the bound, deletes the oldest rows (logged as an error, counted).
    pub async fn enqueue(
        &self,
        conn: &mut sqlx::AnyConnection,
        messages: Vec<Message>,
    ) -> anyhow::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = to_i64(p2_runtime::internal::unix_now_ms());
        // Every statement here writes: under SQLite, a transaction that read first could not
        // take the write lock later once another connection wrote (SQLITE_BUSY_SNAPSHOT),
        // while a write waits for the lock (busy_timeout). Each row's position is computed
        // in its own INSERT, so the rows of one call keep their order.
        for message in messages {
            let key = hex::encode(rand::random::<[u8; 16]>());
            let message = message.keyed(&key);
            sqlx::query(
                "INSERT INTO event_outbox (idempotency_key, seq, rpc, request, created_at, \
                 attempts, next_attempt_at) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, 0, $4 FROM event_outbox",
            )
            .bind(&key)
            .bind(message.rpc())
            .bind(message.encode_hex())
            .bind(now)
            .execute(&mut *conn)
            .await
            .context("queueing an event")?;
        }
        // Rows more than `capacity` positions behind the newest go: the oldest undelivered.
        let dropped = sqlx::query(
            "DELETE FROM event_outbox WHERE seq <= (SELECT MAX(seq) FROM event_outbox) - $1",
        )
        .bind(to_i64(self.inner.capacity))
        .execute(&mut *conn)
        .await
        .context("dropping the oldest queued events")?
        .rows_affected();
        if dropped > 0 {
            self.inner
                .stats
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
            p2_runtime::metrics::outbox_events(self.inner.component, "dropped", dropped);
            tracing::error!(
                component = self.inner.component,
                dropped,
                capacity = self.inner.capacity,
                "the event outbox is full (is the events service reachable?): dropped the \
                 oldest undelivered events"
            );
        }
        Ok(())
    }

    /// Wakes this process's relay (after the commit of an [`Self::enqueue`]); without it, the
    /// relay finds the rows at its next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Waits for a [`Self::wake`] (one given while nobody waited counts).
    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await;
    }
}

/// One queued row, decoded.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// The row's idempotency key.
    pub idempotency_key: String,
    /// Its delivery position.
    pub seq: i64,
    /// The RPC (`None` when the row does not decode).
    pub message: Option<Message>,
    /// UNIX milliseconds when it was queued.
    pub created_at: u64,
    /// Failed deliveries so far.
    pub attempts: u64,
    /// UNIX milliseconds before which it is not sent again.
    pub next_attempt_at: u64,
}

/// Every queued row of `db`, in delivery order.
pub async fn pending(db: &Database) -> anyhow::Result<Vec<PendingRow>> {
    let rows = sqlx::query(
        "SELECT idempotency_key, seq, rpc, request, created_at, attempts, next_attempt_at \
         FROM event_outbox ORDER BY seq, idempotency_key",
    )
    .fetch_all(&db.pool)
    .await
    .context("reading the outbox")?;
    rows.iter()
        .map(|row| {
            let rpc: String = row.try_get(2)?;
            let request: String = row.try_get(3)?;
            Ok(PendingRow {
                idempotency_key: row.try_get(0)?,
                seq: row.try_get(1)?,
                message: Message::decode(&rpc, &request).ok(),
                created_at: to_u64(row.try_get(4)?),
                attempts: to_u64(row.try_get(5)?),
                next_attempt_at: to_u64(row.try_get(6)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the outbox")
}

/// A row as the relay reads it.
pub(crate) struct HeadRow {
    pub(crate) idempotency_key: String,
    pub(crate) rpc: String,
    pub(crate) request: String,
    pub(crate) attempts: u64,
    pub(crate) next_attempt_at: u64,
}

/// The first `limit` rows in delivery order.
pub(crate) async fn head(db: &Database, limit: u32) -> anyhow::Result<Vec<HeadRow>> {
    let rows = sqlx::query(
        "SELECT idempotency_key, rpc, request, attempts, next_attempt_at FROM event_outbox \
         ORDER BY seq, idempotency_key LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&db.pool)
    .await
    .context("reading the outbox")?;
    rows.iter()
        .map(|row| {
            Ok(HeadRow {
                idempotency_key: row.try_get(0)?,
                rpc: row.try_get(1)?,
                request: row.try_get(2)?,
                attempts: to_u64(row.try_get(3)?),
                next_attempt_at: to_u64(row.try_get(4)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding the outbox")
}

/// Deletes a delivered (or rejected) row.
pub(crate) async fn delete(db: &Database, key: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM event_outbox WHERE idempotency_key = $1")
        .bind(key)
        .execute(&db.pool)
        .await
        .context("deleting a delivered event")?;
    Ok(())
}

/// Records a failed attempt: `attempts` so far, not again before `next_attempt_at`.
pub(crate) async fn reschedule(
    db: &Database,
    key: &str,
    attempts: u64,
    next_attempt_at: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE event_outbox SET attempts = $2, next_attempt_at = $3 WHERE idempotency_key = $1",
    )
    .bind(key)
    .bind(to_i64(attempts))
    .bind(to_i64(next_attempt_at))
    .execute(&db.pool)
    .await
    .context("rescheduling an event")?;
    Ok(())
}

/// Takes (or keeps) the relay lease for `holder` until `until` when it is free, expired at
/// `now`, or already `holder`'s. Whether `holder` holds it now.
pub(crate) async fn acquire_lease(
    db: &Database,
    holder: &str,
    now: u64,
    until: u64,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE event_outbox_relay SET holder = $1, expires_at = $2 \
         WHERE name = 'relay' AND (holder = $1 OR expires_at <= $3)",
    )
    .bind(holder)
    .bind(to_i64(until))
    .bind(to_i64(now))
    .execute(&db.pool)
    .await
    .context("taking the outbox relay lease")?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up, so another replica's relay takes over at its next poll.
pub(crate) async fn release_lease(db: &Database, holder: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE event_outbox_relay SET expires_at = 0 WHERE name = 'relay' AND holder = $1",
    )
    .bind(holder)
    .execute(&db.pool)
    .await
    .context("releasing the outbox relay lease")?;
    Ok(())
}
