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
//! - [`cache`]: the one byte-bounded cache, used for public read responses and tokens.
//! - [`server`]: the accept loop: header and idle timeouts, connection caps, draining.
//! - [`body`]: lenient bodies (JSON without Content-Type, PEM bare or quoted).
//! - [`params`]: lenient parameters (query or JSON body, numbers as strings).
//! - [`routes`]: the handlers, grouped like API.md.
//! - [`ws`]: the WebSocket gateway (`GET /.p2/core/v1/gateway`, spec 3.2) and the [`ws::Hub`]
//!   of open sockets, closed with a resumable code on shutdown.
//!
//! Entry points: [`router`] builds the axum app (routes only); [`serve`] runs it on a
//! pre-bound listener with the cross-cutting layers (trailing-slash leniency, body limit,
//! request spans) until shutdown. Requests are counted and timed by route template
//! ([`p2_runtime::metrics::HttpMetricsLayer`], in [`router`]), and the caches report their
//! hits, misses and size to the same registry, the [`ws::Hub`] its open WebSockets; the
//! metrics listener itself is the binary's.

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
pub mod invalidation;
pub mod openapi;
pub mod params;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod ws;

pub use error::ApiError;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default lifetime of cached public read responses, in milliseconds.
pub const DEFAULT_PUBLIC_CACHE_MS: u64 = 1000;
/// Default lifetime of a resolved session token in the token cache (`--token-cache-ms`).
pub const DEFAULT_TOKEN_CACHE_MS: u64 = 5_000;
/// Default request body limit, in bytes (API.md "Limits").
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default time a client has to send a complete request header, in milliseconds.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default time a connection may stay silent (no byte either way) before it is closed, in
/// milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default time a request may take from its header to its answer, in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default most open client connections of the gateway.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default most open connections from one client address (IPv6: one /64).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

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
    /// How long resolved session tokens are cached, in milliseconds; 0 disables. Safe with
    /// any number of gateways: the cache is used only while the events service's
    /// invalidation feed is live, which ends a session's cached token on every gateway.
    #[arg(
        long = "token-cache-ms",
        env = "P2_TOKEN_CACHE_MS",
        default_value_t = DEFAULT_TOKEN_CACHE_MS
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
    /// Redis URL for the rate-limit counters, shared by every gateway replica (e.g.
    /// `redis://redis:6379/`); unset keeps them in process (one gateway).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the rate limiter's Redis keys: deployments sharing one Redis need their own.
    #[arg(long = "redis-prefix", env = "P2_REDIS_PREFIX", default_value = ratelimit::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
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
    /// milliseconds; 0 disables. A successful mutation through this gateway invalidates the
    /// entries it affects at once.
    #[arg(long = "public-cache-ms", env = "P2_PUBLIC_CACHE_MS", default_value_t = DEFAULT_PUBLIC_CACHE_MS)]
    pub public_cache_ms: u64,
    /// Memory budget of the public read cache, in bytes (entries weighed as key + body +
    /// overhead). At the bound the least used entries are evicted; 0 disables the cache.
    #[arg(long = "cache-max-bytes", env = "P2_CACHE_MAX_BYTES", default_value_t = cache::DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// Largest public response body that is cached, in bytes; larger ones are always fetched.
    #[arg(long = "cache-max-entry-bytes", env = "P2_CACHE_MAX_ENTRY_BYTES", default_value_t = cache::DEFAULT_CACHE_MAX_ENTRY_BYTES)]
    pub cache_max_entry_bytes: usize,
    /// Memory budget of the token cache (`--token-cache-ms`), in bytes. At the bound the least
    /// used tokens are evicted (and resolved again by the session service).
    #[arg(long = "token-cache-max-bytes", env = "P2_TOKEN_CACHE_MAX_BYTES", default_value_t = cache::DEFAULT_TOKEN_CACHE_MAX_BYTES)]
    pub token_cache_max_bytes: u64,
    /// Time a client has to send a complete HTTP/1 request header (also the first request of
    /// any connection), in milliseconds (at least 1); then the connection is closed.
    #[arg(long = "header-timeout-ms", env = "P2_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Time a connection may stay silent (no byte read or written) before it is closed, in
    /// milliseconds (at least 1); a request in flight is answered first. An HTTP/1 connection
    /// waiting for its next request is also bound by the (shorter, by default) header timeout;
    /// this one bounds HTTP/2 connections and stalled uploads or unread answers.
    #[arg(long = "idle-timeout-ms", env = "P2_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Time a request may take from its header to its answer, in milliseconds (at least 1);
    /// slower ones are answered 503 problem+json (a mutation still completes in its task).
    #[arg(long = "request-timeout-ms", env = "P2_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Most open client connections (at least 1); connections beyond are closed at once,
    /// before anything is read.
    #[arg(long = "max-connections", env = "P2_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Most open connections from one client address — IPv4 address, or IPv6 /64 prefix —
    /// (at least 1); connections beyond are closed at once, before anything is read.
    #[arg(long = "max-connections-per-ip", env = "P2_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_ip: usize,
    /// Requests per client address and route class.
    #[command(flatten)]
    pub rate_limits: ratelimit::RateLimitOptions,
    /// Reverse proxies whose `X-Forwarded-For` names the client (comma-separated blocks, e.g.
    /// the Ingress controller's pod network `10.0.0.0/8`); empty (default) trusts nobody and
    /// the TCP peer is the client. Rate limits and the password throttle count the client.
    #[arg(
        long = "trusted-proxies",
        env = "P2_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
    /// The WebSocket gateway: heartbeats, rate, queues, service channels.
    #[command(flatten)]
    pub websocket: ws::WsOptions,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            public_url: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            oidc_issuer: None,
            public_cache_ms: DEFAULT_PUBLIC_CACHE_MS,
            cache_max_bytes: cache::DEFAULT_CACHE_MAX_BYTES,
            cache_max_entry_bytes: cache::DEFAULT_CACHE_MAX_ENTRY_BYTES,
            token_cache_max_bytes: cache::DEFAULT_TOKEN_CACHE_MAX_BYTES,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            rate_limits: ratelimit::RateLimitOptions::default(),
            trusted_proxies: String::new(),
            websocket: ws::WsOptions::default(),
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
    rate_limiter: ratelimit::RateLimiter,
    proxies: proxy::TrustedProxies,
    redis_url: Option<String>,
    oidc_issuer: Option<String>,
    max_body_bytes: usize,
    limits: server::Limits,
    cache: cache::ResponseCache,
    tokens: auth::TokenCache,
    identity: IdentityClient<TracedChannel>,
    session: SessionClient<TracedChannel>,
    discovery: DiscoveryClient<TracedChannel>,
    events: EventsClient<TracedChannel>,
    upstreams: Vec<(&'static str, TracedChannel)>,
    websockets: ws::Hub,
}

