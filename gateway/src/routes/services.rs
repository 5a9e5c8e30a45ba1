//! Discoverable services (core spec 9; API.md; the OpenAPI's `Services` routes), translated
//! into `polyproto.discovery.v1.Discovery` calls.
//!
//! - `POST /.p2/core/v1/services` (Bearer): add a provider. Body: the OpenAPI's
//!   `{"service": Service}` or a bare `Service`; 201 with the stored `Service`.
//! - `DELETE /.p2/core/v1/services` (Bearer; sensitive when a primary is removed): `url` and
//!   `name` lists, index-matched, as query parameters (repeated, or comma-separated as the
//!   OpenAPI's `explode: false` has it) or a JSON body; 200 with `[{service, new_primary}]`
//!   for each promotion.
//! - `PUT /.p2/core/v1/services/primary` (Bearer + sensitive): `{"url", "name"}`; 200 with the
//!   new primary and the demoted previous one.
//! - `GET /.p2/core/v1/services/discover/{fid}[/{service}]` (public): `limit` (query or body);
//!   200 with an array of `Service`, 204 with an empty body when there is none.
//!
//! The discovery service validates names, URLs, FIDs and limits (one source of truth, its
//! messages are shown verbatim); this module only parses the request's shape. Service names
//! may arrive as the SDK's `{"inner": name}` and are always answered as plain strings
//! (API.md "Wire dialect"). Unknown body fields are 400.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use p2_proto::common::v1::ServiceProvider;
use p2_proto::discovery::v1 as pb;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, sensitive_solution};
use crate::cache::{Invalidation, Scope, Target};
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;

/// The discovery routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/.p2/core/v1/services",
            with_405(post(add_service).delete(remove_services)),
        )
        .route("/.p2/core/v1/services/primary", with_405(put(set_primary)))
        .route(
            "/.p2/core/v1/services/discover/{fid}",
            with_405(get(discover_all)),
        )
        .route(
            "/.p2/core/v1/services/discover/{fid}/{service}",
            with_405(get(discover_one)),
        )
}

/// Answers other methods with a problem+json 405 rather than an empty body.
fn with_405(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(|method: Method| async move {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("this route does not answer {method}"),
        )
    })
}

/// `Models.Service` as answered: the name is a plain string.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = Service,
    description = "A provider of a service that an actor made discoverable (spec 9)."
)]
struct ServiceJson {
    /// The service's name (spec 8.2).
    #[schema(pattern = "^[a-z0-9_-]{2,64}$", example = "polyproto-chat")]
    service: String,
    /// The provider's base URL, without `/.p2/<service>` (scheme and host lower-cased).
    #[schema(
        format = "uri",
        max_length = 2048,
        example = "https://chat.example.com/"
    )]
    url: String,
    /// Whether this provider is the actor's primary one for the service.
    primary: bool,
}

/// A provider to add, as `POST /.p2/core/v1/services` takes it.
#[allow(
    dead_code,
    reason = "schema only: the handler parses its looser forms by hand"
)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewService {
    /// The service's name (spec 8.2).
    #[schema(pattern = "^[a-z0-9_-]{2,64}$", example = "polyproto-chat")]
    service: String,
    /// The provider's base URL: absolute http(s), no user info, query or fragment.
    #[schema(
        format = "uri",
        max_length = 2048,
        example = "https://chat.example.com/"
    )]
    url: String,
    /// Whether it becomes the primary provider (only when the service has none yet; the
    /// first provider of a service becomes primary anyway). Default `false`.
    #[serde(default)]
    primary: bool,
}

/// Body of `POST /.p2/core/v1/services` (the OpenAPI's wrapper; a bare `Service` is also
/// accepted).
#[allow(
    dead_code,
    reason = "schema only: the handler parses its looser forms by hand"
)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewServiceBody {
    /// The provider to add.
    service: NewService,
}

/// Body of `PUT /.p2/core/v1/services/primary`.
#[allow(
    dead_code,
    reason = "schema only: the handler parses its looser forms by hand"
)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
struct PrimaryBody {
    /// The provider's URL, as listed.
    #[schema(
        format = "uri",
        max_length = 2048,
        example = "https://chat.example.com/"
    )]
    url: String,
    /// The service's name.
    #[schema(pattern = "^[a-z0-9_-]{2,64}$", example = "polyproto-chat")]
    name: String,
}

