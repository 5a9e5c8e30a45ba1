//! The wake-up registry of one events process: session → a `watch` channel its Subscribe
//! streams wait on. A wake-up carries no event; it only says "this session's log may have
//! grown (or the session was closed): read it again". Each subscriber then reads the log after
//! its own last position, so a wake-up can never be lost in a buffer or overrun one: many
//! wake-ups while a subscriber is busy collapse into one (a `watch` keeps only a version).
//!
//! Who wakes: the in-process store, right after it appended or closed; with Redis, the one
//! Pub/Sub listener of the process (`store::redis`), for appends and closes made through any
//! replica, and [`Wakeups::wake_all`] whenever it (re)subscribed, so nothing published while
//! it was disconnected stays unread.
//!
//! An entry lives exactly as long as a subscriber of its session: the registry holds no more
//! entries than there are open Subscribe streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The registry. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct Wakeups {
    slots: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug)]
struct Slot {
    tx: watch::Sender<u64>,
    subscribers: usize,
}

/// One subscriber's registration: wait on [`Registration::changed`]; dropping it deregisters.
#[derive(Debug)]
pub struct Registration {
    wakeups: Arc<Wakeups>,
    session: String,
    rx: watch::Receiver<u64>,
}

impl Registration {
    /// Marks every wake-up so far as seen: call right before reading the log, so a wake-up
    /// that arrives during the read is not missed.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves at the first wake-up not yet marked seen (at once if one is pending).
    pub async fn changed(&mut self) {
        // The sender lives while any registration of the session does (this one): no error.
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slots = self.wakeups.lock();
        if let Some(slot) = slots.get_mut(&self.session) {
            slot.subscribers -= 1;
            if slot.subscribers == 0 {
                slots.remove(&self.session);
            }
        }
    }
}

impl Wakeups {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a subscriber of `session` (its encoded key). Register before the first read
    /// of the log: a wake-up between the read and the wait is then kept.
    pub fn register(self: &Arc<Self>, session: &str) -> Registration {
        let mut slots = self.lock();
        let slot = slots.entry(session.to_owned()).or_insert_with(|| Slot {
            tx: watch::channel(0).0,
            subscribers: 0,
        });
        slot.subscribers += 1;
        let rx = slot.tx.subscribe();
        drop(slots);
        Registration {
            wakeups: self.clone(),
            session: session.to_owned(),
            rx,
        }
    }

    /// Wakes every subscriber of `session` (its encoded key); nothing when it has none here.
    pub fn wake(&self, session: &str) {
        if let Some(slot) = self.lock().get(session) {
            slot.tx
                .send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// Wakes every subscriber of every session (after the Pub/Sub connection came back).
    pub fn wake_all(&self) {
        for slot in self.lock().values() {
            slot.tx
                .send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// How many Subscribe streams are registered in this process.
    pub fn subscribers(&self) -> usize {
        self.lock().values().map(|slot| slot.subscribers).sum()
    }

    /// How many sessions have a subscriber in this process.
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_up_during_a_read_is_kept_and_many_collapse_into_one() {
        let wakeups = Wakeups::new();
        let mut a = wakeups.register("s1");
        a.mark_seen();
        wakeups.wake("s1");
        wakeups.wake("s1");
        tokio::time::timeout(std::time::Duration::from_secs(1), a.changed())
            .await
            .unwrap();
        a.mark_seen();
        // Nothing pending now.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), a.changed()).await;
        assert!(pending.is_err());
        // Other sessions' wake-ups do not reach it; wake_all does.
        wakeups.wake("s2");
        wakeups.wake_all();
        tokio::time::timeout(std::time::Duration::from_secs(1), a.changed())
            .await
            .unwrap();
    }

    #[test]
    fn entries_live_as_long_as_their_subscribers() {
        let wakeups = Wakeups::new();
        let a = wakeups.register("s1");
        let b = wakeups.register("s1");
        let c = wakeups.register("s2");
        assert_eq!((wakeups.subscribers(), wakeups.sessions()), (3, 2));
        drop(a);
        assert_eq!((wakeups.subscribers(), wakeups.sessions()), (2, 2));
        drop(b);
        drop(c);
        assert_eq!((wakeups.subscribers(), wakeups.sessions()), (0, 0));
        wakeups.wake("s1");
    }
}
