//! The gateway's one cache implementation, [`BoundedCache`], and its two uses: the public read
//! cache [`ResponseCache`] (`idcert/server`, `key/server`, `idcert/actor/{fid}`,
//! `services/discover/...`) and the token cache ([`crate::auth::TokenCache`]).
//!
//! Why a cache: public reads are hot and identical for every caller, while each miss costs a
//! gRPC round trip. Why these bounds (CONVENTIONS 17), since keys are chosen by clients:
//!
//! - **Bytes, not entries.** Each cache holds at most its budget (`--cache-max-bytes`,
//!   `--token-cache-max-bytes`), weighed as key + value + [`ENTRY_OVERHEAD_BYTES`]. At the
//!   bound moka evicts (TinyLFU admission, LRU eviction): a new entry either displaces rarely
//!   used ones or is not admitted. Nothing is ever refused to the client; a miss only costs a
//!   round trip. moka applies the budget in its housekeeping, which a writer runs every 64
//!   writes: between two runs a cache can exceed its budget by those pending entries (64 × the
//!   entry limit = 4 MiB with the defaults; moka's write log caps it at 384 entries).
//! - **Large answers are not cached.** A response body over `--cache-max-entry-bytes` (default
//!   64 KiB) is passed through without being buffered or stored.
//! - **Per-entry expiry.** An entry lives at most the cache's TTL (`--public-cache-ms`,
//!   `--token-cache-ms`) and never past the `cacheNotValidAfter` of a certificate it contains;
//!   expired entries are evicted by moka's housekeeping (within about a second of expiry: its
//!   timer wheel ticks every 1.07 s), which runs on cache use and, in [`crate::serve`], once a
//!   second ([`SWEEP_INTERVAL`]) — not only when the cache is full.
//! - **Canonical keys.** Routes build a [`CacheKey`] from the *parsed* parameters, canonicalised
//!   (FIDs lowercased as the services normalise them, a discovery `limit` at or above
//!   [`MAX_PROVIDERS_PER_ACTOR`] dropped), so spellings that give the same answer share one
//!   entry.
//!
//! Invalidation is targeted: every key belongs to a [`Scope`] (the server's keys, one actor's
//! certs, one actor's providers, tokens), and a successful mutation invalidates only the scopes
//! it affects (see [`Invalidation`] and `routes::complete_mutations`). Each scope maps to one of
//! [`STRIPES`] generation counters that is part of every stored key: invalidating a scope bumps
//! its counter, so older entries become unreachable at once (they age out or are evicted) and a
//! response fetched before the invalidation — whose [`Miss`] carries the old generation — can
//! never be served after it. Two scopes sharing a stripe only invalidate each other more often.
//! A change made through another gateway replica shows after at most the TTL.

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Bytes, HttpBody as _};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Default byte budget of the public read cache (`--cache-max-bytes`): 32 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Default byte budget of the token cache (`--token-cache-max-bytes`): 4 MiB, about 15 000
/// resolved tokens.
pub const DEFAULT_TOKEN_CACHE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default largest cached response body (`--cache-max-entry-bytes`): 64 KiB. A server cert is
/// about 1.2 KiB; a discovery answer listing hundreds of providers is not worth its memory.
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Bytes counted per entry on top of its key and value: moka's node and timer-wheel entry,
/// the hash-map slot, the `Arc`s, and the allocator's own rounding (measured: the process
/// grows by about this much more per entry than key and value account for).
pub const ENTRY_OVERHEAD_BYTES: usize = 512;
/// The discovery service's per-actor maximum of providers (`p2_discovery::grpc::
/// MAX_PROVIDERS_PER_ACTOR`; the gateway links no service): a `limit` at or above it answers
/// what no limit answers, so it is dropped from keys and requests.
pub const MAX_PROVIDERS_PER_ACTOR: u64 = 1000;
/// How often [`crate::serve`] runs the caches' housekeeping, evicting expired entries even
/// when no request touches the cache.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Number of generation counters that scopes are hashed onto.
pub const STRIPES: usize = 64;

