//! Who is calling: `Authorization: Bearer <token>` resolved by `session.Authenticate` (the one
//! RPC every Bearer route makes), and the sensitive-action check of spec 4.2.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use p2_proto::common::v1::Caller;

use crate::AppState;
use crate::error::ApiError;

/// Header carrying the solution of a sensitive action (for password actors: the password).
pub const SENSITIVE_SOLUTION_HEADER: &str = "x-p2-sensitive-solution";

/// The authenticated caller of a Bearer route.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

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
        authenticate(state, token).await.map(Self)
    }
}

/// The token check of every Bearer route: the gateway's token cache when it is on and holds
/// the token, else `session.Authenticate`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let cache = state.token_cache();
    let miss = match cache.get(token) {
        Ok(caller) => return Ok(caller),
        Err(miss) => miss,
    };
    let caller = state
        .session()
        .authenticate(p2_proto::session::v1::AuthenticateRequest {
            token: token.to_owned(),
        })
        .await?
        .into_inner()
        .caller
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown session token"))?;
    cache.insert(token, miss, caller.clone());
    Ok(caller)
}

/// Resolved tokens, for `--token-cache-ms`. Keys are SHA-256 digests, so no token text stays
/// in memory. Every mutation handled by the gateway (session deletion, renewal, ...) clears
/// it, and a resolution that raced a clear is not stored (generation check): a deleted
/// session's token fails at once *through this gateway*. That makes it safe only where one
/// gateway handles every mutation (`polyproto up`); with several replicas keep it off.
pub struct TokenCache {
    ttl: std::time::Duration,
    inner: std::sync::RwLock<TokenEntries>,
}

#[derive(Default)]
struct TokenEntries {
    map: std::collections::HashMap<[u8; 32], (Caller, std::time::Instant)>,
    generation: u64,
}

/// A token cache miss (remembers the generation it happened in).
#[derive(Debug, Clone, Copy)]
pub struct TokenMiss(u64);

/// Most tokens kept.
pub const MAX_CACHED_TOKENS: usize = 10_000;

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// A cache whose entries live `ttl`; zero disables it.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            inner: std::sync::RwLock::new(TokenEntries::default()),
        }
    }

    /// The caller of `token` if cached and fresh.
    pub fn get(&self, token: &str) -> Result<Caller, TokenMiss> {
        let Ok(entries) = self.inner.read() else {
            return Err(TokenMiss(u64::MAX));
        };
        let miss = TokenMiss(entries.generation);
        if self.ttl.is_zero() {
            return Err(miss);
        }
        match entries.map.get(&digest(token)) {
            Some((caller, expires)) if *expires > std::time::Instant::now() => Ok(caller.clone()),
            _ => Err(miss),
        }
    }

    /// Remembers `caller` for `token`, unless the cache was cleared since `miss`.
    pub fn insert(&self, token: &str, miss: TokenMiss, caller: Caller) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.inner.write()
            && entries.generation == miss.0
        {
            let now = std::time::Instant::now();
            if entries.map.len() >= MAX_CACHED_TOKENS {
                entries.map.retain(|_, (_, expires)| *expires > now);
            }
            if entries.map.len() < MAX_CACHED_TOKENS {
                entries.map.insert(digest(token), (caller, now + self.ttl));
            }
        }
    }

    /// Forgets every token (after a mutation).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.inner.write() {
            entries.map.clear();
            entries.generation = entries.generation.wrapping_add(1);
        }
    }
}

impl Authenticated {
    /// 403 unless the caller is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this action needs an administrator of this home server",
            ))
        }
    }
}

/// The sensitive-action check (spec 4.2): the request must carry
/// `X-P2-Sensitive-Solution`, which for password actors is the actor's password. 403 when it
/// is missing or wrong.
pub async fn require_sensitive(
    state: &AppState,
    caller: &Caller,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let solution = headers
        .get(SENSITIVE_SOLUTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this is a sensitive action: send the solution (your password) in the \
                 X-P2-Sensitive-Solution header",
            )
        })?;
    let verified = state
        .identity()
        .verify_password(p2_proto::identity::v1::VerifyPasswordRequest {
            actor: caller.fid.clone(),
            password: solution.to_owned(),
        })
        .await;
    match verified {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::Unauthenticated => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the sensitive-action solution in X-P2-Sensitive-Solution is wrong",
        )),
        Err(status) => Err(status.into()),
    }
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
    caller: &Caller,
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
            caller: Some(caller.clone()),
            challenge: challenge.to_owned(),
            signature: signature.to_owned(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            fid: "a@b.test".into(),
            session_id: "s".into(),
            admin: false,
        }
    }

    #[test]
    fn cached_tokens_are_answered_until_a_clear() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60));
        let miss = cache.get("tok").unwrap_err();
        cache.insert("tok", miss, caller());
        assert_eq!(cache.get("tok").unwrap().fid, "a@b.test");
        assert!(cache.get("other").is_err());
        cache.clear();
        assert!(cache.get("tok").is_err());
    }

    #[test]
    fn a_resolution_that_raced_a_clear_is_not_cached_and_zero_ttl_caches_nothing() {
        let cache = TokenCache::new(std::time::Duration::from_secs(60));
        let miss = cache.get("tok").unwrap_err();
        cache.clear();
        cache.insert("tok", miss, caller());
        assert!(cache.get("tok").is_err());
        let off = TokenCache::new(std::time::Duration::ZERO);
        let miss = off.get("tok").unwrap_err();
        off.insert("tok", miss, caller());
        assert!(off.get("tok").is_err());
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
