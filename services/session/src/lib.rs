//! The session service: session tokens (stored hashed), challenge strings and key trials
//! (Redis in production, in-process in embedded mode; single use, expiring), foreign-server
//! authentication and foreign sessions' ID-Certs.
//!
//! Layout:
//! - [`SessionConfig`]: the component's flags (`polyproto session --help`).
//! - [`token`]: 256-bit tokens, handed out as 64 hex characters, stored only as SHA-256 hashes.
//! - [`storage`]: the `sessions` table ([`storage::SessionStore`], SQLite or PostgreSQL through
//!   one portable implementation) and the [`storage::ChallengeStore`] of short-lived single-use
//!   values (Redis, or in process memory).
//! - [`caller`]: [`Caller`], the session a request acts for, from its verified caller assertion.
//! - [`sessions`]: authenticate a token (minting the caller assertion), password + ID-CSR login
//!   and new ID-Certs (with compensation), delete a session (cert first, then the token).
//! - [`challenge`]: issue challenge strings bound to a session and verify their solutions
//!   against the session's current ID-Cert (the RPC and the gateway's
//!   `X-P2-Challenge-String-Solution` check share it).
//! - [`events`]: the gateway events this service causes (op 3, `OpenSession`,
//!   `CloseSession`), queued in the session database's event outbox with the change that
//!   causes them and delivered by the outbox relay ([`p2_outbox::Relay`], run by
//!   [`serve_opened`]).
//! - [`grpc`]: the `polyproto.session.v1.Session` implementation (edge conversions only; the
//!   multi-step operations run in their own task, safe from caller cancellation).
//! - [`CALLERS`]: which component may call which RPC.
//! - [`error`]: [`SessionError`] and its one mapping to `tonic::Status`.
//!
//! - [`federation`]: key trials, foreign sessions (actors of other home servers signed in
//!   here), the verified cache of their home servers' certs (Redis, or in process) and the
//!   hardened outbound HTTP client.
//!
//! Entry points: [`serve`] runs the service on a pre-bound listener until shutdown;
//! [`grpc_service`] builds the tonic service; [`SessionGrpc::open`] connects everything from
//! a [`SessionConfig`], [`SessionGrpc::new`] from parts (tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use p2_proto::events::v1::events_client::EventsClient;
use p2_proto::identity::v1::identity_client::IdentityClient;
use p2_proto::session::v1 as pb;
use p2_runtime::grpc::TracedChannel;
use p2_runtime::internal::{
    AssertionKey, CallerPolicy, Component, InternalKey, InternalKeyConfig, ServerAuth,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod caller;
pub mod challenge;
pub mod error;
pub mod events;
pub mod federation;
pub mod grpc;
pub mod sessions;
pub mod storage;
pub mod token;

pub use caller::Caller;
pub use challenge::{
    DEFAULT_CHALLENGE_TTL_SECS, DEFAULT_MAX_CHALLENGES_PER_SESSION, DEFAULT_MAX_PENDING_CHALLENGES,
};
pub use error::SessionError;
pub use storage::MIGRATIONS;

use storage::{ChallengeStore, SessionStore};

/// Default gRPC listen address of the session service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// Which component may call which RPC: the gateway, for everything (it translates every
/// public route); nobody else needs this service yet.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.session.v1.Session/Authenticate",
        &[Component::Gateway],
    ),
    ("/polyproto.session.v1.Session/Login", &[Component::Gateway]),
    (
        "/polyproto.session.v1.Session/RequestIdCert",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/DeleteSession",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/CreateChallenge",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/VerifyChallengeSolution",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/CreateKeyTrial",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/CompleteKeyTrial",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/ListKeyTrials",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/UpdateForeignIdCert",
        &[Component::Gateway],
    ),
    (
        "/polyproto.session.v1.Session/GetForeignActorIdCerts",
        &[Component::Gateway],
    ),
];

/// Flags of the session service.
#[derive(Debug, Clone, Args)]
pub struct SessionConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// The database connection pool.
    #[command(flatten)]
    pub pool: p2_runtime::storage::PoolConfig,
    /// Redis URL for challenges, key trials and the verified cache of foreign certs (e.g.
    /// `redis://redis:6379/`); unset keeps them in process memory (embedded mode, one replica
    /// only).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this service's Redis keys; deployments sharing one Redis need their own.
    #[arg(long = "redis-prefix", env = "P2_REDIS_PREFIX", default_value = storage::redis::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// This home server's domain: actors of other domains are foreign (they sign in with key
    /// trials).
    #[arg(long = "domain", env = "P2_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// URL of the identity service.
    #[arg(
        long = "identity-url",
        env = "P2_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub identity_url: String,
    /// Lifetimes and challenge bounds (shared with `polyproto up`).
    #[command(flatten)]
    pub options: SessionOptions,
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

