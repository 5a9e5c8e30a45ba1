//! RFC 9457 problem details, and the one table that maps gRPC codes to HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answered to a client as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong and how to fix it; shown verbatim.
    pub detail: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

/// RFC 9457 problem details: the body of every error answer, as `application/problem+json`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Bad Request",
    "status": 400,
    "detail": "parameter `timestamp` must be a non-negative integer (UNIX seconds for times), got \"abc\""
}))]
pub(crate) struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    kind: &'static str,
    /// The HTTP status's reason phrase.
    #[schema(value_type = String)]
    title: &'a str,
    /// The HTTP status code, as in the status line.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What was wrong and how to fix it (never an internal detail).
    #[schema(value_type = String)]
    detail: &'a str,
}

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 413 Payload Too Large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::to_vec(&Problem {
            kind: "about:blank",
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<tonic::Status> for ApiError {
    /// The gateway's only gRPC → HTTP table. Client errors keep the service's message;
    /// everything else becomes a generic message (the service has logged the cause).
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let http = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            // Cancelled reaches the gateway only from its own client: a call past its deadline
            // (`Endpoint::timeout`): a backend too slow, not a bug.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // No service answers OUT_OF_RANGE: it comes from tonic itself (e.g. "decoded
            // message length too large"), a transport limit the client cannot act on.
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss | Code::OutOfRange => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        // A service refused this gateway itself: misconfigured keys, never the client's fault.
        if p2_runtime::error::Reason::of(&status)
            == Some(p2_runtime::error::Reason::ComponentRefused)
        {
            tracing::error!(
                code = ?status.code(),
                message = status.message(),
                "a service refused this gateway's component credential: check P2_INTERNAL_KEY \
                 or P2_COMPONENT_CREDENTIAL"
            );
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to handle this request; it has been logged",
            );
        }
        // The few refusals whose wording names HTTP headers: the gateway owns those words.
        let reason = match p2_runtime::error::Reason::of(&status) {
            Some(p2_runtime::error::Reason::SensitiveSolutionRequired) => Some(format!(
                "{}: send the solution (your password) in the X-P2-Sensitive-Solution header",
                status.message()
            )),
            Some(p2_runtime::error::Reason::SensitiveSolutionWrong) => {
                Some("the sensitive-action solution in X-P2-Sensitive-Solution is wrong".to_owned())
            }
            Some(p2_runtime::error::Reason::PrimaryExists) => Some(format!(
                "{}: send \"primary\": false, then PUT /.p2/core/v1/services/primary with the \
                 X-P2-Sensitive-Solution header",
                status.message()
            )),
            Some(
                p2_runtime::error::Reason::NotAdmin | p2_runtime::error::Reason::ComponentRefused,
            )
            | None => None,
        };
        let detail = match (reason, http) {
            (Some(text), _) => text,
            (None, StatusCode::INTERNAL_SERVER_ERROR) => {
                tracing::error!(code = ?status.code(), message = status.message(), "upstream error");
                "the server failed to handle this request; it has been logged".to_owned()
            }
            (None, StatusCode::SERVICE_UNAVAILABLE) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "upstream unavailable");
                "a backend service is unavailable; try again shortly".to_owned()
            }
            (None, _) => status.message().to_owned(),
        };
        let mut error = Self::new(http, detail);
        error.retry_after = p2_runtime::error::retry_after_of(&status);
        error
    }
}

/// A field a service's answer must carry: its absence breaks the service's contract, which
/// is answered the same way everywhere — logged, and a generic 500.
pub fn required<T>(field: Option<T>, rpc: &str, name: &str) -> Result<T, ApiError> {
    field.ok_or_else(|| {
        tracing::error!(rpc, field = name, "upstream answer lacks a required field");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed to handle this request; it has been logged",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_documented_http_statuses() {
        use tonic::Code;
        let table = [
            (Code::NotFound, 404),
            (Code::InvalidArgument, 400),
            (Code::AlreadyExists, 409),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::OutOfRange, 500),
        ];
        for (code, http) in table {
            let error = ApiError::from(tonic::Status::new(code, "SELECT secret FROM x"));
            assert_eq!(error.status.as_u16(), http, "{code:?}");
            if http >= 500 {
                assert!(
                    !error.detail.contains("SELECT"),
                    "{code:?} leaked its message"
                );
            } else {
                assert_eq!(error.detail, "SELECT secret FROM x");
            }
        }
    }

    #[test]
    fn retry_hints_become_retry_after_headers() {
        let busy = ApiError::from(p2_runtime::error::retry_after(
            tonic::Status::unavailable("busy"),
            3,
        ));
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.retry_after, Some(3));
        let response = busy.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn refusals_with_a_reason_get_the_gateways_http_wording() {
        use p2_runtime::error::Reason;
        let required =
            ApiError::from(Reason::SensitiveSolutionRequired.denied("a sensitive action"));
        assert_eq!(required.status, StatusCode::FORBIDDEN);
        assert!(required.detail.starts_with("a sensitive action"));
        assert!(required.detail.contains("X-P2-Sensitive-Solution"));
        let wrong = ApiError::from(Reason::SensitiveSolutionWrong.denied("wrong"));
        assert_eq!(wrong.status, StatusCode::FORBIDDEN);
        assert!(wrong.detail.contains("X-P2-Sensitive-Solution"));
        let primary = ApiError::from(
            Reason::PrimaryExists.tag(tonic::Status::failed_precondition("chat has one")),
        );
        assert_eq!(primary.status, StatusCode::CONFLICT);
        assert!(primary.detail.contains("services/primary"));
        let admin = ApiError::from(Reason::NotAdmin.denied("needs an administrator"));
        assert_eq!(admin.detail, "needs an administrator");
        // A refused gateway is a deployment error: 500, and nothing of it shown.
        let refused = ApiError::from(
            Reason::ComponentRefused.tag(tonic::Status::unauthenticated("bad credential")),
        );
        assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!refused.detail.contains("credential"));
    }

    #[tokio::test]
    async fn problems_are_rendered_as_rfc9457_json() {
        let response = ApiError::bad_request("parameter `timestamp` is bad").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["status"], 400);
        assert_eq!(value["title"], "Bad Request");
        assert_eq!(value["type"], "about:blank");
        assert_eq!(value["detail"], "parameter `timestamp` is bad");
    }
}
