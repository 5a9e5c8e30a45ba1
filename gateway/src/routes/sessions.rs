//! Session-bound routes: challenge strings, session deletion, server key rotation.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use p2_proto::identity::v1 as identity;
use p2_proto::session::v1 as session;
use serde::Serialize;

use crate::AppState;
use crate::auth::{Authenticated, sensitive_solution};
use crate::cache::{Invalidation, Scope, Target};
use crate::error::ApiError;
use crate::params::Params;

#[derive(Serialize)]
struct Challenge {
    challenge: String,
    expires: String,
}

/// `GET /.p2/core/v1/challenge`: a challenge string bound to the caller's session.
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

/// `PUT` or `POST /.p2/core/v1/key/server` (admin, sensitive): a new server key pair and root
/// ID-Cert; the previous ones stay retrievable by time.
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
