//! Request rate limits per client address and route class (spec 3.2's rate limiting; 429 with
//! `Retry-After`), one layer in front of every route.
//!
//! Classes: **password** routes (`POST /.p2/auth/v1/register`, `POST /.p2/auth/v1/session`, and
//! any request carrying `X-P2-Sensitive-Solution`), **Bearer** routes (an `Authorization`
//! header), and **public** reads (the rest). `/healthz`, `/readyz` and `/metrics` are never
//! limited. Each class allows a number of requests per client address per fixed window
//! (`--rate-limit-window-ms`); the first request over it, and every one after it in that
//! window, gets 429 problem+json with `Retry-After` = the seconds left in the window.
//!
//! Counters live in Redis when the gateway has `--redis-url` (shared by every gateway replica:
//! a client gains nothing by spreading over them), else in process (bounded: at most
//! [`MAX_MEMORY_COUNTERS`] counters; when full, finished windows are dropped, then new
//! addresses are admitted uncounted — the limiter fails open rather than refusing everyone).
//! A Redis error also fails open (logged): the password throttle and the services' own bounds
//! still hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::Instrument as _;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Args;

use crate::AppState;
use crate::error::ApiError;

/// Default window of the rate limits, in milliseconds.
pub const DEFAULT_WINDOW_MS: u64 = 60_000;
/// Default public reads per address and window.
pub const DEFAULT_PUBLIC_PER_WINDOW: u64 = 12_000;
/// Default Bearer requests per address and window.
pub const DEFAULT_BEARER_PER_WINDOW: u64 = 6_000;
/// Default password requests (logins, registrations, sensitive actions) per address and window.
pub const DEFAULT_PASSWORD_PER_WINDOW: u64 = 60;
/// Most counters the in-process limiter keeps.
pub const MAX_MEMORY_COUNTERS: usize = 100_000;
/// Default prefix of the limiter's Redis keys.
pub const DEFAULT_REDIS_PREFIX: &str = "p2:ratelimit:";

/// The rate limits (flags shared by `polyproto gateway` and `polyproto up`).
#[derive(Debug, Clone, Args)]
pub struct RateLimitOptions {
    /// Length of a rate-limit window, in milliseconds.
    #[arg(long = "rate-limit-window-ms", env = "P2_RATE_LIMIT_WINDOW_MS", default_value_t = DEFAULT_WINDOW_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub window_ms: u64,
    /// Public reads one client address may make per window; 0 means no limit.
    #[arg(long = "rate-limit-public", env = "P2_RATE_LIMIT_PUBLIC", default_value_t = DEFAULT_PUBLIC_PER_WINDOW)]
    pub public: u64,
    /// Bearer-authenticated requests one client address may make per window; 0: no limit.
    #[arg(long = "rate-limit-bearer", env = "P2_RATE_LIMIT_BEARER", default_value_t = DEFAULT_BEARER_PER_WINDOW)]
    pub bearer: u64,
    /// Password requests (register, login, anything with X-P2-Sensitive-Solution) one client
    /// address may make per window; 0: no limit.
    #[arg(long = "rate-limit-password", env = "P2_RATE_LIMIT_PASSWORD", default_value_t = DEFAULT_PASSWORD_PER_WINDOW)]
    pub password: u64,
}

impl Default for RateLimitOptions {
    fn default() -> Self {
        Self {
            window_ms: DEFAULT_WINDOW_MS,
            public: DEFAULT_PUBLIC_PER_WINDOW,
            bearer: DEFAULT_BEARER_PER_WINDOW,
            password: DEFAULT_PASSWORD_PER_WINDOW,
        }
    }
}

/// A route class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Public reads.
    Public,
    /// Bearer-authenticated requests.
    Bearer,
    /// Requests that check a password.
    Password,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Bearer => "bearer",
            Class::Password => "password",
        }
    }

    /// The class of a request; `None` for operator endpoints, which are never limited.
    pub fn of(request: &Request) -> Option<Self> {
        let path = request.uri().path().trim_end_matches('/');
        if matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return None;
        }
        let headers = request.headers();
        let password_route = request.method() == Method::POST
            && matches!(path, "/.p2/auth/v1/register" | "/.p2/auth/v1/session");
        Some(
            if password_route || headers.contains_key(crate::auth::SENSITIVE_SOLUTION_HEADER) {
                Class::Password
            } else if headers.contains_key(axum::http::header::AUTHORIZATION) {
                Class::Bearer
            } else {
                Class::Public
            },
        )
    }
}

