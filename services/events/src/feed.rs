//! Subscribe streams: the backlog of a session's log, then live events, with no loss and no
//! unbounded buffer.
//!
//! Each stream is one task that keeps its own last position and reads the log after it, in
//! batches of [`FEED_BATCH`], into a bounded channel of [`FEED_BUFFER`] messages (what tonic
//! sends from). It waits on the session's wake-up ([`crate::wake`]) only after a read came back
//! short, and registers for wake-ups before its first read, so an append is never missed: it
//! is either in the read or wakes the wait. A slow consumer only fills its own channel; the
//! task then waits to send and reads again when there is room, so publishing and other
//! streams never wait for it, and what it missed is still in the log (or reported as a gap
//! when the log's bound dropped it meanwhile).
//!
//! A stream ends with [`FeedItem::Closed`] when its session is closed, when its client goes
//! away, with [`EventsError::Unavailable`] when the log does not answer for
//! [`GIVE_UP_AFTER`] (read failures in between are retried: Redis reconnects), when the log
//! was lost and restarted at lower positions (the client reconnects and starts over), or when
//! the service shuts down (the client resumes on another replica). While it runs it refreshes
//! its session's membership (a quarter of the membership lifetime, at most hourly).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::EventsError;
use crate::model::{Event, SessionKey};
use crate::store::EventStore;
use crate::wake::Registration;

/// Messages a stream buffers for its client at most.
pub const FEED_BUFFER: usize = 64;
/// Events one read of the log returns at most.
pub const FEED_BATCH: usize = 64;
/// How long a stream retries a log that does not answer before it ends with UNAVAILABLE.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// Longest wait between retries of a failing read.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest interval between membership refreshes of a running stream.
const REFRESH_MAX: Duration = Duration::from_secs(3600);

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this position (0: from the oldest retained event).
    After(u64),
    /// Only events appended after the stream started.
    OnlyNew,
}

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// The next event of the log.
    Event(Event),
    /// Events between the stream's position and this one, the oldest retained, were dropped
    /// by the log's bound: sent before the next event.
    Gap {
        /// The oldest position still in the log.
        oldest_retained: u64,
    },
    /// The session was closed; nothing follows.
    Closed,
    /// Everything logged when the stream started was sent (only when asked for).
    CaughtUp,
}

/// A stream's receiving end (bounded by [`FEED_BUFFER`]).
pub type Feed = mpsc::Receiver<Result<FeedItem, EventsError>>;

/// Starts a stream of `session`'s log from `start`. Opens the session implicitly (or refreshes
/// it); a session closed recently gets a stream of just [`FeedItem::Closed`]. Fails only when
/// the store does not answer now.
pub async fn subscribe(
    store: Arc<dyn EventStore>,
    session: SessionKey,
    start: Start,
    stop: CancellationToken,
) -> Result<Feed, EventsError> {
    subscribe_marked(store, session, start, false, stop).await
}

/// [`subscribe`], sending [`FeedItem::CaughtUp`] once when `mark_caught_up`: after the first
/// read of the log that came back short, i.e. once everything logged when the stream started
/// (and perhaps a little more) was sent.
pub async fn subscribe_marked(
    store: Arc<dyn EventStore>,
    session: SessionKey,
    start: Start,
    mark_caught_up: bool,
    stop: CancellationToken,
) -> Result<Feed, EventsError> {
    let (tx, rx) = mpsc::channel(FEED_BUFFER);
    // Before anything is read: an append from now on wakes this stream.
    let registration = store.wakeups().register(session.encoded());
    if !store.touch(&session).await? {
        // The channel is empty: this cannot fail.
        let _ = tx.try_send(Ok(FeedItem::Closed));
        return Ok(rx);
    }
    let (last, gap_on_first) = match start {
        Start::After(position) => (position, position > 0),
        Start::OnlyNew => (store.read(&session, 0, 1).await?.last_position, true),
    };
    let refresh_every = (store.limits().membership_ttl / 4).min(REFRESH_MAX);
    let stream = Stream {
        store,
        session,
        registration,
        tx,
        stop,
        last,
        gap_on_first,
        refresh_every,
        mark_caught_up,
    };
    tokio::spawn(stream.run());
    Ok(rx)
}

