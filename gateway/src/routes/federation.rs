//! Federation routes (spec 4.1.1, 4.3): key trials, signing in as an actor of another home
//! server, a foreign session's new ID-Cert, and the public record of completed key trials.
//! Translation only: the session service owns trials, foreign sessions and the fetching and
//! verifying of other home servers' certs.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use p2_proto::session::v1 as session;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::body::{RawBody, pem_payload};
use crate::cache::{Invalidation, Target};
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;
use crate::routes::core::canonical_json;

/// A key trial (spec 4.1.1): sign `trial` with the private key of the ID-Cert to sign in with.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyTrial {
    /// When it expires (UNIX seconds, decimal string).
    #[schema(pattern = "^[0-9]+$", example = "1767225600")]
    expires: String,
    /// The string to sign (its UTF-8 bytes, Ed25519, hex signature).
    #[schema(min_length = 32, max_length = 256, pattern = "^[a-zA-Z0-9]+$")]
    trial: String,
}

/// `GET /.p2/core/v1/session/auth`: a key trial, single use, expiring.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/session/auth",
    tag = openapi::TAG_FEDERATION,
    operation_id = "getKeyTrial",
    summary = "Get a key trial to sign in as an actor of another home server",
    description = "A key trial (spec 4.1.1): unique, single use, expiring, at most a few \
                   pending per client address. Sign it with the key of your ID-Cert and \
                   `POST` the answer to the same path.",
    responses(
        (status = 200, description = "A new key trial.", body = KeyTrial),
        (status = 429, description = "This client holds its most pending key trials, or the server its most pending challenges and trials.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn key_trial(State(state): State<AppState>) -> Result<Response, ApiError> {
    let issued = state
        .session()
        .create_key_trial(session::CreateKeyTrialRequest {})
        .await?
        .into_inner();
    Ok(axum::Json(KeyTrial {
        expires: issued.expires.to_string(),
        trial: issued.trial,
    })
    .into_response())
}

/// Body of `POST /.p2/core/v1/session/auth` (OpenAPI `KeyTrialCompleted`, plus the FID, the
/// optional cert and the optional trial).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body; the handler reads it leniently"
)]
pub struct KeyTrialCompletedBody {
    /// The actor signing in, of another home server.
    #[schema(example = "alice@a.example.com")]
    fid: String,
    /// Serial number of the ID-Cert whose key signed the trial (a number or a decimal string).
    #[serde(rename = "serialNumber")]
    #[schema(format = "uint64", example = "4242")]
    serial_number: u64,
    /// Hex Ed25519 signature of the trial's UTF-8 bytes.
    signature: String,
    /// The ID-Cert itself (optional; it must be the one its home server serves).
    #[serde(rename = "idCertPem")]
    id_cert_pem: Option<String>,
    /// The trial answered; absent: the last trial this client address was given.
    trial: Option<String>,
}

