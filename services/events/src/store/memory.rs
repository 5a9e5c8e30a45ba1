//! The in-process [`EventStore`] of embedded mode (`polyproto up` without Redis): every
//! structure behind one mutex, so each operation — a whole fan-out included — is atomic; time
//! from `tokio::time::Instant`, so tests can pause it. Wake-ups go to the registry right after
//! the lock is released.
//!
//! Bounded like the Redis store (see [`super`]): a session's data exists only while it is a
//! member of its actor's open sessions (at most `max_sessions_per_actor` each, `max_actors`
//! actors), its log holds at most `max_events_per_session` events and its delivery record as
//! many deliveries; closed marks and idempotency keys expire, and the keys are capped.
//! Expired memberships, marks and keys are swept out by writes (every [`PURGE_INTERVAL`]).
//!
//! One process only: replicas of the events service must share Redis instead.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, EventStore, Limits};
use crate::invalidations::{Batch, Hub};
use crate::model::{
    Audience, Delivered, Event, LogRead, NewEvent, PollOutcome, ResumeState, SessionKey,
};
use crate::wake::Wakeups;

/// How often a write sweeps out expired memberships, closed marks and idempotency keys.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The in-process event store.
#[derive(Debug)]
pub struct MemoryEventStore {
    limits: Limits,
    wakeups: Arc<Wakeups>,
    hub: Arc<Hub>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Data of every member session.
    sessions: HashMap<SessionKey, SessionLog>,
    /// FID → its open sessions.
    actors: HashMap<String, Actor>,
    /// Actors by last refresh (the eviction and expiry order).
    by_refresh: BTreeSet<(Instant, String)>,
    /// Sessions closed recently.
    closed: HashMap<SessionKey, Closed>,
    idempotency: Idempotency,
    next_purge: Instant,
}

#[derive(Debug, Default)]
struct Actor {
    /// The newest refresh of any of its sessions.
    refreshed: Option<Instant>,
    /// Session ID → last refresh.
    sessions: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
struct SessionLog {
    last: u64,
    /// Contiguous positions, oldest first.
    events: VecDeque<Event>,
    cursor: u64,
    record: Option<Record>,
}

#[derive(Debug)]
struct Record {
    connection_id: String,
    trimmed_through: Option<u64>,
    delivered: VecDeque<Delivered>,
}

#[derive(Debug, Clone, Copy)]
struct Closed {
    until: Instant,
    /// The session's last position, continued if it is reopened while marked.
    last: u64,
}

/// Keys of completed publications, each with its expiry, in insertion (= expiry) order.
#[derive(Debug, Default)]
struct Idempotency {
    order: VecDeque<(Instant, String)>,
    keys: HashMap<String, Instant>,
}

impl Idempotency {
    fn prune(&mut self, now: Instant, capacity: usize) {
        while let Some((expires, key)) = self.order.front() {
            let current = self.keys.get(key).copied();
            let stale = current != Some(*expires);
            if !(stale || *expires <= now || self.keys.len() > capacity) {
                break;
            }
            if !stale {
                self.keys.remove(key);
            }
            self.order.pop_front();
        }
    }

    fn is_repeat(&self, key: &str, now: Instant) -> bool {
        self.keys.get(key).is_some_and(|expires| *expires > now)
    }

    fn insert(&mut self, key: &str, expires: Instant, now: Instant, capacity: usize) {
        self.keys.insert(key.to_owned(), expires);
        self.order.push_back((expires, key.to_owned()));
        self.prune(now, capacity);
    }
}

/// How an operation treats the session's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    /// OpenSession: clear a closed mark, add or refresh.
    Open,
    /// A gateway call: add or refresh, unless closed recently.
    Touch,
    /// A session-addressed publication: add unless closed recently, never refresh.
    Ensure,
}

impl Inner {
    fn is_closed(&self, session: &SessionKey, now: Instant) -> bool {
        self.closed.get(session).is_some_and(|c| c.until > now)
    }

    /// Removes `session`'s data (not its membership).
    fn drop_data(&mut self, session: &SessionKey) -> Option<SessionLog> {
        self.sessions.remove(session)
    }