/// What a cached entry depends on: the unit of invalidation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The server's root certs and public keys (changed by key rotation).
    Server,
    /// The certs of one actor, by normalised local name (changed by its logins, new certs and
    /// session deletions). One home server has one domain, so the local name names the actor.
    ActorCerts(Box<str>),
    /// The service providers of one actor, by normalised local name.
    Discovery(Box<str>),
    /// Resolved session tokens.
    Tokens,
}

/// The normalised local part of a FID (or a bare local name), as the services normalise it.
fn local_name(fid: &str) -> Box<str> {
    let local = fid.split_once('@').map_or(fid, |(local, _)| local);
    local.to_ascii_lowercase().into_boxed_str()
}

impl Scope {
    /// The certs of the actor `fid` (or bare local name).
    pub fn actor_certs(fid: &str) -> Self {
        Self::ActorCerts(local_name(fid))
    }

    /// The providers of the actor `fid` (or bare local name).
    pub fn discovery(fid: &str) -> Self {
        Self::Discovery(local_name(fid))
    }

    fn weight(&self) -> usize {
        match self {
            Self::Server | Self::Tokens => 0,
            Self::ActorCerts(name) | Self::Discovery(name) => name.len(),
        }
    }
}

/// A cache key: its scope and the canonical parameters of the request. Build the parameters
/// from parsed, canonicalised values, never from the raw request text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    scope: Scope,
    params: Box<str>,
}

impl CacheKey {
    /// The key of an answer in `scope` that depends on `params`.
    pub fn new(scope: Scope, params: impl Into<Box<str>>) -> Self {
        Self {
            scope,
            params: params.into(),
        }
    }

    fn weight(&self) -> usize {
        self.scope.weight() + self.params.len()
    }
}

/// The canonical form of a discovery `limit`: one at or above [`MAX_PROVIDERS_PER_ACTOR`] is
/// no limit (every actor has fewer providers). Send this, not the raw value, upstream too.
pub fn canonical_discovery_limit(limit: Option<u64>) -> Option<u64> {
    limit.filter(|&n| n < MAX_PROVIDERS_PER_ACTOR)
}

/// The key of `GET services/discover/{fid}[/{service}]` with `limit` (pass it through
/// [`canonical_discovery_limit`] first; this does it again).
pub fn discovery_key(fid: &str, service: Option<&str>, limit: Option<u64>) -> CacheKey {
    let limit = canonical_discovery_limit(limit);
    CacheKey::new(
        Scope::discovery(fid),
        format!("{}|{service:?}|{limit:?}", fid.to_ascii_lowercase()),
    )
}

/// The key of `GET idcert/actor/{fid}` with its filters.
pub fn actor_certs_key(
    fid: &str,
    timestamp: Option<u64>,
    session_id: Option<&str>,
    not_before: Option<u64>,
    not_after: Option<u64>,
) -> CacheKey {
    CacheKey::new(
        Scope::actor_certs(fid),
        format!(
            "{}|{timestamp:?}|{session_id:?}|{not_before:?}|{not_after:?}",
            fid.to_ascii_lowercase()
        ),
    )
}

/// A value's size in bytes as the cache weighs it (heap data plus its own size).
pub trait Weigh {
    /// Bytes this value keeps alive.
    fn weight(&self) -> usize;
}

/// A stored key: the key plus the generation of its scope's stripe when it was looked up.
type StoredKey = (CacheKey, u64);

struct Stored<V> {
    value: V,
    ttl: Duration,
}

/// Each entry expires after its own TTL, counted from its (last) insertion.
struct PerEntryTtl;

impl<V> moka::Expiry<StoredKey, Arc<Stored<V>>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &StoredKey,
        value: &Arc<Stored<V>>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &StoredKey,
        value: &Arc<Stored<V>>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A cache miss: the key (with the generation it was looked up under) to store the fetched
