//! Prometheus metrics of every process: one process-global registry ([`global`]), rendered in
//! the Prometheus text exposition format (0.0.4) by a small listener of its own ([`serve`],
//! `--metrics-listen`), apart from the public gateway port: metrics are not public.
//!
//! A process is one component (or `polyproto up`, all of them): the registry holds what that
//! process does. Every series is named `polyproto_*`:
//!
//! | series | type | labels | what |
//! |---|---|---|---|
//! | `polyproto_build_info` | gauge (1) | `version` | the running build |
//! | `polyproto_http_requests_total` | counter | `route`, `method`, `status` | gateway requests answered |
//! | `polyproto_http_request_duration_seconds` | histogram | `route`, `method` | gateway request latency, to the response head |
//! | `polyproto_http_requests_in_flight` | gauge | – | gateway requests being handled |
//! | `polyproto_grpc_server_requests_total` | counter | `service`, `method`, `code` | gRPC calls answered |
//! | `polyproto_grpc_server_request_duration_seconds` | histogram | `service`, `method` | gRPC call latency, to the end of the response |
//! | `polyproto_grpc_server_requests_in_flight` | gauge | `service` | gRPC calls being handled |
//! | `polyproto_gateway_cache_hits_total` / `_misses_total` | counter | `cache` (`public`, `token`) | gateway cache lookups |
//! | `polyproto_gateway_cache_weighted_bytes` | gauge | `cache` | bytes held, as weighed against the cache's budget |
//! | `polyproto_db_pool_connections` / `_idle_connections` / `_max_connections` | gauge | `pool` | SQL pool size, idle connections, bound |
//! | `polyproto_redis_errors_total` | counter | `component`, `operation` | failed Redis operations |
//! | `polyproto_websockets_open` | gauge | – | open gateway WebSockets (sampled) |
//! | `polyproto_events_total` | counter | `kind` | the events service's `published` publications, `repeated` ones (idempotency key seen, nothing appended) and events `appended` to session logs (sampled) |
//! | `polyproto_events_subscribers` | gauge | – | Subscribe streams open in the events process (sampled) |
//! | `polyproto_events_invalidation_feeds` | gauge | – | gateways' invalidation feeds open in the events process (sampled) |
//! | `polyproto_gateway_invalidation_feed_live` | gauge | – | 1 while the gateway's invalidation feed is live (its token cache in use), else 0 (sampled) |
//! | `polyproto_outbox_events_total` | counter | `component`, `outcome` | event outbox rows `delivered` to the events service, `dropped` at the outbox's bound, `rejected` for good |
//!
//! Cardinality is bounded by construction, never by what clients send: `route` is the axum
//! route template ([`MatchedPath`], e.g. `/.p2/core/v1/idcert/actor/{fid}`), or `unmatched`;
//! `method` is one of the HTTP methods the gateway knows, else `other`; `status` is the
//! three-digit code (`499`: the client went away first). gRPC `service` is the server's own
//! service or `grpc.health.v1.Health`, else `unknown`; `method` is a method name of those
//! services seen answering something other than `UNIMPLEMENTED` or `UNAUTHENTICATED` (at most
//! [`MAX_GRPC_METHODS`]; beyond, `other`), else `unknown`; `code` is the canonical gRPC code
//! name (`CANCELLED` when the caller went away first).
//!
//! Hot paths allocate nothing per request: label values are `&'static str` (or an `Arc`
//! clone of the route template), and a series' handle is looked up under a read lock. Gauges
//! of state that lives elsewhere (cache bytes, pool sizes) are sampled when scraped, from
//! [`Sampled`] sources registered weakly: a dropped cache or pool leaves the registry.
//!
//! Not measured yet, because it does not exist yet: open WebSockets of the events gateway and
//! the event log's lag. Their series belong here, next to the gateway's HTTP series
//! (`polyproto_websockets_open`, `polyproto_events_lag_seconds`), once the WebSocket gateway
//! and the Redis event log exist.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::MatchedPath;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        port,
    ))
}

/// Default metrics address of the gateway and of `polyproto up`: 127.0.0.1:9090.
pub const DEFAULT_GATEWAY_LISTEN: SocketAddr = loopback(9090);
/// Default metrics address of the identity service: 127.0.0.1:9091.
pub const DEFAULT_IDENTITY_LISTEN: SocketAddr = loopback(9091);
/// Default metrics address of the session service: 127.0.0.1:9092.
pub const DEFAULT_SESSION_LISTEN: SocketAddr = loopback(9092);
/// Default metrics address of the discovery service: 127.0.0.1:9093.
pub const DEFAULT_DISCOVERY_LISTEN: SocketAddr = loopback(9093);
/// Default metrics address of the events service: 127.0.0.1:9094.
pub const DEFAULT_EVENTS_LISTEN: SocketAddr = loopback(9094);

