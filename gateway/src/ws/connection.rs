//! One gateway connection, from Hello to close: the protocol state machine of spec 3.2 over any
//! WebSocket-like transport (axum's in production, channels in the tests) and any
//! [`Upstream`].
//!
//! One task reads the client, the upstream feed and the timers (`select!`, biased so that
//! shutdown, then client messages — heartbeats and their re-sends — come before new events);
//! a second task writes. Between them sits the bounded outgoing queue: the reading task never
//! waits on the client's socket, and when the queue is full the client is not reading, so the
//! connection is dropped (TCP, no close frame: it could not be read either) after its
//! deliveries are recorded — it may Resume. Nothing any other connection does waits on it.
//!
//! Sequence numbers are assigned when a message is queued, so the wire order is the sequence
//! order: a client that resumes from the highest number it saw has seen every lower one. The
//! re-sends a heartbeat asks for go out in the ACK, ahead of every event not yet queued (spec
//! 3.2.6); they are not moved ahead of messages already queued, which would break that order.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use p2_proto::events::v1 as pb;
use p2_proto::events::v1::delivery::Kind;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::compress::{self, Compression};
use super::protocol::{
    self, ChannelAction, ClientMessage, Close, CloseCode, MinifiedNumberList, op,
};
use super::state::{HeartbeatClock, Overdue, SentBuffer, Sequencer, TokenBucket};
use super::upstream::{AuthFailure, Deliveries, Upstream};
use crate::auth::Authenticated;

/// Most entries of one `RecordDelivered` call.
pub const RECORD_BATCH: usize = 256;
/// Most unrecorded deliveries a connection keeps while the events service does not answer
/// (a failed batch is kept and sent again with the next one); beyond, the oldest are dropped
/// (a Resume then replays from further back: duplicates, not losses).
pub const MAX_PENDING_RECORDS: usize = 8192;
/// How long a closing connection may spend recording its last deliveries.
pub const RECORD_ON_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a close frame may take to be written before the socket is dropped.
pub const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest time a Resume waits for the replayed events in all.
pub const REPLAY_MAX_WAIT: Duration = Duration::from_secs(2);

/// How a connection behaves: [`super::WsOptions`], resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Heartbeat interval announced in Hello, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// How late a heartbeat may be before it is requested, and how long a request is waited for.
    pub heartbeat_grace: Duration,
    /// Time a connection has to Identify or Resume.
    pub identify_timeout: Duration,
    /// Service channels (namespaces) clients may subscribe to, lowercase.
    pub service_channels: HashSet<String>,
    /// Messages a client may send in a burst (0: no limit) ...
    pub rate_burst: u32,
    /// ... refilled over this window.
    pub rate_window: Duration,
    /// Bound of the outgoing queue, in messages.
    pub queue: usize,
    /// Most messages kept for re-sends.
    pub resend_messages: usize,
    /// Most bytes kept for re-sends.
    pub resend_bytes: usize,
    /// A Resume's replay ends when the feed is quiet this long ...
    pub replay_idle: Duration,
    /// ... or holds this many events ...
    pub replay_max_events: usize,
    /// ... or this many bytes; later events follow as live ones.
    pub replay_max_bytes: usize,
}

/// What the writing task is given.
#[derive(Debug)]
enum Outgoing {
    Text(Utf8Bytes),
    Close(Close),
}

/// How a connection ends.
#[derive(Debug)]
struct Exit {
    /// The close frame to send, or none (the client left, or must be dropped).
    close: Option<Close>,
    /// Whether the deliveries still unrecorded are recorded first (so a Resume finds them).
    record: bool,
    /// For the log.
    why: &'static str,
}

impl Exit {
    /// Closed with `code`; resumable deliveries are recorded first.
    fn close(code: CloseCode, reason: &'static str) -> Self {
        Self {
            close: Some(Close::new(code, reason)),
            record: true,
            why: reason,
        }
    }

    /// The session is over: nothing to record.
    fn session_ended() -> Self {
        Self {
            close: Some(Close::new(
                CloseCode::NotAuthenticated,
                "this session has ended",
            )),
            record: false,
            why: "session ended",
        }
    }

