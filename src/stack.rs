//! Start the whole home server inside one process: four gRPC services on loopback ports and
//! the gateway in front of them. Storage is either embedded (SQLite files in a data directory,
//! in-process challenge and event stores) or external (one database URL per service plus
//! Redis).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use p2_runtime::shutdown::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Token cache lifetime of `polyproto up`'s single gateway, in milliseconds.
pub const DEFAULT_UP_TOKEN_CACHE_MS: u64 = p2_gateway::DEFAULT_TOKEN_CACHE_MS;

/// File name of the generated key encryption key inside an embedded data directory.
pub const KEY_FILE_NAME: &str = "key-encryption.key";

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// SQLite files under `data_dir`, in-process challenge and event stores.
    Embedded {
        /// The data directory (created if missing).
        data_dir: PathBuf,
    },
    /// External servers.
    External {
        /// Database URL of the identity service.
        identity_database_url: String,
        /// Database URL of the session service.
        session_database_url: String,
        /// Database URL of the discovery service.
        discovery_database_url: String,
        /// Redis URL for challenges, key trials and event streams.
        redis_url: String,
    },
}

/// Everything [`start`] needs: the storage choice, and the services' own option blocks (the
/// same ones `polyproto identity|session|gateway` take), so nothing is declared twice.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Gateway listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Storage choice.
    pub storage: Storage,
    /// Identity settings. In embedded mode without a key encryption key (or file), one is
    /// generated into the data directory.
    pub identity: p2_identity::IdentityOptions,
    /// Session settings.
    pub session: p2_session::SessionOptions,
    /// Gateway settings.
    pub gateway: p2_gateway::GatewayOptions,
    /// Lifetime of cached token resolutions in the gateway, in milliseconds (0: off); used
    /// while the events service's invalidation feed is live.
    pub token_cache_ms: u64,
    /// Where to serve every component's metrics (`GET /metrics`, one listener for all; port 0
    /// picks a free one); none (the default of [`StackConfig::embedded`]) binds nothing.
    pub metrics_listen: Option<SocketAddr>,
}

impl StackConfig {
    /// Embedded storage in `data_dir`, gateway on `listen`, defaults elsewhere.
    pub fn embedded(listen: SocketAddr, domain: &str, data_dir: &Path) -> Self {
        Self {
            listen,
            storage: Storage::Embedded {
                data_dir: data_dir.to_owned(),
            },
            identity: p2_identity::IdentityOptions::for_domain(domain),
            session: p2_session::SessionOptions::default(),
            gateway: p2_gateway::GatewayOptions::default(),
            token_cache_ms: DEFAULT_UP_TOKEN_CACHE_MS,
            metrics_listen: None,
        }
    }
}

