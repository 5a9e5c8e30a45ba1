//! The WebSocket gateway, `GET /.p2/core/v1/gateway` (spec 3.2, in API.md's "Wire dialect"):
//! Hello → Identify or Resume → events, heartbeats with re-sends, service channels, close
//! codes. Events come from the events service (`events.Subscribe`); which connection sequence
//! number carried which log position goes back to it (`events.RecordDelivered`), so a Resume
//! works on any gateway replica.
//!
//! Layout: [`protocol`] (the wire format, close codes, minified number lists), [`state`]
//! (sequence counter, re-send buffer, heartbeat clock, rate limiter), [`connection`] (the state
//! machine), [`upstream`] (the services it needs), [`compress`] (zstd frames), [`deflate`]
//! (permessage-deflate on an own RFC 6455 transport, with `handshake`), this file (flags, the
//! upgrade handler, the [`Hub`] counting and closing every open socket).
//!
//! Close codes as sent:
//!
//! | code | when |
//! |---|---|
//! | 4000 | the gateway shuts down (after recording every delivery: resume elsewhere), the event feed broke, the session or events service did not answer |
//! | 4001 | an opcode the server does not handle (server-only opcodes, other namespaces' opcodes) |
//! | 4002 | not a JSON object, `op` not a number, a `d` of the wrong shape, a service channel `action` other than subscribe/unsubscribe, an unreadable or oversized frame |
//! | 4003 | anything but Heartbeat, Identify or Resume before identifying; no Identify/Resume within `--gateway-identify-timeout-ms`; the session ended (the feed says `closed`, or its token stopped resolving) |
//! | 4004 | the Identify or Resume token is not a valid session token |
//! | 4005 | a second Identify or Resume |
//! | 4007 | a heartbeat with `from > to`, an `except` outside `[from, to]`, or a number above the last one sent |
//! | 4008 | more messages than the connection's token bucket allows |
//! | 4009 | no heartbeat within interval + grace, nor within a grace after the heartbeat request (op 11) |
//! | 4010 | Resume refused: nothing recorded for the session, or its missed events are no longer retained; also when the sequence numbers run out |
//!
//! A client whose outgoing queue (`--gateway-queue-messages`) is full is dropped without a
//! close frame (it is not reading, so it could not read one); its deliveries are recorded, so
//! it may Resume.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::{ApiError, PROBLEM_JSON, Problem};
use crate::openapi;

pub mod compress;
pub mod connection;
pub mod deflate;
mod handshake;
pub mod protocol;
pub mod state;
pub mod upstream;

/// Default heartbeat interval announced in Hello, in milliseconds (spec: 30–60 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 45_000;
/// Default grace of a late heartbeat, in milliseconds.
pub const DEFAULT_HEARTBEAT_GRACE_MS: u64 = 10_000;
/// Default time a connection has to Identify or Resume, in milliseconds.
pub const DEFAULT_IDENTIFY_TIMEOUT_MS: u64 = 30_000;
/// Default burst of client messages per connection.
pub const DEFAULT_RATE_LIMIT_MESSAGES: u32 = 60;
/// Default window over which that burst refills, in milliseconds.
pub const DEFAULT_RATE_LIMIT_WINDOW_MS: u64 = 10_000;
/// Default bound of a connection's outgoing queue, in messages.
pub const DEFAULT_QUEUE_MESSAGES: usize = 256;
/// Default most messages a connection keeps for re-sends.
pub const DEFAULT_RESEND_BUFFER_MESSAGES: usize = 1024;
/// Default most bytes a connection keeps for re-sends.
pub const DEFAULT_RESEND_BUFFER_BYTES: usize = 1024 * 1024;
/// A Resume's replay ends once the feed has been quiet this long.
pub const REPLAY_IDLE: Duration = Duration::from_millis(200);
/// Most events in one Resumed (op 10); later ones follow as live events.
pub const REPLAY_MAX_EVENTS: usize = 1000;
/// Most bytes of events in one Resumed.
pub const REPLAY_MAX_BYTES: usize = 1024 * 1024;

