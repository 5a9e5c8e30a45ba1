//! The outbox against real SQLite and real PostgreSQL and a fake events service on loopback:
//! rows live and die with their transaction, the relay delivers in order and deletes, retries
//! through failures and outages without losing or reordering anything, the bound drops the
//! oldest rows, rows that can never be sent do not block the rest, and one relay per database
//! sends at a time. Short relay intervals instead of paused time (the databases are real).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use p2_outbox::testing::{Call, FakeEvents};
use p2_outbox::{Message, Outbox, Relay, RelayOptions};
use p2_proto::events::v1::events_client::EventsClient;
use p2_runtime::internal::{Component, InternalKey};
use p2_runtime::storage::{Database, Migration};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: p2_outbox::MIGRATION_DESCRIPTION,
    sql: p2_outbox::MIGRATION_SQL,
}];

const WAIT: Duration = Duration::from_secs(10);

async fn sqlite(dir: &tempfile::TempDir) -> Database {
    let url = p2_runtime::storage::sqlite_url_in(dir.path(), "outbox");
    p2_runtime::storage::connect(&url, "outboxtest", MIGRATIONS)
        .await
        .unwrap()
}

async fn postgres() -> Database {
    let url = p2_runtime::storage::fresh_test_postgres_database("outbox")
        .await
        .unwrap();
    p2_runtime::storage::connect(&url, "outboxtest", MIGRATIONS)
        .await
        .unwrap()
}

fn fast() -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(50),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(80),
        lease: Duration::from_secs(2),
        batch: 2,
        call_timeout: Duration::from_secs(2),
    }
}

fn client(url: &str, key: &InternalKey) -> EventsClient<p2_runtime::grpc::TracedChannel> {
    EventsClient::new(p2_runtime::grpc::channel(url, &key.credential(Component::Session)).unwrap())
}

fn opened(n: usize) -> Message {
    Message::open_session("alice@example.com", &format!("s{n}"))
}

fn published(n: usize) -> Message {
    Message::core_event(
        p2_outbox::message::actor_audience("alice@example.com", Some("s0")),
        3,
        format!(r#"{{"cert":"{n}"}}"#),
    )
}

/// Queues `messages` in one committed transaction.
async fn commit(db: &Database, outbox: &Outbox, messages: Vec<Message>) {
    let mut tx = db.pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
    outbox.wake();
}

/// What the fake saw, as the messages they were queued as (idempotency keys blanked).
fn as_messages(calls: &[Call]) -> Vec<Message> {
    calls
        .iter()
        .map(|call| match call {
            Call::Publish(request) => Message::Publish(p2_proto::events::v1::PublishRequest {
                idempotency_key: String::new(),
                ..request.clone()
            }),
            Call::OpenSession(request) => Message::OpenSession(request.clone()),
            Call::CloseSession(request) => Message::CloseSession(request.clone()),
        })
        .collect()
}

async fn wait_until_empty(db: &Database) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !p2_outbox::pending(db).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows_commit_with_their_transaction_and_vanish_with_a_rollback(db: Database) {
    let outbox = Outbox::new("test", 100);
    // Dropped without a commit: what a cancelled request leaves.
    {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .enqueue(&mut tx, vec![opened(1), published(1)])
            .await
            .unwrap();
    }
    assert!(p2_outbox::pending(&db).await.unwrap().is_empty());
    commit(&db, &outbox, vec![opened(1), published(1)]).await;
    let rows = p2_outbox::pending(&db).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].message, Some(opened(1)));
    let Some(Message::Publish(publish)) = &rows[1].message else {
        panic!("not a publish: {:?}", rows[1].message);
    };
    // The row's key travels as the Publish's idempotency key.
    assert_eq!(publish.idempotency_key, rows[1].idempotency_key);
    assert_eq!(rows[1].idempotency_key.len(), 32);
    assert!(
        rows[1]
            .idempotency_key
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
    );
    assert_ne!(rows[0].idempotency_key, rows[1].idempotency_key);
    assert!(rows[0].seq < rows[1].seq);
    for row in &rows {
        assert_eq!(row.attempts, 0);
        assert!(row.next_attempt_at <= p2_runtime::internal::unix_now_ms());
        assert!(row.created_at > 0);
    }
}