/// `POST /.p2/core/v1/session/auth`: completes a key trial; a token for a foreign session.
#[utoipa::path(
    post,
    path = "/.p2/core/v1/session/auth",
    tag = openapi::TAG_FEDERATION,
    operation_id = "completeKeyTrial",
    summary = "Sign in as an actor of another home server",
    description = "Completes a key trial (spec 4.1.1): this server fetches the actor's home \
                   server's root cert and the actor's cert with that serial (or takes them \
                   from its verified cache), checks their signatures, cache windows, validity \
                   and revocation and the trial's signature, then answers the token of a new \
                   foreign session. The trial is used up whatever the outcome.",
    request_body = KeyTrialCompletedBody,
    responses(
        (status = 200, description = "The foreign session's token.", body = String, content_type = "text/plain"),
        (status = 400, description = "A malformed body, or an actor of this server.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Refused: unknown, used or expired trial; bad signature; revoked or unknown cert; a home server that did not answer properly (the detail says which).", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The actor holds the most sessions it may here.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Too many requests to that home server are in flight.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn complete_key_trial(
    State(state): State<AppState>,
    invalidation: Invalidation,
    params: Params,
) -> Result<Response, ApiError> {
    // A new session (maybe replacing one of the same ID, whose token then dies).
    invalidation.add(Target::AllTokens);
    let required = |name: &str, value: Option<String>| {
        value.ok_or_else(|| ApiError::bad_request(format!("`{name}` is required")))
    };
    let fid = required("fid", params.string_any(&["fid", "federation_id"])?)?;
    let serial = params
        .u64_any(&["serialNumber", "serial_number", "cert_serial"])?
        .ok_or_else(|| ApiError::bad_request("`serialNumber` is required"))?;
    let signature = required("signature", params.string("signature")?)?;
    let signed_in = state
        .session()
        .complete_key_trial(session::CompleteKeyTrialRequest {
            fid,
            serial_number: serial.to_string(),
            signature,
            id_cert_pem: params.string_any(&["idCertPem", "id_cert_pem", "id_cert"])?,
            trial: params.string("trial")?.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        signed_in.token,
    )
        .into_response())
}

/// `PUT /.p2/core/v1/session/idcert/extern`: a foreign session's new ID-Cert.
#[utoipa::path(
    put,
    path = "/.p2/core/v1/session/idcert/extern",
    tag = openapi::TAG_FEDERATION,
    operation_id = "updateForeignIdCert",
    summary = "Tell this server a foreign session's new ID-Cert",
    description = "A foreign session's new ID-Cert: same FID and session ID, issued by the \
                   actor's home server (fetched and verified there), valid, not revoked. The \
                   PEM may come bare or as a JSON string.",
    request_body(
        content = String,
        content_type = "text/plain",
        description = "The new ID-Cert, PEM.",
        example = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
    ),
    responses(
        (status = 201, description = "The session continues with the new cert."),
        (status = 400, description = "The cert was refused (the detail says why).", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The caller's session is one of this server's own actors.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_foreign_id_cert(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // The token's expiry moves with the cert.
    invalidation.add(Target::AllTokens);
    let pem = pem_payload(&body, &["idCertPem", "id_cert", "idCert"])?;
    let pem = String::from_utf8(pem)
        .map_err(|_| ApiError::bad_request("the body is not a PEM certificate"))?;
    state
        .session()
        .update_foreign_id_cert(session::UpdateForeignIdCertRequest {
            caller: Some(caller.assertion),
            id_cert_pem: pem,
        })
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

/// The filters of `GET /.p2/core/v1/keytrial/{fid}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyTrialQuery {
    /// At most this many (1–1000; 0 or absent: 100).
    #[param(format = "uint16")]
    pub limit: Option<u16>,
    /// Only this key trial.
    pub id: Option<String>,
    /// Only trials completed at or after this UNIX time.
    #[param(rename = "notBefore", format = "uint64")]
    pub not_before: Option<u64>,
    /// Only trials completed at or before this UNIX time.
    #[param(rename = "notAfter", format = "uint64")]
    pub not_after: Option<u64>,
}

/// One completion of a key trial (OpenAPI `KeyTrialCompleted`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyTrialCompletion {
    /// The actor who completed it.
    fid: String,
    /// Serial of the cert whose key signed (decimal string).
    #[serde(rename = "serialNumber")]
    serial_number: String,
    /// Hex signature of the trial.
    signature: String,
}

/// A completed key trial: the OpenAPI shape (`keyTrial`, `keyTrialCompletion`) and the SDK's
/// `KeyTrialResponse` fields (`serialNumber`, `signature`) side by side; keys sorted (JCS).
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletedKeyTrial {
    /// When it was completed (UNIX seconds, decimal string).
    #[serde(rename = "completedAt")]
    completed_at: String,
    /// The trial.
    #[serde(rename = "keyTrial")]
    key_trial: KeyTrial,
    /// Its completion (one: a trial is single use).
    #[serde(rename = "keyTrialCompletion")]
    key_trial_completion: Vec<KeyTrialCompletion>,
    /// Serial of the cert whose key signed (decimal string; the SDK's field).
    #[serde(rename = "serialNumber")]
    serial_number: String,
    /// Hex signature of the trial (the SDK's field).
    signature: String,
}

/// `GET /.p2/core/v1/keytrial/{fid}`: the actor's completed key trials on this server.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/keytrial/{fid}",
    tag = openapi::TAG_FEDERATION,
    operation_id = "keyTrials",
    summary = "Get an actor's completed key trials",
    description = "The key trials the actor completed on this server and their responses \
                   (spec 4.3: public, so third parties can check them), newest first; only \
                   trials whose lifetime is over.",
    params(openapi::FidPath, KeyTrialQuery),
    responses(
        (status = 200, description = "The completed key trials.", body = Vec<CompletedKeyTrial>),
        (status = 204, description = "None."),
        (status = 400, description = "A malformed FID or parameter.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all, fields(fid = %fid))]
pub async fn key_trials(
    State(state): State<AppState>,
    Path(fid): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let limit = match params.u64("limit")? {
        None => 0,
        Some(n) => u32::try_from(n.min(1000)).unwrap_or(1000),
    };
    let trials = state
        .session()
        .list_key_trials(session::ListKeyTrialsRequest {
            fid,
            limit,
            id: params.string("id")?,
            not_before: params.u64_any(&["notBefore", "not_before"])?,
            not_after: params.u64_any(&["notAfter", "not_after"])?,
        })
        .await?
        .into_inner()
        .trials;
    if trials.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let json: Vec<CompletedKeyTrial> = trials
        .into_iter()
        .map(|t| CompletedKeyTrial {
            completed_at: t.completed_at.to_string(),
            key_trial: KeyTrial {
                expires: t.expires.to_string(),
                trial: t.trial,
            },
            key_trial_completion: vec![KeyTrialCompletion {
                fid: t.fid,
                serial_number: t.serial_number.clone(),
                signature: t.signature.clone(),
            }],
            serial_number: t.serial_number,
            signature: t.signature,
        })
        .collect();
    Ok(canonical_json(&json))
}