/// A running stack. Dropping it cancels the shutdown token (tasks then drain and stop).
pub struct Stack {
    /// The gateway's bound address.
    pub addr: SocketAddr,
    /// Public base URL the gateway announces.
    pub public_url: String,
    /// Bound gRPC addresses: identity, session, discovery, events.
    pub grpc_addrs: [SocketAddr; 4],
    /// The metrics listener's bound address, when [`StackConfig::metrics_listen`] asked for
    /// one.
    pub metrics_addr: Option<SocketAddr>,
    /// The in-memory internal key of this stack's components. Exposed for code in the same
    /// process (tests, the bench) that talks to the services directly; it never leaves the
    /// process.
    pub internal_key: p2_runtime::internal::InternalKey,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Stack {
    /// The token whose cancellation stops every component.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every component has stopped; the first failure stops the others and is
    /// returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = joined.context("a component task panicked")?;
            if let Err(error) = result {
                self.shutdown.cancel();
                first_error.get_or_insert(error.context(format!("{name} failed")));
            } else if !self.shutdown.is_cancelled() {
                self.shutdown.cancel();
                first_error.get_or_insert(anyhow::anyhow!("{name} stopped unexpectedly"));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Cancels every component and waits for them to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A tag that keeps a stack's Redis keys (throttle, rate limits) apart from other stacks':
/// one Redis may serve several in-process stacks (the tests, the bench), each its own
/// deployment, told apart by its identity database.
fn deployment_tag(identity_database_url: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    identity_database_url.hash(&mut hasher);
    format!("{:016x}:", hasher.finish())
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

/// Opens every component's storage, binds every listener, and starts serving. Returns once
/// every listener is bound and all storage answered, so routes answer as soon as it returns.
pub async fn start(config: StackConfig) -> anyhow::Result<Stack> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let (identity_db, session_db, discovery_db, redis_url, key_file) = match &config.storage {
        Storage::Embedded { data_dir } => {
            p2_runtime::storage::create_private_dir(data_dir)?;
            let key_file = data_dir.join(KEY_FILE_NAME);
            if config.identity.key_encryption_key.is_none()
                && config.identity.key_encryption_key_file.is_none()
            {
                p2_identity::cipher::KeyCipher::load_or_create_file(&key_file)?;
            }
            (
                p2_runtime::storage::sqlite_url_in(data_dir, "identity"),
                p2_runtime::storage::sqlite_url_in(data_dir, "session"),
                p2_runtime::storage::sqlite_url_in(data_dir, "discovery"),
                None,
                config
                    .identity
                    .key_encryption_key_file
                    .clone()
                    .or(Some(key_file)),
            )
        }
        Storage::External {
            identity_database_url,
            session_database_url,
            discovery_database_url,
            redis_url,
        } => (
            identity_database_url.clone(),
            session_database_url.clone(),
            discovery_database_url.clone(),
            Some(redis_url.clone()),
            config.identity.key_encryption_key_file.clone(),
        ),
    };

    let identity_listener = bind(loopback, "identity service").await?;
    let session_listener = bind(loopback, "session service").await?;
    let discovery_listener = bind(loopback, "discovery service").await?;
    let events_listener = bind(loopback, "events service").await?;
    let gateway_listener = bind(config.listen, "gateway").await?;
    let grpc_addrs = [
        identity_listener.local_addr()?,
        session_listener.local_addr()?,
        discovery_listener.local_addr()?,
        events_listener.local_addr()?,
    ];
    let url = |addr: SocketAddr| format!("http://{addr}");
    // One process, one deployment: its internal key lives in memory only, so the loopback
    // ports it prints admit no caller but its own components.
    let internal_key = p2_runtime::internal::InternalKey::generate();
    let internal = p2_runtime::internal::InternalKeyConfig::with_key(&internal_key);

    let tag = deployment_tag(&identity_db);
    let identity_config = p2_identity::IdentityConfig {
        listen: grpc_addrs[0],
        redis_prefix: format!("{}{tag}", p2_identity::throttle::REDIS_PREFIX),
        database_url: identity_db,
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: redis_url.clone(),
        options: p2_identity::IdentityOptions {
            key_encryption_key_file: key_file,
            ..config.identity.clone()
        },
        // The in-process events service; the outbox's bound is the default one.
        outbox: p2_outbox::OutboxConfig::new(url(grpc_addrs[3])),
        // The gateway drains before the services stop: no grace needed in one process.
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: internal.clone(),
    };
    let session_config = p2_session::SessionConfig {
        listen: grpc_addrs[1],
        database_url: session_db,
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: redis_url.clone(),
        redis_prefix: format!("{}{tag}", p2_session::storage::redis::DEFAULT_PREFIX),
        domain: config.identity.domain.clone(),
        identity_url: url(grpc_addrs[0]),
        options: config.session.clone(),
        outbox: p2_outbox::OutboxConfig::new(url(grpc_addrs[3])),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: internal.clone(),
    };
    let discovery_config = p2_discovery::DiscoveryConfig {
        listen: grpc_addrs[2],
        database_url: discovery_db,
        pool: p2_runtime::storage::PoolConfig::default(),
        identity_url: url(grpc_addrs[0]),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: internal.clone(),
    };
    let events_config = p2_events::EventsConfig {
        listen: grpc_addrs[3],
        redis_url: redis_url.clone(),
        options: p2_events::EventsOptions {
            max_sessions_per_actor: config.identity.max_sessions_per_actor,
            redis_prefix: format!("{}{tag}", p2_events::store::redis::DEFAULT_PREFIX),
            ..p2_events::EventsOptions::default()
        },
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: internal.clone(),
    };
    let gateway_config = p2_gateway::GatewayConfig {
        listen: config.listen,
        options: config.gateway.clone(),
        identity_url: url(grpc_addrs[0]),
        session_url: url(grpc_addrs[1]),
        discovery_url: url(grpc_addrs[2]),
        events_url: url(grpc_addrs[3]),
        token_cache_ms: config.token_cache_ms,
        internal,
        component_credential: None,
        // Rate-limit counters shared like the rest of the external state.
        redis_prefix: format!("{}{tag}", p2_gateway::ratelimit::DEFAULT_REDIS_PREFIX),
        redis_url: redis_url.clone(),
    };

    // Open every backend before serving anything, so a bad URL fails start-up as a whole.
    let identity = p2_identity::IdentityState::open(&identity_config).await?;
    let session = p2_session::SessionGrpc::open(&session_config).await?;
    let discovery = p2_discovery::DiscoveryGrpc::open(&discovery_config).await?;
    let events = p2_events::EventsGrpc::open(&events_config).await?;
    let addr = gateway_listener.local_addr()?;
    let gateway = p2_gateway::AppState::new(&gateway_config, addr)?;
    let public_url = gateway.public_url().to_owned();
    // Bound once the backends answered, so a start-up error names what is really wrong.
    let metrics_listener = match config.metrics_listen {
        Some(listen) => {
            p2_runtime::metrics::bind(p2_runtime::metrics::MetricsListen::On(listen)).await?
        }
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };

    // Shutdown order (CONVENTIONS 10): the gateway stops accepting and drains first; only when
    // it is done (or DRAIN_TIMEOUT passed) do the services behind it go NOT_SERVING and drain,
    // so the gateway's in-flight requests still reach them.
    let shutdown = CancellationToken::new();
    let services = CancellationToken::new();
    let (gateway_done_tx, gateway_done) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn({
        let shutdown = shutdown.clone();
        let services = services.clone();
        async move {
            shutdown.cancelled().await;
            let _ = tokio::time::timeout(p2_runtime::shutdown::DRAIN_TIMEOUT, gateway_done).await;
            services.cancel();
        }
    });
    let mut tasks = JoinSet::new();
    let token = services.clone();
    tasks.spawn(async move {
        (
            "identity",
            p2_identity::serve_state(
                identity,
                std::time::Duration::ZERO,
                identity_listener,
                token,
            )
            .await,
        )
    });
    let token = services.clone();
    tasks.spawn(async move {
        (
            "session",
            p2_session::serve_opened(session, std::time::Duration::ZERO, session_listener, token)
                .await,
        )
    });
    let token = services.clone();
    tasks.spawn(async move {
        let p2_discovery::Opened { handlers, auth } = discovery;
        let probe = handlers.probe();
        let service = p2_discovery::grpc_service(handlers);
        (
            "discovery",
            p2_runtime::grpc::serve(
                service,
                auth,
                std::time::Duration::ZERO,
                Some(probe),
                discovery_listener,
                token,
            )
            .await,
        )
    });
    let token = services.clone();
    tasks.spawn(async move {
        let auth = events.server_auth();
        let probe = events.probe();
        let service = p2_events::grpc_service(events);
        (
            "events",
            p2_runtime::grpc::serve(
                service,
                auth,
                std::time::Duration::ZERO,
                Some(probe),
                events_listener,
                token,
            )
            .await,
        )
    });
    let token = shutdown.clone();
    tasks.spawn(async move {
        let result = p2_gateway::serve(gateway, gateway_listener, token).await;
        let _ = gateway_done_tx.send(());
        ("gateway", result)
    });
    if let Some(listener) = metrics_listener {
        // Scraped until the services stop: the drain stays visible.
        let token = services.clone();
        tasks.spawn(async move { ("metrics", p2_runtime::metrics::serve(listener, token).await) });
    }

    Ok(Stack {
        addr,
        public_url,
        grpc_addrs,
        metrics_addr,
        internal_key,
        shutdown,
        tasks,
    })
}