async fn the_relay_delivers_in_order_and_deletes(db: Database) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    let outbox = Outbox::new("test", 100);
    let mut expected = Vec::new();
    // Queued before the relay starts, and while it runs; more than a batch.
    for n in 0..3 {
        let batch = vec![opened(n), published(n)];
        expected.extend(batch.clone());
        commit(&db, &outbox, batch).await;
    }
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), outbox.clone(), client(&events.url, &key))
        .with_options(fast())
        .spawn(stop.clone());
    for n in 3..5 {
        let batch = vec![published(n), opened(n)];
        expected.extend(batch.clone());
        commit(&db, &outbox, batch).await;
    }
    let calls = events.wait_for(expected.len(), WAIT).await;
    assert_eq!(as_messages(&calls), expected);
    wait_until_empty(&db).await;
    assert_eq!(outbox.stats().delivered(), 10);
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

async fn the_relay_retries_failures_and_delivers_everything_in_order_once_they_end(db: Database) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    events.fail_with(Some(Code::Unimplemented));
    let outbox = Outbox::new("test", 100);
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), outbox.clone(), client(&events.url, &key))
        .with_options(fast())
        .spawn(stop.clone());
    let expected = vec![opened(1), published(1), opened(2)];
    commit(&db, &outbox, expected[..2].to_vec()).await;
    commit(&db, &outbox, expected[2..].to_vec()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.attempts() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Only the head was tried (order over throughput), with its failures recorded.
    let rows = p2_outbox::pending(&db).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].attempts >= 3, "{rows:?}");
    assert_eq!(rows[1].attempts, 0);
    events.fail_with(Some(Code::Unavailable));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(events.calls().is_empty());
    events.fail_with(None);
    let calls = events.wait_for(3, WAIT).await;
    assert_eq!(as_messages(&calls), expected);
    wait_until_empty(&db).await;
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