/// The path the metrics listener answers.
pub const METRICS_PATH: &str = "/metrics";

/// Upper bounds of the latency histograms' buckets, in seconds: from half a millisecond (a
/// cached read) to 30 s (the gateway's request timeout).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Most distinct gRPC method names a process labels; calls to further ones are counted under
/// `method="other"`.
pub const MAX_GRPC_METHODS: usize = 256;
/// Longest gRPC method name that gets a label of its own.
const MAX_GRPC_METHOD_LEN: usize = 64;

/// The gRPC health service, served next to every service.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const UNKNOWN: &str = "unknown";
const OTHER: &str = "other";
/// The route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// What `--metrics-listen` says: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics listener.
    Off,
    /// Serve `GET /metrics` on this address (port 0 picks a free one).
    On(SocketAddr),
}

impl MetricsListen {
    /// The address, unless off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(addr) => Some(addr),
        }
    }
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.trim().eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        value
            .trim()
            .parse()
            .map(Self::On)
            .map_err(|_| format!("{value:?} is neither host:port (e.g. 127.0.0.1:9090) nor off"))
    }
}

/// Binds the metrics listener `listen` names (none when off). The error is one clear line.
pub async fn bind(listen: MetricsListen) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = listen.addr() else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for metrics (--metrics-listen, P2_METRICS_LISTEN; off disables)")
    })?;
    Ok(Some(listener))
}

/// Serves `GET /metrics` (the [`global`] registry) on `listener` until `shutdown` is
/// cancelled; anything else is a 404 problem.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics listening");
    let app = axum::Router::new()
        .route(METRICS_PATH, axum::routing::get(scrape))
        .method_not_allowed_fallback(not_found)
        .fallback(not_found);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the metrics listener failed")
}

async fn scrape() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        [(
            http::header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        global().render(),
    )
        .into_response()
}

async fn not_found() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        http::StatusCode::NOT_FOUND,
        [(http::header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"this listener serves only GET /metrics"}"#,
    )
        .into_response()
}

/// The process-global registry.
pub fn global() -> &'static Metrics {
    static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &GLOBAL
}

/// Which component's name labels Redis `ping` failures ([`crate::kv::ping`]): the process's
/// (`up` for all in one). Set once at start.
static PROCESS_COMPONENT: RwLock<&'static str> = RwLock::new("up");

/// Names the component this process runs (`gateway`, `identity`, …, `up`).
pub fn set_process_component(component: &'static str) {
    *PROCESS_COMPONENT
        .write()
        .unwrap_or_else(PoisonError::into_inner) = component;
}

/// The component this process runs.
pub fn process_component() -> &'static str {
    *PROCESS_COMPONENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Counts one failed Redis operation of `component` (`session`, `identity`, `gateway`, …);
/// `operation` is its class (`challenge_put`, `throttle_read`, `rate_limit`, `ping`, …).
pub fn redis_error(component: &'static str, operation: &'static str) {
    global()
        .redis_errors
        .get_or_create(&RedisLabels {
            component,
            operation,
        })
        .inc();
}

/// Counts `n` event outbox rows of `component` with `outcome` (`delivered`, `dropped` at the
/// bound, `rejected` for good).
pub fn outbox_events(component: &'static str, outcome: &'static str, n: u64) {
    global()
        .outbox_events
        .get_or_create(&OutboxLabels { component, outcome })
        .inc_by(n);
}

/// A source of gauges sampled at scrape time (state that lives elsewhere: cache sizes, pool
/// sizes). Register it with [`register_sampled`].
pub trait Sampled: Send + Sync {
    /// Adds this source's current values to `samples`.
    fn sample(&self, samples: &Samples<'_>);
}

/// Where a [`Sampled`] source puts its values; values of several sources with the same labels
/// add up.
pub struct Samples<'a> {
    metrics: &'a Metrics,
}

