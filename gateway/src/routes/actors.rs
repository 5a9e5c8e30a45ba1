//! Actors and their ID-Certs: registration and password login (polyproto-auth), CSR signing
//! for an authenticated actor, and the public lookup of an actor's certs.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use p2_proto::identity::v1 as identity;
use p2_proto::session::v1 as session;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, sensitive_solution};
use crate::body::{JsonBody, RawBody, pem_payload};
use crate::cache::{Invalidation, Scope, Target};
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;
use crate::routes::core::{CacheableIdCertJson, canonical_json};

/// Body of `POST /.p2/auth/v1/register`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterBody {
    /// The local part of the new actor's FID (spec 5; upper case is folded to lower case).
    #[schema(
        min_length = 1,
        max_length = 160,
        pattern = "^[A-Za-z0-9._%+-]+$",
        example = "alice"
    )]
    local_name: String,
    /// The actor's password, also its sensitive-action solution: at least 8 characters, at
    /// most 1024 bytes, not the name, no leading or trailing whitespace, no control characters.
    #[schema(
        min_length = 8,
        pattern = "^\\S(.*\\S)?$",
        example = "correct horse battery staple"
    )]
    password: String,
}

/// Answer of `POST /.p2/auth/v1/register`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The new actor's FID, `local@domain`.
    #[schema(example = "alice@p2.example.com")]
    fid: String,
}

/// `POST /.p2/auth/v1/register`: creates an actor with a password.
#[utoipa::path(
    post,
    path = "/.p2/auth/v1/register",
    tag = openapi::TAG_AUTH,
    operation_id = "register",
    summary = "Register an actor",
    description = "Creates an actor with a password (polyproto-auth). Closed when the server \
                   runs with `P2_REGISTRATION=closed`.",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered.", body = Registered),
        (status = 400, description = "Invalid name or weak password, or a malformed body.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "Registration is closed on this server.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The name is taken.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
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
        axum::Json(Registered {
            fid: registered.fid,
        }),
    )
        .into_response())
}

/// Body of `POST /.p2/auth/v1/session`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginBody {
    /// The actor's local name.
    #[schema(
        min_length = 1,
        max_length = 160,
        pattern = "^[A-Za-z0-9._%+-]+$",
        example = "alice"
    )]
    local_name: String,
    /// The actor's password.
    password: String,
    /// PEM ID-CSR (spec 6.1) for the new session; its `uniqueIdentifier` is the session ID.
    #[schema(
        example = "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"
    )]
    csr: String,
}

/// A new session: its ID-Cert and token.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdCertAndToken {
    /// The session's new ID-Cert, PEM.
    id_cert: String,
    /// The same PEM, under the SDK's name.
    #[serde(rename = "idCert")]
    id_cert_camel: String,
    /// The session token: `Authorization: Bearer <token>`.
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
#[utoipa::path(
    post,
    path = "/.p2/auth/v1/session",
    tag = openapi::TAG_AUTH,
    operation_id = "login",
    summary = "Log in: a new session",
    description = "Checks the password and signs the ID-CSR: a new session, whose ID is the \
                   CSR's `uniqueIdentifier` (polyproto-auth).",
    request_body = LoginBody,
    responses(
        (status = 201, description = "The session's ID-Cert and token.", body = IdCertAndToken),
        (status = 400, description = "A malformed body or an ID-CSR that breaks a rule (the detail says which).", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Wrong name or password.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The actor was disabled by an administrator.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "A valid ID-Cert holds this session ID, or the actor has the most sessions it may.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/.p2/core/v1/idcert",
    tag = openapi::TAG_IDENTITY,
    operation_id = "newIdCert",
    summary = "Get a new ID-Cert",
    description = "Signs an ID-CSR of the caller's actor (sensitive action): a new session, or \
                   the renewal of the caller's own session when the CSR carries its session ID \
                   (the old cert is revoked, the old token dies).",
    params(openapi::SensitiveSolutionRequired),
    request_body(
        content = String,
        content_type = "text/plain",
        description = "The ID-CSR, PEM.",
        example = "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n",
    ),
    responses(
        (status = 201, description = "The session's ID-Cert and token.", body = IdCertAndToken),
        (status = 400, description = "An ID-CSR that breaks a rule (the detail says which).", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The sensitive-action solution is missing or wrong, or the actor is disabled.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "A valid ID-Cert of another session holds this session ID, or the actor has the most sessions it may.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
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
#[utoipa::path(
    get,
    path = "/.p2/core/v1/idcert/actor/{fid}",
    tag = openapi::TAG_IDENTITY,
    operation_id = "actorIdCerts",
    summary = "Get an actor's ID-Certs",
    description = "Every ID-Cert of the actor matching the filters, newest first, at most 100 \
                   per answer (page back with `notAfter`); revoked ones carry `invalidatedAt`. \
                   For an actor of another home server: the certs this server verified and \
                   cached (sign-ins), exactly as its home server served them.",
    params(
        openapi::FidPath,
        openapi::TimestampQuery,
        openapi::ActorCertsQuery,
    ),
    responses(
        (status = 200, description = "The matching certs (maybe none).", body = Vec<CacheableIdCertJson>),
        (status = 400, description = "A malformed FID or parameter.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such actor is registered here, and no verified cert of that foreign actor is cached here.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
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
    let foreign = session::GetForeignActorIdCertsRequest {
        fid: request.fid.clone(),
        timestamp: request.timestamp,
        session_id: request.session_id.clone(),
        not_before: request.not_before,
        not_after: request.not_after,
    };
    let certs = match state.identity().get_actor_id_certs(request).await {
        Ok(response) => response.into_inner().certs,
        // Not an actor of this server: an actor of another home server whose certs the
        // session service verified and cached (sign-ins) is answered from there, each object
        // exactly as its home server served it. The session service decides; NOT_FOUND from
        // it too keeps identity's answer.
        Err(status) if status.code() == tonic::Code::NotFound => {
            match state.session().get_foreign_actor_id_certs(foreign).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let mut json = Vec::with_capacity(response.certs_json.len());
                    for text in &response.certs_json {
                        let value: serde_json::Value =
                            serde_json::from_str(text).map_err(|_| {
                                ApiError::new(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "the server failed to read a cached certificate",
                                )
                            })?;
                        json.push(value);
                    }
                    return Ok(state
                        .cache()
                        .store(miss, canonical_json(&json), Some(response.fresh_until))
                        .await);
                }
                Err(foreign) if foreign.code() == tonic::Code::NotFound => {
                    return Err(status.into());
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(status) => return Err(status.into()),
    };
    let fresh_until = certs.iter().map(|c| c.cache_not_valid_after).min();
    let json: Vec<CacheableIdCertJson> = certs.into_iter().map(Into::into).collect();
    Ok(state
        .cache()
        .store(miss, canonical_json(&json), fresh_until)
        .await)
}
