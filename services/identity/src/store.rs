//! SQL storage of the identity service. One implementation over sqlx's `Any` driver with
//! portable SQL serves SQLite (embedded) and PostgreSQL (production); tests run it against
//! both.
//!
//! The writes that cause gateway events (revoking certs, storing a key generation) take the
//! events to queue and write them to the event outbox ([`p2_outbox`]) in their own
//! transaction: the change and its events commit together or not at all.

use anyhow::Context as _;
use p2_outbox::{Message, Outbox};
use p2_runtime::storage::{Database, Migration};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// The identity schema, in order. Never edit a released migration; add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "server keys",
        sql: "CREATE TABLE server_keys (
        generation BIGINT PRIMARY KEY,
        serial TEXT NOT NULL UNIQUE,
        active_from BIGINT NOT NULL,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        cert_pem TEXT NOT NULL,
        public_key_pem TEXT NOT NULL,
        private_key_enc TEXT NOT NULL
    )",
    },
    Migration {
        version: 2,
        description: "actors and actor id-certs",
        sql: "CREATE TABLE actors (
        local_name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        admin BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        redirect_to TEXT
    );
    CREATE TABLE id_certs (
        serial TEXT PRIMARY KEY,
        local_name TEXT NOT NULL REFERENCES actors (local_name),
        session_id TEXT NOT NULL,
        generation BIGINT NOT NULL REFERENCES server_keys (generation),
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        cert_pem TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        invalidated_at BIGINT
    );
    CREATE INDEX id_certs_by_session ON id_certs (local_name, session_id);",
    },
    Migration {
        version: 3,
        description: "disabled actors",
        sql: "ALTER TABLE actors ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0",
    },
    // The events this service causes, queued with the change that causes them.
    Migration {
        version: 4,
        description: p2_outbox::MIGRATION_DESCRIPTION,
        sql: p2_outbox::MIGRATION_SQL,
    },
];

/// One stored key generation of the home server.
#[derive(Debug, Clone)]
pub struct ServerKeyRow {
    /// 1 for the first key, +1 per rotation.
    pub generation: i64,
    /// Decimal serial of the root cert.
    pub serial: String,
    /// UNIX time from which this generation is the current one.
    pub active_from: i64,
    /// Root cert validity start.
    pub not_before: i64,
    /// Root cert validity end.
    pub not_after: i64,
    /// The root ID-Cert.
    pub cert_pem: String,
    /// Its public key, SPKI PEM.
    pub public_key_pem: String,
    /// The private key, encrypted by [`crate::cipher::KeyCipher`].
    pub private_key_enc: String,
}

/// Storage handle (and the event outbox beside it); cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    outbox: Outbox,
}

