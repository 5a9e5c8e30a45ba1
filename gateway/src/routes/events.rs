//! Events over HTTP (spec 3.3): `GET /.p2/core/v1/events` answers the events the caller's
//! session missed since its last poll or since what its WebSockets delivered
//! (`events.Poll`, which advances the session's cursor), oldest first, as gateway events
//! without `s` (sequence numbers belong to a WebSocket connection; the array's order is the
//! log's). At most `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]); when more were
//! pending the oldest are dropped and `X-P2-Events-Truncated` is `true`. Not long-polling: an
//! empty array when nothing is pending.
//!
//! Delivery is at most once: the cursor moves when the events service answers, so a client
//! that drops the connection before reading the answer loses those events.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use p2_proto::events::v1 as pb;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;
use crate::params::Params;
use crate::ws::protocol;

/// Events one poll answers unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most events one poll answers.
pub const MAX_LIMIT: u32 = 1000;
/// The header saying whether older pending events were dropped.
pub const TRUNCATED_HEADER: &str = "x-p2-events-truncated";

/// `limit` of `GET /.p2/core/v1/events`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Most events to answer (1–1000; default 100). When more are pending, the oldest are
    /// dropped.
    #[param(minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<u32>,
}

/// A gateway event (spec 3.2.1) as `GET /events` answers it: no `s`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"n": "core", "op": "3", "d": {"cert": "-----BEGIN CERTIFICATE-----\n..."}}))]
pub struct PolledEvent {
    /// Namespace, `core` for core events.
    n: String,
    /// Opcode, as a decimal string (3: new session, 4: certificate invalidation, 6: server
    /// certificate change).
    #[schema(pattern = "^[0-9]+$", example = "3")]
    op: String,
    /// The event's data.
    #[schema(value_type = Object)]
    d: serde_json::Value,
}

/// `GET /.p2/core/v1/events`: what the session missed.
#[utoipa::path(
    get,
    path = "/.p2/core/v1/events",
    tag = openapi::TAG_EVENTS,
    operation_id = "events",
    summary = "Get the events this session missed",
    description = "The gateway events the caller's session has not received yet — since its \
        last poll, or since what its WebSocket connections delivered — oldest first, without \
        `s`. At most `limit` (default 100, at most 1000); when more were pending, the oldest \
        are dropped and `X-P2-Events-Truncated` is `true`. Advances the session's cursor. Not \
        long-polling: `[]` when nothing is pending.",
    params(EventsQuery),
    responses(
        (status = 200, description = "The missed events, oldest first.", body = [PolledEvent],
            headers(("X-P2-Events-Truncated" = bool, description = "`true` when older pending events were dropped to fit `limit` or the log's bound."))),
        (status = 400, description = "A `limit` that is not 1–1000.", body = Problem, content_type = PROBLEM_JSON),
    ),
    security(("BearerAuth" = [])),
)]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    params: Params,
) -> Result<Response, ApiError> {
    let limit = match params.u64("limit")? {
        None => DEFAULT_LIMIT,
        Some(limit) => u32::try_from(limit)
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter `limit` must be 1 to {MAX_LIMIT}, got {limit}"
                ))
            })?,
    };
    let polled = state
        .events()
        .poll(pb::PollRequest {
            caller: Some(caller.assertion),
            limit,
        })
        .await?
        .into_inner();
    let texts: Vec<String> = polled
        .events
        .iter()
        .filter(|event| {
            let ok = protocol::is_json(&event.data_json);
            if !ok {
                tracing::error!(
                    position = event.position,
                    "an event's data is not JSON; skipped"
                );
            }
            ok
        })
        .map(|event| protocol::event_message(&event.namespace, event.op, &event.data_json, None))
        .collect();
    let body = protocol::json_array(texts.iter().map(String::as_str));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::HeaderName::from_static(TRUNCATED_HEADER),
                HeaderValue::from_static(if polled.truncated { "true" } else { "false" }),
            ),
        ],
        body,
    )
        .into_response())
}
