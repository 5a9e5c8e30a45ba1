//! The discovery service: each actor's service → provider table (core spec 9) with at most
//! one primary provider per (actor, service), and the public discovery of an actor's
//! providers.
//!
//! Layout:
//! - [`DiscoveryConfig`], [`serve`]: the process shape (flags, storage migrated at start,
//!   gRPC health); `polyproto discovery` and `polyproto up` call these.
//! - [`grpc`]: the `polyproto.discovery.v1.Discovery` handlers ([`DiscoveryGrpc`]).
//! - [`model`]: service names (spec 8.2), provider URLs, limits. Pure.
//! - [`store`]: the SQL table; the database enforces "one primary per (actor, service)".
//! - [`directory`]: which actors are registered here, asked of the identity service.
//! - [`error`]: [`DiscoveryError`] and its one mapping to gRPC status codes.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use p2_proto::discovery::v1 as pb;
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

/// Flags of the discovery service.
#[derive(Debug, Clone, Args)]
pub struct DiscoveryConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// URL of the identity service (to check that actors exist).
    #[arg(
        long = "identity-url",
        env = "P2_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub identity_url: String,
}

impl DiscoveryGrpc {
    /// Connects and migrates storage (failing with one clear line when it does not answer)
    /// and prepares the identity client (which connects lazily).
    pub async fn open(config: &DiscoveryConfig) -> anyhow::Result<Self> {
        let db =
            p2_runtime::storage::connect(&config.database_url, "discovery", MIGRATIONS).await?;
        let directory = directory::IdentityDirectory::connect(&config.identity_url)?;
        Ok(Self::new(store::Store::new(db), Arc::new(directory)))
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
    let handlers = DiscoveryGrpc::open(&config).await?;
    p2_runtime::grpc::serve(grpc_service(handlers), listener, shutdown).await
}
