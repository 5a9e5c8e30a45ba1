//! The events service: every session's event log (Redis Streams in production, in process in
//! embedded mode), fanned out on write from the publications of identity and session, read by
//! the gateway as a live stream (Subscribe), by polling (Poll, `GET /events`), and for resumes
//! (RecordDelivered, ResumeFrom). The contract is `proto/polyproto/events/v1/events.proto`.
//!
//! Layout:
//! - this file: the flags ([`EventsConfig`], [`EventsOptions`]), [`EventsGrpc`] and [`serve`];
//! - [`grpc`]: the `polyproto.events.v1.Events` handlers, converting at the edge;
//! - [`service`]: [`EventLog`], the operations on checked values over any store;
//! - [`model`]: sessions, events, audiences, deliveries, the resume rule. Pure;
//! - [`store`]: the [`store::EventStore`] trait and its bounds, [`store::redis`] and
//!   [`store::memory`] side by side;
//! - [`feed`]: Subscribe streams (backlog, then live; bounded; gap and close);
//! - [`wake`]: the per-process wake-up registry the streams wait on;
//! - [`error`]: [`EventsError`] and its one mapping to gRPC status codes.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use p2_proto::events::v1 as pb;
use p2_runtime::internal::{AssertionKey, CallerPolicy, Component, InternalKeyConfig, ServerAuth};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod error;
pub mod feed;
pub mod grpc;
pub mod invalidations;
pub mod model;
pub mod service;
pub mod store;
pub mod wake;

pub use error::EventsError;
pub use service::{EventLog, Stats};

/// Default gRPC listen address of the events service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";

/// Which component may call which RPC: the services that cause events publish them (and
/// session opens and closes sessions); the gateway subscribes, polls and records deliveries
/// for its clients.
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
    (
        "/polyproto.events.v1.Events/Invalidate",
        &[Component::Gateway],
    ),
    (
        "/polyproto.events.v1.Events/WatchInvalidations",
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
    /// The event log's bounds.
    #[command(flatten)]
    pub options: EventsOptions,
    /// How the server shuts down.
    #[command(flatten)]
    pub shutdown: p2_runtime::config::ShutdownConfig,
    /// The deployment's internal key.
    #[command(flatten)]
    pub internal: InternalKeyConfig,
}

/// The event log's settings (`polyproto events`; `polyproto up` uses the defaults, with
/// identity's `--max-sessions-per-actor`).
#[derive(Debug, Clone, Args)]
pub struct EventsOptions {
    /// Most events one session's log keeps (1 to 10000); beyond it the oldest are dropped
    /// (a Subscribe stream or Poll that had not read them reports a gap or `truncated`). Each
    /// event is at most 64 KiB of data, a core one about 3 KiB.
    #[arg(long = "max-events-per-session", env = "P2_MAX_EVENTS_PER_SESSION", default_value_t = store::DEFAULT_MAX_EVENTS_PER_SESSION)]
    pub max_events_per_session: u64,
    /// Most open sessions of one actor that actor-wide events reach (at least 1; as identity's
    /// bound, so normally never reached). Beyond it the least recently active session is
    /// dropped with its log; it is reopened, empty, when it connects again.
    #[arg(long = "max-sessions-per-actor", env = "P2_MAX_SESSIONS_PER_ACTOR", default_value_t = store::DEFAULT_MAX_SESSIONS_PER_ACTOR)]
    pub max_sessions_per_actor: u64,
    /// Prefix of the event log's Redis keys and Pub/Sub channel; deployments sharing one Redis
    /// need their own.
    #[arg(long = "redis-prefix", env = "P2_REDIS_PREFIX", default_value = store::redis::DEFAULT_PREFIX)]
    pub redis_prefix: String,
}