    /// The client went away.
    fn gone() -> Self {
        Self {
            close: None,
            record: true,
            why: "the client left",
        }
    }

    /// The client does not read: dropped without a close frame.
    fn too_slow() -> Self {
        Self {
            close: None,
            record: true,
            why: "outgoing queue full: the client does not read",
        }
    }
}

impl From<Close> for Exit {
    fn from(close: Close) -> Self {
        Self {
            why: close.reason,
            close: Some(close),
            record: true,
        }
    }
}

/// The identified session of a connection.
struct Session {
    /// Kept to refresh the caller assertion before each record (assertions are short-lived;
    /// this also notices a session that ended without the feed saying so).
    token: Arc<str>,
}

/// What a background `RecordDelivered` ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recorded {
    Done,
    /// The events service did not take these (from the first unrecorded one on): kept, to be
    /// sent again with the next batch.
    Failed(Vec<pb::DeliveredEvent>),
    /// The token no longer resolves: the session was deleted or expired.
    SessionGone,
}

struct Connection<U: Upstream> {
    id: Arc<str>,
    upstream: U,
    settings: Arc<Settings>,
    out: mpsc::Sender<Outgoing>,
    sequencer: Sequencer,
    sent: SentBuffer,
    clock: HeartbeatClock,
    bucket: TokenBucket,
    session: Option<Session>,
    channels: HashSet<String>,
    pending: VecDeque<pb::DeliveredEvent>,
    recording: Option<JoinHandle<Recorded>>,
    dropped_records: bool,
    compression: Compression,
}

/// Runs one connection on `transport` until it closes; `closing` is the gateway's shutdown
/// (every connection then closes with 4000 after recording its deliveries).
pub async fn run<T, E, U>(
    transport: T,
    upstream: U,
    settings: Arc<Settings>,
    closing: CancellationToken,
) where
    T: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
    E: std::fmt::Display + Send,
    U: Upstream,
{
    run_with(transport, upstream, settings, closing, Compression::None).await;
}

/// [`run`], with the framing the client asked for ([`crate::ws::compress`]).
pub async fn run_with<T, E, U>(
    transport: T,
    upstream: U,
    settings: Arc<Settings>,
    closing: CancellationToken,
    compression: Compression,
) where
    T: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
    E: std::fmt::Display + Send,
    U: Upstream,
{
    use tracing::Instrument as _;
    let id: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
    let span = tracing::debug_span!(
        "websocket",
        connection = %id,
        fid = tracing::field::Empty,
        session_id = tracing::field::Empty,
    );
    async move {
        let (sink, mut stream) = transport.split();
        let (out, rx) = mpsc::channel(settings.queue.max(1));
        let mut writer = Some(tokio::spawn(write_loop(sink, rx, compression)));
        let now = Instant::now();
        let mut connection = Connection {
            id,
            clock: HeartbeatClock::new(
                Duration::from_millis(u64::from(settings.heartbeat_interval_ms)),
                settings.heartbeat_grace,
                now,
            ),
            bucket: TokenBucket::new(settings.rate_burst, settings.rate_window, now),
            sent: SentBuffer::new(settings.resend_messages, settings.resend_bytes),
            upstream,
            settings,
            out,
            sequencer: Sequencer::default(),
            session: None,
            channels: HashSet::new(),
            pending: VecDeque::new(),
            recording: None,
            dropped_records: false,
            compression,
        };
        tracing::debug!("websocket opened");
        let exit = connection.drive(&mut stream, &mut writer, &closing).await;
        tracing::debug!(
            code = exit.close.as_ref().map(|c| c.code.code()),
            why = exit.why,
            "websocket closing"
        );
        connection.finish(exit, writer).await;
    }
    .instrument(span)
    .await;
}

