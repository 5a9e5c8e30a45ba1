//! Who is calling: `Authorization: Bearer <token>` resolved by `session.Authenticate` (the one
//! RPC every Bearer route makes) into the caller and its caller assertion, which the gateway
//! passes on unchanged to every RPC that acts for the caller. The gateway decides nothing about
//! rights: admin checks and sensitive-action solutions are checked by the service that owns
//! the data (API.md "Internal boundary"); it only reads the headers.

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
/// entry lives at most the TTL and never past 5 s before its assertion expires. Every
/// successful session change handled by the gateway (login, new or renewed cert, session
/// deletion) clears it, and a resolution that raced a clear is not stored (generation check):
/// a deleted session's token fails at once *through this gateway*. That makes it safe only
/// where one gateway handles every mutation (`polyproto up`); with several replicas keep it off.
pub struct TokenCache {
    cache: BoundedCache<Authenticated>,
}

/// A token cache miss (remembers the generation it happened in).
#[derive(Debug, Clone)]
pub struct TokenMiss(crate::cache::Miss);

/// How long before its assertion expires a cached resolution is dropped, in milliseconds.
const ASSERTION_MARGIN_MS: u64 = 5_000;

impl Weigh for Authenticated {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.caller.fid.len()
            + self.caller.session_id.len()
            + self.assertion.token.len()
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
    /// A cache whose entries live `ttl` (zero disables it), holding at most `max_bytes`.
    pub fn new(ttl: std::time::Duration, max_bytes: u64) -> Self {
        Self {
            // Token entries are small and fixed in shape: the byte budget is their only bound.
            cache: BoundedCache::labelled(
                crate::cache::TOKEN_CACHE_LABEL,
                ttl,
                max_bytes,
                usize::MAX,
            ),
        }
    }

    /// The resolution of `token` if cached and fresh.
    pub fn get(&self, token: &str) -> Result<Authenticated, TokenMiss> {
        self.cache.get(key(token)).map_err(TokenMiss)
    }

    /// Remembers `resolved` for the token of `miss` (its assertion expiring at UNIX ms
    /// `assertion_expires_ms`), unless the cache was cleared since `miss`.
    pub fn insert(&self, miss: TokenMiss, resolved: Authenticated, assertion_expires_ms: u64) {
        let left_ms = assertion_expires_ms
            .saturating_sub(p2_runtime::internal::unix_now_ms())
            .saturating_sub(ASSERTION_MARGIN_MS);
        self.cache
            .insert(miss.0, resolved, std::time::Duration::from_millis(left_ms));
    }

    /// Forgets every token (after a session change).
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

    #[test]
    fn cached_tokens_are_answered_until_a_clear() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        cache.insert(miss, caller(), FAR);
        assert_eq!(cache.get("tok").unwrap().caller.fid, "a@b.test");
        assert!(cache.get("other").is_err());
        cache.clear();
        assert!(cache.get("tok").is_err());
    }

    #[test]
    fn a_resolution_that_raced_a_clear_is_not_cached_and_zero_ttl_caches_nothing() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        cache.clear();
        cache.insert(miss, caller(), FAR);
        assert!(cache.get("tok").is_err());
        let off = TokenCache::new(std::time::Duration::ZERO, 1 << 20);
        let miss = off.get("tok").unwrap_err();
        off.insert(miss, caller(), FAR);
        assert!(off.get("tok").is_err());
    }

    #[test]
    fn a_resolution_is_never_cached_past_its_assertion() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60), 1 << 20);
        let miss = cache.get("tok").unwrap_err();
        // Expires within the safety margin: not stored at all.
        let soon = p2_runtime::internal::unix_now_ms() + 1_000;
        cache.insert(miss, caller(), soon);
        assert!(cache.get("tok").is_err());
    }

    #[test]
    fn the_token_cache_stays_within_its_byte_budget() {
        let budget = 64 * 1024;
        let cache = TokenCache::new(std::time::Duration::from_secs(60), budget);
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
