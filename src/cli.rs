//! The `polyproto` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use p2_runtime::config::TelemetryConfig;
use p2_runtime::shutdown::{CancellationToken, cancel_on_signal};
use secrecy::ExposeSecret as _;

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

/// Flags of `polyproto up`.
#[derive(Debug, Clone, Args)]
pub struct UpConfig {
    /// Address the gateway listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = p2_gateway::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The home server's domain (the domain part of every federation ID it issues).
    #[arg(long = "domain", env = "P2_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// Public base URL as clients reach it; defaults to `http://<listen address>`.
    #[arg(long = "public-url", env = "P2_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Directory for the SQLite databases and the generated key encryption key.
    #[arg(long = "data-dir", env = "P2_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// 32-byte key (64 hex characters) that encrypts the server's private keys at rest;
    /// generated into `<data-dir>/key-encryption.key` (mode 0600) when unset.
    #[arg(
        long = "key-encryption-key",
        env = "P2_KEY_ENCRYPTION_KEY",
        hide_env_values = true
    )]
    pub key_encryption_key: Option<secrecy::SecretString>,
    /// Validity of a newly generated root ID-Cert, in days.
    #[arg(long = "root-validity-days", env = "P2_ROOT_VALIDITY_DAYS", default_value_t = p2_identity::DEFAULT_ROOT_VALIDITY_DAYS)]
    pub root_validity_days: u64,
    /// Validity of an issued actor ID-Cert, in days (1 to 60).
    #[arg(long = "actor-cert-validity-days", env = "P2_ACTOR_CERT_VALIDITY_DAYS", default_value_t = p2_identity::DEFAULT_ACTOR_CERT_VALIDITY_DAYS)]
    pub actor_cert_validity_days: u64,
    /// Who may register: `open` or `closed` (only `polyproto admin create-actor`).
    #[arg(long = "registration", env = "P2_REGISTRATION", value_enum, default_value_t = p2_identity::Registration::Open)]
    pub registration: p2_identity::Registration,
    /// Lifetime of challenge strings, in seconds.
    #[arg(long = "challenge-ttl-secs", env = "P2_CHALLENGE_TTL_SECS", default_value_t = p2_session::DEFAULT_CHALLENGE_TTL_SECS)]
    pub challenge_ttl_secs: u64,
    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "P2_MAX_BODY_BYTES", default_value_t = p2_gateway::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// OpenID Connect issuer announced in `/.well-known/polyproto-core`, if any.
    #[arg(long = "oidc-issuer", env = "P2_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// How long the gateway caches public read responses, in milliseconds; 0 disables.
    #[arg(long = "public-cache-ms", env = "P2_PUBLIC_CACHE_MS", default_value_t = p2_gateway::DEFAULT_PUBLIC_CACHE_MS)]
    pub public_cache_ms: u64,
    /// How long the gateway caches resolved session tokens, in milliseconds; 0 disables. Every
    /// session change through the gateway (the only one in `up`) clears it at once.
    #[arg(long = "token-cache-ms", env = "P2_TOKEN_CACHE_MS", default_value_t = crate::stack::DEFAULT_UP_TOKEN_CACHE_MS)]
    pub token_cache_ms: u64,
}

impl UpConfig {
    /// The stack configuration for embedded storage.
    pub fn stack_config(&self) -> StackConfig {
        StackConfig {
            listen: self.listen,
            domain: self.domain.clone(),
            public_url: self.public_url.clone(),
            storage: Storage::Embedded {
                data_dir: self.data_dir.clone(),
            },
            key_encryption_key: self
                .key_encryption_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            root_validity_days: self.root_validity_days,
            actor_cert_validity_days: self.actor_cert_validity_days,
            registration: self.registration,
            challenge_ttl_secs: self.challenge_ttl_secs,
            max_body_bytes: self.max_body_bytes,
            oidc_issuer: self.oidc_issuer.clone(),
            public_cache_ms: self.public_cache_ms,
            token_cache_ms: self.token_cache_ms,
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
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
    };
    let telemetry = p2_runtime::telemetry::init(&cli.telemetry, component)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let result = match cli.command {
        Command::Up(config) => {
            let stack = stack::start(config.stack_config()).await?;
            let token = stack.shutdown_token();
            let addr = stack.addr;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                token.cancel();
            });
            // Scripts and tests wait for exactly this line on stdout.
            println!("listening on http://{addr}");
            tracing::info!(public_url = %stack.public_url, "polyproto home server ready");
            stack.wait().await
        }
        Command::Gateway(config) => {
            let listener = bind(config.listen).await?;
            let state = p2_gateway::AppState::new(&config, listener.local_addr()?)?;
            p2_gateway::serve(state, listener, shutdown).await
        }
        Command::Identity(config) => {
            let listener = bind(config.listen).await?;
            p2_identity::serve(config, listener, shutdown).await
        }
        Command::Session(config) => {
            let listener = bind(config.listen).await?;
            p2_session::serve(config, listener, shutdown).await
        }
        Command::Discovery(config) => {
            let listener = bind(config.listen).await?;
            p2_discovery::serve(config, listener, shutdown).await
        }
        Command::Events(config) => {
            let listener = bind(config.listen).await?;
            p2_events::serve(config, listener, shutdown).await
        }
        Command::Admin(args) => crate::admin::run(args).await,
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
    telemetry.shutdown().await;
    result
}
