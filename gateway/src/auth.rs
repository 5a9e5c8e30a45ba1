//! Who is calling: `Authorization: Bearer <token>` resolved by `session.Authenticate` (the one
//! RPC every Bearer route makes) into the caller and its caller assertion, which the gateway
//! passes on unchanged to every RPC that acts for the caller. The gateway decides nothing about
//! rights: admin checks and sensitive-action solutions are checked by the service that owns
//! the data (API.md "Internal boundary"); it only reads the headers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use p2_proto::common::v1::{Caller, CallerAssertion};

use crate::AppState;
use crate::cache::{BoundedCache, CacheKey, Scope, Weigh};
use crate::error::ApiError;

/// Header carrying the solution of a sensitive action (for password actors: the password).
/// Its value is read as raw UTF-8 bytes, so passwords outside ASCII can be sent as they are.
pub const SENSITIVE_SOLUTION_HEADER: &str = "x-p2-sensitive-solution";

/// The authenticated caller of a Bearer route, with the proof to pass on.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who it is (for logs and spans).
    pub caller: Caller,
    /// The caller assertion session minted for it.
    pub assertion: CallerAssertion,
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this route needs `Authorization: Bearer <session token>`",
            )
        })?;
        authenticate(state, token).await
    }
}

/// The token check of every Bearer route: the gateway's token cache when it is on and holds
/// the token (never past the assertion's expiry), else `session.Authenticate`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    let cache = state.token_cache();
    let miss = match cache.get(token) {
        Ok(hit) => return Ok(hit),
        Err(miss) => miss,
    };
    let answer = state
        .session()
        .authenticate(p2_proto::session::v1::AuthenticateRequest {
            token: token.to_owned(),
        })
        .await?
        .into_inner();
    let authenticated = Authenticated {
        caller: crate::error::required(answer.caller, "session.Authenticate", "caller")?,
        assertion: crate::error::required(answer.assertion, "session.Authenticate", "assertion")?,
    };
    cache.insert(miss, authenticated.clone(), answer.assertion_expires_ms);
    Ok(authenticated)
}

/// Resolved tokens, for `--token-cache-ms`: the gateway's one [`BoundedCache`], bounded by
/// `--token-cache-max-bytes`. Keys are SHA-256 digests, so no token text stays in memory; an
/// entry lives at most the TTL and never past 5 s before its assertion expires.
///
/// Safe with any number of gateways: the cache is used only while the invalidation feed of
/// the events service is live ([`crate::invalidation`]), which tells every gateway the moment
/// any service ends a session. Without a live feed every lookup misses and nothing is stored,
/// and when a feed goes live again everything cached before is dropped. Per session, a
/// generation counter (one of [`SESSION_STRIPES`], hashed by FID and session ID) is
/// stored with each entry; ending a session bumps its counter, so its entries are never
/// served again, and a resolution that was in flight while any session ended or the feed
/// changed is not stored at all. Session changes handled by this gateway also clear the
/// whole cache at once, before the feed's word arrives.
pub struct TokenCache {
    cache: BoundedCache<Resolved>,
    live: AtomicBool,
    /// Bumped whenever a session ends or the feed goes live or is lost.
    epoch: AtomicU64,
    sessions: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
}

/// A cached resolution and the generation of its session's counter when it was stored.
#[derive(Debug, Clone)]
struct Resolved {
    authenticated: Authenticated,
    generation: u64,
}

/// A token cache miss (remembers the generations it happened in).
#[derive(Debug, Clone)]
pub struct TokenMiss {
    miss: crate::cache::Miss,
    epoch: u64,
}

/// Generation counters of the token cache's sessions: ending (or logging in again as) a
/// session drops the cached tokens of the sessions sharing its counter, about 1/1024 of them.
pub const SESSION_STRIPES: usize = 1024;

/// How long before its assertion expires a cached resolution is dropped, in milliseconds.
const ASSERTION_MARGIN_MS: u64 = 5_000;

impl Weigh for Resolved {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.authenticated.caller.fid.len()
            + self.authenticated.caller.session_id.len()
            + self.authenticated.assertion.token.len()
    }
}

fn key(token: &str) -> CacheKey {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    CacheKey::new(Scope::Tokens, hex)
}

