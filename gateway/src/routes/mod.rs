//! Route table and cross-cutting middleware.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::AppState;
use crate::error::ApiError;

pub mod actors;
pub mod core;
pub mod health;
pub mod services;
pub mod sessions;

/// Every route (paths without trailing slashes; [`crate::serve`] strips them).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/polyproto-core", get(core::well_known))
        .route("/.p2/core/v1/idcert/server", get(core::server_id_cert))
        .route(
            "/.p2/core/v1/key/server",
            get(core::server_public_key)
                .put(sessions::rotate_server_key)
                .post(sessions::rotate_server_key),
        )
        .route("/.p2/core/v1/idcert", post(actors::request_id_cert))
        .route(
            "/.p2/core/v1/idcert/actor/{fid}",
            get(actors::actor_id_certs),
        )
        .route("/.p2/core/v1/challenge", get(sessions::challenge))
        .route(
            "/.p2/core/v1/session",
            axum::routing::delete(sessions::delete_session),
        )
        .route("/.p2/auth/v1/register", post(actors::register))
        .route("/.p2/auth/v1/session", post(actors::login))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(services::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// Runs every request that may change state (any method but GET/HEAD/OPTIONS) in a task of
/// its own, and clears the public read cache and the token cache when it is done, whatever its
/// outcome. A client that disconnects drops only the waiting, not the mutation: the upstream
/// call and the invalidation both happen (CONVENTIONS 18). One place covers every mutation
/// route.
pub async fn complete_mutations(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use tracing::Instrument as _;
    let mutates = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !mutates {
        return next.run(request).await;
    }
    let task = tokio::spawn(
        async move {
            let response = next.run(request).await;
            state.cache().clear();
            state.token_cache().clear();
            response
        }
        .in_current_span(),
    );
    match task.await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "a mutation's task failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to handle this request; it has been logged",
            )
            .into_response()
        }
    }
}

/// Turns every error response that is not problem+json yet (axum's own rejections of paths,
/// queries and bodies answer `text/plain`) into RFC 9457 problem details with the same status
/// and message, so clients see one error shape everywhere.
pub async fn problem_json_everywhere(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes()
                .starts_with(crate::error::PROBLEM_JSON.as_bytes())
        });
    if is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = if status.is_server_error() {
        "the server failed to handle this request; it has been logged".to_owned()
    } else {
        let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        }
    };
    let mut problem = ApiError::new(status, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

/// Answers 413 problem+json before reading a body whose declared length is over the limit.
pub async fn reject_large_bodies(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return ApiError::too_large(limit).into_response();
    }
    next.run(request).await
}

/// One span per HTTP request, joined to the client's trace context when it sent one. At DEBUG
/// level: the log output (INFO by default) does not need it, and OTLP export enables it (see
/// `p2_runtime::telemetry`), so with export off a request creates no span at all.
pub fn request_span(request: &Request) -> tracing::Span {
    let span = tracing::debug_span!(
        "http",
        otel.kind = "server",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        http.method = %request.method(),
        http.target = %request.uri().path(),
    );
    if !span.is_disabled() {
        p2_runtime::telemetry::set_parent_from_headers(&span, request.headers());
    }
    span
}
