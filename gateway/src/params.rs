//! Lenient request parameters (API.md "Leniency"): a GET route's optional parameters arrive
//! as query parameters or as a JSON body (older clients send GET bodies), the query winning
//! when both are present; JSON bodies need no `Content-Type`; u64 values may be JSON numbers
//! or decimal strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The merged parameters of a request.
#[derive(Debug, Default, Clone)]
pub struct Params(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let query = request.uri().query().map(str::to_owned);
        let body =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than the configured limit",
                    ),
                    _ => ApiError::bad_request("the request body could not be read"),
                })?;
        Self::parse(query.as_deref(), &body)
    }
}

impl Params {
    /// Merges `query` over the JSON object in `body` (if any).
    pub fn parse(query: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let mut map = Map::new();
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(object)) => map = object,
                Ok(_) => {
                    return Err(ApiError::bad_request(
                        "the request body must be a JSON object of parameters",
                    ));
                }
                Err(_) => return Err(ApiError::bad_request("the request body is not valid JSON")),
            }
        }
        if let Some(query) = query {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
                .map_err(|_| ApiError::bad_request("the query string is malformed"))?;
            for (key, value) in pairs {
                map.insert(key, Value::String(value));
            }
        }
        Ok(Self(map))
    }

    /// An optional u64 parameter, accepted as a JSON number or a decimal string.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let invalid = |got: &dyn std::fmt::Display| {
            ApiError::bad_request(format!(
                "parameter `{name}` must be a non-negative integer (UNIX seconds for times), got {got}"
            ))
        };
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| invalid(n)),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(&format_args!("{s:?}"))),
            Some(other) => Err(invalid(other)),
        }
    }

    /// An optional string parameter (numbers are accepted and printed).
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::bad_request(format!(
                "parameter `{name}` must be a string"
            ))),
        }
    }

    /// The first of `names` that is present, as u64 (aliases such as `session_id`/`sessionId`).
    pub fn u64_any(&self, names: &[&str]) -> Result<Option<u64>, ApiError> {
        for name in names {
            if let Some(value) = self.u64(name)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// The first of `names` that is present, as a string.
    pub fn string_any(&self, names: &[&str]) -> Result<Option<String>, ApiError> {
        for name in names {
            if let Some(value) = self.string(name)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_accepted_as_json_numbers_or_strings() {
        let p = Params::parse(None, br#"{"timestamp": 17}"#).unwrap();
        assert_eq!(p.u64("timestamp").unwrap(), Some(17));
        let p = Params::parse(None, br#"{"timestamp": "18"}"#).unwrap();
        assert_eq!(p.u64("timestamp").unwrap(), Some(18));
        let p = Params::parse(Some("timestamp=19"), b"").unwrap();
        assert_eq!(p.u64("timestamp").unwrap(), Some(19));
    }

    #[test]
    fn the_query_wins_over_the_body() {
        let p = Params::parse(Some("timestamp=1"), br#"{"timestamp": 2, "other": "x"}"#).unwrap();
        assert_eq!(p.u64("timestamp").unwrap(), Some(1));
        assert_eq!(p.string("other").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn malformed_numbers_name_the_parameter() {
        for (query, body) in [
            (Some("timestamp=abc"), &b""[..]),
            (Some("timestamp=-1"), b""),
            (None, br#"{"timestamp": -5}"#),
            (None, br#"{"timestamp": 1.5}"#),
            (None, br#"{"timestamp": true}"#),
        ] {
            let err = Params::parse(query, body)
                .unwrap()
                .u64("timestamp")
                .unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.detail.contains("`timestamp`"), "{}", err.detail);
        }
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(Params::parse(None, b"[1]").is_err());
        assert!(Params::parse(None, b"{nope").is_err());
        assert!(Params::parse(None, b"  \n").is_ok());
    }
}