/// The WebSocket gateway's flags (shared by `polyproto gateway` and `polyproto up`).
#[derive(Debug, Clone, Args)]
pub struct WsOptions {
    /// Heartbeat interval announced in Hello, in milliseconds (100 to 4294967295; the SDK's
    /// `heartbeatInterval` gets it in whole seconds, rounded up).
    #[arg(long = "gateway-heartbeat-interval-ms", env = "P2_GATEWAY_HEARTBEAT_INTERVAL_MS", default_value_t = DEFAULT_HEARTBEAT_INTERVAL_MS, value_parser = clap::value_parser!(u32).range(100..))]
    pub heartbeat_interval_ms: u32,
    /// How late a heartbeat may be before the server requests one (op 11), and how long it then
    /// waits before closing with 4009, in milliseconds.
    #[arg(long = "gateway-heartbeat-grace-ms", env = "P2_GATEWAY_HEARTBEAT_GRACE_MS", default_value_t = DEFAULT_HEARTBEAT_GRACE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_grace_ms: u64,
    /// Time a new connection has to Identify or Resume, in milliseconds; then 4003.
    #[arg(long = "gateway-identify-timeout-ms", env = "P2_GATEWAY_IDENTIFY_TIMEOUT_MS", default_value_t = DEFAULT_IDENTIFY_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub identify_timeout_ms: u64,
    /// Service channels (spec 3.2.3.3) clients may subscribe to: comma-separated service
    /// names (namespaces, spec 8.2); empty (default): none, every subscription is refused.
    #[arg(
        long = "gateway-service-channels",
        env = "P2_GATEWAY_SERVICE_CHANNELS",
        default_value = ""
    )]
    pub service_channels: String,
    /// Messages one connection may send in a burst (0: no limit); one more is closed with 4008.
    #[arg(long = "gateway-rate-limit-messages", env = "P2_GATEWAY_RATE_LIMIT_MESSAGES", default_value_t = DEFAULT_RATE_LIMIT_MESSAGES)]
    pub rate_limit_messages: u32,
    /// Time in which that burst refills, in milliseconds.
    #[arg(long = "gateway-rate-limit-window-ms", env = "P2_GATEWAY_RATE_LIMIT_WINDOW_MS", default_value_t = DEFAULT_RATE_LIMIT_WINDOW_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_window_ms: u64,
    /// Bound of each connection's outgoing queue, in messages (at least 1); a client that lets
    /// it fill (does not read) is disconnected.
    #[arg(long = "gateway-queue-messages", env = "P2_GATEWAY_QUEUE_MESSAGES", default_value_t = DEFAULT_QUEUE_MESSAGES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub queue_messages: usize,
    /// Most sent messages each connection keeps for re-sends (heartbeat `except`).
    #[arg(long = "gateway-resend-buffer-messages", env = "P2_GATEWAY_RESEND_BUFFER_MESSAGES", default_value_t = DEFAULT_RESEND_BUFFER_MESSAGES)]
    pub resend_buffer_messages: usize,
    /// Most bytes of sent messages each connection keeps for re-sends.
    #[arg(long = "gateway-resend-buffer-bytes", env = "P2_GATEWAY_RESEND_BUFFER_BYTES", default_value_t = DEFAULT_RESEND_BUFFER_BYTES)]
    pub resend_buffer_bytes: usize,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_grace_ms: DEFAULT_HEARTBEAT_GRACE_MS,
            identify_timeout_ms: DEFAULT_IDENTIFY_TIMEOUT_MS,
            service_channels: String::new(),
            rate_limit_messages: DEFAULT_RATE_LIMIT_MESSAGES,
            rate_limit_window_ms: DEFAULT_RATE_LIMIT_WINDOW_MS,
            queue_messages: DEFAULT_QUEUE_MESSAGES,
            resend_buffer_messages: DEFAULT_RESEND_BUFFER_MESSAGES,
            resend_buffer_bytes: DEFAULT_RESEND_BUFFER_BYTES,
        }
    }
}

/// Whether `name` is a service name of spec 8.2: 2–64 of `[a-z0-9_-]`.
fn valid_service_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl WsOptions {
    /// The connection settings these flags give; an error names a bad service channel.
    pub fn settings(&self) -> anyhow::Result<connection::Settings> {
        let mut service_channels = HashSet::new();
        for name in self.service_channels.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if !valid_service_name(&name) {
                anyhow::bail!(
                    "invalid --gateway-service-channels (P2_GATEWAY_SERVICE_CHANNELS) entry \
                     {name:?}: service names are 2–64 characters of a-z, 0-9, _ and -"
                );
            }
            service_channels.insert(name);
        }
        Ok(connection::Settings {
            heartbeat_interval_ms: self.heartbeat_interval_ms.max(1),
            heartbeat_grace: Duration::from_millis(self.heartbeat_grace_ms.max(1)),
            identify_timeout: Duration::from_millis(self.identify_timeout_ms.max(1)),
            service_channels,
            rate_burst: self.rate_limit_messages,
            rate_window: Duration::from_millis(self.rate_limit_window_ms.max(1)),
            queue: self.queue_messages.max(1),
            resend_messages: self.resend_buffer_messages,
            resend_bytes: self.resend_buffer_bytes,
            replay_idle: REPLAY_IDLE,
            replay_max_events: REPLAY_MAX_EVENTS,
            replay_max_bytes: REPLAY_MAX_BYTES,
        })
    }
}

/// Every open WebSocket of this gateway: how many there are, and the signal that closes them
/// all (shutdown). Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    settings: Arc<connection::Settings>,
    closing: CancellationToken,
    open: tokio::sync::watch::Sender<usize>,
}

/// One open socket, counted while it lives.
struct Counted(Hub);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .inner
            .open
            .send_modify(|open| *open = open.saturating_sub(1));
    }
}

