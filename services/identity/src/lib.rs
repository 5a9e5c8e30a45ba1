//! The identity service: the home server's key pairs and root ID-Certs (current and past),
//! actors, issued actor ID-Certs and their revocation, and cache signatures.
//!
//! Layout:
//! - [`IdentityConfig`]: the component's flags (`polyproto identity --help`).
//! - [`cipher`]: encryption of private keys at rest (`P2_KEY_ENCRYPTION_KEY`).
//! - [`passwords`]: Argon2id hashing off the async workers, with constant-time misses.
//! - [`throttle`]: password guesses throttled per account and client address, with backoff
//!   (Redis in production, in process in embedded mode).
//! - [`store`]: SQL storage (SQLite or PostgreSQL through one portable implementation).
//! - [`keyring`]: the server's key generations in memory, refreshed from storage, with
//!   memoised cache signatures.
//! - [`actors`]: the operations on actors and their certs (register, sensitive-action check,
//!   login certs, CSR signing for an asserted actor, revocation, key rotation by an admin).
//! - [`events`]: the gateway events this service causes (op 4 for revoked actor certs, op 6
//!   for new server keys), queued in the identity database's event outbox with the change that
//!   causes them and delivered by the outbox relay ([`p2_outbox::Relay`], run by
//!   [`serve_state`]).
//! - [`grpc`]: the `polyproto.identity.v1.Identity` implementation (edge conversions only).
//! - [`CALLERS`]: which component may call which RPC.
//! - [`error`]: [`IdentityError`] and its one mapping to `tonic::Status`.
//!
//! Entry points: [`serve`] runs the service on a pre-bound listener until shutdown;
//! [`grpc_service`] builds the tonic service for callers that serve it themselves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use p2_runtime::internal::{CallerPolicy, Component, InternalKeyConfig};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod actors;
pub mod cipher;
pub mod error;
pub mod events;
pub mod grpc;
pub mod keyring;
pub mod passwords;
pub mod store;
pub mod throttle;

pub use error::IdentityError;

/// Default gRPC listen address of the identity service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default validity of a newly generated root ID-Cert, in days.
pub const DEFAULT_ROOT_VALIDITY_DAYS: u64 = 730;
/// Default validity of an actor ID-Cert, in days (at most 60, spec 6.1).
pub const DEFAULT_ACTOR_CERT_VALIDITY_DAYS: u64 = 30;
/// How often a replica looks for key generations created by another replica.
pub const KEYRING_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Which component may call which RPC (the internal boundary; Boulder's `clientNames`). Only
/// the session service, which owns sessions, may have certs signed or revoked.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.identity.v1.Identity/GetServerIdCert",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/GetServerPublicKey",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/RotateServerKey",
        &[Component::Gateway],
    ),
    (
        "/polyproto.identity.v1.Identity/RegisterActor",
        &[Component::Gateway],
    ),
    (
        "/polyproto.identity.v1.Identity/VerifySensitiveSolution",
        &[Component::Session, Component::Discovery],
    ),
    (
        "/polyproto.identity.v1.Identity/GetActor",
        &[Component::Session, Component::Discovery],
    ),
    (
        "/polyproto.identity.v1.Identity/IssueLoginCert",
        &[Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/SignCsr",
        &[Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/GetActorIdCerts",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/RevokeActorIdCert",
        &[Component::Session],
    ),
];

/// Flags of the identity service.
#[derive(Debug, Clone, Args)]
pub struct IdentityConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// The database connection pool.
    #[command(flatten)]
    pub pool: p2_runtime::storage::PoolConfig,
    /// Redis URL for the password-guess throttle, shared by every identity replica (e.g.
    /// `redis://redis:6379/`); unset keeps it in process memory (embedded mode, one replica).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the throttle's Redis keys: deployments sharing one Redis need their own.
    #[arg(long = "redis-prefix", env = "P2_REDIS_PREFIX", default_value = throttle::REDIS_PREFIX)]
    pub redis_prefix: String,
    /// What the home server is and issues (shared with `polyproto up`).
    #[command(flatten)]
    pub options: IdentityOptions,
    /// Where the events this service causes go, and its outbox's bound.
    #[command(flatten)]
    pub outbox: p2_outbox::OutboxConfig,
    /// How the server shuts down.
    #[command(flatten)]
    pub shutdown: p2_runtime::config::ShutdownConfig,
    /// The deployment's internal key.
    #[command(flatten)]
    pub internal: InternalKeyConfig,
}

