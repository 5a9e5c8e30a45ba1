//! SQL storage chosen by URL: `sqlite:` (embedded mode, one file per service) or `postgres:`
//! (production). Both go through sqlx's `Any` driver with portable SQL (`BIGINT`, `TEXT`, `$1`
//! placeholders), so one implementation serves both and is tested against both.
//!
//! Migrations are compiled in and run at start, each service with its own migrations table,
//! so services may even share one database without touching each other's tables.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrationType, Migrator};
use sqlx::{Executor as _, SqlSafeStr as _};

use crate::redact_url;

/// How long start-up waits for the database before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One versioned schema change, compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version.
    pub version: i64,
    /// Short description, stored in the migrations table.
    pub description: &'static str,
    /// Portable SQL (runs on SQLite and PostgreSQL).
    pub sql: &'static str,
}

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (embedded mode).
    Sqlite,
    /// PostgreSQL (production).
    Postgres,
}

impl Backend {
    /// The engine named by `url`'s scheme.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!(
                "unsupported database URL {:?}: use sqlite:PATH or postgres://USER@HOST/DB",
                redact_url(url)
            )
        }
    }
}

/// A connection pool plus what it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    /// The pool.
    pub pool: AnyPool,
    /// Its engine.
    pub backend: Backend,
    /// Keeps the pool's gauges (`polyproto_db_pool_*{pool="<component>"}`) in the metrics
    /// while any clone of this lives.
    _metrics: Arc<PoolGauges>,
}

/// A pool as the metrics sample it at scrape time (its size, idle connections and bound).
#[derive(Debug)]
struct PoolGauges {
    component: String,
    pool: AnyPool,
}

impl crate::metrics::Sampled for PoolGauges {
    fn sample(&self, samples: &crate::metrics::Samples<'_>) {
        samples.pool(
            &self.component,
            self.pool.size(),
            self.pool.num_idle(),
            self.pool.options().get_max_connections(),
        );
    }
}

impl Database {
    fn new(pool: AnyPool, backend: Backend, component: &str) -> Self {
        let metrics = Arc::new(PoolGauges {
            component: component.to_owned(),
            pool: pool.clone(),
        });
        let sampled: std::sync::Weak<PoolGauges> = Arc::downgrade(&metrics);
        crate::metrics::register_sampled(sampled);
        Self {
            pool,
            backend,
            _metrics: metrics,
        }
    }
}

impl Database {
    /// Whether the database answers `SELECT 1` within [`crate::kv::PROBE_TIMEOUT`]
    /// (readiness probes).
    pub async fn ping(&self) -> bool {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(crate::kv::PROBE_TIMEOUT, query).await,
            Ok(Ok(_))
        )
    }
}

/// Default connection-pool size of a PostgreSQL database (per process).
pub const DEFAULT_POSTGRES_POOL: u32 = 16;
/// Connection-pool size of an SQLite database (one writer at a time anyway).
pub const SQLITE_POOL: u32 = 4;

/// Database pool settings, flattened into every component with a database.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PoolConfig {
    /// Most database connections this process opens (PostgreSQL; default 16). Size it so that
    /// replicas × pool stays under the server's `max_connections` (PostgreSQL's default: 100).
    #[arg(long = "db-max-connections", env = "P2_DB_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}

/// Connects to `url` with the default pool; see [`connect_with`].
pub async fn connect(
    url: &str,
    component: &str,
    migrations: &[Migration],
) -> anyhow::Result<Database> {
    connect_with(url, component, migrations, &PoolConfig::default()).await
}

/// Connects to `url` with `pool`, checks that it answers, and runs `migrations` recorded in the
/// table `_p2_<component>_migrations`. Errors name the component and the (redacted) URL.
pub async fn connect_with(
    url: &str,
    component: &str,
    migrations: &[Migration],
    pool: &PoolConfig,
) -> anyhow::Result<Database> {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url)?;
    let url = match backend {
        // Create the file on first start.
        Backend::Sqlite if !url.contains("mode=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            Cow::Owned(format!("{url}{sep}mode=rwc"))
        }
        _ => Cow::Borrowed(url),
    };
    let mut options = AnyPoolOptions::new()
        .acquire_timeout(CONNECT_TIMEOUT)
        .max_connections(match backend {
            Backend::Sqlite => SQLITE_POOL,
            Backend::Postgres => pool.max_connections.unwrap_or(DEFAULT_POSTGRES_POOL),
        });
    if backend == Backend::Sqlite {
        options = options.after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                    .await?;
                Ok(())
            })
        });
    }
    let what = || {
        format!(
            "cannot connect to the {component} database at {}",
            redact_url(&url)
        )
    };
    let pool = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(&url))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
        .with_context(what)?
        .with_context(what)?;
    if backend == Backend::Sqlite {
        // WAL lets readers proceed during a write; it is a property of the file.
        pool.execute("PRAGMA journal_mode = WAL;")
            .await
            .with_context(what)?;
        // The files hold password hashes and encrypted keys: owner only. SQLite gives later
        // -wal/-shm files the main file's mode.
        if let Some(path) = sqlite_path(&url) {
            restrict_sqlite_files(&path).with_context(what)?;
        }
    }

    let mut migrator = Migrator::with_migrations(
        migrations
            .iter()
            .map(|m| {
                sqlx::migrate::Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    m.sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name(format!("_p2_{component}_migrations"));
    // PostgreSQL migrations take an advisory lock; SQLite has none, so a process starting at
    // the same moment (e.g. `polyproto admin` beside the server) may apply them first: retry,
    // and the second attempt finds them applied.
    let mut attempt = 0;
    loop {
        match migrator.run(&pool).await {
            Ok(()) => break,
            Err(_) if backend == Backend::Sqlite && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot migrate the {component} database"));
            }
        }
    }
    Ok(Database::new(pool, backend, component))
}

/// The file a `sqlite:` URL names (`sqlite://PATH?...` or `sqlite:PATH`), if any.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Makes the database file and its WAL companions readable by the owner only (0600).
fn restrict_sqlite_files(path: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {}", file.display()))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates `dir` (and its parents) if missing and makes it the owner's alone (0700): a data
/// directory holds the databases and the key encryption key.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict the data directory {}", dir.display()))?;
    }
    Ok(())
}