impl Samples<'_> {
    /// Bytes the gateway cache `cache` (`public`, `token`) holds, as weighed.
    pub fn cache_weighted_bytes(&self, cache: &'static str, bytes: u64) {
        self.metrics
            .cache_bytes
            .get_or_create(&CacheLabels { cache })
            .inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Open gateway WebSockets.
    pub fn websockets_open(&self, open: u64) {
        // Added up: several gateways in one process (tests) each report theirs.
        self.metrics
            .websockets_open
            .get_or_create(&Vec::new())
            .inc_by(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Open invalidation feeds of the events process.
    pub fn invalidation_feeds(&self, feeds: u64) {
        self.metrics
            .invalidation_feeds
            .get_or_create(&Vec::new())
            .inc_by(i64::try_from(feeds).unwrap_or(i64::MAX));
    }

    /// Whether the gateway's invalidation feed is live.
    pub fn invalidation_feed_live(&self, live: bool) {
        self.metrics
            .invalidation_feed_live
            .get_or_create(&Vec::new())
            .inc_by(i64::from(live));
    }

    /// The events service's counters since the process started, and its open streams.
    pub fn events(&self, published: u64, repeated: u64, appended: u64, subscribers: u64) {
        let metrics = self.metrics;
        for (kind, n) in [
            ("published", published),
            ("repeated", repeated),
            ("appended", appended),
        ] {
            metrics
                .events_total
                .get_or_create(&KindLabels { kind })
                .inc_by(n);
        }
        metrics
            .events_subscribers
            .get_or_create(&Vec::new())
            .inc_by(i64::try_from(subscribers).unwrap_or(i64::MAX));
    }

    /// The state of the SQL pool `pool`: open connections, idle ones, and its bound.
    pub fn pool(&self, pool: &str, open: u32, idle: usize, max: u32) {
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        let metrics = self.metrics;
        metrics
            .pool_open
            .get_or_create(&labels)
            .inc_by(i64::from(open));
        metrics
            .pool_idle
            .get_or_create(&labels)
            .inc_by(i64::try_from(idle).unwrap_or(i64::MAX));
        metrics
            .pool_max
            .get_or_create(&labels)
            .inc_by(i64::from(max));
    }
}

/// Registers `source` with the [`global`] registry until it is dropped (it is held weakly).
pub fn register_sampled(source: Weak<dyn Sampled>) {
    global().register_sampled(source);
}

/// The hits and misses counters of one gateway cache, resolved once (no lookup per request).
#[derive(Debug, Clone)]
pub struct CacheCounters {
    hits: Counter,
    misses: Counter,
}

impl CacheCounters {
    /// The counters of the cache `cache` (`public`, `token`) in the [`global`] registry.
    pub fn new(cache: &'static str) -> Self {
        let labels = CacheLabels { cache };
        let metrics = global();
        Self {
            hits: metrics.cache_hits.get_or_create_owned(&labels),
            misses: metrics.cache_misses.get_or_create_owned(&labels),
        }
    }

    /// Counts a hit.
    pub fn hit(&self) {
        self.hits.inc();
    }

    /// Counts a miss.
    pub fn miss(&self) {
        self.misses.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequestLabels {
    route: RouteLabel,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    route: RouteLabel,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcRequestLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcMethodLabels {
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcServiceLabels {
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

/// A sampled series without labels (prometheus-client families need a label set: an empty one).
type NoLabels = Vec<(&'static str, &'static str)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    component: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisLabels {
    component: &'static str,
    operation: &'static str,
}

/// The route template a request matched (an `Arc` clone of axum's, never the raw path), or
/// none: `unmatched`.
#[derive(Clone, Debug)]
struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A registry and the handles of every series in it. The process has one ([`global`]); tests
/// may build their own.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpRequestLabels, Counter>,
    http_duration: HistogramFamily<HttpRouteLabels>,
    http_in_flight: Gauge,
    grpc_requests: Family<GrpcRequestLabels, Counter>,
    grpc_duration: HistogramFamily<GrpcMethodLabels>,
    grpc_in_flight: Family<GrpcServiceLabels, Gauge>,
    cache_hits: Family<CacheLabels, Counter>,
    cache_misses: Family<CacheLabels, Counter>,
    cache_bytes: Family<CacheLabels, Gauge>,
    pool_open: Family<PoolLabels, Gauge>,
    pool_idle: Family<PoolLabels, Gauge>,
    pool_max: Family<PoolLabels, Gauge>,
    redis_errors: Family<RedisLabels, Counter>,
    outbox_events: Family<OutboxLabels, Counter>,
    websockets_open: Family<NoLabels, Gauge>,
    events_total: Family<KindLabels, Counter>,
    events_subscribers: Family<NoLabels, Gauge>,
    invalidation_feeds: Family<NoLabels, Gauge>,
    invalidation_feed_live: Family<NoLabels, Gauge>,
    /// Sampled sources; the lock also serialises scrapes (sampled gauges are rebuilt by each).
    sampled: Mutex<Vec<Weak<dyn Sampled>>>,
    /// gRPC method names given a label of their own.
    grpc_methods: RwLock<HashSet<&'static str>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series registered (and `build_info` set).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("polyproto");
        registry.register(
            "build",
            "The running build",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by the gateway, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<HttpRouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from an HTTP request's arrival to its response head, by route template and method",
            Unit::Seconds,
            http_duration.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled by the gateway",
            http_in_flight.clone(),
        );
        let grpc_requests = Family::default();
        registry.register(
            "grpc_server_requests",
            "gRPC calls answered, by service, method and gRPC status code",
            grpc_requests.clone(),
        );
        let grpc_duration: HistogramFamily<GrpcMethodLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "grpc_server_request_duration",
            "Time from a gRPC call's arrival to the end of its response, by service and method",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let grpc_in_flight = Family::default();
        registry.register(
            "grpc_server_requests_in_flight",
            "gRPC calls being handled, by service",
            grpc_in_flight.clone(),
        );
        let cache_hits = Family::default();
        registry.register(
            "gateway_cache_hits",
            "Gateway cache lookups answered from the cache (public reads, tokens)",
            cache_hits.clone(),
        );
        let cache_misses = Family::default();
        registry.register(
            "gateway_cache_misses",
            "Gateway cache lookups that went upstream (public reads, tokens)",
            cache_misses.clone(),
        );
        let cache_bytes = Family::default();
        registry.register(
            "gateway_cache_weighted_bytes",
            "Bytes a gateway cache holds, as weighed against its budget",
            cache_bytes.clone(),
        );
        let pool_open = Family::default();
        registry.register(
            "db_pool_connections",
            "Open connections of an SQL pool",
            pool_open.clone(),
        );
        let pool_idle = Family::default();
        registry.register(
            "db_pool_idle_connections",
            "Idle connections of an SQL pool",
            pool_idle.clone(),
        );
        let pool_max = Family::default();
        registry.register(
            "db_pool_max_connections",
            "Most connections an SQL pool opens",
            pool_max.clone(),
        );
        let redis_errors = Family::default();
        registry.register(
            "redis_errors",
            "Failed Redis operations, by component and operation class",
            redis_errors.clone(),
        );
        let outbox_events = Family::default();
        registry.register(
            "outbox_events",
            "Event outbox rows delivered, dropped at the bound or rejected, by component",
            outbox_events.clone(),
        );
        let websockets_open = Family::default();
        registry.register(
            "websockets_open",
            "Open gateway WebSockets",
            websockets_open.clone(),
        );
        let events_total = Family::default();
        registry.register(
            "events",
            "Events service publications, repeats (nothing appended) and events appended to session logs",
            events_total.clone(),
        );
        let events_subscribers = Family::default();
        registry.register(
            "events_subscribers",
            "Subscribe streams open in this events process",
            events_subscribers.clone(),
        );
        let invalidation_feeds = Family::default();
        registry.register(
            "events_invalidation_feeds",
            "Gateways' invalidation feeds open in this events process",
            invalidation_feeds.clone(),
        );
        let invalidation_feed_live = Family::default();
        registry.register(
            "gateway_invalidation_feed_live",
            "1 while the gateway's invalidation feed is live (its token cache in use)",
            invalidation_feed_live.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            grpc_requests,
            grpc_duration,
            grpc_in_flight,
            cache_hits,
            cache_misses,
            cache_bytes,
            pool_open,
            pool_idle,
            pool_max,
            redis_errors,
            outbox_events,
            websockets_open,
            events_total,
            events_subscribers,
            invalidation_feeds,
            invalidation_feed_live,
            sampled: Mutex::new(Vec::new()),
            grpc_methods: RwLock::new(HashSet::new()),
        }
    }

    /// Registers `source` until it is dropped (held weakly).
    pub fn register_sampled(&self, source: Weak<dyn Sampled>) {
        let mut sampled = self.sampled.lock().unwrap_or_else(PoisonError::into_inner);
        sampled.retain(|source| source.strong_count() > 0);
        sampled.push(source);
    }

    /// Every series in the Prometheus text exposition format (0.0.4), sampled gauges sampled
    /// now.
    pub fn render(&self) -> String {
        let mut sampled = self.sampled.lock().unwrap_or_else(PoisonError::into_inner);
        for family in [&self.pool_open, &self.pool_idle, &self.pool_max] {
            family.clear();
        }
        self.cache_bytes.clear();
        self.events_total.clear();
        // Sampled families: absent from a process without the source (no events log, no
        // WebSocket hub), rebuilt at every scrape.
        self.websockets_open.clear();
        self.events_subscribers.clear();
        self.invalidation_feeds.clear();
        self.invalidation_feed_live.clear();
        let samples = Samples { metrics: self };
        sampled.retain(|source| match source.upgrade() {
            Some(source) => {
                source.sample(&samples);
                true
            }
            None => false,
        });
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        drop(sampled);
        text
    }

    /// The label of the gRPC method `name`, if it has one already.
    fn grpc_method(&self, name: &str) -> Option<&'static str> {
        self.grpc_methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
    }

    /// Gives `name` a label of its own, unless the call was `UNIMPLEMENTED` (no such method)
    /// or `UNAUTHENTICATED` (refused before routing: any path gets that) or the bound is
    /// reached. Each name is stored once, for the life of the process.
    fn intern_grpc_method(&self, name: Box<str>, code: &'static str) -> &'static str {
        if code == "UNIMPLEMENTED" || code == "UNAUTHENTICATED" {
            return UNKNOWN;
        }
        let mut methods = self
            .grpc_methods
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = methods.get(&*name) {
            return known;
        }
        if methods.len() >= MAX_GRPC_METHODS {
            return OTHER;
        }
        // Bounded by MAX_GRPC_METHODS names of at most MAX_GRPC_METHOD_LEN bytes.
        let name: &'static str = Box::leak(name);
        methods.insert(name);
        name
    }
}

/// The label of an HTTP method: the ones the gateway routes, else `other`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => OTHER,
    }
}

/// The three-digit codes 100–599, back to back, so a status label is a `&'static str`.
static STATUS_DIGITS: [u8; 1500] = {
    let mut digits = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let code = i + 100;
        digits[i * 3] = b'0' + (code / 100) as u8;
        digits[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
        digits[i * 3 + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    digits
};

/// The label of an HTTP status: its three digits.
fn status_label(status: http::StatusCode) -> &'static str {
    let code = usize::from(status.as_u16());
    if !(100..600).contains(&code) {
        return OTHER;
    }
    let at = (code - 100) * 3;
    STATUS_DIGITS
        .get(at..at + 3)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .unwrap_or(OTHER)
}

/// Canonical names of the gRPC status codes, by number.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC status of a response head or trailers, if they carry one.
fn grpc_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let code = value.trim().parse::<usize>().ok();
    Some(
        code.and_then(|c| GRPC_CODES.get(c).copied())
            .unwrap_or("UNKNOWN"),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A tower layer counting and timing HTTP requests by route template (axum's [`MatchedPath`]:
/// apply it with `Router::layer`, inside the routing), method and status.
#[derive(Debug, Clone, Copy)]
pub struct HttpMetricsLayer {
    metrics: &'static Metrics,
}

impl HttpMetricsLayer {
    /// Records into the [`global`] registry.
    pub fn new() -> Self {
        Self::with(global())
    }

    /// Records into `metrics`.
    pub fn with(metrics: &'static Metrics) -> Self {
        Self { metrics }
    }
}

impl Default for HttpMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService {
            inner,
            metrics: self.metrics,
        }
    }
}

/// The service of [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetricsService<S> {
    inner: S,
    metrics: &'static Metrics,
}

impl<S, B, ResB> tower::Service<http::Request<B>> for HttpMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HttpMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = HttpCall::start(
            self.metrics,
            RouteLabel(request.extensions().get::<MatchedPath>().cloned()),
            method_label(request.method()),
        );
        HttpMetricsFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`HttpMetricsService`].
    pub struct HttpMetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<HttpCall>,
    }
}