/// The identity settings that `polyproto identity` and `polyproto up` share: one declaration,
/// flattened into both.
#[derive(Debug, Clone, Args)]
pub struct IdentityOptions {
    /// The home server's domain: the `dc` components of its root ID-Cert and the domain part of
    /// every federation ID it issues.
    #[arg(long = "domain", env = "P2_DOMAIN", default_value = DEFAULT_DOMAIN)]
    pub domain: String,
    /// 32-byte key (64 hex characters) that encrypts the server's private keys at rest.
    /// `polyproto up` generates one into `<data-dir>/key-encryption.key` (mode 0600) when
    /// neither this nor the file is given.
    #[arg(
        long = "key-encryption-key",
        env = "P2_KEY_ENCRYPTION_KEY",
        hide_env_values = true
    )]
    pub key_encryption_key: Option<SecretString>,
    /// File holding the key encryption key (64 hex characters), e.g. a mounted Kubernetes
    /// Secret. Used when `--key-encryption-key` is not given.
    #[arg(long = "key-encryption-key-file", env = "P2_KEY_ENCRYPTION_KEY_FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    /// Validity of a newly generated root ID-Cert, in days. A root with fewer than 60 days
    /// left is replaced at start, so actor certs (at most 60 days) always fit inside it.
    #[arg(long = "root-validity-days", env = "P2_ROOT_VALIDITY_DAYS", default_value_t = DEFAULT_ROOT_VALIDITY_DAYS)]
    pub root_validity_days: u64,
    /// Validity of an issued actor ID-Cert, in days (1 to 60; never beyond the root's).
    #[arg(long = "actor-cert-validity-days", env = "P2_ACTOR_CERT_VALIDITY_DAYS", default_value_t = DEFAULT_ACTOR_CERT_VALIDITY_DAYS)]
    pub actor_cert_validity_days: u64,
    /// Who may register: `open` (anyone, through POST /.p2/auth/v1/register) or `closed`
    /// (only `polyproto admin create-actor`).
    #[arg(long = "registration", env = "P2_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,
    /// The most sessions (valid ID-Certs) one actor may hold at once; a login or new ID-Cert
    /// beyond it is refused (409) until one is deleted or expires. Renewals always pass.
    #[arg(long = "max-sessions-per-actor", env = "P2_MAX_SESSIONS_PER_ACTOR", default_value_t = DEFAULT_MAX_SESSIONS_PER_ACTOR)]
    pub max_sessions_per_actor: u64,
}

/// Default of `--max-sessions-per-actor`.
pub const DEFAULT_MAX_SESSIONS_PER_ACTOR: u64 = 256;

/// Default domain of a home server.
pub const DEFAULT_DOMAIN: &str = "localhost";

impl IdentityOptions {
    /// The defaults for `domain`, with no key encryption key.
    pub fn for_domain(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            key_encryption_key: None,
            key_encryption_key_file: None,
            root_validity_days: DEFAULT_ROOT_VALIDITY_DAYS,
            actor_cert_validity_days: DEFAULT_ACTOR_CERT_VALIDITY_DAYS,
            registration: Registration::Open,
            max_sessions_per_actor: DEFAULT_MAX_SESSIONS_PER_ACTOR,
        }
    }
}

/// Registration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Registration {
    /// Anyone may register.
    Open,
    /// Only administrators create actors.
    Closed,
}

