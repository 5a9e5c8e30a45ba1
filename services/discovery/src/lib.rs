//! The discovery service: each actor's service → provider table (core spec 9) with at most
//! one primary provider per (actor, service).
//!
//! This crate currently provides the service's process shape — configuration, storage
//! checked and migrated at start, gRPC health — and answers its RPCs with `UNIMPLEMENTED`
//! until the discovery work fills them in.

use std::net::SocketAddr;

use clap::Args;
use p2_proto::discovery::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Default gRPC listen address of the discovery service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";

/// The discovery schema, in order.
pub const MIGRATIONS: &[p2_runtime::storage::Migration] = &[];

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
    #[arg(long = "identity-url", env = "P2_IDENTITY_URL", default_value = "http://127.0.0.1:50051")]
    pub identity_url: String,
}

/// The gRPC handler set of the discovery service.
#[derive(Clone)]
pub struct DiscoveryGrpc {
    _db: p2_runtime::storage::Database,
}

impl DiscoveryGrpc {
    /// Connects and migrates storage; fails with one clear line when it does not answer.
    pub async fn open(config: &DiscoveryConfig) -> anyhow::Result<Self> {
        let db =
            p2_runtime::storage::connect(&config.database_url, "discovery", MIGRATIONS).await?;
        Ok(Self { _db: db })
    }
}

/// The tonic service.
pub fn grpc_service(handlers: DiscoveryGrpc) -> pb::discovery_server::DiscoveryServer<DiscoveryGrpc> {
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

fn not_yet() -> Status {
    Status::unimplemented("service discovery is not available on this server yet")
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryGrpc {
    async fn add_service(
        &self,
        _request: Request<pb::AddServiceRequest>,
    ) -> Result<Response<pb::AddServiceResponse>, Status> {
        Err(not_yet())
    }

    async fn remove_service(
        &self,
        _request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        Err(not_yet())
    }

    async fn set_primary(
        &self,
        _request: Request<pb::SetPrimaryRequest>,
    ) -> Result<Response<pb::SetPrimaryResponse>, Status> {
        Err(not_yet())
    }

    async fn discover(
        &self,
        _request: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        Err(not_yet())
    }
}
