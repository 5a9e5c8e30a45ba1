//! The `polyproto` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use p2_runtime::config::TelemetryConfig;
use p2_runtime::metrics::MetricsListen;
use p2_runtime::shutdown::{CancellationToken, cancel_on_signal};

use crate::stack::{self, StackConfig, Storage};

/// A polyproto home server.
#[derive(Debug, Parser)]
#[command(name = "polyproto", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// How internal calls reach the replicas of a service.
    #[command(flatten)]
    pub upstream: p2_runtime::balance::UpstreamConfig,
    /// Address of this process's metrics listener (`GET /metrics`, Prometheus text format;
    /// keep it off the public network): `host:port` (port 0 picks a free one) or `off`.
    /// Default: 127.0.0.1:9090 (gateway, up), 127.0.0.1:9091–9094 (identity, session,
    /// discovery, events).
    #[arg(long = "metrics-listen", env = "P2_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<MetricsListen>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process with embedded storage (SQLite under --data-dir); prints
    /// `listening on http://ADDR` once every route answers.
    Up(UpConfig),
    /// The HTTP gateway alone (talks to the four services over gRPC).
    Gateway(p2_gateway::GatewayConfig),
    /// The identity gRPC service alone.
    Identity(p2_identity::IdentityConfig),
    /// The session gRPC service alone.
    Session(p2_session::SessionConfig),
    /// The discovery gRPC service alone.
    Discovery(p2_discovery::DiscoveryConfig),
    /// The events gRPC service alone.
    Events(p2_events::EventsConfig),
    /// Operator commands (create actors, rotate the server key), with or without a running
    /// server.
    Admin(crate::admin::AdminArgs),
    /// Print a component's credential derived from the internal key (`P2_INTERNAL_KEY`), for
    /// deployments that give the gateway only its own credential (`P2_COMPONENT_CREDENTIAL`).
    InternalCredential(InternalCredentialArgs),
    /// Exit 0 when a component is ready: `http://HOST:PORT/readyz` (the gateway) or `HOST:PORT`
    /// (a gRPC service's health), for container health checks.
    Healthcheck(HealthcheckArgs),
}

/// Flags of `polyproto healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// What to check: `http://HOST:PORT/PATH` or `HOST:PORT` (gRPC health).
    #[arg(env = "P2_HEALTHCHECK", default_value = crate::healthcheck::DEFAULT_TARGET)]
    pub target: String,
}

/// Flags of `polyproto internal-credential`.
#[derive(Debug, Clone, Args)]
pub struct InternalCredentialArgs {
    /// The component: gateway, identity, session, discovery or events.
    pub component: String,
    /// The deployment's internal key.
    #[command(flatten)]
    pub internal: p2_runtime::internal::InternalKeyConfig,
}

/// Flags of `polyproto up`: its own (listen address, data directory, token cache) plus the
/// services' option blocks, flattened (one declaration each, shared with the components).
#[derive(Debug, Clone, Args)]
pub struct UpConfig {
    /// Address the gateway listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = p2_gateway::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory for the SQLite databases and the generated key encryption key.
    #[arg(long = "data-dir", env = "P2_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Identity settings.
    #[command(flatten)]
    pub identity: p2_identity::IdentityOptions,
    /// Session settings.
    #[command(flatten)]
    pub session: p2_session::SessionOptions,
    /// Gateway settings.
    #[command(flatten)]
    pub gateway: p2_gateway::GatewayOptions,
    /// How long the gateway caches resolved session tokens, in milliseconds; 0 disables. Every
    /// session change through the gateway (the only one in `up`) clears it at once.
    #[arg(long = "token-cache-ms", env = "P2_TOKEN_CACHE_MS", default_value_t = crate::stack::DEFAULT_UP_TOKEN_CACHE_MS)]
    pub token_cache_ms: u64,
}

