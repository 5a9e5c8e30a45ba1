//! The discovery service: each actor's service → provider table (core spec 9) with at most
//! one primary provider per (actor, service), and the public discovery of an actor's
//! providers.
//!
//! Layout:
//! - [`DiscoveryConfig`], [`serve`]: the process shape (flags, storage migrated at start,
//!   gRPC health); `polyproto discovery` and `polyproto up` call these.
//! - [`grpc`]: the `polyproto.discovery.v1.Discovery` handlers ([`DiscoveryGrpc`]).
//! - [`model`]: service names (spec 8.2), provider URLs, limits. Pure.
//! - [`store`]: the SQL tables; the database enforces "one primary per (actor, service)",
//!   and the per-actor provider bound is taken in each insert's transaction.
//! - [`directory`]: which actors are registered here, asked of the identity service.
//! - [`error`]: [`DiscoveryError`] and its one mapping to gRPC status codes.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use p2_proto::discovery::v1 as pb;
use p2_runtime::internal::{CallerPolicy, Component, InternalKeyConfig, ServerAuth};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod directory;
pub mod error;
pub mod grpc;
pub mod model;
pub mod store;

pub use error::DiscoveryError;
pub use grpc::DiscoveryGrpc;
pub use store::MIGRATIONS;

/// Default gRPC listen address of the discovery service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";

/// Which component may call which RPC: the gateway, which translates the public routes.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.discovery.v1.Discovery/AddService",
        &[Component::Gateway],
    ),
    (
        "/polyproto.discovery.v1.Discovery/RemoveService",
        &[Component::Gateway],
    ),
    (
        "/polyproto.discovery.v1.Discovery/SetPrimary",
        &[Component::Gateway],
    ),
    (
        "/polyproto.discovery.v1.Discovery/Discover",
        &[Component::Gateway],
    ),
];

/// Flags of the discovery service.
#[derive(Debug, Clone, Args)]
pub struct DiscoveryConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// The database connection pool.
    #[command(flatten)]
    pub pool: p2_runtime::storage::PoolConfig,
    /// URL of the identity service (to check that actors exist).
    #[arg(
        long = "identity-url",
        env = "P2_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub identity_url: String,
    /// How the server shuts down.
    #[command(flatten)]
    pub shutdown: p2_runtime::config::ShutdownConfig,
    /// The deployment's internal key.
    #[command(flatten)]
    pub internal: InternalKeyConfig,
}

/// The opened service: handlers plus the boundary its server enforces.
pub struct Opened {
    /// The handlers.
    pub handlers: DiscoveryGrpc,
    /// Credential check and caller allow-list ([`CALLERS`]).
    pub auth: ServerAuth,
}

impl DiscoveryGrpc {
    /// Loads the internal key, connects and migrates storage (failing with one clear line when
    /// it does not answer) and prepares the identity client (which connects lazily).
    pub async fn open(config: &DiscoveryConfig) -> anyhow::Result<Opened> {
        let key = config.internal.load()?;
        let db = p2_runtime::storage::connect_with(
            &config.database_url,
            "discovery",
            MIGRATIONS,
            &config.pool,
        )
        .await?;
        let directory = directory::IdentityDirectory::connect(
            &config.identity_url,
            &key.credential(Component::Discovery),
        )?;
        Ok(Opened {
            handlers: Self::new(
                store::Store::new(db),
                Arc::new(directory),
                key.assertion_key(),
            ),
            auth: ServerAuth::new(key.verifier(), CALLERS),
        })
    }
}

impl DiscoveryGrpc {
    /// Readiness: the database answers.
    pub fn probe(&self) -> p2_runtime::grpc::Probe {
        let db = self.store().database().clone();
        Arc::new(move || {
            let db = db.clone();
            Box::pin(async move { db.ping().await })
        })
    }
}

/// The tonic service.
pub fn grpc_service(
    handlers: DiscoveryGrpc,
) -> pb::discovery_server::DiscoveryServer<DiscoveryGrpc> {
    pb::discovery_server::DiscoveryServer::new(handlers)
}

/// Runs the discovery service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: DiscoveryConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let opened = DiscoveryGrpc::open(&config).await?;
    serve_opened(opened, config.shutdown.grace(), listener, shutdown).await
}

/// Serves an already opened service (see [`serve`]; `polyproto discovery` opens first, then
/// binds its metrics listener, then calls this).
pub async fn serve_opened(
    Opened { handlers, auth }: Opened,
    grace: std::time::Duration,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let probe = handlers.probe();
    p2_runtime::grpc::serve(
        grpc_service(handlers),
        auth,
        grace,
        Some(probe),
        listener,
        shutdown,
    )
    .await
}
