//! SQL storage of the discovery service: one table of (actor, service, provider) rows. One
//! implementation over sqlx's `Any` driver with portable SQL serves SQLite (embedded) and
//! PostgreSQL (production); the service tests run it against both.
//!
//! The invariant "at most one primary provider per (actor, service)" belongs to the database:
//! a unique partial index over `(fid, service) WHERE is_primary`. Code never checks it and
//! then writes; it writes, and a concurrent request that would break the invariant fails with
//! a unique violation, which is retried or answered (409) here. PostgreSQL checks unique
//! indexes row by row, so a change of primary demotes the old one and promotes the new one in
//! two statements of one transaction, never in one `UPDATE`.
//!
//! The bound on an actor's providers is enforced the same way: `provider_counts` holds each
//! actor's number of rows, and an add takes a unit of it (`n = n + 1 WHERE n < bound`, in
//! one upsert) in the transaction of its insert, a removal gives its units back in its own.
//! The counter row is locked by that statement until the transaction ends, so concurrent adds
//! of one actor are serialised on PostgreSQL (SQLite serialises all writers) and can never
//! overshoot the bound; every transaction takes the counter before any provider row, so adds
//! and removals of one actor lock in one order. The bound itself is the caller's (a parameter
//! of [`Store::add`]); the store only enforces it.

use p2_runtime::storage::{Database, Migration};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::error::DiscoveryError;
use crate::model::{Limit, Provider, ProviderUrl, ServiceName};

/// The discovery schema, in order. Never edit a released migration; add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "service providers",
        // `url_key` is the provider's identity (normalised URL without trailing slashes), `url`
        // what was registered (normalised). `added_at` (UNIX microseconds) orders promotions.
        sql: "CREATE TABLE service_providers (
        fid TEXT NOT NULL,
        service TEXT NOT NULL,
        url_key TEXT NOT NULL,
        url TEXT NOT NULL,
        is_primary BOOLEAN NOT NULL,
        added_at BIGINT NOT NULL,
        PRIMARY KEY (fid, service, url_key)
    );
    CREATE UNIQUE INDEX service_providers_one_primary
        ON service_providers (fid, service) WHERE is_primary;",
    },
    Migration {
        version: 2,
        description: "provider counts per actor",
        // `n` is the number of `service_providers` rows of `fid`, kept in the transaction of every
        // insert and delete, so a per-actor bound is checked and taken in one statement (see
        // `COUNT_UP`). Initialised from the rows already there.
        sql: "CREATE TABLE provider_counts (
        fid TEXT PRIMARY KEY,
        n BIGINT NOT NULL CHECK (n >= 0)
    );
    INSERT INTO provider_counts (fid, n)
        SELECT fid, COUNT(*) FROM service_providers GROUP BY fid;",
    },
];

/// How often a write that lost a race (unique violation, deadlock, busy database) is tried.
/// Each lost race means another request on the same (actor, service) won, so this bounds the
/// concurrent writers one actor can have on one service before a request fails.
const ATTEMPTS: usize = 16;

const COUNT_OF_ACTOR: &str = "SELECT COUNT(*) FROM service_providers WHERE fid = $1";

/// Takes one unit of the actor's bound `$2`: one row affected when taken, none when the actor
/// already lists `$2` providers. (Callers never pass a bound of 0, which the insert branch
/// would not check.)
const COUNT_UP: &str = "INSERT INTO provider_counts (fid, n) VALUES ($1, 1)
    ON CONFLICT (fid) DO UPDATE SET n = provider_counts.n + 1
    WHERE provider_counts.n < $2";

/// Gives back `$2` units; the transaction rolls back unless exactly that many rows went.
const COUNT_DOWN: &str = "UPDATE provider_counts
    SET n = CASE WHEN n > $2 THEN n - $2 ELSE 0 END
    WHERE fid = $1";

