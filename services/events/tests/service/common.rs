//! Helpers shared by the service tests: stores under fresh prefixes, events, streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2_events::EventLog;
use p2_events::feed::{Feed, FeedItem};
use p2_events::model::{Audience, Event, NewEvent, SessionKey};
use p2_events::store::{EventStore, Limits, MemoryEventStore, RedisEventStore};
use p2_events::wake::Wakeups;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen (generous: Redis tests share two
/// cores with everything else).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// P2_TEST_REDIS_URL (set by scripts/test.sh; the test fails without it).
pub fn redis_url() -> String {
    std::env::var("P2_TEST_REDIS_URL")
        .expect("P2_TEST_REDIS_URL is not set: run the tests through scripts/test.sh")
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh Redis key prefix.
pub fn redis_prefix() -> String {
    format!("{}:", unique("p2test:events"))
}

/// An in-process log with `limits`.
pub fn memory_log(limits: Limits) -> EventLog {
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new(limits, Wakeups::new()));
    EventLog::new(store, CancellationToken::new())
}

/// A Redis store under `prefix` at `url`.
pub async fn redis_store(url: &str, prefix: &str, limits: Limits) -> Arc<RedisEventStore> {
    let store = RedisEventStore::connect(url, prefix, limits, CancellationToken::new())
        .await
        .unwrap();
    let store = Arc::new(store);
    wait_subscribed(&store, 1).await;
    store
}

/// Waits until `store`'s Pub/Sub listener subscribed `times` times.
pub async fn wait_subscribed(store: &RedisEventStore, times: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while store.subscriptions() < times {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Pub/Sub listener never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A log over a Redis store under `prefix`.
pub fn log_over(store: Arc<RedisEventStore>) -> EventLog {
    let store: Arc<dyn EventStore> = store;
    EventLog::new(store, CancellationToken::new())
}

/// A Redis log with `limits` under a fresh prefix.
pub async fn redis_log(limits: Limits) -> EventLog {
    log_over(redis_store(&redis_url(), &redis_prefix(), limits).await)
}

/// A session (FID, session ID), checked like a request's.
pub fn session(fid: &str, sid: &str) -> SessionKey {
    SessionKey::parse(fid, sid).unwrap()
}

/// A core event with opcode `op` and `{"i": i}` as data.
pub fn event(op: u16, i: u64) -> NewEvent {
    NewEvent::parse("core", u32::from(op), &format!("{{\"i\":{i}}}")).unwrap()
}

/// A fresh idempotency key.
pub fn key() -> String {
    unique("outbox")
}

/// The actor audience of `fid`.
pub fn actor(fid: &str) -> Audience {
    Audience::Actor {
        fid: fid.to_owned(),
        except: None,
    }
}

/// Publishes `count` events to `session` alone (data `{"i": 1..=count}`).
pub async fn publish_to(log: &EventLog, session: &SessionKey, count: u64) {
    for i in 1..=count {
        let reached = log
            .publish(Audience::Session(session.clone()), event(9, i), key())
            .await
            .unwrap();
        assert_eq!(reached, 1, "event {i} to {session}");
    }
}

/// The positions of `events`.
pub fn positions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// The next message of `feed` (within [`PATIENCE`]).
pub async fn next(feed: &mut Feed) -> FeedItem {
    match tokio::time::timeout(PATIENCE, feed.recv()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(error))) => panic!("the stream failed: {error:?}"),
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("nothing arrived within {PATIENCE:?}"),
    }
}

/// The next message of `feed`, which must be an event; its position.
pub async fn next_position(feed: &mut Feed) -> u64 {
    match next(feed).await {
        FeedItem::Event(event) => event.position,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Asserts nothing arrives on `feed` for a while.
pub async fn quiet(feed: &mut Feed) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), feed.recv()).await {
        panic!("expected nothing, got {item:?}");
    }
}

/// Asserts `feed` has ended (within [`PATIENCE`]).
pub async fn ended(feed: &mut Feed) {
    match tokio::time::timeout(PATIENCE, feed.recv()).await {
        Ok(None) => {}
        Ok(Some(item)) => panic!("expected the end, got {item:?}"),
        Err(_) => panic!("the stream did not end within {PATIENCE:?}"),
    }
}

/// A TCP forwarder to `target` on a fixed local port; cutting it closes the listener and
/// every forwarded connection.
pub struct Proxy {
    pub port: u16,
    target: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    pub async fn start(port: u16, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port,
            target,
            tasks,
        }
    }

    /// Closes the listener and every connection.
    pub async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        *self = Self::start(self.port, self.target).await;
    }
}

/// The address in a `redis://HOST:PORT/` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split(['/', '?']).next().unwrap();
    host_port.parse().unwrap()
}