/// One counter: the window it counts and the count so far. Atomics, so the hot path takes
/// only a shared lock of its shard.
#[derive(Debug, Default)]
struct Counter {
    window: AtomicU64,
    count: AtomicU64,
}

impl Counter {
    /// Counts one request in window `index`; returns the count in that window.
    fn hit(&self, index: u64) -> u64 {
        let seen = self.window.load(Ordering::Acquire);
        if seen != index
            && self
                .window
                .compare_exchange(seen, index, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A new window: this request is its first (a request racing the reset may be
            // counted in either window, which a limit can afford).
            self.count.store(1, Ordering::Release);
            return 1;
        }
        self.count.fetch_add(1, Ordering::AcqRel) + 1
    }
}

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<(Class, IpAddr), Arc<Counter>>>;

/// Where the counters live.
enum Counters {
    Memory(Box<[Shard; SHARDS]>),
    Redis(Box<RedisCounters>),
}

/// The Redis side of [`Counters`].
struct RedisCounters {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    prefix: String,
}

/// The limiter.
pub struct RateLimiter {
    options: RateLimitOptions,
    counters: Counters,
}

/// Whether a request may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit (or not limited).
    Admit,
    /// Over it: retry after this long.
    Refuse(Duration),
}

impl RateLimiter {
    /// An in-process limiter.
    pub fn in_process(options: RateLimitOptions) -> Self {
        Self {
            options,
            counters: Counters::Memory(Box::new(std::array::from_fn(|_| {
                RwLock::new(HashMap::new())
            }))),
        }
    }

    /// A limiter sharing its counters in Redis at `url` under `prefix` (connects on first use;
    /// [`RateLimiter::check_backend`] connects at start).
    pub fn redis(options: RateLimitOptions, url: &str, prefix: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let client = redis::Client::open(url).with_context(|| {
            format!("invalid gateway Redis URL {}", p2_runtime::redact_url(url))
        })?;
        Ok(Self {
            options,
            counters: Counters::Redis(Box::new(RedisCounters {
                client,
                conn: tokio::sync::OnceCell::new(),
                prefix: prefix.to_owned(),
            })),
        })
    }

    /// Connects to Redis when configured (start-up: a clear error instead of failing open).
    pub async fn check_backend(&self, url: Option<&str>) -> anyhow::Result<()> {
        if let (Counters::Redis(redis), Some(url)) = (&self.counters, url) {
            let manager = p2_runtime::kv::connect(url, "gateway").await?;
            let _ = redis.conn.set(manager);
        }
        Ok(())
    }

    fn limit(&self, class: Class) -> u64 {
        match class {
            Class::Public => self.options.public,
            Class::Bearer => self.options.bearer,
            Class::Password => self.options.password,
        }
    }

    /// Counts one request of `class` from `address` at UNIX ms `now_ms`.
    pub async fn check(&self, class: Class, address: IpAddr, now_ms: u64) -> Verdict {
        let limit = self.limit(class);
        if limit == 0 {
            return Verdict::Admit;
        }
        let window = self.options.window_ms.max(1);
        let index = now_ms / window;
        let left = Duration::from_millis((index + 1) * window - now_ms);
        let address = address.to_canonical();
        let count = match &self.counters {
            Counters::Memory(shards) => match memory_hit(shards, class, address, index) {
                Some(count) => count,
                None => return Verdict::Admit,
            },
            Counters::Redis(redis) => {
                let key = format!("{}{}:{address}:{index}", redis.prefix, class.name());
                match redis_count(&redis.client, &redis.conn, &key, window).await {
                    Ok(count) => count,
                    Err(error) => {
                        p2_runtime::metrics::redis_error("gateway", "rate_limit");
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "rate limiter unavailable; admitting"
                        );
                        return Verdict::Admit;
                    }
                }
            }
        };
        if count > limit {
            Verdict::Refuse(left)
        } else {
            Verdict::Admit
        }
    }
}

/// Counts one request in the in-process store; `None` when it is full of live counters (the
/// limiter then fails open for new addresses).
fn memory_hit(shards: &[Shard; SHARDS], class: Class, address: IpAddr, index: u64) -> Option<u64> {
    let shard = &shards[shard_of(address)];
    let key = (class, address);
    if let Ok(map) = shard.read()
        && let Some(counter) = map.get(&key)
    {
        return Some(counter.hit(index));
    }
    let mut map = shard.write().ok()?;
    if map.len() >= MAX_MEMORY_COUNTERS / SHARDS && !map.contains_key(&key) {
        // Drop counters of finished windows; still full: admit uncounted.
        map.retain(|_, counter| counter.window.load(Ordering::Acquire) >= index);
        if map.len() >= MAX_MEMORY_COUNTERS / SHARDS {
            return None;
        }
    }
    let counter = map
        .entry(key)
        .or_insert_with(|| {
            Arc::new(Counter {
                window: AtomicU64::new(index),
                count: AtomicU64::new(0),
            })
        })
        .clone();
    drop(map);
    Some(counter.hit(index))
}