const EXISTS: &str =
    "SELECT 1 FROM service_providers WHERE fid = $1 AND service = $2 AND url_key = $3";

/// Insert as primary unless the service already has one (then the unique index fails the
/// statement if a concurrent insert won the race).
const INSERT_AUTO: &str = "INSERT INTO service_providers
        (fid, service, url_key, url, is_primary, added_at)
    VALUES ($1, $2, $3, $4,
        NOT EXISTS (SELECT 1 FROM service_providers
                    WHERE fid = $1 AND service = $2 AND is_primary),
        $5)
    RETURNING CASE WHEN is_primary THEN 1 ELSE 0 END";

const INSERT_PRIMARY: &str = "INSERT INTO service_providers
        (fid, service, url_key, url, is_primary, added_at)
    VALUES ($1, $2, $3, $4, TRUE, $5)";

const DELETE_ONE: &str = "DELETE FROM service_providers
    WHERE fid = $1 AND service = $2 AND url_key = $3
    RETURNING url, CASE WHEN is_primary THEN 1 ELSE 0 END";

/// Promotes the oldest remaining provider of a service that has no primary.
const PROMOTE_OLDEST: &str = "UPDATE service_providers SET is_primary = TRUE
    WHERE fid = $1 AND service = $2
      AND url_key = (SELECT url_key FROM service_providers
                     WHERE fid = $1 AND service = $2
                     ORDER BY added_at, url_key LIMIT 1)
      AND NOT EXISTS (SELECT 1 FROM service_providers
                      WHERE fid = $1 AND service = $2 AND is_primary)
    RETURNING url";

const PRIMARY_FLAGS: &str = "SELECT CASE WHEN is_primary THEN 1 ELSE 0 END FROM service_providers
    WHERE fid = $1 AND service = $2";

const DEMOTE_OTHERS: &str = "UPDATE service_providers SET is_primary = FALSE
    WHERE fid = $1 AND service = $2 AND is_primary AND url_key <> $3
    RETURNING url";

const PROMOTE: &str = "UPDATE service_providers SET is_primary = TRUE
    WHERE fid = $1 AND service = $2 AND url_key = $3
    RETURNING url";

// Discovery: one query per call. Primaries first, then by service and age.
const LIST_ALL: &str =
    "SELECT service, url, CASE WHEN is_primary THEN 1 ELSE 0 END FROM service_providers
    WHERE fid = $1
    ORDER BY is_primary DESC, service, added_at, url_key LIMIT $2";
const LIST_PRIMARIES: &str =
    "SELECT service, url, CASE WHEN is_primary THEN 1 ELSE 0 END FROM service_providers
    WHERE fid = $1 AND is_primary
    ORDER BY service LIMIT $2";
const LIST_SERVICE: &str =
    "SELECT service, url, CASE WHEN is_primary THEN 1 ELSE 0 END FROM service_providers
    WHERE fid = $1 AND service = $2
    ORDER BY is_primary DESC, added_at, url_key LIMIT $3";
const LIST_SERVICE_PRIMARY: &str =
    "SELECT service, url, CASE WHEN is_primary THEN 1 ELSE 0 END FROM service_providers
    WHERE fid = $1 AND service = $2 AND is_primary
    LIMIT $3";

/// Why [`Store::remove`] removed nothing although every provider was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// This provider is a primary, and the caller did not allow removing primaries.
    Primary(Provider),
}

/// [`Store::add`] found the actor at the bound it was given: nothing was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLimit;

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// The providers removed, as they were stored.
    pub removed: Vec<Provider>,
    /// The providers promoted to primary, one per service whose primary was removed and that
    /// still has providers.
    pub promoted: Vec<Provider>,
}

/// The discovery tables.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// A write that lost a race and may succeed when tried again.
fn is_transient(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    // PostgreSQL: serialization failure, deadlock. SQLite: busy, busy snapshot.
    db.is_unique_violation()
        || db
            .code()
            .is_some_and(|code| matches!(code.as_ref(), "40001" | "40P01" | "5" | "517"))
}

fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads a boolean selected as `CASE WHEN b THEN 1 ELSE 0 END`: sqlx's `Any` driver cannot
/// decode SQLite's BOOLEAN columns, but it decodes integers from both engines.
fn flag(row: &AnyRow, index: usize) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(index)? != 0)
}

fn provider_from_row(row: &AnyRow) -> Result<Provider, sqlx::Error> {
    Ok(Provider {
        service: row.try_get(0)?,
        url: row.try_get(1)?,
        primary: flag(row, 2)?,
    })
}

impl Store {
    /// Storage over a connected, migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How many providers `fid` lists (all services together).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "discovery count", otel.kind = "client", db.system = "sql"))]
    pub async fn count(&self, fid: &str) -> Result<u64, DiscoveryError> {
        let (count,): (i64,) = sqlx::query_as(COUNT_OF_ACTOR)
            .bind(fid)
            .fetch_one(&self.db.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Adds a provider for `fid` unless `fid` already lists `max_per_actor` providers (all
    /// services together), which is `Ok(Err(AtLimit))` with nothing changed. It becomes
    /// primary when the service has none; asking for `primary` when the service has one is
    /// [`DiscoveryError::PrimaryExists`]. The bound is checked and taken in the insert's
    /// transaction: any number of concurrent adds leave at most `max_per_actor` providers.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "discovery add", otel.kind = "client", db.system = "sql"))]
    pub async fn add(
        &self,
        fid: &str,
        service: &ServiceName,
        url: &ProviderUrl,
        primary: bool,
        max_per_actor: u64,
    ) -> Result<Result<Provider, AtLimit>, DiscoveryError> {
        if max_per_actor == 0 {
            return Ok(Err(AtLimit));
        }
        let bound = i64::try_from(max_per_actor).unwrap_or(i64::MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_add(fid, service, url, primary, bound).await {
                Ok(Ok(is_primary)) => {
                    return Ok(Ok(Provider {
                        service: service.to_string(),
                        url: url.as_str().to_owned(),
                        primary: is_primary,
                    }));
                }
                Ok(Err(AtLimit)) => return Ok(Err(AtLimit)),
                // The transaction is gone (rolled back with its counter update) by now.
                Err(error) if is_unique_violation(&error) => {
                    if self.exists(fid, service, url).await? {
                        return Err(DiscoveryError::ProviderExists {
                            service: service.to_string(),
                            url: url.as_str().to_owned(),
                        });
                    }
                    if primary {
                        return Err(DiscoveryError::PrimaryExists {
                            service: service.to_string(),
                        });
                    }
                    // A concurrent insert became the first primary; now ours is not first.
                }
                Err(error) if is_transient(&error) => {}
                Err(error) => return Err(error.into()),
            }
            if attempt >= ATTEMPTS {
                return Err(DiscoveryError::Internal(anyhow::anyhow!(
                    "adding a provider lost {ATTEMPTS} races in a row"
                )));
            }
        }
    }

    /// One attempt of [`Store::add`]: the counter, then the row, in one transaction. Whether
    /// the row became primary, or [`AtLimit`]. Returning early or failing drops the
    /// transaction, which rolls the counter back.
    async fn try_add(
        &self,
        fid: &str,
        service: &ServiceName,
        url: &ProviderUrl,
        primary: bool,
        bound: i64,
    ) -> Result<Result<bool, AtLimit>, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        let taken = sqlx::query(COUNT_UP)
            .bind(fid)
            .bind(bound)
            .execute(&mut *tx)
            .await?;
        if taken.rows_affected() == 0 {
            return Ok(Err(AtLimit));
        }
        let is_primary = if primary {
            sqlx::query(INSERT_PRIMARY)
                .bind(fid)
                .bind(service.as_str())
                .bind(url.key())
                .bind(url.as_str())
                .bind(micros_now())
                .execute(&mut *tx)
                .await?;
            true
        } else {
            let row = sqlx::query(INSERT_AUTO)
                .bind(fid)
                .bind(service.as_str())
                .bind(url.key())
                .bind(url.as_str())
                .bind(micros_now())
                .fetch_one(&mut *tx)
                .await?;
            flag(&row, 0)?
        };
        tx.commit().await?;
        Ok(Ok(is_primary))
    }

    async fn exists(
        &self,
        fid: &str,
        service: &ServiceName,
        url: &ProviderUrl,
    ) -> Result<bool, DiscoveryError> {
        let row = sqlx::query(EXISTS)
            .bind(fid)
            .bind(service.as_str())
            .bind(url.key())
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Removes `providers` of `fid`, all or none, promoting the oldest remaining provider of
    /// each service whose primary was removed. When one of them is a primary and
    /// `may_remove_primary` is false, nothing is removed and the answer is
    /// [`Refused::Primary`] (which providers are primary is only known inside the transaction;
    /// whether that may happen is the caller's rule).
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "discovery remove", otel.kind = "client", db.system = "sql"))]
    pub async fn remove(
        &self,
        fid: &str,
        providers: &[(ServiceName, ProviderUrl)],
        may_remove_primary: bool,
    ) -> Result<Result<Removal, Refused>, DiscoveryError> {
        // One lock order for every transaction, so two removals cannot deadlock.
        let mut providers: Vec<&(ServiceName, ProviderUrl)> = providers.iter().collect();
        providers.sort_by(|a, b| (&a.0, a.1.key()).cmp(&(&b.0, b.1.key())));
        providers.dedup_by(|a, b| a.0 == b.0 && a.1.key() == b.1.key());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_remove(fid, &providers, may_remove_primary).await {
                Ok(outcome) => return outcome,
                Err(error) if is_transient(&error) && attempt < ATTEMPTS => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// One attempt of [`Store::remove`]: database errors outside, outcomes inside. Returning
    /// early drops the transaction, which rolls it back.
    async fn try_remove(
        &self,
        fid: &str,
        providers: &[&(ServiceName, ProviderUrl)],
        may_remove_primary: bool,
    ) -> Result<Result<Result<Removal, Refused>, DiscoveryError>, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        // The counter first (the lock order of adds too). All or none: if any provider is
        // missing, the transaction rolls back, so the units given back are exactly the rows
        // deleted.
        sqlx::query(COUNT_DOWN)
            .bind(fid)
            .bind(i64::try_from(providers.len()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        let mut removal = Removal::default();
        for (service, url) in providers {
            let row = sqlx::query(DELETE_ONE)
                .bind(fid)
                .bind(service.as_str())
                .bind(url.key())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(Err(DiscoveryError::ProviderNotFound {
                    service: service.to_string(),
                    url: url.as_str().to_owned(),
                }));
            };
            removal.removed.push(Provider {
                service: service.to_string(),
                url: row.try_get(0)?,
                primary: flag(&row, 1)?,
            });
        }
        if !may_remove_primary && let Some(primary) = removal.removed.iter().find(|p| p.primary) {
            return Ok(Ok(Err(Refused::Primary(primary.clone()))));
        }
        let mut orphaned: Vec<&str> = removal
            .removed
            .iter()
            .filter(|p| p.primary)
            .map(|p| p.service.as_str())
            .collect();
        orphaned.dedup();
        let mut promoted = Vec::new();
        for service in orphaned {
            if let Some(url) = promote_oldest(&mut tx, fid, service).await? {
                promoted.push(Provider {
                    service: service.to_owned(),
                    url,
                    primary: true,
                });
            }
        }
        removal.promoted = promoted;
        tx.commit().await?;
        Ok(Ok(Ok(removal)))
    }

    /// Makes the provider `url` of `service` the primary one. Returns the new primary, then
    /// the demoted previous one if there was another.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "discovery set_primary", otel.kind = "client", db.system = "sql"))]
    pub async fn set_primary(
        &self,
        fid: &str,
        service: &ServiceName,
        url: &ProviderUrl,
    ) -> Result<Vec<Provider>, DiscoveryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_set_primary(fid, service, url).await {
                Ok(outcome) => return outcome,
                // A concurrent change promoted another provider between our two statements.
                Err(error) if is_transient(&error) && attempt < ATTEMPTS => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn try_set_primary(
        &self,
        fid: &str,
        service: &ServiceName,
        url: &ProviderUrl,
    ) -> Result<Result<Vec<Provider>, DiscoveryError>, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        // Demote first: the unique index is checked row by row.
        let demoted = sqlx::query(DEMOTE_OTHERS)
            .bind(fid)
            .bind(service.as_str())
            .bind(url.key())
            .fetch_all(&mut *tx)
            .await?;
        let promoted = sqlx::query(PROMOTE)
            .bind(fid)
            .bind(service.as_str())
            .bind(url.key())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(promoted) = promoted else {
            return Ok(Err(DiscoveryError::ProviderNotFound {
                service: service.to_string(),
                url: url.as_str().to_owned(),
            }));
        };
        let mut changed = vec![Provider {
            service: service.to_string(),
            url: promoted.try_get(0)?,
            primary: true,
        }];
        for row in demoted {
            changed.push(Provider {
                service: service.to_string(),
                url: row.try_get(0)?,
                primary: false,
            });
        }
        tx.commit().await?;
        Ok(Ok(changed))
    }

    /// The providers of `fid` (of one `service` if given), primaries first. One query.
    #[tracing::instrument(name = "db", level = "info", skip_all, fields(otel.name = "discovery list", otel.kind = "client", db.system = "sql"))]
    pub async fn list(
        &self,
        fid: &str,
        service: Option<&ServiceName>,
        limit: Limit,
    ) -> Result<Vec<Provider>, DiscoveryError> {
        let primaries_only = limit == Limit::PrimariesOnly;
        let max_rows = match limit {
            Limit::All | Limit::PrimariesOnly => i64::MAX,
            Limit::AtMost(n) => i64::try_from(n).unwrap_or(i64::MAX),
        };
        let query = match (service, primaries_only) {
            (None, false) => sqlx::query(LIST_ALL).bind(fid),
            (None, true) => sqlx::query(LIST_PRIMARIES).bind(fid),
            (Some(service), false) => sqlx::query(LIST_SERVICE).bind(fid).bind(service.as_str()),
            (Some(service), true) => sqlx::query(LIST_SERVICE_PRIMARY)
                .bind(fid)
                .bind(service.as_str()),
        };
        let rows = query.bind(max_rows).fetch_all(&self.db.pool).await?;
        Ok(rows
            .iter()
            .map(provider_from_row)
            .collect::<Result<_, _>>()?)
    }
}

/// Promotes the oldest provider of `service` if it has no primary; returns its URL. Retries
/// when a concurrent removal deleted the chosen row under it (PostgreSQL then skips the row),
/// so a service with providers is not left without a primary.
async fn promote_oldest(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    fid: &str,
    service: &str,
) -> Result<Option<String>, sqlx::Error> {
    for _ in 0..ATTEMPTS {
        let row = sqlx::query(PROMOTE_OLDEST)
            .bind(fid)
            .bind(service)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            return Ok(Some(row.try_get(0)?));
        }
        let flags = sqlx::query(PRIMARY_FLAGS)
            .bind(fid)
            .bind(service)
            .fetch_all(&mut **tx)
            .await?;
        let mut has_primary = false;
        for row in &flags {
            has_primary |= flag(row, 0)?;
        }
        if flags.is_empty() || has_primary {
            return Ok(None);
        }
    }
    Ok(None)
}
