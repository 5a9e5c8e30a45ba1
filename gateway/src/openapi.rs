//! The gateway's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and their types' `ToSchema` derives, served at `GET /.p2/core/v1/openapi.json`.
//!
//! - The handlers describe what *they* answer: success bodies and the refusals of their own
//!   input (400, 403, 404, 409, ...).
//! - A modifier (`EdgeResponses`) adds what the layers in front of every handler answer, once
//!   for all routes: 401 where the route needs a Bearer token (the
//!   [`crate::auth::Authenticated`] extractor), 413 where it takes a body (`--max-body-bytes`),
//!   429 on every rate-limited route ([`crate::ratelimit`]), 503 where an upstream is called or
//!   the request timeout can strike.
//! - Leniencies for older clients (API.md "Leniency": GET parameters in a JSON body, JSON
//!   without `Content-Type`, numbers as strings, trailing slashes, parameter aliases) are
//!   accepted but not described: the document shows the canonical form.
//! - `servers` is the relative `/`: the document names no host, so the same bytes are right
//!   behind any public URL (clients resolve it against where they fetched the document), and it
//!   can be built once, at first use, and committed as `docs/openapi.json`.
//!
//! `docs/openapi.json` must equal [`document_json`]: the unit test
//! `committed_document_is_current` fails otherwise; `P2_UPDATE_OPENAPI=1 cargo test -p
//! p2-gateway openapi` rewrites it.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response as OpenApiResponse, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, Path as _};

use crate::error::{ApiError, PROBLEM_JSON};
use crate::routes::{actors, core, events, federation, health, services, sessions};

/// Tag of the identity routes: server and actor certs, keys.
pub const TAG_IDENTITY: &str = "identity";
/// Tag of the session-bound routes: challenges, session deletion.
pub const TAG_SESSIONS: &str = "sessions";
/// Tag of the discoverable services.
pub const TAG_SERVICES: &str = "services";
/// Tag of the polyproto-auth extension: registration and password login.
pub const TAG_AUTH: &str = "auth";
/// Tag of the event routes: the WebSocket gateway and events over HTTP.
pub const TAG_EVENTS: &str = "events";
/// Tag of the federation routes: key trials and foreign sessions.
pub const TAG_FEDERATION: &str = "federation";
/// Tag of the operator endpoints and this document.
pub const TAG_OPERATORS: &str = "operators";

/// Name of the Bearer security scheme (the OpenAPI of polyproto core uses the same).
pub const BEARER: &str = "BearerAuth";

/// `timestamp`: a point in time, for the routes that answer what was valid then.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimestampQuery {
    /// A UNIX time (seconds): answer what was valid then instead of now.
    #[param(format = "uint64", example = 1767225600)]
    pub timestamp: Option<u64>,
}

/// The filters of `GET /.p2/core/v1/idcert/actor/{fid}` besides `timestamp`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActorCertsQuery {
    /// Only the certs of this session ID (also accepted as `sessionId`).
    #[param(example = "s1")]
    pub session_id: Option<String>,
    /// Only certs issued (validity starting) at or after this UNIX time.
    #[param(rename = "notBefore", format = "uint64")]
    pub not_before: Option<u64>,
    /// Only certs issued (validity starting) at or before this UNIX time.
    #[param(rename = "notAfter", format = "uint64")]
    pub not_after: Option<u64>,
}

/// `limit` of the discovery routes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many providers; `1`: only the primary provider of each service.
    #[param(minimum = 1, format = "uint64", example = 1)]
    pub limit: Option<u64>,
}

/// An actor named in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FidPath {
    /// The actor's federation ID, `local@domain` (case-insensitive).
    #[param(example = "alice@p2.example.com")]
    pub fid: String,
}

/// `X-P2-Sensitive-Solution` where the action always needs it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SensitiveSolutionRequired {
    /// The solution of a sensitive action (spec 4.2): for an actor registered with a password,
    /// that password, as raw UTF-8.
    #[param(rename = "X-P2-Sensitive-Solution")]
    pub solution: String,
}

/// `X-P2-Sensitive-Solution` where only some cases need it (the route's description says which).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SensitiveSolutionOptional {
    /// The solution of a sensitive action (spec 4.2), where this request is one: for an actor
    /// registered with a password, that password, as raw UTF-8.
    #[param(rename = "X-P2-Sensitive-Solution", required = false, value_type = String)]
    pub solution: Option<String>,
}

