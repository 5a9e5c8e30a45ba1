//! The gateways' invalidation feed (`WatchInvalidations`): what any gateway may have cached
//! and must drop — a session's resolved token, an actor's certs or discovery entries, the
//! server's certs — relayed to every gateway connected to any replica of this service.
//!
//! Where invalidations come from: the events service derives them from what the owning
//! services tell it anyway through their durable outboxes (a closed session, core ops 3, 4
//! and 6; see [`derived_from_open`], [`derived_from_close`] and [`derived_from_publish`]), and gateways add what a
//! mutation they served affects (`Invalidate`). A derived invalidation is broadcast before
//! the RPC that caused it answers, so a publisher's retry repeats it rather than losing it.
//!
//! How they travel: in process, straight to this process's [`Hub`]; with Redis, over the
//! Pub/Sub channel `<prefix>inval`, which the store's one listener per process feeds into
//! its hub. Pub/Sub keeps nothing for a disconnected listener, so the hub tracks whether its
//! source is connected: every feed starts with a `live` notice only once it is, and ends
//! (UNAVAILABLE) the moment it is lost — a gateway trusts its caches exactly while its feed
//! is live, and drops them whenever a new feed goes live.
//!
//! Bounds: the hub's broadcast buffer holds [`BUFFER`] batches; a feed that falls further
//! behind ends (its gateway resets and resubscribes) instead of holding memory for it.
//! A batch holds at most [`MAX_PER_BATCH`] targets.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::EventsError;
use crate::model::{Audience, NewEvent, SessionKey};

/// Batches the hub buffers for slow feeds; beyond, the slowest feed ends.
pub const BUFFER: usize = 4096;
/// Most targets in one `Invalidate` call (and one relayed batch).
pub const MAX_PER_BATCH: usize = 64;
/// The namespace of core events, whose ops 3, 4 and 6 invalidate caches.
const CORE: &str = "core";

/// One thing a gateway may have cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The token of this session no longer resolves.
    Session(SessionKey),
    /// The certs of this actor (FID or local name) changed.
    ActorCerts(String),
    /// The discovery entries of this actor (FID or local name) changed.
    ActorProviders(String),
    /// The server's certs and public keys changed.
    Server,
    /// Anything public may have changed.
    AllPublic,
}

/// A batch of invalidations, shared by every feed it reaches.
pub type Batch = Arc<[Invalidation]>;

/// What a closed session invalidates: its token, and its actor's certs (its cert was revoked).
pub fn derived_from_close(session: &SessionKey) -> Vec<Invalidation> {
    vec![
        Invalidation::Session(session.clone()),
        Invalidation::ActorCerts(session.fid().to_owned()),
    ]
}

/// What an opened session invalidates: its token (a login that reuses a session ID replaces
/// the session's token, and the old one must stop resolving everywhere).
pub fn derived_from_open(session: &SessionKey) -> Vec<Invalidation> {
    vec![Invalidation::Session(session.clone())]
}

/// What a published event invalidates: core op 3 (New Session) and op 4 (Actor Certificate
/// Invalidation) the certs of the actor it goes to, op 6 (Server Certificate Change) the
/// server's certs; anything else nothing.
pub fn derived_from_publish(audience: &Audience, event: &NewEvent) -> Vec<Invalidation> {
    if event.namespace != CORE {
        return Vec::new();
    }
    match (event.op, audience) {
        (3 | 4, Audience::Actor { fid, .. }) => vec![Invalidation::ActorCerts(fid.clone())],
        (3 | 4, Audience::Session(session)) => {
            vec![Invalidation::ActorCerts(session.fid().to_owned())]
        }
        (6, _) => vec![Invalidation::Server],
        _ => Vec::new(),
    }
}

