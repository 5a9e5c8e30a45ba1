//! Request bodies, leniently: JSON without a `Content-Type`, PEM as text or as a JSON string.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The raw body, with the size limit turned into a 413 problem.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than the configured limit",
                ),
                _ => ApiError::bad_request("the request body could not be read"),
            })
    }
}

/// A JSON body of type `T`, with or without `Content-Type: application/json`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "this route needs a JSON request body",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Extracts PEM (or DER) bytes from a body that holds them bare, as a JSON string literal, or
/// as a JSON object with one of `field_names`.
pub fn pem_payload(body: &[u8], field_names: &[&str]) -> Result<Vec<u8>, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send the PEM",
        ));
    }
    match trimmed.first() {
        Some(b'"') => serde_json::from_slice::<String>(trimmed)
            .map(String::into_bytes)
            .map_err(|_| ApiError::bad_request("the body is not a valid JSON string")),
        Some(b'{') => {
            let value: serde_json::Value = serde_json::from_slice(trimmed)
                .map_err(|_| ApiError::bad_request("the body is not valid JSON"))?;
            field_names
                .iter()
                .find_map(|name| value.get(*name).and_then(|v| v.as_str()))
                .map(|s| s.as_bytes().to_vec())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "the JSON body must carry the PEM in `{}`",
                        field_names.first().copied().unwrap_or("pem")
                    ))
                })
        }
        _ => Ok(body.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_arrives_bare_quoted_or_in_an_object() {
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(
            pem_payload(pem.as_bytes(), &["csr"]).unwrap(),
            pem.as_bytes()
        );
        let quoted = serde_json::to_string(pem).unwrap();
        assert_eq!(
            pem_payload(quoted.as_bytes(), &["csr"]).unwrap(),
            pem.as_bytes()
        );
        let object = serde_json::json!({ "csr": pem }).to_string();
        assert_eq!(
            pem_payload(object.as_bytes(), &["csr"]).unwrap(),
            pem.as_bytes()
        );
        assert!(pem_payload(b"   ", &["csr"]).is_err());
        assert!(pem_payload(br#"{"other": 1}"#, &["csr"]).is_err());
    }
}
