//! [`EventLog`]: the events service's operations on checked domain values, over any
//! [`EventStore`] — what the gRPC handlers call after converting at the edge, and what the
//! conformance suite drives against both stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::error::EventsError;
use crate::feed::{Feed, Start};
use crate::invalidations::{Batch, Notice};
use crate::model::{
    Audience, Delivered, NewEvent, PollOutcome, Resume, SessionKey, check_delivered,
    check_idempotency_key, resume_point,
};
use crate::store::EventStore;

/// Counters of one events process (see [`EventLog::stats`]).
#[derive(Debug, Default)]
struct Counters {
    publications: AtomicU64,
    repeats: AtomicU64,
    appended: AtomicU64,
}

/// What an events process did so far, and what it holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publications that appended (or found no open session), repeats not counted.
    pub publications: u64,
    /// Publications that repeated an idempotency key and appended nothing.
    pub repeats: u64,
    /// Events appended to session logs (a publication to 3 sessions counts 3).
    pub appended: u64,
    /// Subscribe streams open in this process.
    pub subscribers: u64,
    /// Invalidation feeds open in this process.
    pub invalidation_feeds: u64,
}

/// Cancels the log's token when the last handle goes: the Pub/Sub listener and every stream
/// stop with the service.
#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The events service's operations. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn EventStore>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    _stop_on_drop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").finish_non_exhaustive()
    }
}

impl EventLog {
    /// Operations over `store`; `stop` ends every stream (and, for Redis, the Pub/Sub
    /// listener the store was connected with) when cancelled, or when the last clone of this
    /// log is dropped.
    pub fn new(store: Arc<dyn EventStore>, stop: CancellationToken) -> Self {
        Self {
            store,
            counters: Arc::default(),
            _stop_on_drop: Arc::new(StopOnDrop(stop.clone())),
            stop,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Ends every Subscribe stream with UNAVAILABLE (so its client resumes elsewhere) and
    /// stops the Pub/Sub listener: the service is shutting down.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// What this process did so far.
    pub fn stats(&self) -> Stats {
        Stats {
            publications: self.counters.publications.load(Ordering::Relaxed),
            repeats: self.counters.repeats.load(Ordering::Relaxed),
            appended: self.counters.appended.load(Ordering::Relaxed),
            subscribers: u64::try_from(self.store.wakeups().subscribers()).unwrap_or(u64::MAX),
            invalidation_feeds: u64::try_from(self.store.invalidations().feeds())
                .unwrap_or(u64::MAX),
        }
    }

    /// Publishes `event` to `audience` unless `idempotency_key` was published already;
    /// returns how many session logs received it. Runs to completion even when the caller
    /// goes away (a partial fan-out is completed by the publisher's retry, but need not be).
    pub async fn publish(
        &self,
        audience: Audience,
        event: NewEvent,
        idempotency_key: String,
    ) -> Result<u32, EventsError> {
        check_idempotency_key(&idempotency_key)?;
        let store = self.store.clone();
        let counters = self.counters.clone();
        let task = tokio::spawn(async move {
            let published = store.publish(&audience, &event, &idempotency_key).await?;
            // Also for a repeat: the first attempt may have failed before broadcasting.
            let derived = crate::invalidations::derived_from_publish(&audience, &event);
            if !derived.is_empty() {
                store.broadcast(&derived.into()).await?;
            }
            match published {
                Some(reached) => {
                    counters.publications.fetch_add(1, Ordering::Relaxed);
                    counters
                        .appended
                        .fetch_add(u64::from(reached), Ordering::Relaxed);
                }
                None => {
                    counters.repeats.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(published)
        });
        let published = task
            .await
            .map_err(|e| anyhow::anyhow!("the publish task failed: {e}"))??;
        tracing::debug!(sessions = ?published, "published an event");
        Ok(published.unwrap_or(0))
    }

    /// Opens `session`, and tells every gateway to forget its token (a login may have replaced
    /// it).
    pub async fn open(&self, session: &SessionKey) -> Result<(), EventsError> {
        self.store.open(session).await?;
        Ok(self
            .store
            .broadcast(&crate::invalidations::derived_from_open(session).into())
            .await?)
    }

    /// Closes `session`: its data goes, its streams end with `closed`, and every gateway
    /// forgets its token. Runs to completion even when the caller goes away.
    pub async fn close(&self, session: &SessionKey) -> Result<(), EventsError> {
        let store = self.store.clone();
        let session = session.clone();
        let task = tokio::spawn(async move {
            store.close(&session).await?;
            store
                .broadcast(&crate::invalidations::derived_from_close(&session).into())
                .await
        });
        task.await
            .map_err(|e| anyhow::anyhow!("the close task failed: {e}"))??;
        Ok(())
    }

    /// Hands `batch` (already checked) to every gateway's invalidation feed.
    pub async fn invalidate(&self, batch: Batch) -> Result<(), EventsError> {
        Ok(self.store.broadcast(&batch).await?)
    }

    /// An invalidation feed of this process (see [`crate::invalidations::Hub::watch`]).
    pub fn watch_invalidations(&self) -> tokio::sync::mpsc::Receiver<Result<Notice, EventsError>> {
        self.store.invalidations().watch(self.stop.clone())
    }

    /// A stream of `session`'s log from `start` (see [`crate::feed`]).
    pub async fn subscribe(&self, session: SessionKey, start: Start) -> Result<Feed, EventsError> {
        crate::feed::subscribe(self.store.clone(), session, start, self.stop.clone()).await
    }

    /// [`EventLog::subscribe`], marking where the backlog ends when `mark_caught_up` (see
    /// [`crate::feed::subscribe_marked`]).
    pub async fn subscribe_marked(
        &self,
        session: SessionKey,
        start: Start,
        mark_caught_up: bool,
    ) -> Result<Feed, EventsError> {
        crate::feed::subscribe_marked(
            self.store.clone(),
            session,
            start,
            mark_caught_up,
            self.stop.clone(),
        )
        .await
    }

    /// What `session` has not seen yet, at most `limit` (already checked), advancing its
    /// cursor. Opens the session implicitly.
    pub async fn poll(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<PollOutcome, EventsError> {
        if !self.store.touch(session).await? {
            return Ok(PollOutcome::default());
        }
        Ok(self.store.poll(session, limit).await?)
    }

    /// Records what the connection `connection_id` delivered. Opens the session implicitly.
    pub async fn record(
        &self,
        session: &SessionKey,
        connection_id: &str,
        delivered: &[Delivered],
    ) -> Result<(), EventsError> {
        check_delivered(connection_id, delivered)?;
        if !self.store.touch(session).await? {
            return Ok(());
        }
        Ok(self.store.record(session, connection_id, delivered).await?)
    }

    /// Where a resume of `session`'s connection (`None`: its last recorded one) after
    /// `sequence` continues.
    pub async fn resume_from(
        &self,
        session: &SessionKey,
        connection_id: Option<&str>,
        sequence: u64,
    ) -> Result<Resume, EventsError> {
        let state = self.store.resume_state(session).await?;
        Ok(resume_point(&state, connection_id, sequence))
    }
}