/// The document: every route of [`crate::routes::router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "polyproto home server",
        description = "polyproto core v1 (the routes this server serves), the polyproto-auth \
                       extension, and the operator endpoints. Errors are RFC 9457 problem \
                       details (`application/problem+json`). UNIX times in JSON answers are \
                       decimal strings.",
        license(name = "MPL-2.0", identifier = "MPL-2.0"),
    ),
    servers((url = "/", description = "This server: paths are relative to where this document was fetched.")),
    paths(
        core::well_known,
        core::server_id_cert,
        core::server_public_key,
        sessions::rotate_server_key,
        actors::request_id_cert,
        actors::actor_id_certs,
        sessions::challenge,
        sessions::delete_session,
        federation::key_trial,
        federation::complete_key_trial,
        federation::update_foreign_id_cert,
        federation::key_trials,
        actors::register,
        actors::login,
        services::add_service,
        services::remove_services,
        services::set_primary,
        services::discover_all,
        services::discover_one,
        events::events,
        crate::ws::gateway,
        openapi_json,
        health::healthz,
        health::readyz,
    ),
    tags(
        (name = TAG_IDENTITY, description = "Server and actor ID-Certs, the server's key."),
        (name = TAG_SESSIONS, description = "Challenge strings and sessions."),
        (name = TAG_SERVICES, description = "Discoverable services (spec 9)."),
        (name = TAG_FEDERATION, description = "Signing in as an actor of another home server with key trials (spec 4.1.1), foreign sessions' ID-Certs, completed key trials (spec 4.3)."),
        (name = TAG_EVENTS, description = "Gateway events: the WebSocket gateway (spec 3.2) and events over HTTP (spec 3.3)."),
        (name = TAG_AUTH, description = "The polyproto-auth extension: registration and login."),
        (name = TAG_OPERATORS, description = "Liveness, readiness and this document."),
    ),
    modifiers(&EdgeResponses),
)]
struct ApiDoc;

/// Adds what every route shares: the Bearer scheme, the `POST` twin of key rotation, and the
/// answers of the layers in front of the handlers (see the module docs).
struct EdgeResponses;

/// The shared error answers, as `#/components/responses/<name>`.
const UNAUTHORIZED: &str = "Unauthorized";
const PAYLOAD_TOO_LARGE: &str = "PayloadTooLarge";
const TOO_MANY_REQUESTS: &str = "TooManyRequests";
const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";

/// Routes answered from memory: no upstream, no realistic timeout.
const LOCAL_ROUTES: [&str; 4] = [
    "/.well-known/polyproto-core",
    "/.p2/core/v1/openapi.json",
    "/healthz",
    "/readyz",
];

/// Routes the rate limiter never counts ([`crate::ratelimit::Class::of`]).
const UNLIMITED_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

fn problem_response(description: &str, retry_after: bool) -> OpenApiResponse {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(<u64 as utoipa::PartialSchema>::schema())
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    response.build()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

fn add_shared(operation: &mut Operation, status: StatusCode, name: &str) {
    operation
        .responses
        .responses
        .entry(status.as_str().to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut Document) {
        openapi.paths.add_path_operation(
            sessions::RotateServerKeyPost::path(),
            sessions::RotateServerKeyPost::methods(),
            sessions::RotateServerKeyPost::operation(),
        );
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token, from `POST /.p2/auth/v1/session` or \
                         `POST /.p2/core/v1/idcert`.",
                    ))
                    .build(),
            ),
        );
        for (name, response) in [
            (
                UNAUTHORIZED,
                problem_response(
                    "No `Authorization: Bearer <token>`, or the token is unknown, expired or \
                     its session was deleted.",
                    false,
                ),
            ),
            (
                PAYLOAD_TOO_LARGE,
                problem_response(
                    "The request body is larger than the server's limit (`--max-body-bytes`, \
                     64 KiB by default).",
                    false,
                ),
            ),
            (
                TOO_MANY_REQUESTS,
                problem_response(
                    "Too many requests: this client address is over its rate limit for this \
                     class of route, or this account or address made too many wrong password \
                     guesses lately.",
                    true,
                ),
            ),
            (
                SERVICE_UNAVAILABLE,
                problem_response(
                    "A backend service is unavailable or too slow, or the server is busy \
                     checking passwords; try again shortly.",
                    true,
                ),
            ),
        ] {
            components
                .responses
                .insert(name.to_owned(), response.into());
        }
        let bearer_requirement = SecurityRequirement::new(BEARER, Vec::<String>::new());
        for (path, item) in &mut openapi.paths.paths {
            let local = LOCAL_ROUTES.contains(&path.as_str());
            let limited = !UNLIMITED_ROUTES.contains(&path.as_str());
            for operation in operations_mut(item) {
                let bearer = operation
                    .security
                    .as_ref()
                    .is_some_and(|requirements| requirements.contains(&bearer_requirement));
                if bearer {
                    add_shared(operation, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
                }
                if operation.request_body.is_some() {
                    add_shared(operation, StatusCode::PAYLOAD_TOO_LARGE, PAYLOAD_TOO_LARGE);
                }
                if limited {
                    add_shared(operation, StatusCode::TOO_MANY_REQUESTS, TOO_MANY_REQUESTS);
                }
                if !local {
                    add_shared(
                        operation,
                        StatusCode::SERVICE_UNAVAILABLE,
                        SERVICE_UNAVAILABLE,
                    );
                }
            }
        }
    }
}

/// The document, built from the annotations.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// The document as pretty-printed JSON with a final newline: the bytes served and committed as
/// `docs/openapi.json`.
pub fn document_json() -> Result<String, serde_json::Error> {
    document().to_pretty_json().map(|mut json| {
        json.push('\n');
        json
    })
}

