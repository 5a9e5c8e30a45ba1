//! The events service: the per-actor event log (Redis Streams in production, in process in
//! embedded mode), sequence numbers, resume and the REST polling cursor.
//!
//! This crate currently provides the service's process shape — configuration, the Redis
//! connection checked at start, gRPC health — and answers its RPCs with `UNIMPLEMENTED` until
//! the events work fills them in.

use std::net::SocketAddr;
use std::pin::Pin;

use clap::Args;
use p2_proto::events::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Default gRPC listen address of the events service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";

/// Flags of the events service.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Redis URL for the event streams; unset keeps them in process memory (embedded mode,
    /// one replica only).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
}

/// The gRPC handler set of the events service.
#[derive(Clone, Default)]
pub struct EventsGrpc {
    _private: (),
}

impl EventsGrpc {
    /// Connects Redis (when configured); fails with one clear line when it does not answer.
    pub async fn open(config: &EventsConfig) -> anyhow::Result<Self> {
        if let Some(url) = &config.redis_url {
            p2_runtime::kv::connect(url, "events").await?;
        }
        Ok(Self::default())
    }
}

/// The tonic service.
pub fn grpc_service(handlers: EventsGrpc) -> pb::events_server::EventsServer<EventsGrpc> {
    pb::events_server::EventsServer::new(handlers)
}

/// Runs the events service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: EventsConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handlers = EventsGrpc::open(&config).await?;
    p2_runtime::grpc::serve(grpc_service(handlers), listener, shutdown).await
}

fn not_yet() -> Status {
    Status::unimplemented("the event stream is not available on this server yet")
}

/// The stream type of `Subscribe`.
pub type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsGrpc {
    type SubscribeStream = EventStream;

    async fn publish(
        &self,
        _request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Err(not_yet())
    }

    async fn subscribe(
        &self,
        _request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(not_yet())
    }

    async fn poll(
        &self,
        _request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        Err(not_yet())
    }
}