impl Store {
    /// The database underneath (readiness probes).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Wraps a migrated database; its outbox holds at most [`p2_outbox::DEFAULT_CAPACITY`]
    /// events (see [`Self::with_outbox_capacity`]).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            outbox: Outbox::new("identity", p2_outbox::DEFAULT_CAPACITY),
        }
    }

    /// The same store, its outbox bounded at `capacity` events.
    pub fn with_outbox_capacity(mut self, capacity: u64) -> Self {
        self.outbox = Outbox::new("identity", capacity);
        self
    }

    /// The event outbox of this store (its relay wakes when a write here queued something).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Every key generation, oldest first.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity server_keys", otel.kind = "client", db.system = "sql"))]
    pub async fn server_keys(&self) -> anyhow::Result<Vec<ServerKeyRow>> {
        let rows = sqlx::query(
            "SELECT generation, serial, active_from, not_before, not_after, cert_pem, \
             public_key_pem, private_key_enc FROM server_keys ORDER BY generation",
        )
        .fetch_all(&self.db.pool)
        .await
        .context("loading server keys")?;
        rows.iter()
            .map(|row| {
                Ok(ServerKeyRow {
                    generation: row.try_get(0)?,
                    serial: row.try_get(1)?,
                    active_from: row.try_get(2)?,
                    not_before: row.try_get(3)?,
                    not_after: row.try_get(4)?,
                    cert_pem: row.try_get(5)?,
                    public_key_pem: row.try_get(6)?,
                    private_key_enc: row.try_get(7)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding server keys")
    }

    /// The newest generation number, if any.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity latest_generation", otel.kind = "client", db.system = "sql"))]
    pub async fn latest_generation(&self) -> anyhow::Result<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(generation) FROM server_keys")
            .fetch_one(&self.db.pool)
            .await
            .context("reading the latest server key generation")?;
        Ok(row.0)
    }

    /// Replaces stored private keys, all or none: each update is `(generation, the
    /// encrypted key it must still hold, the new encrypted key)`. Fails (changing nothing)
    /// when a row changed in between.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity replace_private_keys", otel.kind = "client", db.system = "sql"))]
    pub async fn replace_private_keys(
        &self,
        updates: &[(i64, String, String)],
    ) -> anyhow::Result<()> {
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting the key re-encryption")?;
        for (generation, old, new) in updates {
            let result = sqlx::query(
                "UPDATE server_keys SET private_key_enc = $1 WHERE generation = $2 \
                 AND private_key_enc = $3",
            )
            .bind(new)
            .bind(*generation)
            .bind(old)
            .execute(&mut *tx)
            .await
            .context("re-encrypting a server key")?;
            anyhow::ensure!(
                result.rows_affected() == 1,
                "server key generation {generation} changed during the re-encryption; nothing \
                 was changed, run the command again"
            );
        }
        tx.commit()
            .await
            .context("committing the key re-encryption")
    }

    /// Stores a new generation and queues `events` with it, in one transaction. Returns
    /// `false` (storing and queueing nothing) when that generation number already exists
    /// (another replica created it first).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity insert_server_key", otel.kind = "client", db.system = "sql"))]
    pub async fn insert_server_key(
        &self,
        row: &ServerKeyRow,
        events: Vec<Message>,
    ) -> anyhow::Result<bool> {
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to store a server key")?;
        let result = sqlx::query(
            "INSERT INTO server_keys (generation, serial, active_from, not_before, not_after, \
             cert_pem, public_key_pem, private_key_enc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT DO NOTHING",
        )
        .bind(row.generation)
        .bind(&row.serial)
        .bind(row.active_from)
        .bind(row.not_before)
        .bind(row.not_after)
        .bind(&row.cert_pem)
        .bind(&row.public_key_pem)
        .bind(&row.private_key_enc)
        .execute(&mut *tx)
        .await
        .context("storing a server key")?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        self.outbox.enqueue(&mut tx, events).await?;
        tx.commit().await.context("committing a server key")?;
        self.outbox.wake();
        Ok(true)
    }
}

/// A registered actor.
#[derive(Debug, Clone)]
pub struct ActorRow {
    /// The local part of the federation ID (normalised).
    pub local_name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Administrator of this home server.
    pub admin: bool,
    /// Migration redirect target (spec 7.1), if set.
    pub redirect_to: Option<String>,
    /// Disabled by an operator: no logins, no new certs, no sensitive actions.
    pub disabled: bool,
}

/// An issued actor ID-Cert.
#[derive(Debug, Clone)]
pub struct CertRow {
    /// Decimal serial (unique per home server).
    pub serial: String,
    /// Owner.
    pub local_name: String,
    /// Session ID (the cert's uniqueIdentifier).
    pub session_id: String,
    /// Server key generation that signed it.
    pub generation: i64,
    /// Validity start.
    pub not_before: i64,
    /// Validity end.
    pub not_after: i64,
    /// The cert.
    pub cert_pem: String,
    /// When it was issued.
    pub issued_at: i64,
    /// When it was revoked, if it was.
    pub invalidated_at: Option<i64>,
}

const CERT_COLUMNS: &str = "serial, local_name, session_id, generation, not_before, not_after, \
                            cert_pem, issued_at, invalidated_at";

fn cert_row(row: &AnyRow) -> Result<CertRow, sqlx::Error> {
    Ok(CertRow {
        serial: row.try_get(0)?,
        local_name: row.try_get(1)?,
        session_id: row.try_get(2)?,
        generation: row.try_get(3)?,
        not_before: row.try_get(4)?,
        not_after: row.try_get(5)?,
        cert_pem: row.try_get(6)?,
        issued_at: row.try_get(7)?,
        invalidated_at: row.try_get(8)?,
    })
}

/// Filters of an actor cert query (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct CertFilter {
    /// Certs whose validity contains this time.
    pub valid_at: Option<i64>,
    /// Certs of this session.
    pub session_id: Option<String>,
    /// Certs issued (validity starting) at or after this time.
    pub not_before: Option<i64>,
    /// Certs issued (validity starting) at or before this time.
    pub not_after: Option<i64>,
}

/// Why issuing a cert did not happen.
#[derive(Debug)]
pub enum IssueRefusal {
    /// The actor does not exist.
    UnknownActor,
    /// A valid cert holds the session ID and this is not a renewal.
    SessionIdInUse,
    /// The actor already holds the most valid certs (sessions) it may.
    TooManySessions,
}

/// What issuing did.
#[derive(Debug)]
pub struct Issued {
    /// The new cert.
    pub cert: CertRow,
    /// The cert it replaced (renewal), now revoked.
    pub revoked: Option<CertRow>,
}

impl Store {
    /// Creates an actor. Returns `false` when the name is taken.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity insert_actor", otel.kind = "client", db.system = "sql"))]
    pub async fn insert_actor(
        &self,
        local_name: &str,
        password_hash: &str,
        admin: bool,
        now: i64,
    ) -> anyhow::Result<bool> {
        let result = sqlx::query(
            "INSERT INTO actors (local_name, password_hash, admin, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(local_name)
        .bind(password_hash)
        .bind(i64::from(admin))
        .bind(now)
        .execute(&self.db.pool)
        .await
        .context("storing an actor")?;
        Ok(result.rows_affected() == 1)
    }

    /// Grants or withdraws administrator rights; `false` when there is no such actor. Takes
    /// effect at once: every admin-only action reads the flag when it is used.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity set_admin", otel.kind = "client", db.system = "sql"))]
    pub async fn set_admin(&self, local_name: &str, admin: bool) -> anyhow::Result<bool> {
        let result = sqlx::query("UPDATE actors SET admin = $2 WHERE local_name = $1")
            .bind(local_name)
            .bind(i64::from(admin))
            .execute(&self.db.pool)
            .await
            .context("changing an actor's admin flag")?;
        Ok(result.rows_affected() == 1)
    }

    /// Disables (`true`) or re-enables an actor; `false` when there is no such actor.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity set_disabled", otel.kind = "client", db.system = "sql"))]
    pub async fn set_disabled(&self, local_name: &str, disabled: bool) -> anyhow::Result<bool> {
        let result = sqlx::query("UPDATE actors SET disabled = $2 WHERE local_name = $1")
            .bind(local_name)
            .bind(i64::from(disabled))
            .execute(&self.db.pool)
            .await
            .context("changing whether an actor is disabled")?;
        Ok(result.rows_affected() == 1)
    }

    /// Revokes every valid cert of `local_name` and queues what `events` returns for each
    /// revoked row, in one transaction; returns the revoked rows.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity revoke_all_certs", otel.kind = "client", db.system = "sql"))]
    pub async fn revoke_all_certs(
        &self,
        local_name: &str,
        now: i64,
        events: impl Fn(&CertRow) -> anyhow::Result<Vec<Message>>,
    ) -> anyhow::Result<Vec<CertRow>> {
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to revoke an actor's certs")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE id_certs SET invalidated_at = $2 WHERE local_name = $1 \
             AND invalidated_at IS NULL AND not_after > $2 RETURNING {CERT_COLUMNS}"
        )))
        .bind(local_name)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .context("revoking an actor's certs")?;
        let rows: Vec<CertRow> = rows
            .iter()
            .map(cert_row)
            .collect::<Result<_, _>>()
            .context("decoding certs")?;
        let mut queued = Vec::new();
        for row in &rows {
            queued.extend(events(row)?);
        }
        self.outbox.enqueue(&mut tx, queued).await?;
        tx.commit().await.context("committing revocations")?;
        if !rows.is_empty() {
            self.outbox.wake();
        }
        Ok(rows)
    }

    /// Looks an actor up by local name.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity actor", otel.kind = "client", db.system = "sql"))]
    pub async fn actor(&self, local_name: &str) -> anyhow::Result<Option<ActorRow>> {
        let row = sqlx::query(
            "SELECT local_name, password_hash, admin, redirect_to, disabled FROM actors \
             WHERE local_name = $1",
        )
        .bind(local_name)
        .fetch_optional(&self.db.pool)
        .await
        .context("loading an actor")?;
        row.map(|row| {
            Ok(ActorRow {
                local_name: row.try_get(0)?,
                password_hash: row.try_get(1)?,
                // Booleans are BIGINT 0/1: the Any driver cannot decode SQLite's BOOLEAN.
                admin: row.try_get::<i64, _>(2)? != 0,
                redirect_to: row.try_get(3)?,
                disabled: row.try_get::<i64, _>(4)? != 0,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| anyhow::Error::new(e).context("decoding an actor"))
    }

    /// Issues a cert for (`local_name`, `session_id`) in one transaction: refuses when a valid
    /// cert holds the session ID (unless `renew`, which revokes that cert and queues what
    /// `on_revoked` returns for it), then stores what `build` returns. Concurrent issuances for
    /// one actor are serialised by a row lock on the actor, so two requests cannot both take a
    /// session ID.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity issue_cert", otel.kind = "client", db.system = "sql"))]
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_cert(
        &self,
        local_name: &str,
        session_id: &str,
        renew: bool,
        max_valid: u64,
        now: i64,
        build: impl FnOnce() -> anyhow::Result<CertRow>,
        on_revoked: impl FnOnce(&CertRow) -> anyhow::Result<Vec<Message>>,
    ) -> anyhow::Result<Result<Issued, IssueRefusal>> {
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting a transaction")?;
        // A no-op write: takes the actor's row lock (PostgreSQL) or the write lock (SQLite).
        let locked = sqlx::query("UPDATE actors SET admin = admin WHERE local_name = $1")
            .bind(local_name)
            .execute(&mut *tx)
            .await
            .context("locking the actor")?;
        if locked.rows_affected() == 0 {
            return Ok(Err(IssueRefusal::UnknownActor));
        }
        let holder = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS} FROM id_certs WHERE local_name = $1 AND session_id = $2 \
             AND invalidated_at IS NULL AND not_after > $3"
        )))
        .bind(local_name)
        .bind(session_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .context("checking the session ID")?
        .map(|row| cert_row(&row))
        .transpose()
        .context("decoding a cert")?;
        let revoked = match holder {
            Some(_) if !renew => return Ok(Err(IssueRefusal::SessionIdInUse)),
            Some(mut old) => {
                sqlx::query("UPDATE id_certs SET invalidated_at = $1 WHERE serial = $2")
                    .bind(now)
                    .bind(&old.serial)
                    .execute(&mut *tx)
                    .await
                    .context("revoking the renewed cert")?;
                old.invalidated_at = Some(now);
                let events = on_revoked(&old)?;
                self.outbox.enqueue(&mut tx, events).await?;
                Some(old)
            }
            None => {
                // A new session: bounded per actor, counted under the actor's lock, so
                // concurrent issuances cannot pass the bound together.
                let (valid,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM id_certs WHERE local_name = $1 \
                     AND invalidated_at IS NULL AND not_after > $2",
                )
                .bind(local_name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .context("counting valid certs")?;
                if u64::try_from(valid).unwrap_or(0) >= max_valid {
                    return Ok(Err(IssueRefusal::TooManySessions));
                }
                None
            }
        };
        let cert = build()?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO id_certs ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )))
        .bind(&cert.serial)
        .bind(&cert.local_name)
        .bind(&cert.session_id)
        .bind(cert.generation)
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(&cert.cert_pem)
        .bind(cert.issued_at)
        .bind(cert.invalidated_at)
        .execute(&mut *tx)
        .await
        .context("storing a cert")?;
        tx.commit().await.context("committing a cert")?;
        if revoked.is_some() {
            self.outbox.wake();
        }
        Ok(Ok(Issued { cert, revoked }))
    }

    /// The certs of an actor matching `filter`, newest first, at most `limit`.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity certs", otel.kind = "client", db.system = "sql"))]
    pub async fn certs(
        &self,
        local_name: &str,
        filter: &CertFilter,
        limit: u64,
    ) -> anyhow::Result<Vec<CertRow>> {
        // Fixed SQL with NULL-able parameters: one prepared statement for every filter mix.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERT_COLUMNS} FROM id_certs WHERE local_name = $1 \
             AND ($2 IS NULL OR (not_before <= $2 AND not_after > $2)) \
             AND ($3 IS NULL OR session_id = $3) \
             AND ($4 IS NULL OR not_before >= $4) \
             AND ($5 IS NULL OR not_before <= $5) \
             ORDER BY issued_at DESC, serial DESC LIMIT $6"
        )))
        .bind(local_name)
        .bind(filter.valid_at)
        .bind(filter.session_id.as_deref())
        .bind(filter.not_before)
        .bind(filter.not_after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.db.pool)
        .await
        .context("loading certs")?;
        rows.iter()
            .map(cert_row)
            .collect::<Result<_, _>>()
            .context("decoding certs")
    }

    /// Revokes the valid cert of (`local_name`, `session_id`) and queues what `events` returns
    /// for it, in one transaction; `None` (nothing changed or queued) when there is none.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "identity revoke_cert", otel.kind = "client", db.system = "sql"))]
    pub async fn revoke_cert(
        &self,
        local_name: &str,
        session_id: &str,
        now: i64,
        events: impl FnOnce(&CertRow) -> anyhow::Result<Vec<Message>>,
    ) -> anyhow::Result<Option<CertRow>> {
        let mut tx = self
            .db
            .pool
            .begin()
            .await
            .context("starting to revoke a cert")?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE id_certs SET invalidated_at = $3 WHERE local_name = $1 AND session_id = $2 \
             AND invalidated_at IS NULL AND not_after > $3 RETURNING {CERT_COLUMNS}"
        )))
        .bind(local_name)
        .bind(session_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .context("revoking a cert")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let row = cert_row(&row).context("decoding a cert")?;
        self.outbox.enqueue(&mut tx, events(&row)?).await?;
        tx.commit().await.context("committing a revocation")?;
        self.outbox.wake();
        Ok(Some(row))
    }
}