impl Hub {
    /// A hub whose connections use `settings`.
    pub fn new(settings: connection::Settings) -> Self {
        Self {
            inner: Arc::new(HubInner {
                settings: Arc::new(settings),
                closing: CancellationToken::new(),
                open: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Open WebSockets (upgraded or being upgraded).
    pub fn open(&self) -> usize {
        *self.inner.open.borrow()
    }

    fn count(&self) -> Counted {
        self.inner.open.send_modify(|open| *open += 1);
        Counted(self.clone())
    }

    /// Whether the gateway is closing its sockets (new upgrades are refused).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Closes every socket: each records its deliveries, then closes with 4000.
    pub fn close_all(&self) {
        self.inner.closing.cancel();
    }

    /// Waits until no socket is open, for at most `limit`; whether they all closed.
    pub async fn closed(&self, limit: Duration) -> bool {
        let mut open = self.inner.open.subscribe();
        tokio::time::timeout(limit, open.wait_for(|open| *open == 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }
}

/// `GET /.p2/core/v1/gateway`: the WebSocket gateway (spec 3.2).
#[utoipa::path(
    get,
    path = "/.p2/core/v1/gateway",
    tag = openapi::TAG_EVENTS,
    operation_id = "gateway",
    summary = "Open the WebSocket gateway",
    description = "A WebSocket upgrade (HTTP/1.1, RFC 6455) to the polyproto gateway (spec \
        3.2): the server sends Hello (op 1, `heartbeat_interval` in ms and `heartbeatInterval` \
        in seconds); the client sends Identify (op 2 `{token}`, answered by op 12 `{token}`) or \
        Resume (op 5 `{s, token}`, answered by Resumed, op 10, whose `d` holds the missed \
        events), then heartbeats (op 0, a minified number list; answered by op 7 re-sending \
        what `except` lists). `op` and `s` are decimal strings. Events: op 3 (new session), \
        op 4 (certificate invalidation), op 6 (server certificate change). Service channels: \
        op 8/9. Close codes 4000–4010 (see the README). The token travels in Identify, not \
        in a header. `?compression=zstd`: every server message arrives as a binary frame \
        holding one zstd frame of its JSON (spec 3.6); the client may send zstd frames too. \
        Without it, a `Sec-WebSocket-Extensions: permessage-deflate` offer (RFC 7692) is \
        agreed, always with `server_no_context_takeover`.",
    params(
        ("compression" = Option<String>, Query, description = "`zstd` for zstd-compressed binary frames; absent or `none` for JSON text frames."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket handshake (missing `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Key` or version 13), or an unknown `compression`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 426, description = "The connection cannot be upgraded (e.g. HTTP/2).", body = Problem, content_type = PROBLEM_JSON),
    ),
)]
pub async fn gateway(
    State(state): State<AppState>,
    slot: Option<axum::Extension<crate::server::ConnectionSlot>>,
    axum::extract::Query(query): axum::extract::Query<GatewayQuery>,
    request: axum::extract::Request,
) -> Response {
    let Some(compression) =
        compress::Compression::requested(query.compression.as_deref(), state.max_body_bytes())
    else {
        return ApiError::bad_request(
            "compression must be `zstd` or `none` (or leave it out and offer permessage-deflate)",
        )
        .into_response();
    };
    let hub = state.websockets().clone();
    if hub.is_closing() {
        let mut refused = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; connect again shortly",
        );
        refused.retry_after = Some(1);
        return refused.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let limit = state.max_body_bytes();
    let settings = hub.inner.settings.clone();
    let closing = hub.inner.closing.clone();
    // zstd, when asked for, wins over a deflate offer (which is then declined).
    if compression == compress::Compression::None
        && let Some(upgrade) = handshake::deflate(&mut parts)
    {
        let counted = hub.count();
        let upstream = upstream::GrpcUpstream::new(state);
        let params = upgrade.params;
        let on_upgrade = upgrade.on_upgrade;
        tokio::spawn(async move {
            let _slot = slot;
            let _counted = counted;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = hyper_util::rt::TokioIo::new(upgraded);
                    let socket = deflate::socket::DeflateSocket::new(io, params, limit);
                    connection::run_with(socket, upstream, settings, closing, compression).await;
                }
                Err(error) => tracing::debug!(%error, "the WebSocket upgrade failed"),
            }
        });
        return upgrade.response;
    }
    let upgrade =
        match <WebSocketUpgrade as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await
        {
            Ok(upgrade) => upgrade,
            Err(rejection) => {
                return ApiError::new(rejection.status(), rejection.body_text()).into_response();
            }
        };
    let counted = hub.count();
    let upstream = upstream::GrpcUpstream::new(state);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite's default read buffer (128 KiB) becomes resident with the first frame:
        // 143 KiB per idle connection, measured. Client messages are small; 4 KiB reads them.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            // The socket holds its connection slot (the caps count it) and its count.
            let _slot = slot;
            let _counted = counted;
            connection::run_with(socket, upstream, settings, closing, compression).await;
        })
}

/// Read buffer of one WebSocket (tungstenite reads frames through it; larger frames still
/// arrive, in several reads).
pub const READ_BUFFER_BYTES: usize = 4096;

/// The query of `GET /.p2/core/v1/gateway`.
#[derive(Debug, serde::Deserialize)]
pub struct GatewayQuery {
    /// `zstd` for zstd-compressed binary frames ([`compress`]); absent or `none` for text.
    pub compression: Option<String>,
}

#[cfg(test)]
mod tests;