impl p2_runtime::metrics::Sampled for Inner {
    fn sample(&self, samples: &p2_runtime::metrics::Samples<'_>) {
        samples.cache_weighted_bytes(cache::PUBLIC_CACHE_LABEL, self.cache.weighted_bytes());
        samples.cache_weighted_bytes(cache::TOKEN_CACHE_LABEL, self.tokens.weighted_bytes());
        samples.websockets_open(u64::try_from(self.websockets.open()).unwrap_or(u64::MAX));
        samples.invalidation_feed_live(self.tokens.live());
    }
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
        let proxies = proxy::TrustedProxies::parse(&options.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("invalid --trusted-proxies (P2_TRUSTED_PROXIES): {e}"))?;
        let websockets = ws::Hub::new(options.websocket.settings()?);
        let rate_limiter = match &config.redis_url {
            Some(url) => ratelimit::RateLimiter::redis(
                options.rate_limits.clone(),
                url,
                &config.redis_prefix,
            )?,
            None => ratelimit::RateLimiter::in_process(options.rate_limits.clone()),
        };
        let identity = p2_runtime::grpc::channel(&config.identity_url, &credential)?;
        let session = p2_runtime::grpc::channel(&config.session_url, &credential)?;
        let discovery = p2_runtime::grpc::channel(&config.discovery_url, &credential)?;
        let events = p2_runtime::grpc::channel(&config.events_url, &credential)?;
        let state = Self {
            inner: Arc::new(Inner {
                public_url,
                rate_limiter,
                proxies,
                redis_url: config.redis_url.clone(),
                oidc_issuer: options.oidc_issuer.clone(),
                max_body_bytes: options.max_body_bytes,
                limits: server::Limits::from_options(options),
                cache: cache::ResponseCache::new(
                    std::time::Duration::from_millis(options.public_cache_ms),
                    options.cache_max_bytes,
                    options.cache_max_entry_bytes,
                ),
                tokens: auth::TokenCache::new(
                    std::time::Duration::from_millis(config.token_cache_ms),
                    options.token_cache_max_bytes,
                ),
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
                websockets,
            }),
        };
        // The caches' sizes are sampled at scrape time, while this gateway lives.
        let sampled: std::sync::Weak<Inner> = Arc::downgrade(&state.inner);
        p2_runtime::metrics::register_sampled(sampled);
        Ok(state)
    }

    /// Largest accepted request body, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Who may name the client in `X-Forwarded-For`.
    pub fn trusted_proxies(&self) -> &proxy::TrustedProxies {
        &self.inner.proxies
    }

    /// The request rate limiter.
    pub fn rate_limiter(&self) -> &ratelimit::RateLimiter {
        &self.inner.rate_limiter
    }

    /// Connects what must answer before serving (the rate limiter's Redis, when configured):
    /// a clear start-up error instead of a limiter that fails open.
    pub async fn check_backends(&self) -> anyhow::Result<()> {
        self.inner
            .rate_limiter
            .check_backend(self.inner.redis_url.as_deref())
            .await
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

    /// Bytes the public read cache holds, as weighed against `--cache-max-bytes` (runs the
    /// cache's pending housekeeping first, so the figure is current).
    pub fn cache_weighted_bytes(&self) -> u64 {
        self.inner.cache.weighted_bytes()
    }

    /// Bytes the token cache holds, as weighed against `--token-cache-max-bytes`.
    pub fn token_cache_weighted_bytes(&self) -> u64 {
        self.inner.tokens.weighted_bytes()
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

    /// The open WebSockets (count them with [`ws::Hub::open`]).
    pub fn websockets(&self) -> &ws::Hub {
        &self.inner.websockets
    }
}

/// The routes, without the outer layers that [`serve`] adds.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.max_body_bytes;
    let request_timeout = state.inner.limits.request_timeout;
    routes::router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::complete_mutations,
        ))
        // Inside the problem+json layer, which gives the bare 503 its RFC 9457 body; outside
        // the mutation task, which a timeout only stops waiting for.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::edge,
        ))
        // Outside the edge layer, so problem+json answers are compressed like any other.
        .layer(compression())
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(routes::request_span))
        // Outermost, so refusals of the layers above (413, 429, 503) are counted too; inside
        // the routing, so requests are labelled by route template, never by raw path.
        .layer(p2_runtime::metrics::HttpMetricsLayer::new())
        .with_state(state)
}