/// Encodes a batch for the Pub/Sub channel: one target per line, fields separated by tabs
/// (FIDs and session IDs hold neither, as parsed).
pub fn encode(batch: &[Invalidation]) -> String {
    let mut out = String::new();
    for invalidation in batch {
        match invalidation {
            Invalidation::Session(session) => {
                out.push_str("s\t");
                out.push_str(session.fid());
                out.push('\t');
                out.push_str(session.session_id());
            }
            Invalidation::ActorCerts(fid) => {
                out.push_str("c\t");
                out.push_str(fid);
            }
            Invalidation::ActorProviders(fid) => {
                out.push_str("p\t");
                out.push_str(fid);
            }
            Invalidation::Server => out.push('k'),
            Invalidation::AllPublic => out.push('a'),
        }
        out.push('\n');
    }
    out
}

/// Decodes what [`encode`] wrote; unknown lines (a newer replica's targets) read as
/// "anything public may have changed", so no invalidation is ever lost in a rolling upgrade.
pub fn decode(text: &str) -> Vec<Invalidation> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            match (fields.next(), fields.next(), fields.next()) {
                (Some("s"), Some(fid), Some(session_id)) => {
                    Invalidation::Session(SessionKey::trusted(fid, session_id))
                }
                (Some("c"), Some(fid), None) => Invalidation::ActorCerts(fid.to_owned()),
                (Some("p"), Some(fid), None) => Invalidation::ActorProviders(fid.to_owned()),
                (Some("k"), None, None) => Invalidation::Server,
                _ => Invalidation::AllPublic,
            }
        })
        .collect()
}

/// Whether the hub's source is connected, and how often it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    live: bool,
    epoch: u64,
}

/// What a feed yields: the `live` notice first, then batches.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The feed is live from here on.
    Live,
    /// Invalidations, in the order they were broadcast.
    Batch(Batch),
}

/// The per-process fan-out of invalidations to the feeds of this process. Cheap to share.
#[derive(Debug)]
pub struct Hub {
    batches: broadcast::Sender<Batch>,
    source: watch::Sender<Source>,
}

impl Hub {
    /// A hub whose source is connected from the start (`live`: the in-process store) or not
    /// yet (Redis, until its listener subscribed).
    pub fn new(live: bool) -> Arc<Self> {
        Arc::new(Self {
            batches: broadcast::channel(BUFFER).0,
            source: watch::channel(Source { live, epoch: 0 }).0,
        })
    }

    /// Hands `batch` to every feed of this process.
    pub fn deliver(&self, batch: Batch) {
        if !batch.is_empty() {
            // No feed open is no error: nobody caches anything.
            let _ = self.batches.send(batch);
        }
    }

    /// The source (re)connected: feeds may go live (new ones; the ones open ended when it
    /// was lost).
    pub fn source_up(&self) {
        self.source.send_modify(|source| {
            source.live = true;
            source.epoch = source.epoch.wrapping_add(1);
        });
    }

    /// The source was lost: what it relays meanwhile is lost too, so every feed ends.
    pub fn source_down(&self) {
        self.source.send_modify(|source| {
            if source.live {
                source.live = false;
                source.epoch = source.epoch.wrapping_add(1);
            }
        });
    }

    /// Feeds open in this process.
    pub fn feeds(&self) -> usize {
        self.batches.receiver_count()
    }

