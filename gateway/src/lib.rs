//! The polyproto HTTP gateway: the only public face of the home server. It holds nothing
//! durable; every route is translated into gRPC calls to the identity, session, discovery and
//! events services.
//!
//! Layout:
//! - [`GatewayConfig`]: the component's flags (`polyproto gateway --help`).
//! - [`AppState`]: the gRPC clients (trace context propagated) and public settings.
//! - [`auth`]: Bearer tokens resolved into the caller and its caller assertion (passed on to
//!   every RPC that acts for the caller), the headers of sensitive actions and challenges.
//! - [`error`]: RFC 9457 problem details and the one gRPC → HTTP table.
//! - [`cache`]: the short-lived cache of public read responses.
//! - [`body`]: lenient bodies (JSON without Content-Type, PEM bare or quoted).
//! - [`params`]: lenient parameters (query or JSON body, numbers as strings).
//! - [`routes`]: the handlers, grouped like API.md.
//!
//! Entry points: [`router`] builds the axum app (routes only); [`serve`] runs it on a
//! pre-bound listener with the cross-cutting layers (trailing-slash leniency, body limit,
//! request spans) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use clap::Args;
use p2_proto::discovery::v1::discovery_client::DiscoveryClient;
use p2_proto::events::v1::events_client::EventsClient;
use p2_proto::identity::v1::identity_client::IdentityClient;
use p2_proto::session::v1::session_client::SessionClient;
use p2_runtime::grpc::TracedChannel;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

pub mod auth;
pub mod body;
pub mod cache;
pub mod error;
pub mod params;
pub mod routes;

pub use error::ApiError;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default lifetime of cached public read responses, in milliseconds.
pub const DEFAULT_PUBLIC_CACHE_MS: u64 = 1000;
/// Default request body limit, in bytes (API.md "Limits").
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Flags of the gateway.
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Address the HTTP server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// What the gateway announces and accepts (shared with `polyproto up`).
    #[command(flatten)]
    pub options: GatewayOptions,
    /// URL of the identity service.
    #[arg(
        long = "identity-url",
        env = "P2_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub identity_url: String,
    /// URL of the session service.
    #[arg(
        long = "session-url",
        env = "P2_SESSION_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub session_url: String,
    /// URL of the discovery service.
    #[arg(
        long = "discovery-url",
        env = "P2_DISCOVERY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub discovery_url: String,
    /// URL of the events service.
    #[arg(
        long = "events-url",
        env = "P2_EVENTS_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub events_url: String,
    /// How long resolved session tokens are cached, in milliseconds; 0 (default) disables.
    /// Only safe with a single gateway: a session deleted through another replica stays usable
    /// here for up to this long. `polyproto up` (one gateway) turns it on.
    #[arg(
        long = "token-cache-ms",
        env = "P2_TOKEN_CACHE_MS",
        default_value_t = 0
    )]
    pub token_cache_ms: u64,
    /// The deployment's internal key, from which the gateway derives its component credential.
    #[command(flatten)]
    pub internal: p2_runtime::internal::InternalKeyConfig,
    /// The gateway's component credential alone (64 hex characters, as `polyproto
    /// internal-credential gateway` prints it), instead of the internal key: a gateway that
    /// holds only this can call the services but cannot mint caller assertions.
    #[arg(
        long = "component-credential",
        env = "P2_COMPONENT_CREDENTIAL",
        hide_env_values = true
    )]
    pub component_credential: Option<secrecy::SecretString>,
}

/// The gateway settings that `polyproto gateway` and `polyproto up` share: one declaration,
/// flattened into both.
#[derive(Debug, Clone, Args)]
pub struct GatewayOptions {
    /// Public base URL of this server as clients reach it (e.g. `https://p2.example.com`);
    /// defaults to `http://<listen address>`.
    #[arg(long = "public-url", env = "P2_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "P2_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// OpenID Connect issuer announced in `/.well-known/polyproto-core`, if any.
    #[arg(long = "oidc-issuer", env = "P2_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// How long public read responses (server and actor certs, discovery) are cached, in
    /// milliseconds; 0 disables. Mutations through this gateway clear the cache at once.
    #[arg(long = "public-cache-ms", env = "P2_PUBLIC_CACHE_MS", default_value_t = DEFAULT_PUBLIC_CACHE_MS)]
    pub public_cache_ms: u64,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            public_url: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            oidc_issuer: None,
            public_cache_ms: DEFAULT_PUBLIC_CACHE_MS,
        }
    }
}