impl<F, ResB, E> Future for HttpMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(mut call) = this.call.take() {
            call.status = Some(match &output {
                Ok(response) => status_label(response.status()),
                Err(_) => "500",
            });
        }
        Poll::Ready(output)
    }
}

/// One HTTP request being handled: recorded when dropped (`499` if it never got an answer).
struct HttpCall {
    metrics: &'static Metrics,
    route: RouteLabel,
    method: &'static str,
    start: Instant,
    status: Option<&'static str>,
}

impl HttpCall {
    fn start(metrics: &'static Metrics, route: RouteLabel, method: &'static str) -> Self {
        metrics.http_in_flight.inc();
        Self {
            metrics,
            route,
            method,
            start: Instant::now(),
            status: None,
        }
    }
}

impl Drop for HttpCall {
    fn drop(&mut self) {
        let metrics = self.metrics;
        metrics.http_in_flight.dec();
        let elapsed = self.start.elapsed().as_secs_f64();
        let route = RouteLabel(self.route.0.take());
        metrics
            .http_requests
            .get_or_create(&HttpRequestLabels {
                route: route.clone(),
                method: self.method,
                status: self.status.unwrap_or("499"),
            })
            .inc();
        metrics
            .http_duration
            .get_or_create(&HttpRouteLabels {
                route,
                method: self.method,
            })
            .observe(elapsed);
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// A tower layer (for tonic's `Server::layer`) counting and timing the gRPC calls of one
/// server: its service `service` (a tonic `NamedService::NAME`) and gRPC health.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    server: Arc<GrpcServer>,
}

#[derive(Debug)]
struct GrpcServer {
    metrics: &'static Metrics,
    service: &'static str,
    /// In-flight gauges of `service`, health, and unknown services, resolved once.
    in_flight: [Gauge; 3],
}

impl GrpcMetricsLayer {
    /// Records the calls of `service` into the [`global`] registry.
    pub fn new(service: &'static str) -> Self {
        Self::with(global(), service)
    }