    fn set_refreshed(&mut self, fid: &str, refreshed: Option<Instant>) {
        if let Some(actor) = self.actors.get_mut(fid) {
            if let Some(old) = actor.refreshed {
                self.by_refresh.remove(&(old, fid.to_owned()));
            }
            actor.refreshed = refreshed;
            if let Some(new) = refreshed {
                self.by_refresh.insert((new, fid.to_owned()));
            }
        }
    }

    /// Drops an actor with every session of it.
    fn drop_actor(&mut self, fid: &str) {
        self.set_refreshed(fid, None);
        if let Some(actor) = self.actors.remove(fid) {
            for sid in actor.sessions.keys() {
                self.drop_data(&SessionKey::trusted(fid, sid));
            }
        }
    }

    /// Brings `session`'s membership to what `mode` asks; `false` when it is closed recently
    /// and `mode` is not [`Membership::Open`].
    fn join(
        &mut self,
        session: &SessionKey,
        mode: Membership,
        now: Instant,
        limits: &Limits,
    ) -> bool {
        if let Some(closed) = self.closed.get(session).copied() {
            if closed.until > now {
                if mode != Membership::Open {
                    return false;
                }
                // Reopened while marked: its numbering continues, its cursor is at the end.
                self.sessions.insert(
                    session.clone(),
                    SessionLog {
                        last: closed.last,
                        cursor: closed.last,
                        ..SessionLog::default()
                    },
                );
            }
            self.closed.remove(session);
        }
        let fid = session.fid().to_owned();
        let ttl = limits.membership_ttl;
        let actor = self.actors.entry(fid.clone()).or_default();
        let expired: Vec<String> = actor
            .sessions
            .iter()
            .filter(|(_, refreshed)| **refreshed + ttl <= now)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in &expired {
            actor.sessions.remove(sid);
        }
        let member = actor.sessions.contains_key(session.session_id());
        if !member || mode != Membership::Ensure {
            actor.sessions.insert(session.session_id().to_owned(), now);
        }
        let mut evicted = Vec::new();
        while actor.sessions.len() > limits.max_sessions_per_actor {
            let Some(oldest) = actor
                .sessions
                .iter()
                .filter(|(sid, _)| sid.as_str() != session.session_id())
                .min_by_key(|(_, refreshed)| **refreshed)
                .map(|(sid, _)| sid.clone())
            else {
                break;
            };
            actor.sessions.remove(&oldest);
            evicted.push(oldest);
        }
        let newest = actor.sessions.values().max().copied();
        for sid in expired.iter().chain(&evicted) {
            self.drop_data(&SessionKey::trusted(&fid, sid));
        }
        self.set_refreshed(&fid, newest);
        self.sessions.entry(session.clone()).or_default();
        while self.actors.len() > limits.max_actors {
            let Some(oldest) = self
                .by_refresh
                .iter()
                .find(|(_, f)| *f != fid)
                .map(|(_, f)| f.clone())
            else {
                break;
            };
            self.drop_actor(&oldest);
        }
        true
    }

