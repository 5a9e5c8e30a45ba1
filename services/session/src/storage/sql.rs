//! The `sessions` table: one row per (actor, session ID), keyed by the hash of the session's
//! current token. One implementation over sqlx's `Any` driver with portable SQL serves SQLite
//! and PostgreSQL.
//!
//! The table's writes tell the events service which sessions exist, through the event outbox
//! in the same database ([`p2_outbox`]): storing a session queues `OpenSession` (plus whatever
//! events the caller adds, e.g. op 3) and deleting one queues `CloseSession`, each in the
//! transaction of the write, so the events service's list of sessions follows this table.

use anyhow::Context as _;
use p2_runtime::storage::{Database, Migration};
use sqlx::Row as _;

use crate::token::TokenHash;
use p2_outbox::{Message, Outbox};

/// The session schema, in order. Never edit a released migration; add a new one.
///
/// `admin` is a leftover of version 1, always written 0 and never read: admin rights are
/// decided by the identity service, which owns them, at the moment they are used.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "sessions",
        sql: "CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        fid TEXT NOT NULL,
        session_id TEXT NOT NULL,
        admin BIGINT NOT NULL CHECK (admin IN (0, 1)),
        created_at BIGINT NOT NULL,
        UNIQUE (fid, session_id)
    )",
    },
    // Tokens expire with their session's ID-Cert. Sessions from before this version get the
    // longest an actor cert may live (60 days, spec 6.1) from their creation.
    Migration {
        version: 2,
        description: "session expiry",
        sql: "ALTER TABLE sessions ADD COLUMN expires_at BIGINT;
    UPDATE sessions SET expires_at = created_at + 5184000 WHERE expires_at IS NULL;",
    },
    // The events this service causes, queued with the change that causes them.
    Migration {
        version: 3,
        description: p2_outbox::MIGRATION_DESCRIPTION,
        sql: p2_outbox::MIGRATION_SQL,
    },
    // Federation: the current ID-Cert of each foreign session (an actor of another home
    // server signed in with a key trial; its `sessions` row holds the token as for local
    // ones), and the completed key trials, public (spec 4.3).
    Migration {
        version: 4,
        description: "foreign sessions and key trials",
        sql: "CREATE TABLE foreign_certs (
        fid TEXT NOT NULL,
        session_id TEXT NOT NULL,
        id_cert_pem TEXT NOT NULL,
        serial TEXT NOT NULL,
        verified_until BIGINT NOT NULL,
        PRIMARY KEY (fid, session_id)
    );
    CREATE TABLE key_trials (
        trial TEXT PRIMARY KEY,
        fid TEXT NOT NULL,
        serial TEXT NOT NULL,
        signature TEXT NOT NULL,
        expires BIGINT NOT NULL,
        completed_at BIGINT NOT NULL
    );
    CREATE INDEX key_trials_by_actor ON key_trials (fid, completed_at);",
    },
];

/// The current ID-Cert of a foreign session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCert {
    /// The cert, PEM, as its home server serves it.
    pub id_cert_pem: String,
    /// Its serial number, decimal.
    pub serial: String,
    /// UNIX seconds from which it must be verified with its home server again before use.
    pub verified_until: u64,
}

/// A completed key trial (spec 4.3: public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTrialRow {
    /// The trial string.
    pub trial: String,
    /// The actor who completed it.
    pub fid: String,
    /// Serial of the cert whose key signed it.
    pub serial: String,
    /// Hex signature.
    pub signature: String,
    /// When the trial expired (UNIX seconds).
    pub expires: u64,
    /// When it was completed (UNIX seconds).
    pub completed_at: u64,
}

/// Completed key trials kept per actor; older ones are deleted by the insert beyond it.
pub const MAX_KEY_TRIALS_PER_ACTOR: i64 = 1000;

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The actor's normalised federation ID.
    pub fid: String,
    /// The session ID (the `uniqueIdentifier` of the session's ID-Cert).
    pub session_id: String,
    /// UNIX seconds when the session's current token was issued.
    pub created_at: u64,
    /// UNIX seconds from which the token is refused: the `notAfter` of the session's ID-Cert.
    pub expires_at: u64,
}

/// Handle on the `sessions` table (and the event outbox beside it); cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStore {
    db: Database,
    index: Option<std::sync::Arc<MemoryIndex>>,
    outbox: Outbox,
}

