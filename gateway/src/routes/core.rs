//! polyproto core routes that need no registration: server identity.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use p2_proto::identity::v1 as identity;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::cache::{CacheKey, Scope};
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;

/// Body of `GET /.well-known/polyproto-core`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WellKnown<'a> {
    /// Base URL of this server's polyproto core API: `<public URL>/.p2/core/`.
    #[schema(format = "uri", example = "https://p2.example.com/.p2/core/")]
    api: String,
    /// The OpenID Connect issuer of this server; present only when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uri")]
    oidc_issuer: Option<&'a str>,
}

/// `GET /.well-known/polyproto-core`: where the polyproto API of this server lives.
#[utoipa::path(
    get,
    path = "/.well-known/polyproto-core",
    tag = openapi::TAG_IDENTITY,
    operation_id = "wellKnown",
    summary = "Discover the polyproto API of this server",
    description = "Where the polyproto core API of this server lives (spec 3.1: discoverability).",
    responses(
        (status = 200, description = "The API base URL (and the OIDC issuer, when configured).", body = WellKnown),
    ),
)]
pub async fn well_known(State(state): State<AppState>) -> Response {
    axum::Json(WellKnown {
        api: format!("{}/.p2/core/", state.public_url()),
        oidc_issuer: state.inner.oidc_issuer.as_deref(),
    })
    .into_response()
}

/// A CacheableIdCert as JSON. Field order is the JCS (RFC 8785) key order, and serde_json's
/// compact output escapes strings as JCS does, so serialising this struct yields canonical
/// JSON: the SDK compares bytes. u64 values are decimal strings (API.md "Wire dialect").
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = CacheableIdCert,
    description = "An ID-Cert with the home server's signed cache window (spec 6.4), as \
                   JCS-canonical JSON (RFC 8785). UNIX times are decimal strings."
)]
pub struct CacheableIdCertJson {
    /// End of the cache window (UNIX seconds, decimal string).
    #[serde(rename = "cacheNotValidAfter")]
    #[schema(pattern = "^[0-9]+$", example = "1767225600")]
    cache_not_valid_after: String,
    /// Start of the cache window (UNIX seconds, decimal string).
    #[serde(rename = "cacheNotValidBefore")]
    #[schema(pattern = "^[0-9]+$", example = "1767182400")]
    cache_not_valid_before: String,
    /// The home server's Ed25519 signature, hex, over `serial notBefore notAfter` (plus
    /// ` invalidatedAt` when present), single spaces, decimal.
    #[serde(rename = "cacheSignature")]
    #[schema(pattern = "^[0-9a-f]+$")]
    cache_signature: String,
    /// The ID-Cert, PEM.
    #[serde(rename = "idCertPem")]
    #[schema(example = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")]
    id_cert_pem: String,
    /// The same PEM, under the seed's name.
    // API.md's superset rule. JCS order: "idCertPem" < "id_cert" ('C' < '_') < "invalidated"
    // ('d' < 'n').
    id_cert: String,
    /// Whether the cert was revoked (mirrors the presence of `invalidatedAt`).
    invalidated: bool,
    /// When the cert was revoked (UNIX seconds, decimal string); absent when it was not.
    #[serde(rename = "invalidatedAt", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, pattern = "^[0-9]+$")]
    invalidated_at: Option<String>,
}

impl From<p2_proto::common::v1::CacheableIdCert> for CacheableIdCertJson {
    fn from(cert: p2_proto::common::v1::CacheableIdCert) -> Self {
        Self {
            cache_not_valid_after: cert.cache_not_valid_after.to_string(),
            cache_not_valid_before: cert.cache_not_valid_before.to_string(),
            cache_signature: cert.cache_signature,
            id_cert: cert.id_cert_pem.clone(),
            id_cert_pem: cert.id_cert_pem,
            invalidated: cert.invalidated_at.is_some(),
            invalidated_at: cert.invalidated_at.map(|t| t.to_string()),
        }
    }
}

/// Serialises `value` compactly as `application/json` (canonical for the types above).
pub fn canonical_json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "serialising a response failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to encode its response",
            )
            .into_response()
        }
    }
}

/// Which PEM media type the client asked for, if it prefers bare PEM over JSON.
fn pem_preference(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    if accept.contains("application/json") {
        return None;
    }
    if accept.contains("application/x-pem-file") {
        Some("application/x-pem-file")
    } else if accept.contains("text/plain") {
        Some("text/plain; charset=utf-8")
    } else {
        None
    }
}

fn pem_response(content_type: &'static str, pem: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        pem,
    )
        .into_response()
}

