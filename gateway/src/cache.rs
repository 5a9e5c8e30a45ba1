//! A short-lived cache of public read responses (`idcert/server`, `key/server`,
//! `idcert/actor/{fid}`, `services/discover/...`).
//!
//! Why: these reads are public, hot, and identical for every caller, while each miss costs a
//! gRPC round trip. An entry lives at most `--public-cache-ms` (default 1 s), and never past
//! the `cacheNotValidAfter` of a certificate it contains. Every mutation handled by this
//! gateway (login, new or renewed ID-Cert, session deletion, key rotation, service changes)
//! clears the whole cache, so a client sees its own changes at once; a change made through
//! another gateway replica shows after at most the TTL — far inside the cache windows
//! (≤ 12 h) that polyproto lets clients cache certificates for anyway.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Most entries kept; past this, expired ones are dropped and new ones skipped.
pub const MAX_ENTRIES: usize = 10_000;

struct Entry {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    expires: Instant,
}

/// The cache. A zero TTL disables it.
pub struct ResponseCache {
    ttl: Duration,
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// Bumped by every clear: a response fetched before a clear must not be stored after it.
    generation: u64,
}

/// A cache miss: remembers which generation the caller fetched under.
#[derive(Debug, Clone, Copy)]
pub struct Miss {
    generation: u64,
}

impl ResponseCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(Entries::default()),
        }
    }

    /// The cached response for `key` if fresh; otherwise the [`Miss`] to pass to
    /// [`ResponseCache::store`] with the freshly fetched response.
    pub fn get(&self, key: &str) -> Result<Response, Miss> {
        let Ok(entries) = self.entries.read() else {
            return Err(Miss {
                generation: u64::MAX,
            });
        };
        let miss = Miss {
            generation: entries.generation,
        };
        if self.ttl.is_zero() {
            return Err(miss);
        }
        let entry = entries.map.get(key).ok_or(miss)?;
        if entry.expires <= Instant::now() {
            return Err(miss);
        }
        let mut response = (entry.status, entry.body.clone()).into_response();
        if let Some(content_type) = &entry.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        Ok(response)
    }

    /// Caches `response` (a successful one) under `key`, at most until the UNIX time
    /// `fresh_until`; returns the response for sending. Bodies are buffered once here.
    pub async fn store(
        &self,
        key: String,
        miss: Miss,
        response: Response,
        fresh_until: Option<u64>,
    ) -> Response {
        if self.ttl.is_zero() || !response.status().is_success() {
            return response;
        }
        let mut ttl = self.ttl;
        if let Some(until) = fresh_until {
            let left = until.saturating_sub(p2_runtime::unix_now());
            if left <= 1 {
                return response;
            }
            ttl = ttl.min(Duration::from_secs(left - 1));
        }
        let (parts, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "response body failed").into_response();
        };
        let entry = Entry {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body: body.clone(),
            expires: Instant::now() + ttl,
        };
        if let Ok(mut entries) = self.entries.write()
            && entries.generation == miss.generation
        {
            if entries.map.len() >= MAX_ENTRIES {
                let now = Instant::now();
                entries.map.retain(|_, e| e.expires > now);
            }
            if entries.map.len() < MAX_ENTRIES {
                entries.map.insert(key, entry);
            }
        }
        Response::from_parts(parts, axum::body::Body::from(body))
    }

    /// Forgets everything (after a mutation).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.map.clear();
            entries.generation = entries.generation.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> Bytes {
        axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn fresh_entries_are_served_and_cleared_ones_are_not() {
        let cache = ResponseCache::new(Duration::from_secs(60));
        let miss = cache.get("k").unwrap_err();
        let sent = cache
            .store(
                "k".into(),
                miss,
                ([(header::CONTENT_TYPE, "text/plain")], "pem").into_response(),
                None,
            )
            .await;
        assert_eq!(body(sent).await, "pem");
        let hit = cache.get("k").ok().unwrap();
        assert_eq!(hit.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(body(hit).await, "pem");
        cache.clear();
        assert!(cache.get("k").is_err());
    }

    #[tokio::test]
    async fn a_response_fetched_before_a_clear_is_not_stored_after_it() {
        let cache = ResponseCache::new(Duration::from_secs(60));
        let miss = cache.get("k").unwrap_err();
        cache.clear();
        cache
            .store("k".into(), miss, "stale".into_response(), None)
            .await;
        assert!(cache.get("k").is_err());
    }

    #[tokio::test]
    async fn errors_expiring_certificates_and_a_zero_ttl_are_not_cached() {
        let cache = ResponseCache::new(Duration::from_secs(60));
        let miss = cache.get("e").unwrap_err();
        cache
            .store(
                "e".into(),
                miss,
                (StatusCode::NOT_FOUND, "no").into_response(),
                None,
            )
            .await;
        assert!(cache.get("e").is_err());
        let soon = p2_runtime::unix_now() + 1;
        cache
            .store("c".into(), miss, "x".into_response(), Some(soon))
            .await;
        assert!(cache.get("c").is_err());
        let off = ResponseCache::new(Duration::ZERO);
        let miss = off.get("z").unwrap_err();
        off.store("z".into(), miss, "x".into_response(), None).await;
        assert!(off.get("z").is_err());
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let cache = ResponseCache::new(Duration::from_millis(30));
        let miss = cache.get("k").unwrap_err();
        cache
            .store("k".into(), miss, "x".into_response(), None)
            .await;
        assert!(cache.get("k").is_ok());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(cache.get("k").is_err());
    }
}