impl From<ServiceProvider> for ServiceJson {
    fn from(provider: ServiceProvider) -> Self {
        Self {
            service: provider.service,
            url: provider.url,
            primary: provider.primary,
        }
    }
}

/// One promotion of a `DELETE`: the OpenAPI's `new_primary` and the SDK's `newPrimary`
/// (its `ServiceDeleteResponse` renames fields to camelCase), so both parse.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = Promotion,
    description = "A provider that became primary because the primary was removed."
)]
struct PromotionJson {
    /// The service.
    #[schema(pattern = "^[a-z0-9_-]{2,64}$")]
    service: String,
    /// The URL of its new primary provider.
    #[schema(format = "uri")]
    new_primary: String,
    /// The same URL, under the SDK's name.
    #[serde(rename = "newPrimary")]
    #[schema(format = "uri")]
    new_primary_camel: String,
}

fn body_rejection(rejection: &BytesRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than the configured limit",
        ),
        _ => ApiError::bad_request("the request body could not be read"),
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    ApiError::bad_request(format!("malformed path: {rejection}"))
}

/// The JSON object in `body`, or `None` for an empty (or all-whitespace) body. The
/// `Content-Type` header is not looked at (API.md "Leniency").
fn json_object(body: &[u8], what: &str) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(Some(object)),
        Ok(_) => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object: {what}"
        ))),
        Err(_) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON; expected {what}"
        ))),
    }
}