impl GatewayConfig {
    /// The credential the gateway presents: `--component-credential`, else derived from the
    /// internal key; a clear one-line error when neither is set.
    pub fn credential(&self) -> anyhow::Result<p2_runtime::internal::ComponentCredential> {
        use anyhow::Context as _;
        use secrecy::ExposeSecret as _;
        let gateway = p2_runtime::internal::Component::Gateway;
        if let Some(credential) = &self.component_credential {
            return p2_runtime::internal::ComponentCredential::from_hex(
                gateway,
                credential.expose_secret(),
            )
            .context("invalid P2_COMPONENT_CREDENTIAL");
        }
        if self.internal.internal_key.is_none() && self.internal.internal_key_file.is_none() {
            anyhow::bail!(
                "no internal credential: set P2_INTERNAL_KEY (or P2_INTERNAL_KEY_FILE), the key \
                 every service of this deployment uses, or P2_COMPONENT_CREDENTIAL"
            );
        }
        Ok(self.internal.load()?.credential(gateway))
    }
}

/// What every handler shares: gRPC clients and public settings. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    public_url: String,
    oidc_issuer: Option<String>,
    max_body_bytes: usize,
    cache: cache::ResponseCache,
    tokens: auth::TokenCache,
    identity: IdentityClient<TracedChannel>,
    session: SessionClient<TracedChannel>,
    discovery: DiscoveryClient<TracedChannel>,
    events: EventsClient<TracedChannel>,
    upstreams: Vec<(&'static str, TracedChannel)>,
}

impl AppState {
    /// Builds the clients (connecting lazily) for `config`; `bound` is the address actually
    /// listened on (used for the default public URL when `--listen` had port 0).
    pub fn new(config: &GatewayConfig, bound: SocketAddr) -> anyhow::Result<Self> {
        let options = &config.options;
        let public_url = options
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
            .trim_end_matches('/')
            .to_owned();
        let credential = config.credential()?;
        let identity = p2_runtime::grpc::channel(&config.identity_url, &credential)?;
        let session = p2_runtime::grpc::channel(&config.session_url, &credential)?;
        let discovery = p2_runtime::grpc::channel(&config.discovery_url, &credential)?;
        let events = p2_runtime::grpc::channel(&config.events_url, &credential)?;
        Ok(Self {
            inner: Arc::new(Inner {
                public_url,
                oidc_issuer: options.oidc_issuer.clone(),
                max_body_bytes: options.max_body_bytes,
                cache: cache::ResponseCache::new(std::time::Duration::from_millis(
                    options.public_cache_ms,
                )),
                tokens: auth::TokenCache::new(std::time::Duration::from_millis(
                    config.token_cache_ms,
                )),
                identity: IdentityClient::new(identity.clone()),
                session: SessionClient::new(session.clone()),
                discovery: DiscoveryClient::new(discovery.clone()),
                events: EventsClient::new(events.clone()),
                upstreams: vec![
                    ("polyproto.identity.v1.Identity", identity),
                    ("polyproto.session.v1.Session", session),
                    ("polyproto.discovery.v1.Discovery", discovery),
                    ("polyproto.events.v1.Events", events),
                ],
            }),
        })
    }

    /// Public base URL, without a trailing slash.
    pub fn public_url(&self) -> &str {
        &self.inner.public_url
    }

    /// The public read cache.
    pub fn cache(&self) -> &cache::ResponseCache {
        &self.inner.cache
    }

    /// The token cache.
    pub fn token_cache(&self) -> &auth::TokenCache {
        &self.inner.tokens
    }

    /// A client of the identity service.
    pub fn identity(&self) -> IdentityClient<TracedChannel> {
        self.inner.identity.clone()
    }

    /// A client of the session service.
    pub fn session(&self) -> SessionClient<TracedChannel> {
        self.inner.session.clone()
    }

    /// A client of the discovery service.
    pub fn discovery(&self) -> DiscoveryClient<TracedChannel> {
        self.inner.discovery.clone()
    }

    /// A client of the events service.
    pub fn events(&self) -> EventsClient<TracedChannel> {
        self.inner.events.clone()
    }
}

/// The routes, without the outer layers that [`serve`] adds.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.max_body_bytes;
    routes::router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::complete_mutations,
        ))
        .layer(axum::middleware::from_fn(routes::problem_json_everywhere))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            routes::reject_large_bodies,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(routes::request_span))
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Trailing-slash leniency must run before routing, so it wraps the whole router.
    let app =
        tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash().layer(router(state));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    // Small responses must not wait for delayed ACKs: NODELAY on every accepted connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let drain_deadline = shutdown.clone();
    let server = axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await });
    // Stop accepting at once; in-flight requests drain for at most DRAIN_TIMEOUT.
    tokio::select! {
        result = server => result?,
        () = async {
            drain_deadline.cancelled().await;
            tokio::time::sleep(p2_runtime::shutdown::DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("in-flight requests did not drain in time; stopping");
        }
    }
    Ok(())
}
