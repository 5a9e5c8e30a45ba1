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
pub mod events;
pub mod federation;
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
        .route(
            "/.p2/core/v1/session/auth",
            get(federation::key_trial).post(federation::complete_key_trial),
        )
        .route(
            "/.p2/core/v1/session/idcert/extern",
            axum::routing::put(federation::update_foreign_id_cert),
        )
        .route("/.p2/core/v1/keytrial/{fid}", get(federation::key_trials))
        .route("/.p2/core/v1/events", get(events::events))
        .route("/.p2/core/v1/gateway", get(crate::ws::gateway))
        .route("/.p2/auth/v1/register", post(actors::register))
        .route("/.p2/auth/v1/session", post(actors::login))
        .route(
            "/.p2/core/v1/openapi.json",
            get(crate::openapi::openapi_json),
        )
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
/// its own, and when it is done applies the cache invalidations its handler declared
/// ([`crate::cache::Invalidation`]: a services change clears that actor's discovery entries, a
/// session change every token and that actor's cert entries, a key rotation every public read).
/// A 4xx answer (no route, bad input, refused) changed nothing and clears nothing — so no
/// client can flush the caches with failing requests; a 5xx (outcome unknown) clears what the
/// route declared. A client that disconnects drops only the waiting, not the mutation: the
/// upstream call and the invalidation both happen (CONVENTIONS 18). One place covers every
/// mutation route.
pub async fn complete_mutations(
    State(state): State<AppState>,
    mut request: Request,
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
    let invalidation = crate::cache::Invalidation::default();
    request.extensions_mut().insert(invalidation.clone());
    // The task keeps the request's client address (a task-local, not inherited by spawns).
    let client = p2_runtime::internal::client_address();
    let task = tokio::spawn(
        p2_runtime::internal::with_client_address(client, async move {
            let response = next.run(request).await;
            if !response.status().is_client_error() {
                invalidate(&state, &invalidation);
            }
            response
        })
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

/// Applies what a mutation declared.
/// Applies what a mutation declared here, and tells the other gateways.
fn invalidate(state: &AppState, invalidation: &crate::cache::Invalidation) {
    use crate::cache::Target;
    let targets = invalidation.targets();
    for target in &targets {
        match target {
            Target::Public(scope) => state.cache().invalidate(scope),
            Target::AllPublic => state.cache().clear(),
            Target::AllTokens => state.token_cache().clear(),
        }
    }
    crate::invalidation::forward(state, &targets);
}

/// The gateway's edge, one layer for what every request goes through first (one layer, not
/// four: each middleware layer costs a boxed future per request on the hot path):
/// - a body whose declared length is over `--max-body-bytes` is refused (413) before it is read;
/// - the request is counted against its class and client address ([`crate::ratelimit`]);
/// - the client's address is the TCP peer's, or, from a trusted proxy, the one its
///   `X-Forwarded-For` names ([`crate::proxy`]);
/// - the client's address becomes the one every gRPC call of this request carries
///   (`x-p2-client-address`), so the services can throttle password guesses per address;
/// - an error answer that is not problem+json yet (axum's own rejections of paths, queries and
///   bodies answer `text/plain`) is turned into RFC 9457 problem details with the same status
///   and message, so clients see one error shape everywhere.
pub async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.max_body_bytes();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return ApiError::too_large(limit).into_response();
    }
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| {
            state
                .trusted_proxies()
                .client(info.0.ip(), request.headers())
        });
    let class = crate::ratelimit::Class::of(&request);
    if let Some(refused) = crate::ratelimit::refusal(&state, class, address).await {
        return refused;
    }
    let response = p2_runtime::internal::with_client_address(address, next.run(request)).await;
    problem_json(response).await
}