/// zstd level for HTTP responses: spec 3.6 recommends 5–13 for real-time traffic; 5 keeps a
/// 1 KiB certificate answer at tens of microseconds.
pub const ZSTD_LEVEL: i32 = 5;

/// Response compression by content negotiation (spec 3.6: zstd must be offered on the HTTP API;
/// gzip for clients without zstd; uncompressed when the client asks for neither). Bodies under
/// 32 bytes, gRPC, images and WebSocket upgrades (101) stay as they are.
/// Which responses [`compression`] may compress: tower-http's defaults, and never an upgrade.
type CompressWhen = tower_http::compression::predicate::And<
    tower_http::compression::DefaultPredicate,
    fn(
        axum::http::StatusCode,
        axum::http::Version,
        &axum::http::HeaderMap,
        &axum::http::Extensions,
    ) -> bool,
>;

fn not_an_upgrade(
    status: axum::http::StatusCode,
    _: axum::http::Version,
    _: &axum::http::HeaderMap,
    _: &axum::http::Extensions,
) -> bool {
    status != axum::http::StatusCode::SWITCHING_PROTOCOLS
}

fn compression() -> tower_http::compression::CompressionLayer<CompressWhen> {
    use tower_http::compression::predicate::Predicate as _;
    let predicate: CompressWhen =
        tower_http::compression::DefaultPredicate::new().and(not_an_upgrade as _);
    tower_http::compression::CompressionLayer::new()
        .zstd(true)
        .gzip(true)
        .quality(tower_http::CompressionLevel::Precise(ZSTD_LEVEL))
        .compress_when(predicate)
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests (for at most [`p2_runtime::shutdown::DRAIN_TIMEOUT`]). Connections get the
/// header and idle timeouts and the connection caps of [`GatewayOptions`] (see [`server`]);
/// the caches' housekeeping runs every [`cache::SWEEP_INTERVAL`].
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = state.inner.limits.clone();
    let websockets = state.websockets().clone();
    // Trailing-slash leniency must run before routing, so it wraps the whole router.
    let app = tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash()
        .layer(router(state.clone()));
    // The token cache serves only while this feed is live (see `invalidation`).
    let feed = tokio::spawn(invalidation::follow(state.clone(), shutdown.clone()));
    let sweeper = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(cache::SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let state = state.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            state.cache().run_pending_tasks();
                            state.token_cache().run_pending_tasks();
                        })
                        .await;
                    }
                }
            }
        }
    });
    // WebSockets are no HTTP requests to drain: on shutdown each records its deliveries and
    // closes with 4000 (resumable), within the same drain time as the requests.
    let closer = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            websockets.close_all();
            if !websockets.closed(p2_runtime::shutdown::DRAIN_TIMEOUT).await {
                tracing::warn!(
                    open = websockets.open(),
                    "WebSockets did not close in time; stopping"
                );
            }
        }
    });
    let result = server::serve(app, listener, limits, shutdown.clone()).await;
    if shutdown.is_cancelled() {
        let _ = closer.await;
    } else {
        closer.abort();
    }
    sweeper.abort();
    feed.abort();
    result
}