fn reject_unknown(object: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), ApiError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(ApiError::bad_request(format!(
            "unknown field `{key}`: {what} has only {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Ok(()),
    }
}

/// The name in the SDK's serialisation of a service name, `{"inner": "name"}`.
fn inner_name(object: &Map<String, Value>) -> Option<&str> {
    if object.len() == 1 {
        object.get("inner").and_then(Value::as_str)
    } else {
        None
    }
}

/// A service name given as a string or as `{"inner": name}`.
fn service_name(value: &Value, field: &str) -> Result<String, ApiError> {
    let name = match value {
        Value::String(name) => Some(name.as_str()),
        Value::Object(object) => inner_name(object),
        _ => None,
    };
    name.map(str::to_owned).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{field}` must be a service name string such as \"polyproto-chat\""
        ))
    })
}

fn string_field(value: &Value, field: &str) -> Result<String, ApiError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a string")))
}

const SERVICE_SHAPE: &str = r#"{"service": {"service": "name", "url": "https://...", "primary": false}} or the bare Service"#;

/// Parses a `POST /services` body: `{"service": Service}` (OpenAPI, SDK 0.21) or a bare
/// `Service` (older clients).
fn parse_new_provider(body: &[u8]) -> Result<ServiceProvider, ApiError> {
    let object = json_object(body, SERVICE_SHAPE)?
        .ok_or_else(|| ApiError::bad_request(format!("send a JSON body: {SERVICE_SHAPE}")))?;
    let service = match object.get("service") {
        // The wrapper: its one field is a whole Service object.
        Some(Value::Object(inner)) if !inner.contains_key("inner") => {
            reject_unknown(&object, &["service"], "the request body")?;
            inner
        }
        _ => &object,
    };
    reject_unknown(service, &["service", "url", "primary"], "a Service")?;
    let name = service
        .get("service")
        .ok_or_else(|| ApiError::bad_request("the Service has no `service` (its name)"))
        .and_then(|v| service_name(v, "service"))?;
    let url = service
        .get("url")
        .ok_or_else(|| ApiError::bad_request("the Service has no `url`"))
        .and_then(|v| string_field(v, "url"))?;
    let primary = match service.get("primary") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(primary)) => *primary,
        Some(_) => return Err(ApiError::bad_request("`primary` must be true or false")),
    };
    Ok(ServiceProvider {
        service: name,
        url,
        primary,
    })
}

/// `POST /.p2/core/v1/services`.
#[utoipa::path(
    post,
    path = "/.p2/core/v1/services",
    tag = openapi::TAG_SERVICES,
    operation_id = "addService",
    summary = "Make a service provider discoverable",
    description = "Adds a provider of a service to the caller's discoverable services. The \
                   first provider of a service becomes its primary. Service names may also \
                   come as `{\"inner\": name}`, and the bare `Service` without the wrapper \
                   is accepted.",
    request_body = NewServiceBody,
    responses(
        (status = 201, description = "The provider as stored.", body = ServiceJson),
        (status = 400, description = "A malformed body, name or URL.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The caller is not an actor of this server.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The provider is listed already, the service has a primary already (for `primary: true`), or the actor lists the most providers it may.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(skip_all, fields(fid = %caller.caller.fid))]
async fn add_service(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    invalidation.add(Target::Public(Scope::discovery(&caller.caller.fid)));
    let body = body.map_err(|r| body_rejection(&r))?;
    let provider = parse_new_provider(&body)?;
    let added = state
        .discovery()
        .add_service(pb::AddServiceRequest {
            caller: Some(caller.assertion),
            provider: Some(provider),
        })
        .await?
        .into_inner()
        .provider;
    let added = crate::error::required(added, "discovery.AddService", "provider")?;
    Ok((StatusCode::CREATED, axum::Json(ServiceJson::from(added))).into_response())
}

/// The providers a `DELETE` names, from its query string or its JSON body.
fn parse_removals(query: Option<&str>, body: &[u8]) -> Result<Vec<pb::ProviderKey>, ApiError> {
    const SHAPE: &str = "`url` and `name` lists (query parameters or a JSON body)";
    let mut urls: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| ApiError::bad_request("the query string is malformed"))?;
        for (key, value) in pairs {
            match key.as_str() {
                "url" => urls.push(value),
                // Names cannot contain commas, so a comma always separates two of them.
                "name" | "service" => names.extend(value.split(',').map(str::to_owned)),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}`: send {SHAPE}"
                    )));
                }
            }
        }
        // `explode: false`: one `url` parameter listing several URLs, comma-separated. A URL
        // may itself contain commas, so split only when the names say there are several.
        if urls.len() == 1 && names.len() > 1 {
            urls = urls[0].split(',').map(str::to_owned).collect();
        }
    }
    if urls.is_empty()
        && names.is_empty()
        && let Some(object) = json_object(body, SHAPE)?
    {
        reject_unknown(&object, &["url", "name", "service"], "the request body")?;
        let list = |field: &str| -> Vec<Value> {
            match object.get(field) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(one) => vec![one.clone()],
            }
        };
        for value in list("url") {
            urls.push(string_field(&value, "url")?);
        }
        for field in ["name", "service"] {
            for value in list(field) {
                names.push(service_name(&value, field)?);
            }
        }
    }
    if urls.is_empty() || names.is_empty() {
        return Err(ApiError::bad_request(format!(
            "name the providers to remove: {SHAPE}"
        )));
    }
    if urls.len() != names.len() {
        return Err(ApiError::bad_request(format!(
            "`url` lists {} entries but `name` lists {}; entry i of one belongs to entry i of \
             the other",
            urls.len(),
            names.len()
        )));
    }
    Ok(names
        .into_iter()
        .zip(urls)
        .map(|(service, url)| pb::ProviderKey { service, url })
        .collect())
}

/// `DELETE /.p2/core/v1/services`.
#[utoipa::path(
    delete,
    path = "/.p2/core/v1/services",
    tag = openapi::TAG_SERVICES,
    operation_id = "removeServices",
    summary = "Remove discoverable service providers",
    description = "Removes providers: entry *i* of `url` belongs to entry *i* of `name` (also \
                   accepted repeated, or as a JSON body). Removing a primary is a sensitive \
                   action; another provider of the service, if any, becomes primary.",
    params(
        ("url" = Vec<String>, Query, style = Form, explode = false, min_items = 1,
            description = "The providers' URLs, comma-separated."),
        ("name" = Vec<String>, Query, style = Form, explode = false, min_items = 1,
            description = "The services' names, comma-separated, one per URL."),
        openapi::SensitiveSolutionOptional,
    ),
    responses(
        (status = 200, description = "Removed; the promotions that followed (maybe none).", body = Vec<PromotionJson>),
        (status = 400, description = "Malformed or mismatched lists, names or URLs.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "A primary without the right sensitive-action solution, or the caller is not an actor of this server.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The actor does not list one of the providers.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(skip_all, fields(fid = %caller.caller.fid))]
async fn remove_services(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    invalidation.add(Target::Public(Scope::discovery(&caller.caller.fid)));
    let body = body.map_err(|r| body_rejection(&r))?;
    let providers = parse_removals(query.as_deref(), &body)?;
    // Only a primary's removal needs the solution; discovery decides, identity checks it.
    let answer = state
        .discovery()
        .remove_service(pb::RemoveServiceRequest {
            caller: Some(caller.assertion),
            providers,
            sensitive_solution: sensitive_solution(&headers)?,
        })
        .await?
        .into_inner();
    let promotions: Vec<PromotionJson> = answer
        .promoted
        .into_iter()
        .map(|p| PromotionJson {
            service: p.service,
            new_primary: p.url.clone(),
            new_primary_camel: p.url,
        })
        .collect();
    Ok(axum::Json(promotions).into_response())
}

/// Parses a `PUT /services/primary` request: `{"url", "name"}` in a JSON body (or, leniently,
/// in the query string).
fn parse_primary(query: Option<&str>, body: &[u8]) -> Result<(String, String), ApiError> {
    const SHAPE: &str = r#"{"url": "https://...", "name": "service-name"}"#;
    let mut object = json_object(body, SHAPE)?.unwrap_or_default();
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| ApiError::bad_request("the query string is malformed"))?;
        for (key, value) in pairs {
            object.insert(key, Value::String(value));
        }
    }
    reject_unknown(&object, &["url", "name", "service"], "the request")?;
    let name = match (object.get("name"), object.get("service")) {
        (Some(name), None) => service_name(name, "name")?,
        (None, Some(name)) => service_name(name, "service")?,
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "name the service and the provider: {SHAPE}"
            )));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send the service name once, as `name`",
            ));
        }
    };
    let url = object
        .get("url")
        .ok_or_else(|| ApiError::bad_request(format!("the request has no `url`: {SHAPE}")))
        .and_then(|v| string_field(v, "url"))?;
    Ok((name, url))
}

/// `PUT /.p2/core/v1/services/primary` (sensitive, spec 9.1.1).
#[utoipa::path(
    put,
    path = "/.p2/core/v1/services/primary",
    tag = openapi::TAG_SERVICES,
    operation_id = "setPrimaryService",
    summary = "Set the primary provider of a service",
    description = "Makes a listed provider the primary of its service (sensitive action, spec \
                   9.1.1); the previous primary, if any, stops being primary.",
    params(openapi::SensitiveSolutionRequired),
    request_body = PrimaryBody,
    responses(
        (status = 200, description = "The new primary and the demoted previous one, if any.", body = Vec<ServiceJson>),
        (status = 400, description = "A malformed body, name or URL.", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The sensitive-action solution is missing or wrong, or the caller is not an actor of this server.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "The actor does not list this provider.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(skip_all, fields(fid = %caller.caller.fid))]
async fn set_primary(
    State(state): State<AppState>,
    invalidation: Invalidation,
    caller: Authenticated,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    invalidation.add(Target::Public(Scope::discovery(&caller.caller.fid)));
    let body = body.map_err(|r| body_rejection(&r))?;
    let (service, url) = parse_primary(query.as_deref(), &body)?;
    let changed = state
        .discovery()
        .set_primary(pb::SetPrimaryRequest {
            caller: Some(caller.assertion),
            service,
            url,
            sensitive_solution: sensitive_solution(&headers)?.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .providers;
    let changed: Vec<ServiceJson> = changed.into_iter().map(Into::into).collect();
    Ok(axum::Json(changed).into_response())
}

/// Runs a discovery and renders it: 200 with the array, or 204 with an empty body.
async fn discover(
    state: &AppState,
    fid: String,
    service: Option<String>,
    limit: Option<u64>,
) -> Result<Response, ApiError> {
    // Canonical before it forms the key, and sent as such: same answer, one entry.
    let limit = crate::cache::canonical_discovery_limit(limit);
    let key = crate::cache::discovery_key(&fid, service.as_deref(), limit);
    let miss = match state.cache().get(key) {
        Ok(hit) => return Ok(hit),
        Err(miss) => miss,
    };
    let answer = state
        .discovery()
        .discover(pb::DiscoverRequest {
            fid,
            service,
            limit,
        })
        .await?
        .into_inner();
    if let Some(target) = &answer.redirect_to {
        // MIGRATION(307): when the migration work lands, answer 307 Temporary Redirect here,
        // `Location` = this route for `target` on the target's home server (spec 7.1.1; API.md
        // "services/discover" and "idcert/actor/{fid}"). Until then the entries stored here
        // are served.
        tracing::debug!(%target, "the actor set up a migration redirect");
    }
    let response = if answer.providers.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let providers: Vec<ServiceJson> = answer.providers.into_iter().map(Into::into).collect();
        axum::Json(providers).into_response()
    };
    Ok(state.cache().store(miss, response, None).await)
}

/// `GET /.p2/core/v1/services/discover/{fid}` (public).
#[utoipa::path(
    get,
    path = "/.p2/core/v1/services/discover/{fid}",
    tag = openapi::TAG_SERVICES,
    operation_id = "discoverServices",
    summary = "Discover an actor's services",
    description = "Every provider the actor made discoverable, in no particular order; \
                   `limit=1`: the primary of each service.",
    params(openapi::FidPath, openapi::LimitQuery),
    responses(
        (status = 200, description = "The providers.", body = Vec<ServiceJson>),
        (status = 204, description = "The actor lists none (empty body)."),
        (status = 400, description = "A malformed FID or `limit`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such actor is registered here.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
async fn discover_all(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(fid) = path.map_err(|r| path_rejection(&r))?;
    let body = body.map_err(|r| body_rejection(&r))?;
    let limit = Params::parse(query.as_deref(), &body)?.u64("limit")?;
    discover(&state, fid, None, limit).await
}

/// `GET /.p2/core/v1/services/discover/{fid}/{service}` (public). A `name` sent along (older
/// clients put it in the body) must match the path.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/services/discover/{fid}/{service}",
    tag = openapi::TAG_SERVICES,
    operation_id = "discoverService",
    summary = "Discover an actor's providers of one service",
    description = "The providers of `service` the actor made discoverable, in no particular \
                   order; `limit=1`: only the primary.",
    params(
        openapi::FidPath,
        ("service" = String, Path, description = "The service's name (spec 8.2).",
            pattern = "^[a-z0-9_-]{2,64}$", example = "polyproto-chat"),
        openapi::LimitQuery,
    ),
    responses(
        (status = 200, description = "The providers.", body = Vec<ServiceJson>),
        (status = 204, description = "The actor lists none for this service (empty body)."),
        (status = 400, description = "A malformed FID, service name or `limit`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such actor is registered here.", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
#[tracing::instrument(level = "debug", skip_all)]
async fn discover_one(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((fid, service)) = path.map_err(|r| path_rejection(&r))?;
    let body = body.map_err(|r| body_rejection(&r))?;
    let params = Params::parse(query.as_deref(), &body)?;
    let limit = params.u64("limit")?;
    let query_name = params.string("name").ok().flatten();
    let body_name = match json_object(&body, "parameters")?.and_then(|mut o| o.remove("name")) {
        Some(value) => Some(service_name(&value, "name")?),
        None => None,
    };
    // The query wins over the body, as for every parameter.
    if let Some(name) = query_name.or(body_name)
        && name != service
    {
        return Err(ApiError::bad_request(format!(
            "`name` ({name:?}) does not match the service in the path ({service:?})"
        )));
    }
    discover(&state, fid, Some(service), limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(body: &str) -> Result<ServiceProvider, ApiError> {
        parse_new_provider(body.as_bytes())
    }

    #[test]
    fn new_providers_arrive_wrapped_bare_or_with_inner_names() {
        let expected = ServiceProvider {
            service: "chat".into(),
            url: "https://c.example/".into(),
            primary: true,
        };
        for body in [
            r#"{"service": {"service": "chat", "url": "https://c.example/", "primary": true}}"#,
            r#"{"service": {"service": {"inner": "chat"}, "url": "https://c.example/", "primary": true}}"#,
            r#"{"service": "chat", "url": "https://c.example/", "primary": true}"#,
            r#"{"service": {"inner": "chat"}, "url": "https://c.example/", "primary": true}"#,
        ] {
            assert_eq!(provider(body).unwrap(), expected, "{body}");
        }
        let no_primary = provider(r#"{"service": "chat", "url": "https://c.example/"}"#).unwrap();
        assert!(!no_primary.primary);
    }

    #[test]
    fn malformed_new_providers_are_400_with_a_reason() {
        for (body, needle) in [
            ("", "JSON body"),
            ("[]", "JSON object"),
            ("{nope", "not valid JSON"),
            (
                r#"{"service": "chat", "url": "https://c.example", "evil": 1}"#,
                "`evil`",
            ),
            (
                r#"{"service": {"service": "chat", "url": "https://c.example"}, "x": 1}"#,
                "`x`",
            ),
            (
                r#"{"service": {"service": "chat", "url": "u", "primary": false, "y": 2}}"#,
                "`y`",
            ),
            (r#"{"url": "https://c.example"}"#, "no `service`"),
            (r#"{"service": "chat"}"#, "no `url`"),
            (
                r#"{"service": 5, "url": "https://c.example"}"#,
                "`service` must be",
            ),
            (
                r#"{"service": {"inner": 5}, "url": "https://c.example"}"#,
                "`service` must be",
            ),
            (r#"{"service": "chat", "url": 5}"#, "`url` must be"),
            (
                r#"{"service": "chat", "url": "u", "primary": "yes"}"#,
                "`primary`",
            ),
        ] {
            let error = provider(body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error.detail.contains(needle), "{body}: {}", error.detail);
        }
    }

    fn keys(query: Option<&str>, body: &str) -> Result<Vec<(String, String)>, ApiError> {
        parse_removals(query, body.as_bytes())
            .map(|keys| keys.into_iter().map(|k| (k.service, k.url)).collect())
    }

    #[test]
    fn removals_come_as_query_lists_or_a_body() {
        let one = vec![("chat".to_owned(), "https://a.example/".to_owned())];
        assert_eq!(
            keys(Some("url=https%3A%2F%2Fa.example%2F&name=chat"), "").unwrap(),
            one
        );
        assert_eq!(
            keys(None, r#"{"url": "https://a.example/", "name": "chat"}"#).unwrap(),
            one
        );
        assert_eq!(
            keys(
                None,
                r#"{"url": ["https://a.example/"], "name": [{"inner": "chat"}]}"#
            )
            .unwrap(),
            one
        );
        let two = vec![
            ("chat".to_owned(), "https://a.example".to_owned()),
            ("files".to_owned(), "https://b.example".to_owned()),
        ];
        assert_eq!(
            keys(
                Some("url=https://a.example,https://b.example&name=chat,files"),
                ""
            )
            .unwrap(),
            two
        );
        assert_eq!(
            keys(
                Some("url=https://a.example&url=https://b.example&name=chat&name=files"),
                ""
            )
            .unwrap(),
            two
        );
        // One URL with a comma in it stays one URL.
        assert_eq!(
            keys(Some("url=https://a.example/x,y&name=chat"), "").unwrap(),
            vec![("chat".to_owned(), "https://a.example/x,y".to_owned())]
        );
    }

    #[test]
    fn malformed_removals_are_400() {
        for (query, body) in [
            (None, ""),
            (Some("url=https://a.example"), ""),
            (Some("name=chat"), ""),
            (Some("url=https://a.example&name=chat,files"), ""),
            (Some("url=https://a.example&name=chat&force=1"), ""),
            (
                None,
                r#"{"url": "https://a.example", "name": "chat", "x": 1}"#,
            ),
            (None, r#"{"url": 1, "name": "chat"}"#),
            (None, "[1]"),
        ] {
            let error = keys(query, body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query:?} {body}");
        }
    }

    #[test]
    fn primary_requests_take_the_sdks_inner_names() {
        let parsed = parse_primary(
            None,
            br#"{"url": "https://a.example/", "name": {"inner": "chat"}}"#,
        )
        .unwrap();
        assert_eq!(parsed, ("chat".to_owned(), "https://a.example/".to_owned()));
        let parsed = parse_primary(Some("url=https://a.example&name=chat"), b"").unwrap();
        assert_eq!(parsed, ("chat".to_owned(), "https://a.example".to_owned()));
        for body in [
            r#"{"url": "https://a.example"}"#,
            r#"{"name": "chat"}"#,
            r#"{"url": "https://a.example", "name": "chat", "primary": true}"#,
            r#"{"url": "https://a.example", "name": "chat", "service": "chat"}"#,
            "",
        ] {
            assert!(parse_primary(None, body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn promotions_carry_both_spellings_of_new_primary() {
        let json = serde_json::to_value(PromotionJson {
            service: "chat".into(),
            new_primary: "https://b.example".into(),
            new_primary_camel: "https://b.example".into(),
        })
        .unwrap();
        assert_eq!(json["new_primary"], "https://b.example");
        assert_eq!(json["newPrimary"], "https://b.example");
    }
}