struct Stream {
    store: Arc<dyn EventStore>,
    session: SessionKey,
    registration: Registration,
    tx: mpsc::Sender<Result<FeedItem, EventsError>>,
    stop: CancellationToken,
    last: u64,
    gap_on_first: bool,
    refresh_every: Duration,
    mark_caught_up: bool,
}

/// Why a stream stops.
enum End {
    /// Send this last, then stop.
    With(Result<FeedItem, EventsError>),
    /// The client went away: stop.
    Gone,
}

impl Stream {
    async fn run(mut self) {
        let End::With(last) = self.stream().await else {
            return;
        };
        // The last message waits for room like any other, but not past shutdown.
        tokio::select! {
            permit = self.tx.reserve() => {
                if let Ok(permit) = permit {
                    permit.send(last);
                }
            }
            () = self.stop.cancelled() => {
                let _ = self.tx.try_send(last);
            }
        }
    }

    async fn send(&self, item: FeedItem) -> Result<(), End> {
        tokio::select! {
            sent = self.tx.send(Ok(item)) => sent.map_err(|_| End::Gone),
            () = self.stop.cancelled() => Err(shutting_down()),
        }
    }

    async fn stream(&mut self) -> End {
        let mut first = true;
        let mut failing_since: Option<Instant> = None;
        let mut retry = Duration::from_millis(50);
        let mut next_refresh = Instant::now() + self.refresh_every;
        loop {
            self.registration.mark_seen();
            let more;
            match self.store.read(&self.session, self.last, FEED_BATCH).await {
                Ok(read) => {
                    failing_since = None;
                    retry = Duration::from_millis(50);
                    if read.closed {
                        return End::With(Ok(FeedItem::Closed));
                    }
                    if read.last_position < self.last {
                        if !first {
                            tracing::warn!(session = %self.session, "an event log restarted under its stream");
                            return End::With(Err(EventsError::Unavailable(
                                "this session's event log was reset; reconnect",
                            )));
                        }
                        // Asked to start beyond the log's end: start at its end.
                        self.last = read.last_position;
                    }
                    if let Some(oldest) = read.oldest_retained
                        && oldest > self.last.saturating_add(1)
                        && (!first || self.gap_on_first)
                        && let Err(end) = self
                            .send(FeedItem::Gap {
                                oldest_retained: oldest,
                            })
                            .await
                    {
                        return end;
                    }
                    first = false;
                    more = read.events.len() >= FEED_BATCH;
                    for event in read.events {
                        let position = event.position;
                        if let Err(end) = self.send(FeedItem::Event(event)).await {
                            return end;
                        }
                        self.last = position;
                    }
                }
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        tracing::error!(error = format!("{error:#}"), session = %self.session, "the event log does not answer; ending a stream");
                        return End::With(Err(EventsError::Unavailable(
                            "the event log does not answer; reconnect",
                        )));
                    }
                    tracing::warn!(
                        error = format!("{error:#}"),
                        ?retry,
                        "reading an event log failed; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = self.tx.closed() => return End::Gone,
                        () = self.stop.cancelled() => return End::With(Err(shutting_down_error())),
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
            if more {
                continue;
            }
            if std::mem::take(&mut self.mark_caught_up)
                && let Err(end) = self.send(FeedItem::CaughtUp).await
            {
                return end;
            }
            tokio::select! {
                () = self.registration.changed() => {}
                () = self.tx.closed() => return End::Gone,
                () = self.stop.cancelled() => return End::With(Err(shutting_down_error())),
                () = tokio::time::sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + self.refresh_every;
                    match self.store.touch(&self.session).await {
                        Ok(true) => {}
                        Ok(false) => return End::With(Ok(FeedItem::Closed)),
                        Err(error) => {
                            tracing::warn!(error = format!("{error:#}"), "refreshing a session's membership failed");
                        }
                    }
                }
            }
        }
    }
}

fn shutting_down_error() -> EventsError {
    EventsError::Unavailable("the events service is shutting down; reconnect")
}

fn shutting_down() -> End {
    End::With(Err(shutting_down_error()))
}