/// The session settings that `polyproto session` and `polyproto up` share: one declaration,
/// flattened into both.
#[derive(Debug, Clone, Args)]
pub struct SessionOptions {
    /// Lifetime of a challenge string, in seconds (at least 1).
    #[arg(long = "challenge-ttl-secs", env = "P2_CHALLENGE_TTL_SECS", default_value_t = DEFAULT_CHALLENGE_TTL_SECS)]
    pub challenge_ttl_secs: u64,
    /// Lifetime of the caller assertions minted for resolved tokens, in milliseconds (1000 to
    /// 600000). Short, because a deleted session's assertions stay valid that long where a
    /// service does not re-check the session.
    #[arg(long = "assertion-ttl-ms", env = "P2_ASSERTION_TTL_MS", default_value_t = p2_runtime::internal::DEFAULT_ASSERTION_TTL_MS)]
    pub assertion_ttl_ms: u64,
    /// Most unused, unexpired challenges one session may hold (at least 1). At the bound that
    /// session's challenge requests answer RESOURCE_EXHAUSTED (HTTP 429) until it uses one or
    /// one expires; pending challenges are never dropped, and other sessions are unaffected.
    #[arg(long = "max-challenges-per-session", env = "P2_MAX_CHALLENGES_PER_SESSION", default_value_t = DEFAULT_MAX_CHALLENGES_PER_SESSION)]
    pub max_challenges_per_session: usize,
    /// Most unused, unexpired challenges of all sessions together, in Redis or in process
    /// memory (at least 1; each costs a few hundred bytes). At the bound every challenge request
    /// answers RESOURCE_EXHAUSTED (HTTP 429) until challenges are used or expire.
    #[arg(long = "max-pending-challenges", env = "P2_MAX_PENDING_CHALLENGES", default_value_t = DEFAULT_MAX_PENDING_CHALLENGES)]
    pub max_pending_challenges: usize,
    /// Federation: key trials, the outbound client, the verified cache.
    #[command(flatten)]
    pub federation: federation::FederationOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            challenge_ttl_secs: DEFAULT_CHALLENGE_TTL_SECS,
            assertion_ttl_ms: p2_runtime::internal::DEFAULT_ASSERTION_TTL_MS,
            max_challenges_per_session: DEFAULT_MAX_CHALLENGES_PER_SESSION,
            max_pending_challenges: DEFAULT_MAX_PENDING_CHALLENGES,
            federation: federation::FederationOptions::default(),
        }
    }
}

/// The gRPC handler set of the session service; cheap to clone (one shared state).
///
/// Besides the tonic trait, its inherent methods (`authenticate_token`, `password_login`,
/// `request_id_cert`, `end_session`, `issue_challenge`, `check_challenge_solution`) are the
/// service's operations with typed errors, for tests.
#[derive(Clone)]
pub struct SessionGrpc {
    inner: Arc<Inner>,
}

struct Inner {
    internal_key: InternalKey,
    assertion_key: AssertionKey,
    assertion_ttl_ms: std::sync::atomic::AtomicU64,
    sessions: SessionStore,
    challenges: Arc<dyn ChallengeStore>,
    identity: IdentityClient<TracedChannel>,
    /// The outbox relay's client of the events service.
    events: EventsClient<TracedChannel>,
    challenge_ttl: Duration,
    /// Set once by [`SessionGrpc::with_max_challenges_per_session`] before the handlers are
    /// shared (an atomic like `assertion_ttl_ms`, so the builder needs no `&mut`).
    max_challenges_per_session: std::sync::atomic::AtomicUsize,
    /// This home server's domain ([`SessionGrpc::with_federation`]).
    domain: String,
    /// Key trials, the outbound client and the verified cache (`None` only when even the
    /// defaults could not be built: then every federation call fails as internal).
    federation: Option<federation::Federation>,
}