/// Writes what the queue gives, flushing when it runs dry; stops at a close frame or an error.
/// With zstd, each message becomes one binary frame (compressed here, off the connection's
/// own task, so a slow compression never holds up reading the client).
async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Outgoing>, compression: Compression)
where
    S: Sink<Message> + Unpin,
{
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Text(text) => {
                let message = match compression {
                    Compression::None => Message::Text(text),
                    Compression::Zstd { .. } => match compress::compress(text.as_bytes()) {
                        Some(frame) => Message::Binary(frame.into()),
                        None => Message::Text(text),
                    },
                };
                if sink.feed(message).await.is_err() {
                    return;
                }
                if rx.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
            Outgoing::Close(close) => {
                let frame = CloseFrame {
                    code: close.code.code(),
                    reason: close.reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

async fn next_delivery(
    deliveries: &mut Option<Deliveries>,
) -> Option<Result<pb::Delivery, tonic::Status>> {
    match deliveries {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn finished<T>(handle: &mut Option<JoinHandle<T>>) -> Option<T> {
    match handle {
        Some(handle) => handle.await.ok(),
        None => std::future::pending().await,
    }
}

impl<U: Upstream> Connection<U> {
    async fn drive<S, E>(
        &mut self,
        stream: &mut S,
        writer: &mut Option<JoinHandle<()>>,
        closing: &CancellationToken,
    ) -> Exit
    where
        S: Stream<Item = Result<Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hello = protocol::hello_data(self.settings.heartbeat_interval_ms);
        if let Err(exit) = self.send_core(op::HELLO, &hello, true) {
            return exit;
        }
        let identify_by = Instant::now() + self.settings.identify_timeout;
        let mut deliveries: Option<Deliveries> = None;
        loop {
            let heartbeat_due = self.clock.deadline();
            let step = tokio::select! {
                biased;
                () = closing.cancelled() => Err(Exit::close(
                    CloseCode::UnknownError,
                    "the server is shutting down; resume",
                )),
                frame = stream.next() => self.on_frame(frame, &mut deliveries).await,
                _ = finished(writer) => {
                    *writer = None;
                    Err(Exit::gone())
                }
                () = tokio::time::sleep_until(heartbeat_due) => self.on_clock(),
                () = tokio::time::sleep_until(identify_by), if self.session.is_none() => {
                    Err(Exit::close(CloseCode::NotAuthenticated, "no identify in time"))
                }
                recorded = finished(&mut self.recording) => {
                    self.recording = None;
                    self.on_recorded(recorded.unwrap_or(Recorded::Failed(Vec::new())))
                }
                delivery = next_delivery(&mut deliveries) => self.on_delivery(delivery),
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// Records what is left (when the exit asks for it), then sends the close frame or drops
    /// the socket.
    async fn finish(&mut self, exit: Exit, writer: Option<JoinHandle<()>>) {
        if exit.record && self.session.is_some() {
            let flushed = tokio::time::timeout(RECORD_ON_CLOSE_TIMEOUT, self.flush_records());
            if flushed.await.is_err() {
                tracing::warn!("recording the last deliveries timed out");
            }
        }
        if let Some(recording) = self.recording.take() {
            recording.abort();
        }
        let Some(mut writer) = writer else {
            return;
        };
        if let Some(close) = exit.close
            && self.out.try_send(Outgoing::Close(close)).is_ok()
            && tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut writer)
                .await
                .is_ok()
        {
            return;
        }
        writer.abort();
    }

    async fn flush_records(&mut self) {
        if let Some(recording) = self.recording.take() {
            let _ = recording.await;
        }
        if self.pending.is_empty() {
            return;
        }
        let Some(session) = &self.session else {
            return;
        };
        let batch: Vec<_> = self.pending.drain(..).collect();
        let _ = record(
            self.upstream.clone(),
            session.token.clone(),
            self.id.clone(),
            batch,
        )
        .await;
    }

    /// Queues `text`; a full queue means the client does not read.
    fn enqueue(&self, text: Utf8Bytes) -> Result<(), Exit> {
        match self.out.try_send(Outgoing::Text(text)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Exit::too_slow()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Exit::gone()),
        }
    }

    fn next_sequence(&mut self) -> Result<u64, Exit> {
        self.sequencer.take().ok_or_else(|| {
            Exit::close(
                CloseCode::Unresumeable,
                "sequence numbers exhausted; identify anew",
            )
        })
    }

    /// Sends a core message; `keep`: remembered for re-sends.
    fn send_core(&mut self, opcode: u16, d: &str, keep: bool) -> Result<u64, Exit> {
        let sequence = self.next_sequence()?;
        let text = Utf8Bytes::from(protocol::core_message(opcode, d, sequence));
        if keep {
            self.sent.push(sequence, text.clone());
        }
        self.enqueue(text)?;
        Ok(sequence)
    }

    /// Whether this connection receives events of `namespace`: core always, others once their
    /// service channel is subscribed.
    fn receives(&self, namespace: &str) -> bool {
        namespace == protocol::CORE || self.channels.contains(namespace)
    }

    fn note_delivered(&mut self, sequence: u64, position: u64) {
        if self.pending.len() >= MAX_PENDING_RECORDS {
            self.pending.pop_front();
            if !self.dropped_records {
                self.dropped_records = true;
                tracing::warn!(
                    "the events service does not take delivery records; dropping the oldest"
                );
            }
        }
        self.pending
            .push_back(pb::DeliveredEvent { sequence, position });
        if self.pending.len() >= RECORD_BATCH {
            self.start_recording();
        }
    }

    fn send_event(&mut self, event: pb::Event) -> Result<(), Exit> {
        if !self.receives(&event.namespace) {
            return Ok(());
        }
        if !protocol::is_json(&event.data_json) {
            tracing::error!(
                namespace = %event.namespace,
                op = event.op,
                position = event.position,
                "an event's data is not JSON; skipped"
            );
            return Ok(());
        }
        let sequence = self.next_sequence()?;
        let text = Utf8Bytes::from(protocol::event_message(
            &event.namespace,
            event.op,
            &event.data_json,
            Some(sequence),
        ));
        self.sent.push(sequence, text.clone());
        self.enqueue(text)?;
        self.note_delivered(sequence, event.position);
        Ok(())
    }

    async fn on_frame<E: std::fmt::Display>(
        &mut self,
        frame: Option<Result<Message, E>>,
        deliveries: &mut Option<Deliveries>,
    ) -> Result<(), Exit> {
        let bytes = match frame {
            None => return Err(Exit::gone()),
            Some(Err(error)) => {
                tracing::debug!(%error, "unreadable client frame");
                return Err(Exit::close(
                    CloseCode::InvalidPayload,
                    "unreadable frame (too large or malformed)",
                ));
            }
            Some(Ok(Message::Close(_))) => return Err(Exit::gone()),
            Some(Ok(Message::Pong(_))) => return Ok(()),
            Some(Ok(Message::Ping(_))) => {
                // Answered by the WebSocket layer; counted like any message.
                return self.count_message();
            }
            Some(Ok(Message::Text(text))) => axum::body::Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => match self.compression {
                Compression::Zstd { max_inflated } if compress::is_zstd(&bytes) => {
                    match compress::decompress(&bytes, max_inflated) {
                        Some(inflated) => axum::body::Bytes::from(inflated),
                        None => {
                            return Err(Exit::close(
                                CloseCode::InvalidPayload,
                                "unreadable zstd frame (malformed, or too large inflated)",
                            ));
                        }
                    }
                }
                _ => bytes,
            },
        };
        self.count_message()?;
        let message = protocol::parse_client_message(&bytes)?;
        if self.session.is_none() && !message.allowed_before_identify() {
            return Err(Exit::close(
                CloseCode::NotAuthenticated,
                "identify (op 2) or resume (op 5) first",
            ));
        }
        match message {
            ClientMessage::Heartbeat(list) => self.on_heartbeat(&list),
            ClientMessage::Identify { token } => {
                if self.session.is_some() {
                    return Err(Exit::close(
                        CloseCode::AlreadyAuthenticated,
                        "already identified",
                    ));
                }
                self.identify(token, deliveries).await
            }
            ClientMessage::Resume { sequence, token } => {
                if self.session.is_some() {
                    return Err(Exit::close(
                        CloseCode::AlreadyAuthenticated,
                        "already identified",
                    ));
                }
                self.resume(sequence, token, deliveries).await
            }
            ClientMessage::ServiceChannel { action, service } => {
                self.on_service_channel(action, &service)
            }
            ClientMessage::ActorCertInvalidation => {
                tracing::debug!("ignoring a client's op 4: revocations go through HTTP");
                Ok(())
            }
        }
    }

    fn count_message(&mut self) -> Result<(), Exit> {
        if self.bucket.take(Instant::now()) {
            Ok(())
        } else {
            Err(Exit::close(
                CloseCode::RateLimited,
                "too many messages; slow down",
            ))
        }
    }

    fn on_heartbeat(&mut self, list: &MinifiedNumberList) -> Result<(), Exit> {
        list.validate(self.sequencer.last().unwrap_or(0))?;
        let mut missing = 0usize;
        let resent: Vec<Utf8Bytes> = list
            .except
            .iter()
            .filter_map(|&sequence| {
                let found = self.sent.get(sequence).cloned();
                missing += usize::from(found.is_none());
                found
            })
            .collect();
        if missing > 0 {
            // Heartbeat ACKs are never re-sent; anything else is older than the buffer.
            tracing::debug!(missing, "re-send requested for messages no longer buffered");
        }
        let d = protocol::json_array(resent.iter().map(Utf8Bytes::as_str));
        self.send_core(op::HEARTBEAT_ACK, &d, false)?;
        self.clock.beat(Instant::now());
        self.start_recording();
        Ok(())
    }

    fn on_clock(&mut self) -> Result<(), Exit> {
        match self.clock.overdue(Instant::now()) {
            None => Ok(()),
            Some(Overdue::RequestHeartbeat) => {
                self.send_core(op::HEARTBEAT_REQUEST, "{}", false)?;
                Ok(())
            }
            Some(Overdue::TimedOut) => Err(Exit::close(
                CloseCode::Timeout,
                "no heartbeat in time; resume",
            )),
        }
    }

    fn on_service_channel(&mut self, action: ChannelAction, service: &str) -> Result<(), Exit> {
        let name = service.trim().to_ascii_lowercase();
        let error = if self.settings.service_channels.contains(&name) {
            match action {
                ChannelAction::Subscribe => self.channels.insert(name),
                ChannelAction::Unsubscribe => self.channels.remove(&name),
            };
            None
        } else {
            Some("this server has no channel for that service")
        };
        let d = protocol::channel_ack_data(action, service, error);
        self.send_core(op::SERVICE_CHANNEL_ACK, &d, true)?;
        Ok(())
    }

    async fn authenticate(&self, token: &str) -> Result<Authenticated, Exit> {
        match self.upstream.authenticate(token).await {
            Ok(caller) => Ok(caller),
            Err(AuthFailure::Invalid) => Err(Exit::close(
                CloseCode::InvalidAuthentication,
                "not a valid session token",
            )),
            Err(AuthFailure::Unavailable) => Err(Exit::close(
                CloseCode::UnknownError,
                "the session service is unavailable; try again",
            )),
        }
    }

    fn identified(&mut self, token: String, caller: &Authenticated) {
        let span = tracing::Span::current();
        span.record("fid", caller.caller.fid.as_str());
        span.record("session_id", caller.caller.session_id.as_str());
        self.session = Some(Session {
            token: token.into(),
        });
    }

    async fn identify(
        &mut self,
        token: String,
        deliveries: &mut Option<Deliveries>,
    ) -> Result<(), Exit> {
        let caller = self.authenticate(&token).await?;
        let stream = self
            .upstream
            .subscribe(caller.assertion.clone(), 0, true)
            .await
            .map_err(feed_unavailable)?;
        *deliveries = Some(stream);
        let ack = protocol::identify_ack_data(&token);
        self.identified(token, &caller);
        self.send_core(op::IDENTIFY_ACK, &ack, true)?;
        tracing::debug!("identified");
        Ok(())
    }

    async fn resume(
        &mut self,
        sequence: u64,
        token: String,
        deliveries: &mut Option<Deliveries>,
    ) -> Result<(), Exit> {
        let caller = self.authenticate(&token).await?;
        let from = self
            .upstream
            .resume_from(caller.assertion.clone(), sequence)
            .await
            .map_err(feed_unavailable)?;
        if !from.resumable {
            return Err(Exit::close(
                CloseCode::Unresumeable,
                "this session cannot resume; identify anew",
            ));
        }
        let mut stream = self
            .upstream
            .subscribe(caller.assertion.clone(), from.after_position, false)
            .await
            .map_err(feed_unavailable)?;
        let (replayed, first_live) = collect_replay(&mut stream, &self.settings).await?;
        self.identified(token, &caller);
        let texts: Vec<String> = replayed
            .iter()
            .map(|event| {
                protocol::event_message(&event.namespace, event.op, &event.data_json, None)
            })
            .collect();
        let d = protocol::json_array(texts.iter().map(String::as_str));
        let resumed = self.send_core(op::RESUMED, &d, true)?;
        // The Resumed carries every replayed event under one sequence number, but a delivery
        // record holds one position per number, numbers strictly increasing (RecordDelivered
        // refuses anything else). A later Resume needs two things from it: the smallest
        // position delivered after the number it names, and the highest position delivered.
        // The first replayed position under `resumed` and the last one under `resumed - 1`
        // (Hello's or a heartbeat ACK's number: never an event's) keep both right — after
        // `resumed` or later, the replay continues behind the last; after anything earlier,
        // it starts again at the first.
        match (replayed.first(), replayed.last(), resumed.checked_sub(1)) {
            (Some(first), Some(last), Some(before)) if replayed.len() > 1 => {
                self.note_delivered(before, last.position);
                self.note_delivered(resumed, first.position);
            }
            (Some(first), ..) => self.note_delivered(resumed, first.position),
            (None, ..) => {}
        }
        tracing::debug!(
            replayed = replayed.len(),
            after_position = from.after_position,
            "resumed"
        );
        if let Some(event) = first_live {
            self.send_event(event)?;
        }
        *deliveries = Some(stream);
        Ok(())
    }

    fn on_delivery(
        &mut self,
        delivery: Option<Result<pb::Delivery, tonic::Status>>,
    ) -> Result<(), Exit> {
        match delivery {
            None => Err(Exit::close(
                CloseCode::UnknownError,
                "the event feed was interrupted; resume",
            )),
            Some(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "event feed failed");
                Err(Exit::close(
                    CloseCode::UnknownError,
                    "the event feed was interrupted; resume",
                ))
            }
            Some(Ok(delivery)) => match delivery.kind {
                Some(Kind::Event(event)) => self.send_event(event),
                Some(Kind::Closed(_)) => Err(Exit::session_ended()),
                Some(Kind::Gap(gap)) => {
                    tracing::warn!(
                        oldest_retained = gap.oldest_retained,
                        "event feed reported a gap"
                    );
                    Ok(())
                }
                // The end of a Resume's replay (collected before): nothing to do live.
                Some(Kind::CaughtUp(_)) | None => Ok(()),
            },
        }
    }

    fn on_recorded(&mut self, recorded: Recorded) -> Result<(), Exit> {
        match recorded {
            Recorded::SessionGone => Err(Exit::session_ended()),
            Recorded::Done => {
                if self.pending.len() >= RECORD_BATCH {
                    self.start_recording();
                }
                Ok(())
            }
            Recorded::Failed(unrecorded) => {
                // Ahead of what was delivered since, in order; the bound still holds (the
                // oldest go first), and the next heartbeat tries again.
                for delivered in unrecorded.into_iter().rev() {
                    self.pending.push_front(delivered);
                }
                while self.pending.len() > MAX_PENDING_RECORDS {
                    self.pending.pop_front();
                    if !self.dropped_records {
                        self.dropped_records = true;
                        tracing::warn!(
                            "the events service does not take delivery records; dropping the oldest"
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Records the pending deliveries in the background (one call at a time, so they stay in
    /// order), refreshing the caller assertion first — which also notices a session that ended
    /// without the feed saying so (e.g. its token expired).
    fn start_recording(&mut self) {
        if self.recording.is_some() {
            return;
        }
        let Some(session) = &self.session else {
            return;
        };
        let batch: Vec<_> = self.pending.drain(..).collect();
        self.recording = Some(tokio::spawn(record(
            self.upstream.clone(),
            session.token.clone(),
            self.id.clone(),
            batch,
        )));
    }
}

fn feed_unavailable(status: tonic::Status) -> Exit {
    tracing::warn!(code = ?status.code(), message = status.message(), "events service call failed");
    Exit::close(
        CloseCode::UnknownError,
        "the event feed is unavailable; try again",
    )
}

async fn record<U: Upstream>(
    upstream: U,
    token: Arc<str>,
    connection_id: Arc<str>,
    batch: Vec<pb::DeliveredEvent>,
) -> Recorded {
    let caller = match upstream.authenticate(&token).await {
        Ok(caller) => caller,
        Err(AuthFailure::Invalid) => return Recorded::SessionGone,
        Err(AuthFailure::Unavailable) => return Recorded::Failed(batch),
    };
    for (index, chunk) in batch.chunks(RECORD_BATCH).enumerate() {
        if let Err(status) = upstream
            .record_delivered(
                caller.assertion.clone(),
                connection_id.to_string(),
                chunk.to_vec(),
            )
            .await
        {
            // A refusal (a malformed record) would be refused again: dropped. Anything else
            // may pass: kept for the next try (a repeat of a batch that did get through
            // changes no resume point).
            if status.code() == tonic::Code::InvalidArgument {
                tracing::error!(
                    message = status.message(),
                    "the events service refused delivery records; dropped"
                );
                return Recorded::Done;
            }
            tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "recording deliveries failed; kept for the next try"
            );
            return Recorded::Failed(batch[index * RECORD_BATCH..].to_vec());
        }
    }
    Recorded::Done
}

/// The events a Resume replays: what the feed yields until it says it caught up with the log
/// (`caught_up`, which the Resume's Subscribe asks for), or — from an events service that
/// does not say it — until it is quiet for [`Settings::replay_idle`], at most
/// [`Settings::replay_max_events`] or [`Settings::replay_max_bytes`] (the event that does not
/// fit is returned to be sent live) and [`REPLAY_MAX_WAIT`] in all. A gap means missed events
/// are gone: 4010.
async fn collect_replay(
    stream: &mut Deliveries,
    settings: &Settings,
) -> Result<(Vec<pb::Event>, Option<pb::Event>), Exit> {
    let started = Instant::now();
    let mut events = Vec::new();
    let mut bytes = 0usize;
    loop {
        let left = REPLAY_MAX_WAIT.saturating_sub(started.elapsed());
        let wait = settings.replay_idle.min(left);
        if wait.is_zero() {
            return Ok((events, None));
        }
        let delivery = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Ok((events, None)),
            Ok(None) => {
                return Err(Exit::close(
                    CloseCode::UnknownError,
                    "the event feed was interrupted; resume",
                ));
            }
            Ok(Some(Err(status))) => return Err(feed_unavailable(status)),
            Ok(Some(Ok(delivery))) => delivery,
        };
        match delivery.kind {
            Some(Kind::Event(event)) => {
                // A resumed connection has no service channels yet.
                if event.namespace != protocol::CORE {
                    continue;
                }
                if !protocol::is_json(&event.data_json) {
                    tracing::error!(
                        position = event.position,
                        "an event's data is not JSON; skipped"
                    );
                    continue;
                }
                let size = event.data_json.len() + event.namespace.len() + 32;
                if events.len() >= settings.replay_max_events
                    || bytes + size > settings.replay_max_bytes
                {
                    return Ok((events, Some(event)));
                }
                bytes += size;
                events.push(event);
            }
            Some(Kind::Gap(_)) => {
                return Err(Exit::close(
                    CloseCode::Unresumeable,
                    "missed events are no longer retained; identify anew",
                ));
            }
            Some(Kind::Closed(_)) => return Err(Exit::session_ended()),
            // Everything logged before the Resume was read: the replay is complete.
            Some(Kind::CaughtUp(_)) => return Ok((events, None)),
            None => {}
        }
    }
}