impl UpConfig {
    /// The stack configuration for embedded storage, serving metrics on `metrics_listen`.
    pub fn stack_config(&self, metrics_listen: Option<SocketAddr>) -> StackConfig {
        StackConfig {
            listen: self.listen,
            storage: Storage::Embedded {
                data_dir: self.data_dir.clone(),
            },
            identity: self.identity.clone(),
            session: self.session.clone(),
            gateway: self.gateway.clone(),
            token_cache_ms: self.token_cache_ms,
            metrics_listen,
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Binds the metrics listener `listen` names and serves it until `stop` is cancelled. Called
/// once a component's storage is open, so a start-up error names what is really wrong.
async fn start_metrics(listen: MetricsListen, stop: &CancellationToken) -> anyhow::Result<()> {
    let Some(listener) = p2_runtime::metrics::bind(listen).await? else {
        return Ok(());
    };
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = p2_runtime::metrics::serve(listener, stop).await {
            tracing::warn!(error = format!("{error:#}"), "metrics listener stopped");
        }
    });
    Ok(())
}

/// Runs the parsed command until it finishes or a signal stops it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let component = match &cli.command {
        Command::Up(_) => "up",
        Command::Gateway(_) => "gateway",
        Command::Identity(_) => "identity",
        Command::Session(_) => "session",
        Command::Discovery(_) => "discovery",
        Command::Events(_) => "events",
        Command::Admin(_) => "admin",
        Command::InternalCredential(_) => "admin",
        Command::Healthcheck(_) => "healthcheck",
    };
    let telemetry = p2_runtime::telemetry::init(&cli.telemetry, component)?;
    cli.upstream.apply();
    p2_runtime::metrics::set_process_component(component);
    let metrics = |default: SocketAddr| cli.metrics_listen.unwrap_or(MetricsListen::On(default));
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    // The metrics listener outlives the component's drain: stopped once it has returned.
    let metrics_stop = CancellationToken::new();
    let result = match cli.command {
        Command::Up(config) => {
            let listen = metrics(p2_runtime::metrics::DEFAULT_GATEWAY_LISTEN).addr();
            let stack = stack::start(config.stack_config(listen)).await?;
            let token = stack.shutdown_token();
            let addr = stack.addr;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                token.cancel();
            });
            // Scripts and tests wait for exactly this line on stdout.
            println!("listening on http://{addr}");
            if let Some(metrics) = stack.metrics_addr {
                println!(
                    "metrics on http://{metrics}{}",
                    p2_runtime::metrics::METRICS_PATH
                );
            }
            tracing::info!(public_url = %stack.public_url, "polyproto home server ready");
            stack.wait().await
        }
        // Each component opens its storage (and checks its keys) before binding its metrics
        // listener, so a start-up error names what is really wrong.
        Command::Gateway(config) => {
            let listener = bind(config.listen).await?;
            let state = p2_gateway::AppState::new(&config, listener.local_addr()?)?;
            state.check_backends().await?;
            start_metrics(
                metrics(p2_runtime::metrics::DEFAULT_GATEWAY_LISTEN),
                &metrics_stop,
            )
            .await?;
            p2_gateway::serve(state, listener, shutdown).await
        }
        Command::Identity(config) => {
            let listener = bind(config.listen).await?;
            let state = p2_identity::IdentityState::open(&config).await?;
            start_metrics(
                metrics(p2_runtime::metrics::DEFAULT_IDENTITY_LISTEN),
                &metrics_stop,
            )
            .await?;
            p2_identity::serve_state(state, config.shutdown.grace(), listener, shutdown).await
        }
        Command::Session(config) => {
            let listener = bind(config.listen).await?;
            let handlers = p2_session::SessionGrpc::open(&config).await?;
            start_metrics(
                metrics(p2_runtime::metrics::DEFAULT_SESSION_LISTEN),
                &metrics_stop,
            )
            .await?;
            p2_session::serve_opened(handlers, config.shutdown.grace(), listener, shutdown).await
        }
        Command::Discovery(config) => {
            let listener = bind(config.listen).await?;
            let opened = p2_discovery::DiscoveryGrpc::open(&config).await?;
            start_metrics(
                metrics(p2_runtime::metrics::DEFAULT_DISCOVERY_LISTEN),
                &metrics_stop,
            )
            .await?;
            p2_discovery::serve_opened(opened, config.shutdown.grace(), listener, shutdown).await
        }
        Command::Events(config) => {
            let listener = bind(config.listen).await?;
            let handlers = p2_events::EventsGrpc::open(&config).await?;
            start_metrics(
                metrics(p2_runtime::metrics::DEFAULT_EVENTS_LISTEN),
                &metrics_stop,
            )
            .await?;
            p2_events::serve_opened(handlers, config.shutdown.grace(), listener, shutdown).await
        }
        Command::Admin(args) => crate::admin::run(args).await,
        Command::Healthcheck(args) => crate::healthcheck::check(&args.target).await,
        Command::InternalCredential(args) => {
            let component = p2_runtime::internal::Component::from_name(&args.component)
                .with_context(|| {
                    format!(
                        "unknown component {:?}: gateway, identity, session, discovery or events",
                        args.component
                    )
                })?;
            println!("{}", args.internal.load()?.credential(component).to_hex());
            Ok(())
        }
    };
    metrics_stop.cancel();
    telemetry.shutdown().await;
    result
}