impl SessionGrpc {
    /// Connects storage (running migrations) and Redis when configured, else uses the
    /// in-process challenge store; the identity and events channels connect lazily. Fails with
    /// one clear line when storage or Redis does not answer or a flag is out of range.
    pub async fn open(config: &SessionConfig) -> anyhow::Result<Self> {
        let options = &config.options;
        if options.challenge_ttl_secs == 0 {
            anyhow::bail!("--challenge-ttl-secs (P2_CHALLENGE_TTL_SECS) must be at least 1");
        }
        if !(1000..=600_000).contains(&options.assertion_ttl_ms) {
            anyhow::bail!(
                "--assertion-ttl-ms (P2_ASSERTION_TTL_MS) must be between 1000 and 600000"
            );
        }
        if options.max_challenges_per_session == 0 {
            anyhow::bail!(
                "--max-challenges-per-session (P2_MAX_CHALLENGES_PER_SESSION) must be at least 1"
            );
        }
        if options.max_pending_challenges == 0 {
            anyhow::bail!(
                "--max-pending-challenges (P2_MAX_PENDING_CHALLENGES) must be at least 1"
            );
        }
        if config.outbox.capacity == 0 {
            anyhow::bail!("--outbox-capacity (P2_OUTBOX_CAPACITY) must be at least 1");
        }
        let internal_key = config.internal.load()?;
        let identity = IdentityClient::new(p2_runtime::grpc::channel(
            &config.identity_url,
            &internal_key.credential(Component::Session),
        )?);
        let events = EventsClient::new(p2_runtime::grpc::channel(
            &config.outbox.events_url,
            &internal_key.credential(Component::Session),
        )?);
        let db = p2_runtime::storage::connect_with(
            &config.database_url,
            "session",
            MIGRATIONS,
            &config.pool,
        )
        .await?;
        let (challenges, cache): (Arc<dyn ChallengeStore>, Arc<dyn federation::VerifiedCache>) =
            match &config.redis_url {
                Some(url) => {
                    let redis = p2_runtime::kv::connect(url, "session").await?;
                    (
                        Arc::new(
                            storage::RedisChallengeStore::new(redis.clone(), &config.redis_prefix)
                                .with_capacity(options.max_pending_challenges),
                        ),
                        Arc::new(federation::RedisVerifiedCache::new(
                            redis,
                            &config.redis_prefix,
                            options.federation.cache_entries,
                        )),
                    )
                }
                None => (
                    Arc::new(storage::MemoryChallengeStore::new(
                        options.max_pending_challenges,
                    )),
                    Arc::new(federation::MemoryVerifiedCache::new(
                        options.federation.cache_entries,
                    )),
                ),
            };
        let federation = federation::Federation::new(&options.federation, cache)?;
        // Embedded mode (SQLite, no Redis) is one process by definition: it may keep the
        // token index in memory, so token checks need no database round trip.
        let embedded =
            config.redis_url.is_none() && db.backend == p2_runtime::storage::Backend::Sqlite;
        let store = if embedded {
            SessionStore::with_memory_index(db).await?
        } else {
            SessionStore::new(db)
        }
        .with_outbox_capacity(config.outbox.capacity);
        Self::new(
            internal_key,
            store,
            challenges,
            identity,
            events,
            Duration::from_secs(options.challenge_ttl_secs),
        )
        .with_assertion_ttl_ms(options.assertion_ttl_ms)
        .with_max_challenges_per_session(options.max_challenges_per_session)
        .with_federation(&config.domain, federation)
    }