impl Default for EventsOptions {
    fn default() -> Self {
        Self {
            max_events_per_session: store::DEFAULT_MAX_EVENTS_PER_SESSION,
            max_sessions_per_actor: store::DEFAULT_MAX_SESSIONS_PER_ACTOR,
            redis_prefix: store::redis::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl EventsOptions {
    /// The store bounds these options set (the rest at their defaults); a clear error for a
    /// value out of range.
    pub fn limits(&self) -> anyhow::Result<store::Limits> {
        if !(1..=store::MAX_EVENTS_PER_SESSION).contains(&self.max_events_per_session) {
            anyhow::bail!(
                "--max-events-per-session (P2_MAX_EVENTS_PER_SESSION) must be 1 to {}, not {}",
                store::MAX_EVENTS_PER_SESSION,
                self.max_events_per_session
            );
        }
        if self.max_sessions_per_actor == 0 {
            anyhow::bail!(
                "--max-sessions-per-actor (P2_MAX_SESSIONS_PER_ACTOR) must be at least 1"
            );
        }
        Ok(store::Limits {
            max_events_per_session: usize::try_from(self.max_events_per_session)?,
            max_sessions_per_actor: usize::try_from(self.max_sessions_per_actor)
                .unwrap_or(usize::MAX),
            ..store::Limits::default()
        })
    }
}

/// The gRPC handler set of the events service. Cheap to clone.
#[derive(Clone)]
pub struct EventsGrpc {
    pub(crate) assertions: AssertionKey,
    auth: ServerAuth,
    pub(crate) log: EventLog,
    /// Keeps the log's counters in the metrics (`polyproto_events_*`) while the handlers live.
    _metrics: Arc<LogGauges>,
}

/// The event log as the metrics sample it at scrape time.
struct LogGauges(EventLog);

impl p2_runtime::metrics::Sampled for LogGauges {
    fn sample(&self, samples: &p2_runtime::metrics::Samples<'_>) {
        let stats = self.0.stats();
        samples.events(
            stats.publications,
            stats.repeats,
            stats.appended,
            stats.subscribers,
        );
        samples.invalidation_feeds(stats.invalidation_feeds);
    }
}

impl EventsGrpc {
    /// Loads the internal key and opens the store: Redis when configured (checking that it
    /// answers, and starting its Pub/Sub listener), else in process. Fails with one clear line
    /// when a flag is out of range or Redis does not answer.
    pub async fn open(config: &EventsConfig) -> anyhow::Result<Self> {
        let key = config.internal.load()?;
        let limits = config.options.limits()?;
        let stop = CancellationToken::new();
        let store: Arc<dyn store::EventStore> = match &config.redis_url {
            Some(url) => Arc::new(
                store::RedisEventStore::connect(
                    url,
                    &config.options.redis_prefix,
                    limits,
                    stop.clone(),
                )
                .await?,
            ),
            None => Arc::new(store::MemoryEventStore::new(limits, wake::Wakeups::new())),
        };
        Ok(Self::new(EventLog::new(store, stop), &key))
    }

    /// Handlers over an opened `log`, for the deployment whose internal key is `key`.
    pub fn new(log: EventLog, key: &p2_runtime::internal::InternalKey) -> Self {
        let metrics = Arc::new(LogGauges(log.clone()));
        let sampled: std::sync::Weak<LogGauges> = Arc::downgrade(&metrics);
        p2_runtime::metrics::register_sampled(sampled);
        Self {
            assertions: key.assertion_key(),
            auth: ServerAuth::new(key.verifier(), CALLERS),
            log,
            _metrics: metrics,
        }
    }

    /// The operations behind the handlers.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Readiness: the store answers (Redis `PING`; the in-process store always does).
    pub fn probe(&self) -> p2_runtime::grpc::Probe {
        let store = self.log.store().clone();
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.ready().await })
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
/// binds its metrics listener, then calls this). Once `shutdown` is cancelled and the `grace`
/// is over, every Subscribe stream ends with UNAVAILABLE, so the drain does not wait for
/// streams that never end by themselves and their clients resume on another replica.
pub async fn serve_opened(
    handlers: EventsGrpc,
    grace: std::time::Duration,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = handlers.server_auth();
    let probe = handlers.probe();
    let log = handlers.log.clone();
    let ending = shutdown.clone();
    tokio::spawn(async move {
        ending.cancelled().await;
        tokio::time::sleep(grace).await;
        log.shutdown();
    });
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
