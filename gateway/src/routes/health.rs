//! Operator endpoints: `/healthz` (the process answers) and `/readyz` (every upstream service
//! reports SERVING over the gRPC health protocol).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::AppState;
use crate::error::{PROBLEM_JSON, Problem};
use crate::openapi;

/// Liveness: no dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = openapi::TAG_OPERATORS,
    operation_id = "healthz",
    summary = "Liveness",
    description = "The process answers; nothing else is checked. Never rate limited.",
    responses(
        (status = 200, description = "Alive.", body = String, content_type = "text/plain", example = "ok\n"),
    ),
)]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when every upstream is SERVING, else 503 naming those that are not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = openapi::TAG_OPERATORS,
    operation_id = "readyz",
    summary = "Readiness",
    description = "Every gRPC service behind the gateway reports SERVING. Never rate limited.",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Not ready: the detail names the services that are not serving.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.inner.upstreams.iter().map(|(name, channel)| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            let request = tonic::Request::new(HealthCheckRequest {
                service: (*name).to_owned(),
            });
            let ok = tokio::time::timeout(std::time::Duration::from_secs(2), client.check(request))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
            (*name, ok)
        }
    });
    let results = futures::future::join_all(checks).await;
    let down: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", down.join(", ")),
        )
    }
}