async fn an_unreachable_events_service_is_retried_until_it_comes_back(db: Database) {
    let key = InternalKey::generate();
    // A port with nothing behind it, for now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let outbox = Outbox::new("test", 100);
    let stop = CancellationToken::new();
    let relay = Relay::new(
        db.clone(),
        outbox.clone(),
        client(&format!("http://{addr}"), &key),
    )
    .with_options(fast())
    .spawn(stop.clone());
    let expected = vec![opened(1), published(1), published(2)];
    commit(&db, &outbox, expected.clone()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rows = p2_outbox::pending(&db).await.unwrap();
    assert_eq!(rows.len(), 3, "nothing may be lost while it is down");
    assert!(rows[0].attempts >= 1);
    // It comes back on the same address.
    let events = FakeEvents::serve(tokio::net::TcpListener::bind(addr).await.unwrap(), &key);
    let calls = events.wait_for(3, WAIT).await;
    assert_eq!(as_messages(&calls), expected);
    wait_until_empty(&db).await;
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

async fn at_the_bound_the_oldest_undelivered_rows_are_dropped(db: Database) {
    let outbox = Outbox::new("test", 3);
    for n in 0..5 {
        commit(&db, &outbox, vec![published(n)]).await;
    }
    let rows = p2_outbox::pending(&db).await.unwrap();
    let kept: Vec<_> = rows.iter().map(|r| r.message.clone().unwrap()).collect();
    let kept: Vec<_> = kept
        .into_iter()
        .map(|m| match m {
            Message::Publish(p) => p.event.unwrap().data_json,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kept,
        [r#"{"cert":"2"}"#, r#"{"cert":"3"}"#, r#"{"cert":"4"}"#]
    );
    assert_eq!(outbox.stats().dropped(), 2);
    // One transaction larger than the bound keeps its newest rows.
    commit(&db, &outbox, (10..15).map(published).collect()).await;
    assert_eq!(p2_outbox::pending(&db).await.unwrap().len(), 3);
    assert_eq!(outbox.stats().dropped(), 7);
}

async fn rows_that_can_never_be_sent_are_dropped_and_the_rest_go_on(db: Database) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    let outbox = Outbox::new("test", 100);
    // A row of some other version: an RPC this build does not know.
    sqlx::query(
        "INSERT INTO event_outbox (idempotency_key, seq, rpc, request, created_at, attempts, \
         next_attempt_at) VALUES ('00', 0, 'subscribe', '', 0, 0, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    events.fail_with(Some(Code::InvalidArgument));
    commit(&db, &outbox, vec![published(1)]).await;
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), outbox.clone(), client(&events.url, &key))
        .with_options(fast())
        .spawn(stop.clone());
    wait_until_empty(&db).await;
    assert_eq!(outbox.stats().rejected(), 2);
    events.fail_with(None);
    commit(&db, &outbox, vec![published(2)]).await;
    let calls = events.wait_for(1, WAIT).await;
    assert_eq!(as_messages(&calls), [published(2)]);
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

async fn one_relay_sends_at_a_time_and_a_stopped_one_hands_over(db: Database) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    // Two replicas of one publisher: one database, a relay each. A lease far longer than the
    // test: the first relay keeps it until it gives it up.
    let options = RelayOptions {
        lease: Duration::from_secs(30),
        ..fast()
    };
    let first = Outbox::new("test", 1000);
    let second = Outbox::new("test", 1000);
    let stop_first = CancellationToken::new();
    let stop_second = CancellationToken::new();
    let relay_first = Relay::new(db.clone(), first.clone(), client(&events.url, &key))
        .with_options(options.clone())
        .spawn(stop_first.clone());
    commit(&db, &first, vec![opened(0)]).await;
    events.wait_for(1, WAIT).await;
    let relay_second = Relay::new(db.clone(), second.clone(), client(&events.url, &key))
        .with_options(options.clone())
        .spawn(stop_second.clone());
    let mut expected = vec![opened(0)];
    for n in 1..21 {
        let (outbox, message) = if n % 2 == 0 {
            (&first, opened(n))
        } else {
            (&second, published(n))
        };
        expected.push(message.clone());
        commit(&db, outbox, vec![message]).await;
    }
    let calls = events.wait_for(expected.len(), WAIT).await;
    wait_until_empty(&db).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Exactly once each, in order: never two senders.
    assert_eq!(as_messages(&events.calls()), expected, "{calls:?}");
    assert_eq!(second.stats().delivered(), 0);
    // The holder stops cleanly and gives the lease up: the other one goes on at its next
    // poll, long before the lease would have run out.
    stop_first.cancel();
    tokio::time::timeout(WAIT, relay_first)
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    commit(&db, &second, vec![opened(99)]).await;
    let calls = events.wait_for(expected.len() + 1, WAIT).await;
    assert_eq!(as_messages(&calls).last(), Some(&opened(99)));
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(second.stats().delivered(), 1);
    stop_second.cancel();
    tokio::time::timeout(WAIT, relay_second)
        .await
        .unwrap()
        .unwrap();
}

async fn a_relay_stops_promptly_even_while_the_events_service_fails(db: Database) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    events.fail_with(Some(Code::Unavailable));
    let outbox = Outbox::new("test", 100);
    commit(&db, &outbox, vec![opened(1)]).await;
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), outbox.clone(), client(&events.url, &key))
        .with_options(RelayOptions {
            max_backoff: Duration::from_secs(30),
            ..fast()
        })
        .spawn(stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), relay)
        .await
        .expect("the relay did not stop")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // Its row waits for the next start.
    assert_eq!(p2_outbox::pending(&db).await.unwrap().len(), 1);
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::sqlite(&dir).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::postgres().await).await;
                }
            }
        )*
    };
}

on_both_databases!(
    rows_commit_with_their_transaction_and_vanish_with_a_rollback,
    the_relay_delivers_in_order_and_deletes,
    the_relay_retries_failures_and_delivers_everything_in_order_once_they_end,
    an_unreachable_events_service_is_retried_until_it_comes_back,
    at_the_bound_the_oldest_undelivered_rows_are_dropped,
    rows_that_can_never_be_sent_are_dropped_and_the_rest_go_on,
    one_relay_sends_at_a_time_and_a_stopped_one_hands_over,
    a_relay_stops_promptly_even_while_the_events_service_fails,
);