    /// A feed: waits until the source is connected, yields [`Notice::Live`], then every
    /// batch; ends with UNAVAILABLE when the source is lost, the feed falls [`BUFFER`]
    /// batches behind, or `stop` is cancelled; ends quietly when the receiver is dropped.
    pub fn watch(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> mpsc::Receiver<Result<Notice, EventsError>> {
        let (tx, rx) = mpsc::channel(16);
        let mut source = self.source.subscribe();
        // Subscribed before the live check: nothing broadcast after the `live` notice's
        // moment can be missed.
        let mut batches = self.batches.subscribe();
        tokio::spawn(async move {
            let epoch = loop {
                let now = *source.borrow_and_update();
                if now.live {
                    break now.epoch;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    changed = source.changed() => if changed.is_err() { return },
                    // Not live yet: the gateway drops everything at `live` anyway.
                    _ = batches.recv() => {}
                }
            };
            if tx.send(Ok(Notice::Live)).await.is_err() {
                return;
            }
            let unavailable = |why: &'static str| Err(EventsError::Unavailable(why));
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        let _ = tx.send(unavailable("invalidation feed: the events service is shutting down")).await;
                        return;
                    }
                    () = tx.closed() => return,
                    changed = source.changed() => {
                        if changed.is_err() || source.borrow_and_update().epoch != epoch {
                            let _ = tx.send(unavailable("invalidation feed: its source was interrupted")).await;
                            return;
                        }
                    }
                    batch = batches.recv() => match batch {
                        Ok(batch) => {
                            if tx.send(Ok(Notice::Batch(batch))).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(unavailable("invalidation feed: the reader fell too far behind")).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::Receiver<Result<Notice, EventsError>>) -> Result<Notice, String> {
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a notice in time")
            .expect("the feed is open")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn batches_round_trip_and_unknown_lines_invalidate_everything_public() {
        let batch = vec![
            Invalidation::Session(SessionKey::trusted("alice@p2.test", "s1")),
            Invalidation::ActorCerts("alice@p2.test".into()),
            Invalidation::ActorProviders("bob".into()),
            Invalidation::Server,
            Invalidation::AllPublic,
        ];
        assert_eq!(decode(&encode(&batch)), batch);
        assert_eq!(
            decode("x\tsomething new\nc\talice@p2.test\n"),
            vec![
                Invalidation::AllPublic,
                Invalidation::ActorCerts("alice@p2.test".into())
            ]
        );
    }

    #[test]
    fn core_ops_3_4_and_6_invalidate_and_nothing_else_does() {
        let actor = Audience::Actor {
            fid: "alice@p2.test".into(),
            except: None,
        };
        let event = |namespace: &str, op| NewEvent {
            namespace: namespace.into(),
            op,
            data_json: "{}".into(),
        };
        assert_eq!(
            derived_from_publish(&actor, &event("core", 4)),
            vec![Invalidation::ActorCerts("alice@p2.test".into())]
        );
        assert_eq!(
            derived_from_publish(&Audience::Server, &event("core", 6)),
            vec![Invalidation::Server]
        );
        assert!(derived_from_publish(&actor, &event("core", 1)).is_empty());
        assert!(derived_from_publish(&actor, &event("chat", 4)).is_empty());
    }

    #[tokio::test]
    async fn a_feed_goes_live_with_its_source_and_ends_when_it_is_lost() {
        let hub = Hub::new(false);
        let stop = CancellationToken::new();
        let mut feed = hub.watch(stop.clone());
        // Not live yet: nothing, even when batches are delivered meanwhile.
        hub.deliver(vec![Invalidation::Server].into());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), feed.recv())
                .await
                .is_err()
        );
        hub.source_up();
        assert!(matches!(next(&mut feed).await, Ok(Notice::Live)));
        let batch: Batch = vec![Invalidation::AllPublic].into();
        hub.deliver(batch.clone());
        match next(&mut feed).await {
            Ok(Notice::Batch(got)) => assert_eq!(got, batch),
            other => panic!("expected the batch, got {other:?}"),
        }
        hub.source_down();
        assert!(next(&mut feed).await.unwrap_err().contains("interrupted"));
        // A new feed waits for the source again, then goes live.
        let mut again = hub.watch(stop.clone());
        hub.source_up();
        assert!(matches!(next(&mut again).await, Ok(Notice::Live)));
        stop.cancel();
        assert!(
            next(&mut again)
                .await
                .unwrap_err()
                .contains("shutting down")
        );
    }

    #[tokio::test]
    async fn a_feed_that_falls_too_far_behind_ends() {
        let hub = Hub::new(true);
        let mut feed = hub.watch(CancellationToken::new());
        assert!(matches!(next(&mut feed).await, Ok(Notice::Live)));
        // The feed's task forwards into a 16-slot channel nobody reads: it stalls, and the
        // hub's buffer overruns under it.
        for _ in 0..(BUFFER + 64) {
            hub.deliver(vec![Invalidation::Server].into());
        }
        let mut ended = false;
        for _ in 0..64 {
            match next(&mut feed).await {
                Ok(_) => {}
                Err(error) => {
                    assert!(error.contains("behind"), "{error}");
                    ended = true;
                    break;
                }
            }
        }
        assert!(ended, "the lagging feed ended");
    }
}