/// answer with.
#[derive(Debug, Clone)]
pub struct Miss {
    key: StoredKey,
}

/// A cache bounded in bytes with per-entry expiry and scoped invalidation (see the module
/// docs). A zero TTL or a zero budget disables it. Lookups of an enabled cache are counted in
/// `polyproto_gateway_cache_hits_total` / `_misses_total{cache="<label>"}`.
pub struct BoundedCache<V> {
    ttl: Duration,
    max_entry_bytes: usize,
    entries: Option<moka::sync::Cache<StoredKey, Arc<Stored<V>>>>,
    generations: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
    counters: p2_runtime::metrics::CacheCounters,
}

/// The metrics label of the token cache (`crate::auth::TokenCache`).
pub const TOKEN_CACHE_LABEL: &str = "token";
/// The metrics label of the public read cache.
pub const PUBLIC_CACHE_LABEL: &str = "public";

impl<V: Weigh + Clone + Send + Sync + 'static> BoundedCache<V> {
    /// A cache whose entries live at most `ttl`, weighing at most `max_bytes` together and
    /// `max_entry_bytes` each (key and overhead included), its lookups counted in the metrics
    /// under `label`.
    pub fn labelled(
        label: &'static str,
        ttl: Duration,
        max_bytes: u64,
        max_entry_bytes: usize,
    ) -> Self {
        let entries = (!ttl.is_zero() && max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &StoredKey, value: &Arc<Stored<V>>| {
                    let bytes = key.0.weight() + value.value.weight() + ENTRY_OVERHEAD_BYTES;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build()
        });
        Self {
            ttl,
            max_entry_bytes,
            entries,
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
            counters: p2_runtime::metrics::CacheCounters::new(label),
        }
    }

    /// Whether anything is ever stored.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The longest an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The largest value (in bytes, as weighed) that is stored.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    fn stripe(&self, scope: &Scope) -> &AtomicU64 {
        let index = usize::try_from(self.hasher.hash_one(scope) % STRIPES as u64).unwrap_or(0);
        &self.generations[index]
    }

    /// The fresh value for `key`, or the [`Miss`] to store the fetched value with.
    pub fn get(&self, key: CacheKey) -> Result<V, Miss> {
        let generation = self.stripe(&key.scope).load(Ordering::Acquire);
        let key = (key, generation);
        if let Some(entries) = &self.entries {
            if let Some(hit) = entries.get(&key) {
                self.counters.hit();
                return Ok(hit.value.clone());
            }
            // A disabled cache counts nothing: every lookup would be a miss.
            self.counters.miss();
        }
        Err(Miss { key })
    }

    /// The [`Miss`] for `key` in the current generation, without a lookup (for a caller that
    /// found an entry it cannot use).
    pub fn miss_for(&self, key: CacheKey) -> Miss {
        let generation = self.stripe(&key.scope).load(Ordering::Acquire);
        Miss {
            key: (key, generation),
        }
    }

    /// Stores `value` for at most `ttl` (capped at the cache's TTL), unless its scope was
    /// invalidated since `miss` or it weighs more than the per-entry limit.
    pub fn insert(&self, miss: Miss, value: V, ttl: Duration) {
        let Some(entries) = &self.entries else {
            return;
        };
        let ttl = ttl.min(self.ttl);
        let weight = miss.key.0.weight() + value.weight();
        if ttl.is_zero() || weight > self.max_entry_bytes {
            return;
        }
        // Invalidated meanwhile: the answer may predate the change. (Should an invalidation
        // land between this check and the insert, the entry is stored under the old generation
        // and no lookup ever reaches it.)
        if self.stripe(&miss.key.0.scope).load(Ordering::Acquire) != miss.key.1 {
            return;
        }
        entries.insert(miss.key, Arc::new(Stored { value, ttl }));
    }

    /// Makes every entry of `scope` unreachable at once (and those sharing its stripe).
    pub fn invalidate(&self, scope: &Scope) {
        self.stripe(scope).fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for generation in &self.generations {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }

    /// Runs pending housekeeping now: evicts expired entries and applies the byte bound.
    pub fn run_pending_tasks(&self) {
        if let Some(entries) = &self.entries {
            entries.run_pending_tasks();
        }
    }

    /// Bytes held, as weighed (after running pending housekeeping).
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.weighted_size()
        })
    }

    /// Entries held (after running pending housekeeping).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.entry_count()
        })
    }
}

