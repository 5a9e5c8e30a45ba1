//! The events service: the per-actor event log (Redis Streams in production, in process in
//! embedded mode), sequence numbers, resume and the REST polling cursor.
//!
//! This crate currently provides the service's process shape — configuration, the Redis
//! connection checked at start, gRPC health, the internal boundary ([`CALLERS`], caller
//! assertions for Subscribe and Poll) — and answers its RPCs with `UNIMPLEMENTED` until the
//! events work fills them in.
//!
//! Layout: this file holds the flags, [`EventsGrpc`] and [`serve`]; [`grpc`] the
//! `polyproto.events.v1.Events` handlers.

use std::net::SocketAddr;

use clap::Args;
use p2_proto::events::v1 as pb;
use p2_runtime::internal::{AssertionKey, CallerPolicy, Component, InternalKeyConfig, ServerAuth};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod grpc;

/// Default gRPC listen address of the events service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";

/// Which component may call which RPC: the services that cause events publish them; the
/// gateway subscribes and polls for its clients.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.events.v1.Events/Publish",
        &[Component::Identity, Component::Session],
    ),
    (
        "/polyproto.events.v1.Events/Subscribe",
        &[Component::Gateway],
    ),
    (
        "/polyproto.events.v1.Events/OpenSession",
        &[Component::Session],
    ),
    (
        "/polyproto.events.v1.Events/CloseSession",
        &[Component::Session],
    ),
    ("/polyproto.events.v1.Events/Poll", &[Component::Gateway]),
    (
        "/polyproto.events.v1.Events/RecordDelivered",
        &[Component::Gateway],
    ),
    (
        "/polyproto.events.v1.Events/ResumeFrom",
        &[Component::Gateway],
    ),
];

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
    /// How the server shuts down.
    #[command(flatten)]
    pub shutdown: p2_runtime::config::ShutdownConfig,
    /// The deployment's internal key.
    #[command(flatten)]
    pub internal: InternalKeyConfig,
}

/// The gRPC handler set of the events service.
#[derive(Clone)]
pub struct EventsGrpc {
    pub(crate) assertions: AssertionKey,
    auth: ServerAuth,
    redis: Option<redis::aio::ConnectionManager>,
}

impl EventsGrpc {
    /// Loads the internal key and connects Redis (when configured); fails with one clear line
    /// when either is missing or does not answer.
    pub async fn open(config: &EventsConfig) -> anyhow::Result<Self> {
        let key = config.internal.load()?;
        let redis = match &config.redis_url {
            Some(url) => Some(p2_runtime::kv::connect(url, "events").await?),
            None => None,
        };
        Ok(Self {
            assertions: key.assertion_key(),
            auth: ServerAuth::new(key.verifier(), CALLERS),
            redis,
        })
    }

    /// Readiness: Redis answers (when configured).
    pub fn probe(&self) -> p2_runtime::grpc::Probe {
        let redis = self.redis.clone();
        std::sync::Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move {
                match &redis {
                    Some(conn) => p2_runtime::kv::ping(conn).await,
                    None => true,
                }
            })
        })
    }

    /// The boundary this service's server enforces.
    pub fn server_auth(&self) -> ServerAuth {
        self.auth.clone()
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
    serve_opened(handlers, config.shutdown.grace(), listener, shutdown).await
}

/// Serves already opened `handlers` (see [`serve`]; `polyproto events` opens first, then
/// binds its metrics listener, then calls this).
pub async fn serve_opened(
    handlers: EventsGrpc,
    grace: std::time::Duration,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = handlers.server_auth();
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
