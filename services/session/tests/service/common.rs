//! Helpers shared by the service tests: real databases, real Redis, handler sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2_proto::events::v1::events_client::EventsClient;
use p2_proto::identity::v1::identity_client::IdentityClient;
use p2_runtime::grpc::TracedChannel;
use p2_runtime::internal::{Component, InternalKey};
use p2_session::SessionGrpc;
use p2_session::storage::{ChallengeStore, MIGRATIONS, MemoryChallengeStore, SessionStore};

/// A URL where nothing listens: identity calls fail with UNAVAILABLE at once.
pub const DEAD_IDENTITY_URL: &str = "http://127.0.0.1:1";
/// A URL where nothing listens, for handlers whose outbox relay is not under test.
pub const DEAD_EVENTS_URL: &str = "http://127.0.0.1:1";

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

/// A fresh, migrated SQLite session store in its own temp dir.
pub async fn sqlite_store() -> (SessionStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = p2_runtime::storage::sqlite_url_in(dir.path(), "session");
    let db = p2_runtime::storage::connect(&url, "session", MIGRATIONS)
        .await
        .unwrap();
    (SessionStore::new(db), dir)
}

/// Like [`sqlite_store`], with the embedded mode's in-memory token index.
pub async fn sqlite_indexed_store() -> (SessionStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = p2_runtime::storage::sqlite_url_in(dir.path(), "session");
    let db = p2_runtime::storage::connect(&url, "session", MIGRATIONS)
        .await
        .unwrap();
    (SessionStore::with_memory_index(db).await.unwrap(), dir)
}

/// A fresh, migrated PostgreSQL session store in its own database, created from
/// P2_TEST_POSTGRES_URL (set by scripts/test.sh; the test fails without it).
pub async fn postgres_store() -> SessionStore {
    let url = p2_runtime::storage::fresh_test_postgres_database("session")
        .await
        .unwrap();
    let db = p2_runtime::storage::connect(&url, "session", MIGRATIONS)
        .await
        .unwrap();
    SessionStore::new(db)
}

/// P2_TEST_REDIS_URL (set by scripts/test.sh; the test fails without it).
pub fn redis_url() -> String {
    std::env::var("P2_TEST_REDIS_URL")
        .expect("P2_TEST_REDIS_URL is not set: run the tests through scripts/test.sh")
}

/// An identity client over a lazily connecting channel, presenting the session component's
/// credential of the deployment whose internal key is `key` (as the session service does).
pub fn identity_client(url: &str, key: &InternalKey) -> IdentityClient<TracedChannel> {
    IdentityClient::new(
        p2_runtime::grpc::channel(url, &key.credential(Component::Session)).unwrap(),
    )
}

/// An events client over a lazily connecting channel, presenting the session component's
/// credential of the deployment whose internal key is `key` (as the session's relay does).
pub fn events_client(url: &str, key: &InternalKey) -> EventsClient<TracedChannel> {
    EventsClient::new(p2_runtime::grpc::channel(url, &key.credential(Component::Session)).unwrap())
}

/// Handlers of the deployment whose internal key is `key`, over a fresh SQLite store, the
/// in-process challenge store, and identity at `identity_url` (events: nowhere).
pub async fn service_with_identity(
    key: InternalKey,
    identity_url: &str,
    challenge_ttl: Duration,
) -> (SessionGrpc, tempfile::TempDir) {
    service_with_identity_and_events(key, identity_url, DEAD_EVENTS_URL, challenge_ttl).await
}

/// Like [`service_with_identity`], the outbox relaying (when run) to `events_url`.
pub async fn service_with_identity_and_events(
    key: InternalKey,
    identity_url: &str,
    events_url: &str,
    challenge_ttl: Duration,
) -> (SessionGrpc, tempfile::TempDir) {
    let (store, dir) = sqlite_store().await;
    let challenges: Arc<dyn ChallengeStore> = Arc::new(MemoryChallengeStore::default());
    let identity = identity_client(identity_url, &key);
    let events = events_client(events_url, &key);
    let grpc = SessionGrpc::new(key, store, challenges, identity, events, challenge_ttl)
        .with_federation(
            "example.com",
            p2_session::federation::Federation::in_memory().unwrap(),
        )
        .unwrap();
    (grpc, dir)
}

/// Handlers whose identity service is unreachable.
pub async fn service_without_identity() -> (SessionGrpc, tempfile::TempDir) {
    service_with_identity(
        InternalKey::generate(),
        DEAD_IDENTITY_URL,
        Duration::from_secs(300),
    )
    .await
}

/// A fake identity and handlers that call it, both of one fresh deployment (one internal key).
pub async fn service_with_fake_identity() -> (
    crate::fake_identity::Running,
    SessionGrpc,
    tempfile::TempDir,
) {
    let key = InternalKey::generate();
    let identity = crate::fake_identity::start(&key).await;
    let (grpc, dir) = service_with_identity(key, &identity.url, Duration::from_secs(300)).await;
    (identity, grpc, dir)
}