/// A cached HTTP answer.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Weigh for CachedResponse {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.body.len()
            + self.content_type.as_ref().map_or(0, HeaderValue::len)
    }
}

impl CachedResponse {
    fn response(&self) -> Response {
        let mut response = (self.status, self.body.clone()).into_response();
        if let Some(content_type) = &self.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        response
    }
}

/// The public read cache.
pub struct ResponseCache {
    cache: BoundedCache<CachedResponse>,
}

impl ResponseCache {
    /// A cache whose entries live `ttl`, bounded to `max_bytes` in total and bodies of at most
    /// `max_entry_bytes`. A zero TTL disables it.
    pub fn new(ttl: Duration, max_bytes: u64, max_entry_bytes: usize) -> Self {
        Self {
            cache: BoundedCache::labelled(PUBLIC_CACHE_LABEL, ttl, max_bytes, max_entry_bytes),
        }
    }

    /// The cached response for `key` if fresh; otherwise the [`Miss`] to pass to
    /// [`ResponseCache::store`] with the freshly fetched response.
    pub fn get(&self, key: CacheKey) -> Result<Response, Miss> {
        self.cache.get(key).map(|hit| hit.response())
    }

    /// Caches `response` (a successful one with a body of at most the per-entry limit) under
    /// the key of `miss`, at most until the UNIX time `fresh_until`; returns the response for
    /// sending. Small bodies are buffered once here; larger ones pass through untouched.
    pub async fn store(
        &self,
        miss: Miss,
        response: Response,
        fresh_until: Option<u64>,
    ) -> Response {
        if !self.cache.enabled() || !response.status().is_success() {
            return response;
        }
        let mut ttl = self.cache.ttl();
        if let Some(until) = fresh_until {
            let left = until.saturating_sub(p2_runtime::unix_now());
            if left <= 1 {
                return response;
            }
            ttl = ttl.min(Duration::from_secs(left - 1));
        }
        let (parts, body) = response.into_parts();
        let limit = self.cache.max_entry_bytes();
        let fits = body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= u64::try_from(limit).unwrap_or(u64::MAX));
        if !fits {
            return Response::from_parts(parts, body);
        }
        let Ok(body) = axum::body::to_bytes(body, limit).await else {
            return crate::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to encode its response",
            )
            .into_response();
        };
        // An exact-size copy: the buffer the body was built in may be much larger than its
        // length, and the cache must hold what it weighs.
        let entry = CachedResponse {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body: Bytes::copy_from_slice(&body),
        };
        self.cache.insert(miss, entry, ttl);
        Response::from_parts(parts, axum::body::Body::from(body))
    }

    /// Makes every entry of `scope` unreachable (after a mutation of what it depends on).
    pub fn invalidate(&self, scope: &Scope) {
        self.cache.invalidate(scope);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Runs pending housekeeping (expiry, the byte bound) now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Bytes held, as weighed.
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_bytes()
    }

    /// Entries held.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// What a mutation invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Public reads of one scope.
    Public(Scope),
    /// Every public read.
    AllPublic,
    /// Every resolved token.
    AllTokens,
}

/// The invalidations a mutating request declares, applied by `routes::complete_mutations` when
/// the request ends — unless it was answered 4xx (refused before anything changed). A handler
/// declares them *before* its upstream call, so a 5xx (outcome unknown) still invalidates.
/// Extracting it outside that middleware yields a handle nobody applies.
#[derive(Debug, Clone, Default)]
pub struct Invalidation(Arc<Mutex<Vec<Target>>>);