    /// Handlers over ready parts: the deployment's internal key, the sessions table, a
    /// challenge store, an identity client (its channel may connect lazily; only login, new
    /// certs, session deletion and challenge verification call it), an events client (only
    /// the outbox relay calls it) and the challenge lifetime.
    pub fn new(
        internal_key: InternalKey,
        sessions: SessionStore,
        challenges: Arc<dyn ChallengeStore>,
        identity: IdentityClient<TracedChannel>,
        events: EventsClient<TracedChannel>,
        challenge_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                assertion_key: internal_key.assertion_key(),
                internal_key,
                assertion_ttl_ms: std::sync::atomic::AtomicU64::new(
                    p2_runtime::internal::DEFAULT_ASSERTION_TTL_MS,
                ),
                sessions,
                challenges,
                identity,
                events,
                challenge_ttl,
                max_challenges_per_session: std::sync::atomic::AtomicUsize::new(
                    DEFAULT_MAX_CHALLENGES_PER_SESSION,
                ),
                domain: "localhost".to_owned(),
                // Defaults with an in-process cache; `with_federation` replaces them.
                federation: federation::Federation::in_memory().ok(),
            }),
        }
    }

    /// The same handlers serving `domain`, with `federation`. Call it before the handlers are
    /// cloned (it fails otherwise).
    pub fn with_federation(
        mut self,
        domain: &str,
        federation: federation::Federation,
    ) -> anyhow::Result<Self> {
        let domain = p2_model::validate_domain(domain)
            .map_err(|e| anyhow::anyhow!("--domain (P2_DOMAIN): {e}"))?;
        let inner = Arc::get_mut(&mut self.inner).ok_or_else(|| {
            anyhow::anyhow!("with_federation must be called before the handlers are shared")
        })?;
        inner.domain = domain;
        inner.federation = Some(federation);
        Ok(self)
    }

    /// This home server's domain.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The same handlers (and every clone of them) minting assertions valid for `ttl_ms`.
    pub fn with_assertion_ttl_ms(self, ttl_ms: u64) -> Self {
        self.inner
            .assertion_ttl_ms
            .store(ttl_ms, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The same handlers (and every clone of them) letting one session hold at most `limit`
    /// pending challenges ([`DEFAULT_MAX_CHALLENGES_PER_SESSION`] unless set).
    pub fn with_max_challenges_per_session(self, limit: usize) -> Self {
        self.inner
            .max_challenges_per_session
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The most pending challenges one session may hold.
    pub fn max_challenges_per_session(&self) -> usize {
        self.inner
            .max_challenges_per_session
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Mints and verifies caller assertions.
    pub fn assertion_key(&self) -> &AssertionKey {
        &self.inner.assertion_key
    }

    /// Lifetime of minted assertions, in milliseconds.
    pub fn assertion_ttl_ms(&self) -> u64 {
        self.inner
            .assertion_ttl_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Readiness: the database and the challenge store (Redis) answer.
    pub fn probe(&self) -> p2_runtime::grpc::Probe {
        let handlers = self.clone();
        Arc::new(move || {
            let handlers = handlers.clone();
            Box::pin(async move {
                handlers.challenges().ready().await && handlers.sessions().database().ping().await
            })
        })
    }

    /// The boundary this service's server enforces.
    pub fn server_auth(&self) -> ServerAuth {
        ServerAuth::new(self.inner.internal_key.verifier(), CALLERS)
    }

    /// The sessions table.
    pub fn sessions(&self) -> &SessionStore {
        &self.inner.sessions
    }

    /// The challenge store.
    pub fn challenges(&self) -> &dyn ChallengeStore {
        self.inner.challenges.as_ref()
    }

    /// A client of the identity service (clones share one channel).
    fn identity(&self) -> IdentityClient<TracedChannel> {
        self.inner.identity.clone()
    }

    /// The relay of this service's event outbox to the events service (default pacing);
    /// [`serve_opened`] runs one.
    pub fn relay(&self) -> p2_outbox::Relay {
        p2_outbox::Relay::new(
            self.sessions().database().clone(),
            self.sessions().outbox().clone(),
            self.inner.events.clone(),
        )
    }
}

/// The tonic service.
pub fn grpc_service(handlers: SessionGrpc) -> pb::session_server::SessionServer<SessionGrpc> {
    pb::session_server::SessionServer::new(handlers)
}

/// Runs the session service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: SessionConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handlers = SessionGrpc::open(&config).await?;
    serve_opened(handlers, config.shutdown.grace(), listener, shutdown).await
}

/// Serves already opened `handlers` (see [`serve`]; `polyproto session` opens first, then
/// binds its metrics listener, then calls this), with the event outbox relay beside them.
/// Shutdown order: the server goes NOT_SERVING and drains; then the relay stops (what the
/// last requests queued is delivered by the next start, or by another replica); then the
/// database pool closes (the handlers' storage is unusable afterwards).
pub async fn serve_opened(
    handlers: SessionGrpc,
    grace: std::time::Duration,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = handlers.server_auth();
    let probe = handlers.probe();
    let db = handlers.sessions().database().clone();
    let relay_stop = CancellationToken::new();
    let relay = handlers.relay().spawn(relay_stop.clone());
    let result = p2_runtime::grpc::serve(
        grpc_service(handlers),
        auth,
        grace,
        Some(probe),
        listener,
        shutdown,
    )
    .await;
    relay_stop.cancel();
    if let Err(error) = relay.await {
        tracing::error!(error = %error, "the session event outbox relay panicked");
    }
    // Last: every connection closed before this returns (SQLite checkpoints its WAL then),
    // so a stopped service leaves its files settled.
    db.pool.close().await;
    result
}