    /// Records the calls of `service` into `metrics`.
    pub fn with(metrics: &'static Metrics, service: &'static str) -> Self {
        let gauge = |service| {
            metrics
                .grpc_in_flight
                .get_or_create_owned(&GrpcServiceLabels { service })
        };
        Self {
            server: Arc::new(GrpcServer {
                metrics,
                service,
                in_flight: [gauge(service), gauge(HEALTH_SERVICE), gauge(UNKNOWN)],
            }),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            server: self.server.clone(),
        }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    server: Arc<GrpcServer>,
}

/// A call's method label: known, or to be decided when the call ends.
enum MethodName {
    Known(&'static str),
    New(Box<str>),
}

impl GrpcServer {
    fn start(&self, path: &str) -> GrpcCall {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .unwrap_or(("", ""));
        let (service, in_flight) = if service == self.service {
            (self.service, &self.in_flight[0])
        } else if service == HEALTH_SERVICE {
            (HEALTH_SERVICE, &self.in_flight[1])
        } else {
            (UNKNOWN, &self.in_flight[2])
        };
        let method = if service == UNKNOWN {
            MethodName::Known(UNKNOWN)
        } else if let Some(known) = self.metrics.grpc_method(method) {
            MethodName::Known(known)
        } else if method.is_empty()
            || method.len() > MAX_GRPC_METHOD_LEN
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            MethodName::Known(UNKNOWN)
        } else {
            MethodName::New(method.into())
        };
        in_flight.inc();
        GrpcCall {
            metrics: self.metrics,
            service,
            method: Some(method),
            in_flight: in_flight.clone(),
            start: Instant::now(),
            code: None,
        }
    }
}

impl<S, B, ResB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = http::Response<GrpcMetricsBody<ResB>>;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.server.start(request.uri().path());
        GrpcMetricsFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`GrpcMetricsService`].
    pub struct GrpcMetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<GrpcCall>,
    }
}