impl IdentityOptions {
    /// The key encryption key, from the flag/env or the file.
    pub fn load_cipher(&self) -> anyhow::Result<cipher::KeyCipher> {
        use secrecy::ExposeSecret as _;
        if let Some(key) = &self.key_encryption_key {
            return cipher::KeyCipher::from_hex(key.expose_secret())
                .context("invalid P2_KEY_ENCRYPTION_KEY");
        }
        if let Some(path) = &self.key_encryption_key_file {
            return cipher::KeyCipher::from_file(path);
        }
        anyhow::bail!(
            "no key encryption key: set P2_KEY_ENCRYPTION_KEY (64 hex characters, e.g. from \
             `openssl rand -hex 32`) or P2_KEY_ENCRYPTION_KEY_FILE"
        )
    }
}

/// Everything the gRPC handlers share.
#[derive(Clone)]
pub struct IdentityState {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Option<redis::aio::ConnectionManager>,
    /// The outbox relay's client of the events service (connects lazily).
    events: p2_proto::events::v1::events_client::EventsClient<p2_runtime::grpc::TracedChannel>,
    internal_key: p2_runtime::internal::InternalKey,
    assertion_key: p2_runtime::internal::AssertionKey,
    store: store::Store,
    throttle: throttle::Throttle,
    keyring: keyring::Keyring,
    hasher: passwords::PasswordHasher,
    domain: String,
    actor_cert_validity_secs: u64,
    registration: Registration,
    max_sessions_per_actor: u64,
}

impl IdentityState {
    /// Connects storage, runs migrations, and loads (or on first start creates) the server's
    /// key pair and root ID-Cert for `config.domain`. The events channel connects lazily (only
    /// the outbox relay of [`serve_state`] uses it).
    pub async fn open(config: &IdentityConfig) -> anyhow::Result<Self> {
        let options = &config.options;
        let domain = p2_model::validate_domain(&options.domain)
            .map_err(|e| anyhow::anyhow!("invalid --domain {:?}: {e}", options.domain))?;
        let internal_key = config.internal.load()?;
        let cipher = options.load_cipher()?;
        let db = p2_runtime::storage::connect_with(
            &config.database_url,
            "identity",
            store::MIGRATIONS,
            &config.pool,
        )
        .await?;
        let store = store::Store::new(db).with_outbox_capacity(config.outbox.capacity);
        let events =
            p2_proto::events::v1::events_client::EventsClient::new(p2_runtime::grpc::channel(
                &config.outbox.events_url,
                &internal_key.credential(Component::Identity),
            )?);
        let redis = match &config.redis_url {
            Some(url) => Some(p2_runtime::kv::connect(url, "identity").await?),
            None => None,
        };
        let failures: Arc<dyn throttle::FailureStore> = match &redis {
            Some(conn) => Arc::new(throttle::RedisFailureStore::new(
                conn.clone(),
                &config.redis_prefix,
            )),
            None => Arc::new(throttle::MemoryFailureStore::default()),
        };
        anyhow::ensure!(
            (1..=60).contains(&options.actor_cert_validity_days),
            "--actor-cert-validity-days must be between 1 and 60 (spec 6.1)"
        );
        anyhow::ensure!(
            options.max_sessions_per_actor >= 1,
            "--max-sessions-per-actor (P2_MAX_SESSIONS_PER_ACTOR) must be at least 1"
        );
        anyhow::ensure!(
            config.outbox.capacity >= 1,
            "--outbox-capacity (P2_OUTBOX_CAPACITY) must be at least 1"
        );
        let keyring = keyring::Keyring::open(
            store.clone(),
            cipher,
            domain.clone(),
            options.root_validity_days.saturating_mul(86_400),
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                events,
                assertion_key: internal_key.assertion_key(),
                internal_key,
                store,
                throttle: throttle::Throttle::new(failures),
                keyring,
                hasher: passwords::PasswordHasher::new().await?,
                domain,
                actor_cert_validity_secs: options.actor_cert_validity_days * 86_400,
                registration: options.registration,
                max_sessions_per_actor: options.max_sessions_per_actor,
            }),
        })
    }

    /// Verifies caller assertions.
    pub fn assertion_key(&self) -> &p2_runtime::internal::AssertionKey {
        &self.inner.assertion_key
    }

    /// Readiness: the database answers, and Redis when the throttle uses it.
    pub fn probe(&self) -> p2_runtime::grpc::Probe {
        let state = self.clone();
        Arc::new(move || {
            let state = state.clone();
            Box::pin(async move {
                let redis_ok = match &state.inner.redis {
                    Some(conn) => p2_runtime::kv::ping(conn).await,
                    None => true,
                };
                redis_ok && state.store().database().ping().await
            })
        })
    }

    /// The boundary this service's server enforces.
    pub fn server_auth(&self) -> p2_runtime::internal::ServerAuth {
        p2_runtime::internal::ServerAuth::new(self.inner.internal_key.verifier(), CALLERS)
    }

    /// The server's key generations.
    pub fn keyring(&self) -> &keyring::Keyring {
        &self.inner.keyring
    }

    /// The storage.
    pub fn store(&self) -> &store::Store {
        &self.inner.store
    }

    /// The home server's domain (normalised).
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The password-guess throttle.
    pub fn throttle(&self) -> &throttle::Throttle {
        &self.inner.throttle
    }

    /// The password hasher.
    pub fn hasher(&self) -> &passwords::PasswordHasher {
        &self.inner.hasher
    }

    /// Validity of new actor certs, in seconds.
    pub fn actor_cert_validity_secs(&self) -> u64 {
        self.inner.actor_cert_validity_secs
    }

    /// The most valid certs (sessions) one actor may hold.
    pub fn max_sessions_per_actor(&self) -> u64 {
        self.inner.max_sessions_per_actor
    }

    /// The registration policy.
    pub fn registration(&self) -> Registration {
        self.inner.registration
    }

    /// The relay of this service's event outbox to the events service (default pacing);
    /// [`serve_state`] runs one.
    pub fn relay(&self) -> p2_outbox::Relay {
        p2_outbox::Relay::new(
            self.store().database().clone(),
            self.store().outbox().clone(),
            self.inner.events.clone(),
        )
    }
}

