//! Actors and their ID-Certs: registration and password login (polyproto-auth), CSR signing
//! for an authenticated actor, and the public lookup of an actor's certs.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use p2_proto::identity::v1 as identity;
use p2_proto::session::v1 as session;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Authenticated, sensitive_solution};
use crate::body::{JsonBody, RawBody, pem_payload};
use crate::cache::{Invalidation, Scope, Target};
use crate::error::ApiError;
use crate::params::Params;
use crate::routes::core::{CacheableIdCertJson, canonical_json};

/// Body of `POST /.p2/auth/v1/register`.
#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    local_name: String,
    password: String,
}

/// `POST /.p2/auth/v1/register`: creates an actor with a password.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Response, ApiError> {
    let registered = state
        .identity()
        .register_actor(identity::RegisterActorRequest {
            local_name: body.local_name,
            password: body.password,
        })
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "fid": registered.fid })),
    )
        .into_response())
}

/// Body of `POST /.p2/auth/v1/session`.
#[derive(Debug, Deserialize)]
pub struct LoginBody {
    local_name: String,
    password: String,
    csr: String,
}

#[derive(Debug, Serialize)]
struct IdCertAndToken {
    id_cert: String,
    #[serde(rename = "idCert")]
    id_cert_camel: String,
    token: String,
}

impl IdCertAndToken {
    fn new(pem: String, token: String) -> Self {
        Self {
            id_cert_camel: pem.clone(),
            id_cert: pem,
            token,
        }
    }
}

/// `POST /.p2/auth/v1/session`: password + ID-CSR → the session's ID-Cert and token.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn login(
    State(state): State<AppState>,
    invalidation: Invalidation,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    // A new cert of this actor; a login may replace a session of the same ID (and its token).
    invalidation.add(Target::Public(Scope::actor_certs(&body.local_name)));
    invalidation.add(Target::AllTokens);
    let logged_in = state
        .session()
        .login(session::LoginRequest {
            local_name: body.local_name,
            password: body.password,
            csr: body.csr.into_bytes(),
        })
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        axum::Json(IdCertAndToken::new(logged_in.id_cert_pem, logged_in.token)),
    )
        .into_response())
}

/// `POST /.p2/core/v1/idcert` (sensitive): an ID-Cert for a new session of the caller, or the
/// renewal of the caller's own session (same session ID: the old cert is revoked). One session
/// RPC does it all (identity checks the solution and signs; session stores the token).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn request_id_cert(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // A new cert (a renewal also revokes the old one and replaces the session's token).
    invalidation.add(Target::Public(Scope::actor_certs(&caller.caller.fid)));
    invalidation.add(Target::AllTokens);
    let solution = sensitive_solution(&headers)?.unwrap_or_default();
    let csr = pem_payload(&body, &["csr", "idCsr", "id_csr"])?;
    let issued = state
        .session()
        .request_id_cert(session::RequestIdCertRequest {
            caller: Some(caller.assertion),
            csr,
            sensitive_solution: solution,
        })
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        axum::Json(IdCertAndToken::new(issued.id_cert_pem, issued.token)),
    )
        .into_response())
}

/// `GET /.p2/core/v1/idcert/actor/{fid}`: every cert of the actor matching the filters, as
/// JCS-canonical CacheableIdCert JSON; revoked ones carry `invalidatedAt`.
#[tracing::instrument(level = "debug", skip_all, fields(fid = %fid))]
pub async fn actor_id_certs(
    State(state): State<AppState>,
    Path(fid): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let request = identity::GetActorIdCertsRequest {
        fid,
        timestamp: params.u64("timestamp")?,
        session_id: params.string_any(&["session_id", "sessionId"])?,
        not_before: params.u64_any(&["notBefore", "not_before"])?,
        not_after: params.u64_any(&["notAfter", "not_after"])?,
    };
    let key = crate::cache::actor_certs_key(
        &request.fid,
        request.timestamp,
        request.session_id.as_deref(),
        request.not_before,
        request.not_after,
    );
    let miss = match state.cache().get(key) {
        Ok(hit) => return Ok(hit),
        Err(miss) => miss,
    };
    let certs = state
        .identity()
        .get_actor_id_certs(request)
        .await?
        .into_inner()
        .certs;
    let fresh_until = certs.iter().map(|c| c.cache_not_valid_after).min();
    let json: Vec<CacheableIdCertJson> = certs.into_iter().map(Into::into).collect();
    Ok(state
        .cache()
        .store(miss, canonical_json(&json), fresh_until)
        .await)
}
