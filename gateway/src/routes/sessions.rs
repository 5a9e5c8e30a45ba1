//! Session-bound routes: challenge strings, session deletion, server key rotation.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use p2_proto::identity::v1 as identity;
use p2_proto::session::v1 as session;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, sensitive_solution};
use crate::cache::{Invalidation, Scope, Target};
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;

/// A challenge string (spec 4.3), single use, bound to the session that asked for it.
#[derive(Serialize, ToSchema)]
struct Challenge {
    /// The string to sign with the session's key.
    #[schema(min_length = 32, max_length = 256, pattern = "^[a-zA-Z0-9]+$")]
    challenge: String,
    /// When it expires (UNIX seconds, decimal string).
    #[schema(pattern = "^[0-9]+$", example = "1767225600")]
    expires: String,
}

/// `GET /.p2/core/v1/challenge`: a challenge string bound to the caller's session.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/challenge",
    tag = openapi::TAG_SESSIONS,
    operation_id = "challenge",
    summary = "Get a challenge string",
    description = "A challenge string bound to the caller's session: unique, single use, \
                   expiring. Solve it by signing it with the session's key.",
    responses(
        (status = 200, description = "A new challenge.", body = Challenge),
        (status = 429, description = "This session holds its most pending challenges, or the server its most in all (`Retry-After` when known).", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn challenge(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    let created = state
        .session()
        .create_challenge(session::CreateChallengeRequest {
            caller: Some(caller.assertion),
        })
        .await?
        .into_inner();
    Ok(axum::Json(Challenge {
        challenge: created.challenge,
        // u64 as a decimal string (API.md "Wire dialect").
        expires: created.expires.to_string(),
    })
    .into_response())
}

/// `DELETE /.p2/core/v1/session`: ends the caller's own session, or (sensitive) another
/// session of the same actor. The token dies at once and the session's ID-Cert is revoked.
#[utoipa::path(
    delete,
    path = "/.p2/core/v1/session",
    tag = openapi::TAG_SESSIONS,
    operation_id = "deleteSession",
    summary = "Delete a session",
    description = "Ends the caller's own session (no `session_id`, or its own), or another \
                   session of the same actor (sensitive action). The session's token dies at \
                   once and its ID-Cert is revoked (`invalidatedAt`).",
    params(
        ("session_id" = Option<String>, Query, description = "The session to delete (also \
          accepted as `sessionId`); the caller's own when absent.", example = "s1"),
        openapi::SensitiveSolutionOptional,
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "A malformed session ID or header.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "Another session without the right sensitive-action solution.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The actor has no such session.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_session(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    // A token dies and a cert of the caller's actor is revoked.
    invalidation.add(Target::Public(Scope::actor_certs(&caller.caller.fid)));
    invalidation.add(Target::AllTokens);
    let target = params.string_any(&["session_id", "sessionId"])?;
    state
        .session()
        .delete_session(session::DeleteSessionRequest {
            caller: Some(caller.assertion),
            session_id: target,
            sensitive_solution: sensitive_solution(&headers)?,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

const ROTATE_DESCRIPTION: &str = "A new server key pair and root ID-Cert (administrators \
    only; sensitive action). The previous certs and keys stay retrievable by `timestamp`. `PUT` \
    and `POST` do the same.";

/// The `POST` twin of [`rotate_server_key`] in the OpenAPI document (the route answers both).
#[derive(Debug, Clone, Copy)]
pub struct RotateServerKeyPost;

/// `PUT` or `POST /.p2/core/v1/key/server` (admin, sensitive): a new server key pair and root
/// ID-Cert; the previous ones stay retrievable by time.
#[utoipa::path(
    put,
    path = "/.p2/core/v1/key/server",
    tag = openapi::TAG_IDENTITY,
    operation_id = "rotateServerKey",
    summary = "Rotate the server's identity key",
    description = ROTATE_DESCRIPTION,
    params(openapi::SensitiveSolutionRequired),
    responses(
        (status = 200, description = "The server's new ID-Cert, PEM.", body = String, content_type = "text/plain"),
        (status = 400, description = "A malformed header.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The caller is no administrator, or the sensitive-action solution is missing or wrong.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[utoipa::path(
    post,
    path = "/.p2/core/v1/key/server",
    tag = openapi::TAG_IDENTITY,
    operation_id = "rotateServerKeyPost",
    impl_for = RotateServerKeyPost,
    summary = "Rotate the server's identity key (POST)",
    description = ROTATE_DESCRIPTION,
    params(openapi::SensitiveSolutionRequired),
    responses(
        (status = 200, description = "The server's new ID-Cert, PEM.", body = String, content_type = "text/plain"),
        (status = 400, description = "A malformed header.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The caller is no administrator, or the sensitive-action solution is missing or wrong.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn rotate_server_key(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // New server cert and key; actor-cert answers carry cache signatures by the server key, so
    // every public read goes (a rare admin action).
    invalidation.add(Target::AllPublic);
    // Admin rights and the solution are checked by identity, which owns both.
    let rotated = state
        .identity()
        .rotate_server_key(identity::RotateServerKeyRequest {
            caller: Some(caller.assertion),
            sensitive_solution: sensitive_solution(&headers)?.unwrap_or_default(),
        })
        .await?
        .into_inner();
    // Gateway op 6 (server certificate change) reaches every session from here once the
    // events service exists: events.Publish{broadcast, op 6, oldInvalidSince:
    // rotated.previous_invalid_since}.
    let pem = crate::error::required(rotated.cert, "identity.RotateServerKey", "cert")?.id_cert_pem;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        pem,
    )
        .into_response())
}