    /// The live member sessions of `fid`.
    fn members(&self, fid: &str, now: Instant, ttl: Duration) -> Vec<SessionKey> {
        self.actors
            .get(fid)
            .map(|actor| {
                actor
                    .sessions
                    .iter()
                    .filter(|(_, refreshed)| **refreshed + ttl > now)
                    .map(|(sid, _)| SessionKey::trusted(fid, sid))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn purge(&mut self, now: Instant, limits: &Limits) {
        self.idempotency.prune(now, limits.max_idempotency_keys);
        if now < self.next_purge {
            return;
        }
        self.next_purge = now + PURGE_INTERVAL;
        self.closed.retain(|_, closed| closed.until > now);
        let ttl = limits.membership_ttl;
        while let Some((refreshed, fid)) = self.by_refresh.first().cloned() {
            if refreshed + ttl > now {
                break;
            }
            self.drop_actor(&fid);
        }
    }
}

impl MemoryEventStore {
    /// A store with `limits`, waking `wakeups`.
    pub fn new(limits: Limits, wakeups: Arc<Wakeups>) -> Self {
        Self {
            limits,
            wakeups,
            hub: Hub::new(true),
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                actors: HashMap::new(),
                by_refresh: BTreeSet::new(),
                closed: HashMap::new(),
                idempotency: Idempotency::default(),
                next_purge: Instant::now() + PURGE_INTERVAL,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sessions hold data (members), all actors together.
    pub fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// How many idempotency keys are remembered.
    pub fn idempotency_keys(&self) -> usize {
        self.lock().idempotency.keys.len()
    }

    /// How many closed marks are kept (expired ones go with the next sweep).
    pub fn closed_marks(&self) -> usize {
        self.lock().closed.len()
    }

    fn publish_now(&self, audience: &Audience, event: &NewEvent, key: &str) -> Option<u32> {
        let now = Instant::now();
        let limits = &self.limits;
        let mut inner = self.lock();
        inner.purge(now, limits);
        if inner.idempotency.is_repeat(key, now) {
            return None;
        }
        let targets = match audience {
            Audience::Session(session) => {
                if inner.join(session, Membership::Ensure, now, limits) {
                    vec![session.clone()]
                } else {
                    Vec::new()
                }
            }
            Audience::Actor { fid, except } => inner
                .members(fid, now, limits.membership_ttl)
                .into_iter()
                .filter(|s| except.as_deref() != Some(s.session_id()))
                .collect(),
            Audience::Server => {
                let fids: Vec<String> = inner.actors.keys().cloned().collect();
                fids.iter()
                    .flat_map(|fid| inner.members(fid, now, limits.membership_ttl))
                    .collect()
            }
        };
        let mut reached = Vec::with_capacity(targets.len());
        for session in targets {
            let Some(log) = inner.sessions.get_mut(&session) else {
                continue;
            };
            log.last += 1;
            log.events.push_back(Event::at(log.last, event));
            while log.events.len() > limits.max_events_per_session {
                log.events.pop_front();
            }
            reached.push(session);
        }
        let expires = now + limits.idempotency_ttl;
        inner
            .idempotency
            .insert(key, expires, now, limits.max_idempotency_keys);
        drop(inner);
        for session in &reached {
            self.wakeups.wake(session.encoded());
        }
        Some(u32::try_from(reached.len()).unwrap_or(u32::MAX))
    }

    fn close_now(&self, session: &SessionKey) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now, &self.limits);
        let fid = session.fid().to_owned();
        let mut emptied = false;
        if let Some(actor) = inner.actors.get_mut(&fid) {
            actor.sessions.remove(session.session_id());
            emptied = actor.sessions.is_empty();
        }
        if emptied {
            inner.set_refreshed(&fid, None);
            inner.actors.remove(&fid);
        } else if let Some(newest) = inner
            .actors
            .get(&fid)
            .and_then(|a| a.sessions.values().max().copied())
        {
            inner.set_refreshed(&fid, Some(newest));
        }
        let data_last = inner.drop_data(session).map_or(0, |log| log.last);
        let marked_last = inner
            .closed
            .get(session)
            .filter(|c| c.until > now)
            .map_or(0, |c| c.last);
        inner.closed.insert(
            session.clone(),
            Closed {
                until: now + self.limits.closed_ttl,
                last: data_last.max(marked_last),
            },
        );
        drop(inner);
        self.wakeups.wake(session.encoded());
    }

    fn read_now(&self, session: &SessionKey, after: u64, limit: usize) -> LogRead {
        let now = Instant::now();
        let inner = self.lock();
        if inner.is_closed(session, now) {
            return LogRead {
                closed: true,
                ..LogRead::default()
            };
        }
        let Some(log) = inner.sessions.get(session) else {
            return LogRead::default();
        };
        let oldest = log.events.front().map(|e| e.position);
        let skip = match oldest {
            Some(oldest) if after >= oldest => {
                usize::try_from(after - oldest + 1).unwrap_or(usize::MAX)
            }
            _ => 0,
        };
        LogRead {
            closed: false,
            last_position: log.last,
            oldest_retained: oldest,
            events: log.events.iter().skip(skip).take(limit).cloned().collect(),
        }
    }

    fn poll_now(&self, session: &SessionKey, limit: usize) -> PollOutcome {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.is_closed(session, now) {
            return PollOutcome::default();
        }
        let Some(log) = inner.sessions.get_mut(session) else {
            return PollOutcome::default();
        };
        let cursor = log.cursor.min(log.last);
        let pending: Vec<&Event> = log.events.iter().filter(|e| e.position > cursor).collect();
        let oldest = log.events.front().map_or(log.last + 1, |e| e.position);
        let truncated = pending.len() > limit || (log.last > cursor && oldest > cursor + 1);
        let events: Vec<Event> = pending[pending.len().saturating_sub(limit)..]
            .iter()
            .map(|e| (*e).clone())
            .collect();
        if let Some(newest) = events.last() {
            log.cursor = newest.position;
        }
        PollOutcome { events, truncated }
    }

    fn record_now(&self, session: &SessionKey, connection_id: &str, delivered: &[Delivered]) {
        let now = Instant::now();
        let max = self.limits.max_events_per_session;
        let mut inner = self.lock();
        if inner.is_closed(session, now) {
            return;
        }
        let Some(log) = inner.sessions.get_mut(session) else {
            return;
        };
        let record = match &mut log.record {
            Some(record) if record.connection_id == connection_id => record,
            other => other.insert(Record {
                connection_id: connection_id.to_owned(),
                trimmed_through: None,
                delivered: VecDeque::new(),
            }),
        };
        record.delivered.extend(delivered.iter().copied());
        while record.delivered.len() > max {
            if let Some(dropped) = record.delivered.pop_front() {
                record.trimmed_through = Some(dropped.sequence);
            }
        }
        if let Some(highest) = delivered.iter().map(|d| d.position).max() {
            log.cursor = log.cursor.max(highest.min(log.last));
        }
    }

    fn resume_state_now(&self, session: &SessionKey) -> ResumeState {
        let now = Instant::now();
        let inner = self.lock();
        if inner.is_closed(session, now) {
            return ResumeState {
                closed: true,
                ..ResumeState::default()
            };
        }
        let Some(log) = inner.sessions.get(session) else {
            return ResumeState::default();
        };
        ResumeState {
            closed: false,
            connection_id: log.record.as_ref().map(|r| r.connection_id.clone()),
            trimmed_through: log.record.as_ref().and_then(|r| r.trimmed_through),
            delivered: log
                .record
                .as_ref()
                .map(|r| r.delivered.iter().copied().collect())
                .unwrap_or_default(),
            oldest_retained: log.events.front().map(|e| e.position),
            last_position: log.last,
        }
    }

    fn join_now(&self, session: &SessionKey, mode: Membership) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now, &self.limits);
        inner.join(session, mode, now, &self.limits)
    }
}

impl EventStore for MemoryEventStore {
    fn publish<'a>(
        &'a self,
        audience: &'a Audience,
        event: &'a NewEvent,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<u32>>> {
        Box::pin(async move { Ok(self.publish_now(audience, event, idempotency_key)) })
    }

    fn open<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.join_now(session, Membership::Open);
            Ok(())
        })
    }

    fn touch<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(self.join_now(session, Membership::Touch)) })
    }

    fn close<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.close_now(session);
            Ok(())
        })
    }

    fn read<'a>(
        &'a self,
        session: &'a SessionKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<LogRead>> {
        Box::pin(async move { Ok(self.read_now(session, after, limit)) })
    }

    fn poll<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<PollOutcome>> {
        Box::pin(async move { Ok(self.poll_now(session, limit)) })
    }

    fn record<'a>(
        &'a self,
        session: &'a SessionKey,
        connection_id: &'a str,
        delivered: &'a [Delivered],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.record_now(session, connection_id, delivered);
            Ok(())
        })
    }

    fn resume_state<'a>(
        &'a self,
        session: &'a SessionKey,
    ) -> BoxFuture<'a, anyhow::Result<ResumeState>> {
        Box::pin(async move { Ok(self.resume_state_now(session)) })
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    fn invalidations(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn broadcast<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, anyhow::Result<()>> {
        self.hub.deliver(batch.clone());
        Box::pin(async { Ok(()) })
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }
}