impl<F, ResB, E> Future for GrpcMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<GrpcMetricsBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match output {
            Ok(response) => {
                // An error answered without a body ("trailers-only") carries its status in
                // the head; otherwise it comes in the trailers.
                if let Some(code) = grpc_code(response.headers())
                    && let Some(mut call) = call.take()
                {
                    call.code = Some(code);
                }
                Ok(response.map(|inner| GrpcMetricsBody { inner, call }))
            }
            Err(error) => {
                if let Some(call) = call.as_mut() {
                    call.code = Some("UNKNOWN");
                }
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A gRPC response body that records its call when the trailers pass (or it is dropped).
    pub struct GrpcMetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<GrpcCall>,
    }
}

impl<B: http_body::Body> http_body::Body for GrpcMetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &polled {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|trailers| grpc_code(trailers).unwrap_or("UNKNOWN")),
            Some(Err(_)) | None => Some("UNKNOWN"),
        };
        if let Some(code) = code
            && let Some(mut call) = this.call.take()
        {
            call.code = Some(code);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One gRPC call being handled: recorded when dropped (`CANCELLED` if it never ended).
struct GrpcCall {
    metrics: &'static Metrics,
    service: &'static str,
    method: Option<MethodName>,
    in_flight: Gauge,
    start: Instant,
    code: Option<&'static str>,
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.in_flight.dec();
        let elapsed = self.start.elapsed().as_secs_f64();
        let code = self.code.unwrap_or("CANCELLED");
        let method = match self.method.take() {
            Some(MethodName::Known(method)) => method,
            Some(MethodName::New(name)) => self.metrics.intern_grpc_method(name, code),
            None => UNKNOWN,
        };
        self.metrics
            .grpc_requests
            .get_or_create(&GrpcRequestLabels {
                service: self.service,
                method,
                code,
            })
            .inc();
        self.metrics
            .grpc_duration
            .get_or_create(&GrpcMethodLabels {
                service: self.service,
                method,
            })
            .observe(elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn leaked() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[tokio::test]
    async fn raw_paths_with_fids_never_become_route_labels() {
        let metrics = leaked();
        let app = axum::Router::new()
            .route(
                "/.p2/core/v1/idcert/actor/{fid}",
                axum::routing::get(|| async { "certs" }),
            )
            .fallback(|| async { (http::StatusCode::NOT_FOUND, "no") })
            .layer(HttpMetricsLayer::with(metrics));
        for i in 0..50 {
            let request = http::Request::get(format!("/.p2/core/v1/idcert/actor/user{i}@p2.test"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let request = http::Request::get(format!("/nothing/here/{i}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 404);
        }
        let weird = http::Request::builder()
            .method(http::Method::from_bytes(b"BREW").unwrap())
            .uri("/.p2/core/v1/idcert/actor/x@y")
            .body(axum::body::Body::empty())
            .unwrap();
        let _ = app.clone().oneshot(weird).await.unwrap();
        let text = metrics.render();
        let requests = series(&text, "polyproto_http_requests_total");
        for expected in [
            r#"polyproto_http_requests_total{route="/.p2/core/v1/idcert/actor/{fid}",method="GET",status="200"} 50"#,
            r#"polyproto_http_requests_total{route="unmatched",method="GET",status="404"} 50"#,
            r#"polyproto_http_requests_total{route="/.p2/core/v1/idcert/actor/{fid}",method="other",status="405"} 1"#,
        ] {
            assert!(requests.contains(&expected), "{expected} missing:\n{text}");
        }
        assert_eq!(requests.len(), 3, "{text}");
        assert!(
            !text.contains("user1"),
            "a raw path leaked into a label:\n{text}"
        );
        let counts = series(&text, "polyproto_http_request_duration_seconds_count");
        assert_eq!(counts.len(), 3, "{text}");
        for le in LATENCY_BUCKETS
            .iter()
            .map(f64::to_string)
            .chain(["+Inf".into()])
        {
            let bucket = format!(
                r#"polyproto_http_request_duration_seconds_bucket{{route="/.p2/core/v1/idcert/actor/{{fid}}",method="GET",le="{le}"}} 50"#
            );
            assert!(text.contains(&bucket), "{bucket} missing:\n{text}");
        }
        assert_eq!(metrics.http_in_flight.get(), 0);
    }

    #[test]
    fn status_and_method_labels_are_static_and_bounded() {
        assert_eq!(status_label(http::StatusCode::CREATED), "201");
        assert_eq!(status_label(http::StatusCode::CONTINUE), "100");
        assert_eq!(
            status_label(http::StatusCode::from_u16(599).unwrap()),
            "599"
        );
        assert_eq!(
            status_label(http::StatusCode::from_u16(999).unwrap()),
            "other"
        );
        assert_eq!(method_label(&http::Method::DELETE), "DELETE");
        assert_eq!(
            method_label(&http::Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_code(&headers), Some("NOT_FOUND"));
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(grpc_code(&headers), Some("UNKNOWN"));
    }

    #[test]
    fn redis_errors_are_counted_by_component_and_operation() {
        let series = r#"polyproto_redis_errors_total{component="unit",operation="challenge_put"}"#;
        let count = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = count(&global().render());
        redis_error("unit", "challenge_put");
        redis_error("unit", "challenge_put");
        assert_eq!(count(&global().render()), before + 2);
    }

    #[test]
    fn metrics_listen_takes_an_address_or_off() {
        assert_eq!("off".parse::<MetricsListen>(), Ok(MetricsListen::Off));
        assert_eq!("OFF".parse::<MetricsListen>(), Ok(MetricsListen::Off));
        assert_eq!(
            "127.0.0.1:0".parse::<MetricsListen>(),
            Ok(MetricsListen::On(([127, 0, 0, 1], 0).into()))
        );
        assert!("localhost".parse::<MetricsListen>().is_err());
    }

    fn grpc_response(code: Option<&str>) -> http::Response<axum::body::Body> {
        let mut response = http::Response::new(axum::body::Body::empty());
        if let Some(code) = code {
            response
                .headers_mut()
                .insert("grpc-status", code.parse().unwrap());
        }
        response
    }

    #[tokio::test]
    async fn grpc_calls_are_counted_by_service_method_and_code() {
        let metrics = leaked();
        let layer = GrpcMetricsLayer::with(metrics, "polyproto.test.v1.Test");
        let service = tower::service_fn(|request: http::Request<()>| async move {
            let code = match request.uri().path() {
                "/polyproto.test.v1.Test/Fail" => Some("5"),
                "/polyproto.test.v1.Test/Nope" | "/elsewhere.Svc/Call" => Some("12"),
                "/polyproto.test.v1.Test/Probe" => Some("16"),
                _ => None,
            };
            Ok::<_, std::convert::Infallible>(grpc_response(code))
        });
        let service = tower::Layer::layer(&layer, service);
        for path in [
            "/polyproto.test.v1.Test/Get",
            "/polyproto.test.v1.Test/Fail",
            "/polyproto.test.v1.Test/Nope",
            "/polyproto.test.v1.Test/Probe",
            "/elsewhere.Svc/Call",
            "/grpc.health.v1.Health/Check",
        ] {
            let request = http::Request::post(path).body(()).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            // A body that ends without trailers, then is dropped.
            let body = axum::body::Body::new(response.into_body());
            let _ = axum::body::to_bytes(body, usize::MAX).await;
        }
        let text = metrics.render();
        let calls = series(&text, "polyproto_grpc_server_requests_total");
        for expected in [
            r#"service="polyproto.test.v1.Test",method="Fail",code="NOT_FOUND""#,
            r#"service="polyproto.test.v1.Test",method="unknown",code="UNIMPLEMENTED""#,
            r#"service="polyproto.test.v1.Test",method="unknown",code="UNAUTHENTICATED""#,
            r#"service="unknown",method="unknown",code="UNIMPLEMENTED""#,
            r#"service="grpc.health.v1.Health",method="Check",code="UNKNOWN""#,
            r#"service="polyproto.test.v1.Test",method="Get",code="UNKNOWN""#,
        ] {
            assert!(
                calls.iter().any(|line| line.contains(expected)),
                "{expected} missing:\n{text}"
            );
        }
        assert!(
            !text.contains("Nope") && !text.contains("elsewhere"),
            "{text}"
        );
        for gauge in metrics.server_gauges(&layer) {
            assert_eq!(gauge, 0);
        }
    }

    impl Metrics {
        fn server_gauges(&self, layer: &GrpcMetricsLayer) -> Vec<i64> {
            layer.server.in_flight.iter().map(Gauge::get).collect()
        }
    }

    #[test]
    fn build_info_and_sampled_gauges_are_rendered() {
        struct Pool;
        impl Sampled for Pool {
            fn sample(&self, samples: &Samples<'_>) {
                samples.pool("identity", 3, 2, 16);
                samples.cache_weighted_bytes("public", 1234);
            }
        }
        let metrics = leaked();
        let pool: Arc<dyn Sampled> = Arc::new(Pool);
        metrics.register_sampled(Arc::downgrade(&pool));
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "polyproto_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains(r#"polyproto_db_pool_connections{pool="identity"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"polyproto_db_pool_idle_connections{pool="identity"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"polyproto_db_pool_max_connections{pool="identity"} 16"#),
            "{text}"
        );
        assert!(
            text.contains(r#"polyproto_gateway_cache_weighted_bytes{cache="public"} 1234"#),
            "{text}"
        );
        // Rendering twice does not add the samples up.
        assert!(
            metrics
                .render()
                .contains(r#"polyproto_db_pool_connections{pool="identity"} 3"#)
        );
        drop(pool);
        let text = metrics.render();
        assert!(
            !text.contains(r#"pool="identity""#),
            "a dropped pool stays:\n{text}"
        );
    }
}