/// `response`, as problem+json if it is an error answer in another shape.
async fn problem_json(response: Response) -> Response {
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt as _;

    use super::*;
    use crate::cache::{CacheKey, Invalidation, Scope, Target};

    fn state() -> AppState {
        let key = p2_runtime::internal::InternalKey::generate();
        let config = crate::GatewayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            options: crate::GatewayOptions::default(),
            // Nothing listens there: these tests never reach a service.
            identity_url: "http://127.0.0.1:9".into(),
            session_url: "http://127.0.0.1:9".into(),
            discovery_url: "http://127.0.0.1:9".into(),
            events_url: "http://127.0.0.1:9".into(),
            token_cache_ms: 60_000,
            internal: p2_runtime::internal::InternalKeyConfig::with_key(&key),
            component_credential: None,
            redis_url: None,
            redis_prefix: crate::ratelimit::DEFAULT_REDIS_PREFIX.into(),
        };
        AppState::new(&config, ([127, 0, 0, 1], 1).into()).unwrap()
    }

    fn caller() -> crate::auth::Authenticated {
        crate::auth::Authenticated {
            caller: p2_proto::common::v1::Caller {
                fid: "alice@p2.test".into(),
                session_id: "s".into(),
            },
            assertion: p2_proto::common::v1::CallerAssertion { token: vec![1] },
        }
    }

    /// Caches one public answer per scope and one token.
    async fn fill(state: &AppState) -> Vec<CacheKey> {
        // As when the invalidation feed is live.
        state.token_cache().set_live(true);
        let keys = vec![
            CacheKey::new(Scope::Server, "cert"),
            crate::cache::discovery_key("alice@p2.test", None, None),
            crate::cache::actor_certs_key("alice@p2.test", None, None, None, None),
        ];
        for key in &keys {
            let miss = state.cache().get(key.clone()).unwrap_err();
            state
                .cache()
                .store(miss, "cached".into_response(), None)
                .await;
        }
        let miss = state.token_cache().get("tok").unwrap_err();
        state.token_cache().insert(miss, caller(), u64::MAX);
        keys
    }

    fn all_cached(state: &AppState, keys: &[CacheKey]) -> bool {
        keys.iter().all(|k| state.cache().get(k.clone()).is_ok())
            && state.token_cache().get("tok").is_ok()
    }

    async fn send(app: Router, method: &str, path: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn failed_mutations_clear_nothing() {
        let state = state();
        let keys = fill(&state).await;
        let app = crate::router(state.clone());
        assert_eq!(
            send(app.clone(), "POST", "/nope").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            send(app.clone(), "DELETE", "/.p2/core/v1/session").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(app.clone(), "PUT", "/.p2/core/v1/idcert/server").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            send(app, "POST", "/.p2/auth/v1/register").await,
            StatusCode::BAD_REQUEST
        );
        assert!(all_cached(&state, &keys));
    }

    #[tokio::test]
    async fn successful_mutations_clear_only_what_they_declared() {
        let state = state();
        let keys = fill(&state).await;
        let declare = |target: Target, status: StatusCode| {
            move |invalidation: Invalidation| async move {
                invalidation.add(target);
                status
            }
        };
        let app = Router::new()
            .route(
                "/services",
                post(declare(
                    Target::Public(Scope::discovery("alice@p2.test")),
                    StatusCode::CREATED,
                )),
            )
            .route(
                "/refused",
                post(declare(Target::AllPublic, StatusCode::CONFLICT)),
            )
            .route(
                "/session",
                post(declare(Target::AllTokens, StatusCode::NO_CONTENT)),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                complete_mutations,
            ))
            .with_state(state.clone());
        assert_eq!(
            send(app.clone(), "POST", "/refused").await,
            StatusCode::CONFLICT
        );
        assert!(all_cached(&state, &keys));
        assert_eq!(
            send(app.clone(), "POST", "/services").await,
            StatusCode::CREATED
        );
        // Alice's discovery entry went; the server cert, her certs and the token stayed
        // (unless their scopes share a generation stripe with hers, which only costs a miss).
        assert!(state.cache().get(keys[1].clone()).is_err());
        assert!(state.token_cache().get("tok").is_ok());
        assert_eq!(send(app, "POST", "/session").await, StatusCode::NO_CONTENT);
        assert!(state.token_cache().get("tok").is_err());
    }
}