impl Invalidation {
    /// Declares that this request affects `target`.
    pub fn add(&self, target: Target) {
        if let Ok(mut targets) = self.0.lock()
            && !targets.contains(&target)
        {
            targets.push(target);
        }
    }

    /// Everything declared so far.
    pub fn targets(&self) -> Vec<Target> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Invalidation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    async fn body(response: Response) -> Bytes {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
    }

    fn cache(ttl: Duration) -> ResponseCache {
        ResponseCache::new(ttl, MIB, DEFAULT_CACHE_MAX_ENTRY_BYTES)
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::new(Scope::Server, name)
    }

    #[tokio::test]
    async fn fresh_entries_are_served_and_cleared_ones_are_not() {
        let cache = cache(Duration::from_secs(60));
        let miss = cache.get(key("k")).unwrap_err();
        let sent = cache
            .store(
                miss,
                ([(header::CONTENT_TYPE, "text/plain")], "pem").into_response(),
                None,
            )
            .await;
        assert_eq!(body(sent).await, "pem");
        let hit = cache.get(key("k")).ok().unwrap();
        assert_eq!(hit.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(body(hit).await, "pem");
        cache.clear();
        assert!(cache.get(key("k")).is_err());
    }

    #[tokio::test]
    async fn a_response_fetched_before_a_clear_is_not_stored_after_it() {
        let cache = cache(Duration::from_secs(60));
        let miss = cache.get(key("k")).unwrap_err();
        cache.clear();
        cache.store(miss, "stale".into_response(), None).await;
        assert!(cache.get(key("k")).is_err());
        // The same for a scoped invalidation.
        let scope = Scope::discovery("alice@p2.test");
        let miss = cache.get(CacheKey::new(scope.clone(), "q")).unwrap_err();
        cache.invalidate(&scope);
        cache.store(miss, "stale".into_response(), None).await;
        assert!(cache.get(CacheKey::new(scope, "q")).is_err());
    }

    #[tokio::test]
    async fn invalidating_a_scope_keeps_the_others() {
        let cache = cache(Duration::from_secs(60));
        let alice = CacheKey::new(Scope::discovery("Alice@p2.test"), "all");
        let server = key("cert");
        for key in [alice.clone(), server.clone()] {
            let miss = cache.get(key).unwrap_err();
            cache.store(miss, "x".into_response(), None).await;
        }
        cache.invalidate(&Scope::discovery("alice@P2.test"));
        assert!(cache.get(alice).is_err());
        // Scopes hash onto stripes: the server's own is distinct from alice's with
        // overwhelming probability, but not certainly; this one is checked deterministically.
        if !std::ptr::eq(
            cache.cache.stripe(&Scope::Server),
            cache.cache.stripe(&Scope::discovery("alice")),
        ) {
            assert!(cache.get(server).is_ok());
        }
    }

    #[tokio::test]
    async fn errors_expiring_certificates_and_a_zero_ttl_are_not_cached() {
        let cache = cache(Duration::from_secs(60));
        let miss = cache.get(key("e")).unwrap_err();
        cache
            .store(miss, (StatusCode::NOT_FOUND, "no").into_response(), None)
            .await;
        assert!(cache.get(key("e")).is_err());
        let soon = p2_runtime::unix_now() + 1;
        let miss = cache.get(key("c")).unwrap_err();
        cache.store(miss, "x".into_response(), Some(soon)).await;
        assert!(cache.get(key("c")).is_err());
        let off = ResponseCache::new(Duration::ZERO, MIB, 1024);
        let miss = off.get(key("z")).unwrap_err();
        off.store(miss, "x".into_response(), None).await;
        assert!(off.get(key("z")).is_err());
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl_and_are_evicted_without_pressure() {
        let cache = cache(Duration::from_millis(30));
        let miss = cache.get(key("k")).unwrap_err();
        cache.store(miss, "x".into_response(), None).await;
        assert!(cache.get(key("k")).is_ok());
        assert_eq!(cache.entry_count(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.get(key("k")).is_err());
        // Far from full, yet the expired entry is evicted, not merely hidden: housekeeping
        // removes it at the next tick of moka's timer wheel (about a second).
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.entry_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "an expired entry was never evicted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(cache.weighted_bytes(), 0);
    }

    #[tokio::test]
    async fn inserting_far_more_than_the_budget_stays_within_it() {
        let budget = 256 * 1024;
        let cache = ResponseCache::new(Duration::from_secs(60), budget, 8 * 1024);
        let body = "b".repeat(4000);
        for i in 0..2000 {
            let miss = cache.get(key(&format!("k{i}"))).unwrap_err();
            cache.store(miss, body.clone().into_response(), None).await;
        }
        // 2000 × ~4.2 KiB ≈ 8 MiB offered to a 256 KiB budget.
        let held = cache.weighted_bytes();
        assert!(held <= budget, "{held} bytes held, budget {budget}");
        assert!(held > 0);
    }

    #[tokio::test]
    async fn an_oversized_body_is_sent_but_not_cached() {
        let cache = ResponseCache::new(Duration::from_secs(60), MIB, 1024);
        let big = "x".repeat(1025);
        let miss = cache.get(key("big")).unwrap_err();
        let sent = cache.store(miss, big.clone().into_response(), None).await;
        assert_eq!(body(sent).await, big.as_bytes());
        assert!(cache.get(key("big")).is_err());
        assert_eq!(cache.weighted_bytes(), 0);
        let miss = cache.get(key("small")).unwrap_err();
        cache
            .store(miss, "x".repeat(900).into_response(), None)
            .await;
        assert!(cache.get(key("small")).is_ok());
    }

    #[test]
    fn scopes_normalise_fids_to_their_local_name() {
        assert_eq!(Scope::discovery("Alice@P2.test"), Scope::discovery("alice"));
        assert_eq!(
            Scope::actor_certs("ALICE@x"),
            Scope::ActorCerts("alice".into())
        );
        assert_ne!(Scope::discovery("alice"), Scope::actor_certs("alice"));
    }

    #[tokio::test]
    async fn differently_spelled_equivalent_queries_share_one_entry() {
        let cache = cache(Duration::from_secs(60));
        let miss = cache
            .get(discovery_key("Alice@P2.test", None, Some(2000)))
            .unwrap_err();
        cache.store(miss, "providers".into_response(), None).await;
        for (fid, limit) in [
            ("alice@p2.test", None),
            ("ALICE@p2.test", Some(1000)),
            ("alice@p2.TEST", Some(u64::MAX)),
        ] {
            assert!(
                cache.get(discovery_key(fid, None, limit)).is_ok(),
                "{fid} {limit:?}"
            );
        }
        assert_eq!(cache.entry_count(), 1);
        // Answers that differ stay apart.
        assert!(
            cache
                .get(discovery_key("alice@p2.test", None, Some(999)))
                .is_err()
        );
        assert!(
            cache
                .get(discovery_key("alice@p2.test", None, Some(1)))
                .is_err()
        );
        assert!(
            cache
                .get(discovery_key("alice@p2.test", Some("chat"), None))
                .is_err()
        );
        assert_eq!(canonical_discovery_limit(Some(0)), Some(0));
        assert_eq!(
            actor_certs_key("Bob@X", Some(1), None, None, None),
            actor_certs_key("bob@x", Some(1), None, None, None)
        );
    }

    #[test]
    fn declared_invalidations_are_kept_once_each() {
        let invalidation = Invalidation::default();
        invalidation.add(Target::AllTokens);
        invalidation.clone().add(Target::AllTokens);
        invalidation.add(Target::Public(Scope::Server));
        assert_eq!(
            invalidation.targets(),
            vec![Target::AllTokens, Target::Public(Scope::Server)]
        );
    }
}