/// The shard of an address: stable per address (not secret; an attacker choosing addresses to
/// share a shard only slows itself down).
fn shard_of(address: IpAddr) -> usize {
    let last = match address {
        IpAddr::V4(v4) => usize::from(v4.octets()[3]) ^ usize::from(v4.octets()[2]),
        IpAddr::V6(v6) => usize::from(v6.octets()[7]) ^ usize::from(v6.octets()[15]),
    };
    last % SHARDS
}

/// INCR of the window's counter, expiring with the window (plus a second of slack).
async fn redis_count(
    client: &redis::Client,
    conn: &tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    key: &str,
    window_ms: u64,
) -> anyhow::Result<u64> {
    let manager = conn
        .get_or_try_init(|| async { redis::aio::ConnectionManager::new(client.clone()).await })
        .await?;
    let mut manager = manager.clone();
    let (count, _): (u64, i64) = redis::pipe()
        .cmd("INCR")
        .arg(key)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(window_ms + 1000)
        .query_async(&mut manager)
        .instrument(p2_runtime::kv::span("rate_limit"))
        .await?;
    Ok(count)
}

/// Counts a request of `class` (see [`Class::of`]) against its client `address`; the 429
/// answer when it is over the limit. Called by the gateway's edge layer (`routes::edge`).
pub async fn refusal(
    state: &AppState,
    class: Option<Class>,
    address: Option<IpAddr>,
) -> Option<Response> {
    let class = class?;
    let address = address?;
    let now = p2_runtime::internal::unix_now_ms();
    match state.rate_limiter().check(class, address, now).await {
        Verdict::Admit => None,
        Verdict::Refuse(left) => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many {} requests from this address; try again in {} s",
                    class.name(),
                    left.as_secs().max(1)
                ),
            );
            error.retry_after = Some(left.as_secs().max(1));
            Some(error.into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn requests_are_classed_by_what_they_cost() {
        assert_eq!(
            Class::of(&request(Method::POST, "/.p2/auth/v1/session", &[])),
            Some(Class::Password)
        );
        assert_eq!(
            Class::of(&request(Method::POST, "/.p2/auth/v1/register/", &[])),
            Some(Class::Password)
        );
        assert_eq!(
            Class::of(&request(
                Method::DELETE,
                "/.p2/core/v1/session",
                &[
                    ("authorization", "Bearer x"),
                    ("x-p2-sensitive-solution", "pw")
                ]
            )),
            Some(Class::Password)
        );
        assert_eq!(
            Class::of(&request(
                Method::GET,
                "/.p2/core/v1/challenge",
                &[("authorization", "Bearer x")]
            )),
            Some(Class::Bearer)
        );
        assert_eq!(
            Class::of(&request(Method::GET, "/.p2/core/v1/idcert/server", &[])),
            Some(Class::Public)
        );
        assert_eq!(Class::of(&request(Method::GET, "/readyz", &[])), None);
    }

    #[tokio::test]
    async fn each_class_and_address_has_its_own_window() {
        let limiter = RateLimiter::in_process(RateLimitOptions {
            window_ms: 1000,
            public: 3,
            bearer: 0,
            password: 1,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t = 10_000;
        for _ in 0..3 {
            assert_eq!(limiter.check(Class::Public, a, t).await, Verdict::Admit);
        }
        assert_eq!(
            limiter.check(Class::Public, a, t + 250).await,
            Verdict::Refuse(Duration::from_millis(750))
        );
        // Another address, another class, an unlimited class: unaffected.
        assert_eq!(limiter.check(Class::Public, b, t).await, Verdict::Admit);
        assert_eq!(limiter.check(Class::Password, a, t).await, Verdict::Admit);
        assert!(matches!(
            limiter.check(Class::Password, a, t).await,
            Verdict::Refuse(_)
        ));
        for _ in 0..100 {
            assert_eq!(limiter.check(Class::Bearer, a, t).await, Verdict::Admit);
        }
        // The next window starts afresh.
        assert_eq!(
            limiter.check(Class::Public, a, t + 1000).await,
            Verdict::Admit
        );
    }
}
