//! SQL storage of the identity service. One implementation over sqlx's `Any` driver with
//! portable SQL serves SQLite (embedded) and PostgreSQL (production); tests run it against
//! both.

use anyhow::Context as _;
use p2_runtime::storage::{Database, Migration};
use sqlx::Row as _;

/// The identity schema, in order. Never edit a released migration; add a new one.
pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

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

/// Storage handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Wraps a migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Every key generation, oldest first.
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
    pub async fn latest_generation(&self) -> anyhow::Result<Option<i64>> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(generation) FROM server_keys")
            .fetch_one(&self.db.pool)
            .await
            .context("reading the latest server key generation")?;
        Ok(row.0)
    }

    /// Stores a new generation. Returns `false` when that generation number already exists
    /// (another replica created it first).
    pub async fn insert_server_key(&self, row: &ServerKeyRow) -> anyhow::Result<bool> {
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
        .execute(&self.db.pool)
        .await
        .context("storing a server key")?;
        Ok(result.rows_affected() == 1)
    }
}