/// `GET /.p2/core/v1/idcert/server`: the root ID-Cert valid at `timestamp` (else the current
/// one) as CacheableIdCert JSON, or bare PEM when the client accepts only PEM/text.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/idcert/server",
    tag = openapi::TAG_IDENTITY,
    operation_id = "serverIdCert",
    summary = "Get the server's ID-Cert",
    description = "The home server's root ID-Cert valid at `timestamp` (else the current one). \
                   JSON by default; the bare PEM when the client's `Accept` names \
                   `application/x-pem-file` or `text/plain` and not `application/json`.",
    params(openapi::TimestampQuery),
    responses(
        (status = 200, description = "The root ID-Cert.", content(
            (CacheableIdCertJson = "application/json"),
            (String = "application/x-pem-file"),
            (String = "text/plain"),
        )),
        (status = 400, description = "`timestamp` is not a UNIX time.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The server had no key at `timestamp`.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn server_id_cert(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let timestamp = params.u64("timestamp")?;
    let pem = pem_preference(&headers);
    let key = CacheKey::new(Scope::Server, format!("cert|{pem:?}|{timestamp:?}"));
    let miss = match state.cache().get(key) {
        Ok(hit) => return Ok(hit),
        Err(miss) => miss,
    };
    let cert = state
        .identity()
        .get_server_id_cert(identity::GetServerIdCertRequest { timestamp })
        .await?
        .into_inner()
        .cert;
    let cert = crate::error::required(cert, "identity.GetServerIdCert", "cert")?;
    let fresh_until = cert.cache_not_valid_after;
    let response = match pem {
        Some(content_type) => pem_response(content_type, cert.id_cert_pem),
        None => canonical_json(&CacheableIdCertJson::from(cert)),
    };
    Ok(state.cache().store(miss, response, Some(fresh_until)).await)
}

/// `GET /.p2/core/v1/key/server`: the server's public key (SPKI PEM) valid at `timestamp`.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/key/server",
    tag = openapi::TAG_IDENTITY,
    operation_id = "serverPublicKey",
    summary = "Get the server's public key",
    description = "The home server's public identity key valid at `timestamp` (else the \
                   current one), as a PEM `PUBLIC KEY` (SPKI).",
    params(openapi::TimestampQuery),
    responses(
        (status = 200, description = "PEM `PUBLIC KEY`.", body = String, content_type = "text/plain",
            example = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"),
        (status = 400, description = "`timestamp` is not a UNIX time.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The server had no key at `timestamp`.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn server_public_key(
    State(state): State<AppState>,
    params: Params,
) -> Result<Response, ApiError> {
    let timestamp = params.u64("timestamp")?;
    let key = CacheKey::new(Scope::Server, format!("key|{timestamp:?}"));
    let miss = match state.cache().get(key) {
        Ok(hit) => return Ok(hit),
        Err(miss) => miss,
    };
    let public_key = state
        .identity()
        .get_server_public_key(identity::GetServerPublicKeyRequest { timestamp })
        .await?
        .into_inner();
    let response = pem_response("text/plain; charset=utf-8", public_key.public_key_pem);
    Ok(state.cache().store(miss, response, None).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacheable_id_certs_serialise_as_canonical_json() {
        let json = serde_json::to_string(&CacheableIdCertJson::from(
            p2_proto::common::v1::CacheableIdCert {
                id_cert_pem: "-----BEGIN CERTIFICATE-----\nAB/+\n-----END CERTIFICATE-----\n"
                    .into(),
                cache_not_valid_before: 10,
                cache_not_valid_after: 20,
                cache_signature: "ab".into(),
                invalidated_at: Some(15),
            },
        ))
        .unwrap();
        assert_eq!(
            json,
            r#"{"cacheNotValidAfter":"20","cacheNotValidBefore":"10","cacheSignature":"ab","idCertPem":"-----BEGIN CERTIFICATE-----\nAB/+\n-----END CERTIFICATE-----\n","id_cert":"-----BEGIN CERTIFICATE-----\nAB/+\n-----END CERTIFICATE-----\n","invalidated":true,"invalidatedAt":"15"}"#
        );
    }

    #[test]
    fn pem_is_served_only_to_clients_that_prefer_it() {
        let mut headers = HeaderMap::new();
        assert_eq!(pem_preference(&headers), None);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/x-pem-file"),
        );
        assert_eq!(pem_preference(&headers), Some("application/x-pem-file"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
        assert!(pem_preference(&headers).is_some());
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/plain"),
        );
        assert_eq!(pem_preference(&headers), None);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(pem_preference(&headers), None);
    }
}