impl TokenCache {
    /// A cache whose entries live `ttl` (zero disables it), holding at most `max_bytes`; it
    /// serves nothing until [`TokenCache::set_live`] says the invalidation feed is live.
    pub fn new(ttl: std::time::Duration, max_bytes: u64) -> Self {
        Self {
            // Token entries are small and fixed in shape: the byte budget is their only bound.
            cache: BoundedCache::labelled(
                crate::cache::TOKEN_CACHE_LABEL,
                ttl,
                max_bytes,
                usize::MAX,
            ),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            sessions: (0..SESSION_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn session_stripe(&self, fid: &str, session_id: &str) -> &AtomicU64 {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one((fid, session_id));
        let index = usize::try_from(hash % SESSION_STRIPES as u64).unwrap_or(0);
        &self.sessions[index]
    }

    /// The resolution of `token` if cached, fresh, its session not ended since, and the feed
    /// live.
    pub fn get(&self, token: &str) -> Result<Authenticated, TokenMiss> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.cache.get(key(token));
        let miss = match found {
            Ok(resolved) if self.live.load(Ordering::Acquire) => {
                let caller = &resolved.authenticated.caller;
                let stripe = self.session_stripe(&caller.fid, &caller.session_id);
                if stripe.load(Ordering::Acquire) == resolved.generation {
                    return Ok(resolved.authenticated);
                }
                // Ended (or shares a stripe with one that ended): resolve again.
                return Err(TokenMiss {
                    miss: self.cache.miss_for(key(token)),
                    epoch,
                });
            }
            Ok(_) => self.cache.miss_for(key(token)),
            Err(miss) => miss,
        };
        Err(TokenMiss { miss, epoch })
    }

    /// Remembers `resolved` for the token of `miss` (its assertion expiring at UNIX ms
    /// `assertion_expires_ms`), unless the feed is not live, or a session ended or the cache
    /// was cleared since `miss`.
    pub fn insert(&self, miss: TokenMiss, resolved: Authenticated, assertion_expires_ms: u64) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let generation = self
            .session_stripe(&resolved.caller.fid, &resolved.caller.session_id)
            .load(Ordering::Acquire);
        // Read after the stripe: an invalidation that bumped the stripe after `miss` is seen
        // here even if its stripe bump came before the load above.
        if self.epoch.load(Ordering::Acquire) != miss.epoch {
            return;
        }
        let left_ms = assertion_expires_ms
            .saturating_sub(p2_runtime::internal::unix_now_ms())
            .saturating_sub(ASSERTION_MARGIN_MS);
        self.cache.insert(
            miss.miss,
            Resolved {
                authenticated: resolved,
                generation,
            },
            std::time::Duration::from_millis(left_ms),
        );
    }

    /// The session (`fid`, `session_id`) ended: its token is never served from here again.
    pub fn invalidate_session(&self, fid: &str, session_id: &str) {
        self.session_stripe(fid, session_id)
            .fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the invalidation feed is live: the cache serves and stores only while it is.
    /// Every change drops what is cached.
    pub fn set_live(&self, live: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
        self.live.store(live, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the invalidation feed is live.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Forgets every token (after a session change).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
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
}

/// The sensitive-action solution the request carries (`X-P2-Sensitive-Solution`), read as raw
/// UTF-8; `None` when absent or empty. Whether it is right is for the owning service to say.
pub fn sensitive_solution(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(SENSITIVE_SOLUTION_HEADER) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| {
        ApiError::bad_request(format!(
            "the {SENSITIVE_SOLUTION_HEADER} header must be UTF-8 text"
        ))
    })?;
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// Header carrying a challenge-string solution (spec 4.3).
pub const CHALLENGE_SOLUTION_HEADER: &str = "x-p2-challenge-string-solution";

/// Splits a challenge solution header value, `<challenge>:<hex signature>` (a space also
/// separates), into its two parts.
pub fn parse_challenge_solution(value: &str) -> Option<(&str, &str)> {
    let (challenge, signature) = value.trim().split_once([':', ' '])?;
    let (challenge, signature) = (challenge.trim(), signature.trim());
    (!challenge.is_empty() && !signature.is_empty()).then_some((challenge, signature))
}

/// The check for challenge-string protected routes (spec 4.3): the request carries
/// `X-P2-Challenge-String-Solution: <challenge>:<hex Ed25519 signature of the challenge>`,
/// where the challenge was issued to the caller's session, is unexpired and unused, and the
/// signature is by the session's key. The challenge is consumed either way. 403 otherwise.
pub async fn require_challenge_solution(
    state: &AppState,
    caller: &Authenticated,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let value = headers
        .get(CHALLENGE_SOLUTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this route needs a solved challenge: GET /.p2/core/v1/challenge, sign it with \
                 this session's key and send `X-P2-Challenge-String-Solution: <challenge>:<hex signature>`",
            )
        })?;
    let (challenge, signature) = parse_challenge_solution(value).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "X-P2-Challenge-String-Solution must be `<challenge>:<hex signature>`",
        )
    })?;
    state
        .session()
        .verify_challenge_solution(p2_proto::session::v1::VerifyChallengeSolutionRequest {
            caller: Some(caller.assertion.clone()),
            challenge: challenge.to_owned(),
            signature: signature.to_owned(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Authenticated {
        Authenticated {
            caller: Caller {
                fid: "a@b.test".into(),
                session_id: "s".into(),
            },
            assertion: CallerAssertion { token: vec![1] },
        }
    }

    const FAR: u64 = u64::MAX;

    /// A cache whose invalidation feed is live.
    fn live_cache(ttl: std::time::Duration, max_bytes: u64) -> TokenCache {
        let cache = TokenCache::new(ttl, max_bytes);
        cache.set_live(true);
        cache
    }

    fn caller_of(session_id: &str) -> Authenticated {
        let mut caller = caller();
        caller.caller.session_id = session_id.into();
        caller
    }

    #[test]
    fn nothing_is_served_or_stored_while_the_feed_is_not_live() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        cache.insert(miss, caller(), FAR);
        assert!(cache.get("tok").is_err());
        cache.set_live(true);
        let miss = cache.get("tok").unwrap_err();
        cache.insert(miss, caller(), FAR);
        assert!(cache.get("tok").is_ok());
        // The feed is lost: everything goes, nothing is served until it is back.
        cache.set_live(false);
        assert!(cache.get("tok").is_err());
        cache.set_live(true);
        assert!(
            cache.get("tok").is_err(),
            "dropped when the feed went live again"
        );
    }

    #[test]
    fn an_ended_session_is_never_served_again_and_its_inflight_resolution_not_stored() {
        let cache = live_cache(std::time::Duration::from_secs(60), 1 << 20);
        // Enough sessions that some land on other stripes than the ended one.
        for i in 0..200 {
            let token = format!("tok-{i}");
            let miss = cache.get(&token).unwrap_err();
            cache.insert(miss, caller_of(&format!("s{i}")), FAR);
        }
        cache.invalidate_session("a@b.test", "s7");
        assert!(cache.get("tok-7").is_err());
        let kept = (0..200)
            .filter(|i| cache.get(&format!("tok-{i}")).is_ok())
            .count();
        assert!(
            kept >= 195,
            "only the ended session's stripe goes ({kept} of 200 kept)"
        );
        // A resolution in flight while a session ended is not stored.
        let miss = cache.get("late").unwrap_err();
        cache.invalidate_session("a@b.test", "other");
        cache.insert(miss, caller_of("late"), FAR);
        assert!(cache.get("late").is_err());
    }

    #[test]
    fn cached_tokens_are_answered_until_a_clear() {
        let cache = live_cache(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        cache.insert(miss, caller(), FAR);
        assert_eq!(cache.get("tok").unwrap().caller.fid, "a@b.test");
        assert!(cache.get("other").is_err());
        cache.clear();
        assert!(cache.get("tok").is_err());
    }

    #[test]
    fn a_resolution_that_raced_a_clear_is_not_cached_and_zero_ttl_caches_nothing() {
        let cache = live_cache(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        cache.clear();
        cache.insert(miss, caller(), FAR);
        assert!(cache.get("tok").is_err());
        let off = live_cache(std::time::Duration::ZERO, 1 << 20);
        let miss = off.get("tok").unwrap_err();
        off.insert(miss, caller(), FAR);
        assert!(off.get("tok").is_err());
    }

    #[test]
    fn a_resolution_is_never_cached_past_its_assertion() {
        let cache = live_cache(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        // Expires within the safety margin: not stored at all.
        let soon = p2_runtime::internal::unix_now_ms() + 1_000;
        cache.insert(miss, caller(), soon);
        assert!(cache.get("tok").is_err());
    }

    #[test]
    fn the_token_cache_stays_within_its_byte_budget() {
        let budget = 64 * 1024;
        let cache = live_cache(std::time::Duration::from_secs(60), budget);
        for i in 0..5_000 {
            let token = format!("token-{i}");
            let miss = cache.get(&token).unwrap_err();
            cache.insert(miss, caller(), FAR);
        }
        let held = cache.weighted_bytes();
        assert!(
            held > 0 && held <= budget,
            "{held} bytes held, budget {budget}"
        );
    }

    #[test]
    fn sensitive_solutions_are_read_as_raw_utf8() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(sensitive_solution(&headers).unwrap(), None);
        headers.insert(
            SENSITIVE_SOLUTION_HEADER,
            axum::http::HeaderValue::from_bytes("pässwört-1234".as_bytes()).unwrap(),
        );
        assert_eq!(
            sensitive_solution(&headers).unwrap().as_deref(),
            Some("pässwört-1234")
        );
        headers.insert(
            SENSITIVE_SOLUTION_HEADER,
            axum::http::HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap(),
        );
        assert_eq!(
            sensitive_solution(&headers).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn challenge_solutions_split_on_colon_or_space() {
        assert_eq!(parse_challenge_solution("abc:00ff"), Some(("abc", "00ff")));
        assert_eq!(
            parse_challenge_solution(" abc 00ff "),
            Some(("abc", "00ff"))
        );
        assert_eq!(parse_challenge_solution("abc"), None);
        assert_eq!(parse_challenge_solution(":00ff"), None);
        assert_eq!(parse_challenge_solution("abc:"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let request = axum::http::Request::builder()
            .header("authorization", "bearer  abc ")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        assert_eq!(bearer_token(&parts), Some("abc"));
        let request = axum::http::Request::builder()
            .header("authorization", "Basic abc")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        assert_eq!(bearer_token(&parts), None);
    }
}