/// A write-through copy of the table in memory, for the embedded single-process mode: token
/// checks then need no database round trip. Exact while this process is the table's only
/// writer (SQLite under `polyproto up`); changes by another process (`polyproto admin`) show
/// after at most [`INDEX_REFRESH_INTERVAL`]. Opt-in ([`SessionStore::with_memory_index`]).
#[derive(Debug, Default)]
struct MemoryIndex {
    by_token: std::sync::RwLock<std::collections::HashMap<String, SessionRow>>,
    /// Serialises writes so that the table and the copy change in the same order.
    writes: tokio::sync::Mutex<()>,
}

impl MemoryIndex {
    fn replace(&self, token_hash: &str, row: SessionRow) {
        if let Ok(mut map) = self.by_token.write() {
            map.retain(|_, r| !(r.fid == row.fid && r.session_id == row.session_id));
            map.insert(token_hash.to_owned(), row);
        }
    }

    fn remove(&self, fid: &str, session_id: &str) {
        if let Ok(mut map) = self.by_token.write() {
            map.retain(|_, r| !(r.fid == fid && r.session_id == session_id));
        }
    }
}

/// How often the embedded mode's in-memory index is reloaded from the table.
pub const INDEX_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// (Re)loads every session row into `index`, under its write lock so that no write of this
/// process interleaves.
async fn load_index(db: &Database, index: &MemoryIndex) -> anyhow::Result<()> {
    let _write = index.writes.lock().await;
    let rows =
        sqlx::query("SELECT token_hash, fid, session_id, created_at, expires_at FROM sessions")
            .fetch_all(&db.pool)
            .await
            .context("loading sessions")?;
    let mut fresh = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let hash: String = row.try_get(0).context("reading a session row")?;
        fresh.insert(
            hash,
            SessionStore::decode(row, 1).context("reading a session row")?,
        );
    }
    if let Ok(mut map) = index.by_token.write() {
        *map = fresh;
    }
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl SessionStore {
    /// Wraps a database migrated with [`MIGRATIONS`]; its outbox holds at most
    /// [`p2_outbox::DEFAULT_CAPACITY`] events (see [`Self::with_outbox_capacity`]).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            index: None,
            outbox: Outbox::new("session", p2_outbox::DEFAULT_CAPACITY),
        }
    }

    /// The same store, its outbox bounded at `capacity` events.
    pub fn with_outbox_capacity(mut self, capacity: u64) -> Self {
        self.outbox = Outbox::new("session", capacity);
        self
    }

    /// The event outbox of this store (its relay wakes when a write here queued something).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Like [`SessionStore::new`], plus an in-memory copy of every session that answers
    /// token lookups, reloaded every [`INDEX_REFRESH_INTERVAL`]. Only for a database this
    /// process writes (embedded SQLite) and operators change rarely.
    pub async fn with_memory_index(db: Database) -> anyhow::Result<Self> {
        let index = std::sync::Arc::new(MemoryIndex::default());
        load_index(&db, &index).await?;
        // Another process may change the table: `polyproto admin` revoking sessions beside a
        // running `polyproto up`. Picked up within INDEX_REFRESH_INTERVAL; the task ends with
        // the store.
        let weak = std::sync::Arc::downgrade(&index);
        let refresh_db = db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INDEX_REFRESH_INTERVAL).await;
                let Some(index) = weak.upgrade() else { break };
                if let Err(error) = load_index(&refresh_db, &index).await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "refreshing the session index failed"
                    );
                }
            }
        });
        Ok(Self {
            db,
            index: Some(index),
            outbox: Outbox::new("session", p2_outbox::DEFAULT_CAPACITY),
        })
    }

    /// The database underneath (tests inspect and break it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores the session (fid, session_id) under `token_hash`, replacing the row of the same
    /// session if there is one: the old token dies in the same statement (renewal, re-login).
    /// One upsert, so concurrent replacements of one session leave exactly one row. Queues
    /// `OpenSession` in the same transaction.
    pub async fn put(
        &self,
        fid: &str,
        session_id: &str,
        token_hash: &TokenHash,
        created_at: u64,
        expires_at: u64,
    ) -> anyhow::Result<()> {
        self.put_with_events(
            fid,
            session_id,
            token_hash,
            created_at,
            expires_at,
            Vec::new(),
        )
        .await
    }

    /// Like [`Self::put`], queueing `events` after `OpenSession` in the same transaction:
    /// the session and its events are stored together or not at all.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session put", otel.kind = "client", db.system = "sql"))]
    pub async fn put_with_events(
        &self,
        fid: &str,
        session_id: &str,
        token_hash: &TokenHash,
        created_at: u64,
        expires_at: u64,
        events: Vec<Message>,
    ) -> anyhow::Result<()> {
        let _write = match &self.index {
            Some(index) => Some(index.writes.lock().await),
            None => None,
        };
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to store a session")?;
        Self::upsert_session(&mut tx, fid, session_id, token_hash, created_at, expires_at)
            .await
            .context("storing a session")?;
        let mut queued = Vec::with_capacity(events.len() + 1);
        queued.push(Message::open_session(fid, session_id));
        queued.extend(events);
        self.outbox.enqueue(&mut tx, queued).await?;
        tx.commit().await.context("committing a session")?;
        self.outbox.wake();
        if let Some(index) = &self.index {
            index.replace(
                token_hash.as_str(),
                SessionRow {
                    fid: fid.to_owned(),
                    session_id: session_id.to_owned(),
                    created_at,
                    expires_at,
                },
            );
        }
        Ok(())
    }

    /// The session whose current token hashes to `token_hash`: one lookup on the primary key,
    /// then a constant-time comparison of the hash read back.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session find_by_token", otel.kind = "client", db.system = "sql"))]
    pub async fn find_by_token(
        &self,
        token_hash: &TokenHash,
    ) -> anyhow::Result<Option<SessionRow>> {
        if let Some(index) = &self.index {
            let map = index
                .by_token
                .read()
                .map_err(|_| anyhow::anyhow!("session index poisoned"))?;
            return Ok(map
                .get_key_value(token_hash.as_str())
                .filter(|(stored, _)| token_hash.matches(stored))
                .map(|(_, row)| row.clone()));
        }
        let row = sqlx::query(
            "SELECT token_hash, fid, session_id, created_at, expires_at FROM sessions \
             WHERE token_hash = $1",
        )
        .bind(token_hash.as_str())
        .fetch_optional(&self.db.pool)
        .await
        .context("looking up a session token")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored: &str = row.try_get(0).context("reading a session row")?;
        if !token_hash.matches(stored) {
            return Ok(None);
        }
        Ok(Some(
            Self::decode(&row, 1).context("reading a session row")?,
        ))
    }

    /// The session (fid, session_id), if it exists.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session get", otel.kind = "client", db.system = "sql"))]
    pub async fn get(&self, fid: &str, session_id: &str) -> anyhow::Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT fid, session_id, created_at, expires_at FROM sessions \
             WHERE fid = $1 AND session_id = $2",
        )
        .bind(fid)
        .bind(session_id)
        .fetch_optional(&self.db.pool)
        .await
        .context("looking up a session")?;
        row.map(|row| Self::decode(&row, 0))
            .transpose()
            .context("reading a session row")
    }

    /// Deletes the session (fid, session_id): its token fails from the next lookup on. Returns
    /// whether there was such a session; if there was, `CloseSession` is queued in the same
    /// transaction (its event stream ends, its socket closes).
    pub async fn delete(&self, fid: &str, session_id: &str) -> anyhow::Result<bool> {
        self.delete_with_events(fid, session_id, Vec::new()).await
    }

    /// Like [`Self::delete`], queueing `events` before `CloseSession` in the same transaction
    /// (nothing when there was no such session).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session delete", otel.kind = "client", db.system = "sql"))]
    pub async fn delete_with_events(
        &self,
        fid: &str,
        session_id: &str,
        events: Vec<Message>,
    ) -> anyhow::Result<bool> {
        let _write = match &self.index {
            Some(index) => Some(index.writes.lock().await),
            None => None,
        };
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to delete a session")?;
        let done = sqlx::query("DELETE FROM sessions WHERE fid = $1 AND session_id = $2")
            .bind(fid)
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .context("deleting a session")?;
        let existed = done.rows_affected() > 0;
        sqlx::query("DELETE FROM foreign_certs WHERE fid = $1 AND session_id = $2")
            .bind(fid)
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .context("deleting a foreign session's cert")?;
        // Nothing queued for a session that did not exist: unknown IDs cost no outbox row.
        if existed {
            let mut queued = events;
            queued.push(Message::close_session(fid, session_id));
            self.outbox.enqueue(&mut tx, queued).await?;
        }
        tx.commit().await.context("committing a session deletion")?;
        if existed {
            self.outbox.wake();
        }
        if let Some(index) = &self.index {
            index.remove(fid, session_id);
        }
        Ok(existed)
    }

    /// Every session of `fid`, ordered by session ID.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session list", otel.kind = "client", db.system = "sql"))]
    pub async fn list(&self, fid: &str) -> anyhow::Result<Vec<SessionRow>> {
        let rows = sqlx::query(
            "SELECT fid, session_id, created_at, expires_at FROM sessions \
             WHERE fid = $1 ORDER BY session_id",
        )
        .bind(fid)
        .fetch_all(&self.db.pool)
        .await
        .context("listing sessions")?;
        rows.iter()
            .map(|row| Self::decode(row, 0))
            .collect::<Result<_, _>>()
            .context("reading a session row")
    }

    /// Stores the foreign session (fid, session_id) like [`Self::put_with_events`], with its
    /// current cert, in one transaction (replacing an earlier sign-in of the same session).
    #[allow(
        clippy::too_many_arguments,
        reason = "one row of each table, written together"
    )]
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session put_foreign", otel.kind = "client", db.system = "sql"))]
    pub async fn put_foreign(
        &self,
        fid: &str,
        session_id: &str,
        token_hash: &TokenHash,
        created_at: u64,
        expires_at: u64,
        cert: &ForeignCert,
        trial: &KeyTrialRow,
        events: Vec<Message>,
    ) -> anyhow::Result<()> {
        let _write = match &self.index {
            Some(index) => Some(index.writes.lock().await),
            None => None,
        };
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to store a foreign session")?;
        Self::upsert_session(&mut tx, fid, session_id, token_hash, created_at, expires_at)
            .await
            .context("storing a foreign session")?;
        Self::upsert_foreign_cert(&mut tx, fid, session_id, cert).await?;
        sqlx::query(
            "INSERT INTO key_trials (trial, fid, serial, signature, expires, completed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (trial) DO NOTHING",
        )
        .bind(&trial.trial)
        .bind(&trial.fid)
        .bind(&trial.serial)
        .bind(&trial.signature)
        .bind(to_i64(trial.expires))
        .bind(to_i64(trial.completed_at))
        .execute(&mut *tx)
        .await
        .context("recording a completed key trial")?;
        sqlx::query(
            "DELETE FROM key_trials WHERE fid = $1 AND trial NOT IN (SELECT trial FROM \
             key_trials WHERE fid = $1 ORDER BY completed_at DESC, trial DESC LIMIT $2)",
        )
        .bind(&trial.fid)
        .bind(MAX_KEY_TRIALS_PER_ACTOR)
        .execute(&mut *tx)
        .await
        .context("bounding an actor's key trials")?;
        let mut queued = Vec::with_capacity(events.len() + 1);
        queued.push(Message::open_session(fid, session_id));
        queued.extend(events);
        self.outbox.enqueue(&mut tx, queued).await?;
        tx.commit().await.context("committing a foreign session")?;
        self.outbox.wake();
        if let Some(index) = &self.index {
            index.replace(
                token_hash.as_str(),
                SessionRow {
                    fid: fid.to_owned(),
                    session_id: session_id.to_owned(),
                    created_at,
                    expires_at,
                },
            );
        }
        Ok(())
    }

    /// Stores the session (fid, session_id) with its token hash and lifetime, replacing an
    /// ended one of the same ID (its old token no longer matches).
    async fn upsert_session(
        conn: &mut sqlx::AnyConnection,
        fid: &str,
        session_id: &str,
        token_hash: &TokenHash,
        created_at: u64,
        expires_at: u64,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, fid, session_id, admin, created_at, expires_at) \
             VALUES ($1, $2, $3, 0, $4, $5) \
             ON CONFLICT (fid, session_id) DO UPDATE SET \
             token_hash = excluded.token_hash, created_at = excluded.created_at, \
             expires_at = excluded.expires_at",
        )
        .bind(token_hash.as_str())
        .bind(fid)
        .bind(session_id)
        .bind(to_i64(created_at))
        .bind(to_i64(expires_at))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn upsert_foreign_cert(
        conn: &mut sqlx::AnyConnection,
        fid: &str,
        session_id: &str,
        cert: &ForeignCert,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO foreign_certs (fid, session_id, id_cert_pem, serial, verified_until) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fid, session_id) DO UPDATE SET \
             id_cert_pem = excluded.id_cert_pem, serial = excluded.serial, \
             verified_until = excluded.verified_until",
        )
        .bind(fid)
        .bind(session_id)
        .bind(&cert.id_cert_pem)
        .bind(&cert.serial)
        .bind(to_i64(cert.verified_until))
        .execute(&mut *conn)
        .await
        .context("storing a foreign session's cert")?;
        Ok(())
    }

    /// Replaces the cert of the foreign session (fid, session_id) and moves its token's
    /// expiry to `expires_at`. `false` when the session does not exist (any more).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session update_foreign", otel.kind = "client", db.system = "sql"))]
    pub async fn update_foreign(
        &self,
        fid: &str,
        session_id: &str,
        cert: &ForeignCert,
        expires_at: u64,
    ) -> anyhow::Result<bool> {
        let _write = match &self.index {
            Some(index) => Some(index.writes.lock().await),
            None => None,
        };
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to update a foreign session")?;
        let done =
            sqlx::query("UPDATE sessions SET expires_at = $3 WHERE fid = $1 AND session_id = $2")
                .bind(fid)
                .bind(session_id)
                .bind(to_i64(expires_at))
                .execute(&mut *tx)
                .await
                .context("updating a foreign session")?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::upsert_foreign_cert(&mut tx, fid, session_id, cert).await?;
        tx.commit()
            .await
            .context("committing a foreign session update")?;
        if let Some(index) = &self.index
            && let Ok(mut map) = index.by_token.write()
        {
            for row in map.values_mut() {
                if row.fid == fid && row.session_id == session_id {
                    row.expires_at = expires_at;
                }
            }
        }
        Ok(true)
    }

    /// The current cert of the foreign session (fid, session_id).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session foreign_cert", otel.kind = "client", db.system = "sql"))]
    pub async fn foreign_cert(
        &self,
        fid: &str,
        session_id: &str,
    ) -> anyhow::Result<Option<ForeignCert>> {
        let row = sqlx::query(
            "SELECT id_cert_pem, serial, verified_until FROM foreign_certs \
             WHERE fid = $1 AND session_id = $2",
        )
        .bind(fid)
        .bind(session_id)
        .fetch_optional(&self.db.pool)
        .await
        .context("looking up a foreign session's cert")?;
        row.map(|row| -> Result<ForeignCert, sqlx::Error> {
            Ok(ForeignCert {
                id_cert_pem: row.try_get(0)?,
                serial: row.try_get(1)?,
                verified_until: to_u64(row.try_get(2)?),
            })
        })
        .transpose()
        .context("reading a foreign session's cert")
    }

    /// Completed key trials of `fid` that expired before `now`, newest first, filtered.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "session key_trials", otel.kind = "client", db.system = "sql"))]
    pub async fn key_trials(
        &self,
        fid: &str,
        now: u64,
        id: Option<&str>,
        not_before: Option<u64>,
        not_after: Option<u64>,
        limit: u32,
    ) -> anyhow::Result<Vec<KeyTrialRow>> {
        let rows = sqlx::query(
            "SELECT trial, fid, serial, signature, expires, completed_at FROM key_trials \
             WHERE fid = $1 AND expires <= $2 AND completed_at >= $3 AND completed_at <= $4 \
             AND ($5 = '' OR trial = $5) \
             ORDER BY completed_at DESC, trial DESC LIMIT $6",
        )
        .bind(fid)
        .bind(to_i64(now))
        .bind(to_i64(not_before.unwrap_or(0)))
        .bind(to_i64(not_after.unwrap_or(u64::MAX)))
        .bind(id.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await
        .context("listing key trials")?;
        rows.iter()
            .map(|row| -> Result<KeyTrialRow, sqlx::Error> {
                Ok(KeyTrialRow {
                    trial: row.try_get(0)?,
                    fid: row.try_get(1)?,
                    serial: row.try_get(2)?,
                    signature: row.try_get(3)?,
                    expires: to_u64(row.try_get(4)?),
                    completed_at: to_u64(row.try_get(5)?),
                })
            })
            .collect::<Result<_, _>>()
            .context("reading a key trial row")
    }

    /// Decodes (fid, session_id, created_at, expires_at) starting at column `first`.
    fn decode(row: &sqlx::any::AnyRow, first: usize) -> Result<SessionRow, sqlx::Error> {
        Ok(SessionRow {
            fid: row.try_get(first)?,
            session_id: row.try_get(first + 1)?,
            created_at: to_u64(row.try_get(first + 2)?),
            // NULL only if written by an older version after migration 2 ran: treat as expired.
            expires_at: row.try_get::<Option<i64>, _>(first + 3)?.map_or(0, to_u64),
        })
    }
}