/// Built once, at the first request.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    document_json()
        .map(Bytes::from)
        .map_err(|error| error.to_string())
});

/// `GET /.p2/core/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/openapi.json",
    tag = TAG_OPERATORS,
    operation_id = "openapi",
    summary = "This OpenAPI document",
    description = "The OpenAPI 3.1 document of every route this server serves, generated from \
                   its handlers.",
    responses(
        (status = 200, description = "The document.", body = Object, content_type = "application/json"),
    ),
)]
pub async fn openapi_json() -> Response {
    match &*DOCUMENT {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.clone(),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "serialising the OpenAPI document failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to encode its OpenAPI document",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use tower::ServiceExt as _;

    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    /// A gateway whose upstreams do not exist: routing and extractors answer, RPCs fail (503).
    fn app() -> axum::Router {
        let key = p2_runtime::internal::InternalKey::generate();
        let config = crate::GatewayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            options: crate::GatewayOptions::default(),
            identity_url: "http://127.0.0.1:9".into(),
            session_url: "http://127.0.0.1:9".into(),
            discovery_url: "http://127.0.0.1:9".into(),
            events_url: "http://127.0.0.1:9".into(),
            token_cache_ms: 0,
            internal: p2_runtime::internal::InternalKeyConfig::with_key(&key),
            component_credential: None,
            redis_url: None,
            redis_prefix: crate::ratelimit::DEFAULT_REDIS_PREFIX.into(),
        };
        crate::router(crate::AppState::new(&config, ([127, 0, 0, 1], 1).into()).unwrap())
    }

    /// Every documented operation, as (method, path with the parameters filled in, bearer?).
    fn documented() -> Vec<(String, String, bool)> {
        let document = serde_json::to_value(document()).unwrap();
        let mut all = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            let concrete = path
                .replace("{fid}", "alice@p2.test")
                .replace("{service}", "chat");
            for (method, operation) in item.as_object().unwrap() {
                let bearer = operation["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get(BEARER).is_some()));
                all.push((method.to_uppercase(), concrete.clone(), bearer));
            }
        }
        all
    }

    async fn status(app: &axum::Router, method: &str, path: &str, token: bool) -> StatusCode {
        let mut request = Request::builder().method(method).uri(path);
        if token {
            request = request.header(header::AUTHORIZATION, "Bearer t");
        }
        let request = request.body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn every_documented_operation_is_served_with_the_documented_auth() {
        let app = app();
        let documented = documented();
        assert_eq!(documented.len(), 25, "{documented:?}");
        for (method, path, bearer) in &documented {
            // Without a token: 401 exactly where the document asks for one. (A 404 of the
            // fallback would be 404 too, but no documented route answers 404 without an
            // upstream, which these tests do not have.)
            let anonymous = status(&app, method, path, false).await;
            assert_ne!(anonymous, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(anonymous, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(
                anonymous == StatusCode::UNAUTHORIZED,
                *bearer,
                "{method} {path}: {anonymous}"
            );
        }
        // The methods a documented path does not list are not served either.
        for (_, path, _) in &documented {
            for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
                let listed = documented.iter().any(|(m, p, _)| m == method && p == path);
                if !listed {
                    assert_eq!(
                        status(&app, method, path, true).await,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is served but not documented"
                    );
                }
            }
        }
    }

    /// The paths of every `.route("...")` in `source`, outside its tests.
    fn routed_paths(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        code.split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_routed_path_is_documented() {
        let mut routed = routed_paths(include_str!("routes/mod.rs"));
        routed.extend(routed_paths(include_str!("routes/services.rs")));
        routed.sort();
        let document = serde_json::to_value(document()).unwrap();
        let documented: Vec<String> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            routed, documented,
            "add a #[utoipa::path] for each new route"
        );
    }

    #[test]
    fn the_sensitive_solution_header_is_the_one_the_gateway_reads() {
        let document = serde_json::to_value(document()).unwrap();
        let mut seen = 0;
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "header" {
                        let name = parameter["name"].as_str().unwrap();
                        assert!(
                            name.eq_ignore_ascii_case(crate::auth::SENSITIVE_SOLUTION_HEADER),
                            "{name}"
                        );
                        seen += 1;
                    }
                }
            }
        }
        // Key rotation (PUT, POST), new ID-Certs, session deletion, provider removal, primary.
        assert_eq!(seen, 6);
    }

    #[tokio::test]
    async fn the_document_is_served_as_json() {
        let response = app()
            .oneshot(
                Request::builder()
                    .uri("/.p2/core/v1/openapi.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, document_json().unwrap().as_bytes());
    }

    #[test]
    fn committed_document_is_current() {
        let generated = document_json().unwrap();
        if std::env::var_os("P2_UPDATE_OPENAPI").is_some_and(|v| !v.is_empty() && v != "0") {
            std::fs::write(COMMITTED, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is not the document the handlers generate; regenerate it with \
             `P2_UPDATE_OPENAPI=1 cargo test -p p2-gateway openapi` and commit it"
        );
    }
}
