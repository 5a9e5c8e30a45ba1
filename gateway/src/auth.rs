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
        let caller = state
            .session()
            .authenticate(p2_proto::session::v1::AuthenticateRequest {
                token: token.to_owned(),
            })
            .await?
            .into_inner()
            .caller
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown session token"))?;
        Ok(Self(caller))
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