/// The tonic service for `state`.
pub fn grpc_service(
    state: IdentityState,
) -> p2_proto::identity::v1::identity_server::IdentityServer<grpc::IdentityGrpc> {
    p2_proto::identity::v1::identity_server::IdentityServer::new(grpc::IdentityGrpc::new(state))
}

/// Runs the identity service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: IdentityConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = IdentityState::open(&config).await?;
    serve_state(state, config.shutdown.grace(), listener, shutdown).await
}

/// Runs the identity service for an already opened `state`, with the keyring refresh and the
/// event outbox relay beside it. Shutdown order: the server goes NOT_SERVING and drains; then
/// the background tasks stop (what the last requests queued is delivered by the next start, or
/// by another replica); then the database pool closes (`state`'s storage is unusable
/// afterwards).
pub async fn serve_state(
    state: IdentityState,
    grace: Duration,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let refresher = tokio::spawn({
        let state = state.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(KEYRING_REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(error) = state.keyring().refresh().await {
                            tracing::warn!(error = format!("{error:#}"), "key generation refresh failed");
                        }
                    }
                }
            }
        }
    });
    let db = state.store().database().clone();
    let relay_stop = CancellationToken::new();
    let relay = state.relay().spawn(relay_stop.clone());
    let auth = state.server_auth();
    let probe = state.probe();
    let result = p2_runtime::grpc::serve(
        grpc_service(state),
        auth,
        grace,
        Some(probe),
        listener,
        shutdown,
    )
    .await;
    refresher.abort();
    relay_stop.cancel();
    if let Err(error) = relay.await {
        tracing::error!(error = %error, "the identity event outbox relay panicked");
    }
    // Last: every connection closed before this returns (SQLite checkpoints its WAL then),
    // so a stopped service leaves its files settled.
    db.pool.close().await;
    result
}