/// The SQLite URL of `component`'s database file inside `data_dir`.
pub fn sqlite_url_in(data_dir: &std::path::Path, component: &str) -> String {
    format!(
        "sqlite://{}",
        data_dir.join(format!("{component}.db")).display()
    )
}

/// Environment variable naming the PostgreSQL server tests use (set by `scripts/test.sh`).
pub const TEST_POSTGRES_ENV: &str = "P2_TEST_POSTGRES_URL";

/// Test support: creates a fresh, empty database named `p2t_<label>_<unique>` on the
/// PostgreSQL server of [`TEST_POSTGRES_ENV`] and returns its URL. Fails (never skips) when
/// the variable is missing, so a test that needs PostgreSQL cannot pass without it.
pub async fn fresh_test_postgres_database(label: &str) -> anyhow::Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    sqlx::any::install_default_drivers();
    let admin = std::env::var(TEST_POSTGRES_ENV).map_err(|_| {
        anyhow::anyhow!("{TEST_POSTGRES_ENV} is not set: run the tests through scripts/test.sh")
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "p2t_{label}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database labels are [A-Za-z0-9_]"
    );
    let pool = AnyPool::connect(&admin)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(&admin)))?;
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .context("cannot create a test database")?;
    pool.close().await;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        description: "things",
        sql: "CREATE TABLE things (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    }];

    #[test]
    fn unknown_url_schemes_are_rejected_with_a_hint() {
        let err = Backend::from_url("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqlite:"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[tokio::test]
    async fn sqlite_files_and_data_directories_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        let url = sqlite_url_in(&data, "modes");
        let db = connect(&url, "modes", &[]).await.unwrap();
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(&db.pool)
            .await
            .unwrap();
        let file = sqlite_path(&url).unwrap();
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        for suffix in ["-wal", "-shm"] {
            let mut companion = file.as_os_str().to_owned();
            companion.push(suffix);
            let companion = std::path::PathBuf::from(companion);
            if companion.exists() {
                assert_eq!(mode(&companion), 0o600, "{}", companion.display());
            }
        }
    }

    #[tokio::test]
    async fn sqlite_databases_are_created_and_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url_in(dir.path(), "unit");
        let db = connect(&url, "unit", MIGRATIONS).await.unwrap();
        sqlx::query("INSERT INTO things (id, name) VALUES ($1, $2)")
            .bind(1_i64)
            .bind("a")
            .execute(&db.pool)
            .await
            .unwrap();
        db.pool.close().await;
        // A second start runs no migration again and keeps the data.
        let db = connect(&url, "unit", MIGRATIONS).await.unwrap();
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM things")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn an_unreachable_postgres_names_the_component_and_hides_the_password() {
        // Port 1 on loopback refuses connections.
        let err = connect(
            "postgres://p2:hunter2@127.0.0.1:1/x",
            "identity",
            MIGRATIONS,
        )
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("identity database"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn postgres_databases_are_migrated() {
        let url = std::env::var("P2_TEST_POSTGRES_URL")
            .expect("P2_TEST_POSTGRES_URL must be set: run scripts/test.sh");
        let db = connect(&url, "runtime_unit_test", MIGRATIONS)
            .await
            .unwrap();
        assert_eq!(
            db.pool.options().get_max_connections(),
            DEFAULT_POSTGRES_POOL
        );
        // The pool size is the operator's (replicas × pool under the server's limit).
        let small = connect_with(
            &url,
            "runtime_unit_test",
            MIGRATIONS,
            &PoolConfig {
                max_connections: Some(3),
            },
        )
        .await
        .unwrap();
        assert_eq!(small.pool.options().get_max_connections(), 3);
        sqlx::query("DELETE FROM things")
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO things (id, name) VALUES ($1, $2)")
            .bind(7_i64)
            .bind("seven")
            .execute(&db.pool)
            .await
            .unwrap();
        let (name,): (String,) = sqlx::query_as("SELECT name FROM things WHERE id = $1")
            .bind(7_i64)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(name, "seven");
    }
}
