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
//! - [`caller`]: [`Caller`], the authenticated session a request comes from.
//! - [`sessions`]: authenticate a token, password + ID-CSR login (with compensation), issue a
//!   token for a session, delete a session (token first, then its ID-Cert through identity).
//! - [`challenge`]: issue challenge strings bound to a session and verify their solutions
//!   against the session's current ID-Cert (the RPC and the gateway's
//!   `X-P2-Challenge-String-Solution` check share it).
//! - [`events`]: the marked call sites of the gateway events this service causes.
//! - [`grpc`]: the `polyproto.session.v1.Session` implementation (edge conversions only).
//! - [`error`]: [`SessionError`] and its one mapping to `tonic::Status`.
//!
//! Key trials and foreign ID-Cert updates still answer `UNIMPLEMENTED`.
//!
//! Entry points: [`serve`] runs the service on a pre-bound listener until shutdown;
//! [`grpc_service`] builds the tonic service; [`SessionGrpc::open`] connects everything from
//! a [`SessionConfig`], [`SessionGrpc::new`] from parts (tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use p2_proto::identity::v1::identity_client::IdentityClient;
use p2_proto::session::v1 as pb;
use p2_runtime::grpc::TracedChannel;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod caller;
pub mod challenge;
pub mod error;
pub mod events;
pub mod grpc;
pub mod sessions;
pub mod storage;
pub mod token;

pub use caller::Caller;
pub use challenge::DEFAULT_CHALLENGE_TTL_SECS;
pub use error::SessionError;
pub use storage::MIGRATIONS;

use storage::{ChallengeStore, SessionStore};

/// Default gRPC listen address of the session service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// Flags of the session service.
#[derive(Debug, Clone, Args)]
pub struct SessionConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// Redis URL for challenges and key trials (e.g. `redis://redis:6379/`); unset keeps them
    /// in process memory (embedded mode, one replica only).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
    /// URL of the identity service.
    #[arg(
        long = "identity-url",
        env = "P2_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub identity_url: String,
    /// URL of the events service.
    #[arg(
        long = "events-url",
        env = "P2_EVENTS_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub events_url: String,
    /// Lifetime of a challenge string, in seconds (at least 1).
    #[arg(long = "challenge-ttl-secs", env = "P2_CHALLENGE_TTL_SECS", default_value_t = DEFAULT_CHALLENGE_TTL_SECS)]
    pub challenge_ttl_secs: u64,
}

/// The gRPC handler set of the session service; cheap to clone (one shared state).
///
/// Besides the tonic trait, its inherent methods (`authenticate_token`, `password_login`,
/// `issue_token`, `end_session`, `issue_challenge`, `check_challenge_solution`) are the
/// service's operations with typed errors, for in-process callers and tests.
#[derive(Clone)]
pub struct SessionGrpc {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: SessionStore,
    challenges: Arc<dyn ChallengeStore>,
    identity: IdentityClient<TracedChannel>,
    challenge_ttl: Duration,
}

impl SessionGrpc {
    /// Connects storage (running migrations) and Redis when configured, else uses the
    /// in-process challenge store; the identity channel connects lazily. Fails with one clear
    /// line when storage or Redis does not answer or a flag is out of range.
    pub async fn open(config: &SessionConfig) -> anyhow::Result<Self> {
        if config.challenge_ttl_secs == 0 {
            anyhow::bail!("--challenge-ttl-secs (P2_CHALLENGE_TTL_SECS) must be at least 1");
        }
        let identity = IdentityClient::new(p2_runtime::grpc::channel(&config.identity_url)?);
        let db = p2_runtime::storage::connect(&config.database_url, "session", MIGRATIONS).await?;
        let challenges: Arc<dyn ChallengeStore> = match &config.redis_url {
            Some(url) => Arc::new(storage::RedisChallengeStore::new(
                p2_runtime::kv::connect(url, "session").await?,
                storage::redis::DEFAULT_PREFIX,
            )),
            None => Arc::new(storage::MemoryChallengeStore::default()),
        };
        // Embedded mode (SQLite, no Redis) is one process by definition: it may keep the
        // token index in memory, so token checks need no database round trip.
        let embedded =
            config.redis_url.is_none() && db.backend == p2_runtime::storage::Backend::Sqlite;
        let store = if embedded {
            SessionStore::with_memory_index(db).await?
        } else {
            SessionStore::new(db)
        };
        Ok(Self::new(
            store,
            challenges,
            identity,
            Duration::from_secs(config.challenge_ttl_secs),
        ))
    }

    /// Handlers over ready parts: the sessions table, a challenge store, an identity client
    /// (its channel may connect lazily; only login, session deletion and challenge
    /// verification call it) and the challenge lifetime.
    pub fn new(
        sessions: SessionStore,
        challenges: Arc<dyn ChallengeStore>,
        identity: IdentityClient<TracedChannel>,
        challenge_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions,
                challenges,
                identity,
                challenge_ttl,
            }),
        }
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
    p2_runtime::grpc::serve(grpc_service(handlers), listener, shutdown).await
}
