//! The events the session service causes: queued in the session database's outbox in the
//! transaction of the session write (exactly the expected rows after a success, none after a
//! failure or a cancellation), and relayed to a fake events service, in order, through its
//! failures.

use std::time::Duration;

use p2_model::{FederationId, SessionId};
use p2_outbox::message::actor_audience;
use p2_outbox::testing::{Call, FakeEvents};
use p2_outbox::{Message, RelayOptions};
use p2_proto::common::v1::CallerAssertion;
use p2_proto::events::v1 as events;
use p2_runtime::internal::{InternalKey, unix_now_ms};
use p2_session::storage::SessionStore;
use p2_session::token::SessionToken;
use p2_session::{Caller, SessionGrpc};
use tonic::Code;

use crate::common::service_with_identity_and_events;
use crate::fake_identity::{self, ALICE, PASSWORD};

const WAIT: Duration = Duration::from_secs(10);

fn fast() -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(50),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(80),
        lease: Duration::from_secs(2),
        batch: 3,
        call_timeout: Duration::from_secs(2),
    }
}

/// A fake identity, a fake events service and handlers calling both, of one deployment.
async fn deployment() -> (
    fake_identity::Running,
    FakeEvents,
    SessionGrpc,
    tempfile::TempDir,
) {
    let key = InternalKey::generate();
    let identity = fake_identity::start(&key).await;
    let events = FakeEvents::start(&key).await.unwrap();
    let (grpc, dir) =
        service_with_identity_and_events(key, &identity.url, &events.url, Duration::from_secs(300))
            .await;
    (identity, events, grpc, dir)
}

fn caller_of(grpc: &SessionGrpc, session_id: &str) -> Caller {
    let assertion = CallerAssertion {
        token: grpc
            .assertion_key()
            .mint(ALICE, session_id, unix_now_ms() + 60_000),
    };
    Caller::verify(Some(assertion), grpc.assertion_key()).unwrap()
}

/// Every queued message, in delivery order, idempotency keys blanked.
async fn queued(store: &SessionStore) -> Vec<Message> {
    p2_outbox::pending(store.database())
        .await
        .unwrap()
        .into_iter()
        .map(|row| blank(row.message.expect("every row decodes")))
        .collect()
}

fn blank(message: Message) -> Message {
    match message {
        Message::Publish(request) => Message::Publish(events::PublishRequest {
            idempotency_key: String::new(),
            ..request
        }),
        other => other,
    }
}

fn received(calls: &[Call]) -> Vec<Message> {
    calls
        .iter()
        .map(|call| match call {
            Call::Publish(request) => blank(Message::Publish(request.clone())),
            Call::OpenSession(request) => Message::OpenSession(request.clone()),
            Call::CloseSession(request) => Message::CloseSession(request.clone()),
        })
        .collect()
}

/// Op 3 as the session service must queue it: to every other session of Alice, the new
/// session's cert.
fn new_session(session_id: &str, cert_pem: &str) -> Message {
    Message::core_event(
        actor_audience(ALICE, Some(session_id)),
        3,
        serde_json::json!({ "cert": cert_pem }).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_queues_open_session_then_op_3_with_the_new_cert() {
    let (_identity, _events, grpc, _dir) = deployment().await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = grpc.password_login("alice", PASSWORD, csr).await.unwrap();
    let rows = p2_outbox::pending(grpc.sessions().database())
        .await
        .unwrap();
    assert_eq!(
        queued(grpc.sessions()).await,
        [
            Message::open_session(ALICE, "laptop"),
            new_session("laptop", &laptop.id_cert_pem),
        ]
    );
    // The exact wire shape of op 3's `d` (spec 3.2.3.4), and its key is the row's.
    let Some(Message::Publish(op3)) = &rows[1].message else {
        panic!("{rows:?}");
    };
    let event = op3.event.as_ref().unwrap();
    assert_eq!(event.namespace, "core");
    let d: serde_json::Value = serde_json::from_str(&event.data_json).unwrap();
    assert_eq!(d, serde_json::json!({ "cert": laptop.id_cert_pem }));
    assert_eq!(op3.idempotency_key, rows[1].idempotency_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_is_announced_and_a_renewal_is_not() {
    let (_identity, _events, grpc, _dir) = deployment().await;
    let (csr, _) = fake_identity::csr("laptop");
    grpc.password_login("alice", PASSWORD, csr).await.unwrap();
    let before = queued(grpc.sessions()).await.len();
    let laptop = caller_of(&grpc, "laptop");
    // POST /idcert for another session ID: a new session.
    let (csr, _) = fake_identity::csr("phone");
    let phone = grpc
        .request_id_cert(&laptop, csr, PASSWORD.into())
        .await
        .unwrap();
    // POST /idcert for the caller's own session ID: a renewal (identity queues op 4 for the
    // old cert in its own outbox); the session is opened again (idempotent), not announced.
    let (csr, _) = fake_identity::csr("laptop");
    grpc.request_id_cert(&laptop, csr, PASSWORD.into())
        .await
        .unwrap();
    assert_eq!(
        queued(grpc.sessions()).await[before..],
        [
            Message::open_session(ALICE, "phone"),
            new_session("phone", &phone.id_cert_pem),
            Message::open_session(ALICE, "laptop"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_queues_close_session_and_refusals_queue_nothing() {
    let (_identity, _events, grpc, _dir) = deployment().await;
    for session in ["laptop", "phone"] {
        let (csr, _) = fake_identity::csr(session);
        grpc.password_login("alice", PASSWORD, csr).await.unwrap();
    }
    let laptop = caller_of(&grpc, "laptop");
    let before = queued(grpc.sessions()).await.len();
    // Refused (no sensitive solution), unknown: nothing changes, nothing is queued.
    let refused = grpc
        .end_session(&laptop, Some(SessionId::parse("phone").unwrap()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, p2_session::SessionError::SensitiveActionRequired),
        "{refused:?}"
    );
    let unknown = grpc
        .end_session(
            &laptop,
            Some(SessionId::parse("ghost").unwrap()),
            Some(PASSWORD.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, p2_session::SessionError::SessionNotFound { .. }),
        "{unknown:?}"
    );
    assert!(!grpc.sessions().delete(ALICE, "ghost").await.unwrap());
    assert_eq!(queued(grpc.sessions()).await.len(), before);
    // Another session, then the caller's own.
    grpc.end_session(
        &laptop,
        Some(SessionId::parse("phone").unwrap()),
        Some(PASSWORD.into()),
    )
    .await
    .unwrap();
    grpc.end_session(&laptop, None, None).await.unwrap();
    assert_eq!(
        queued(grpc.sessions()).await[before..],
        [
            Message::close_session(ALICE, "phone"),
            Message::close_session(ALICE, "laptop"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_session_cannot_be_stored_queues_nothing() {
    let (identity, _events, grpc, _dir) = deployment().await;
    // The sessions table breaks between the password check and the token write: the write
    // fails inside its transaction, and the events of that transaction go with it.
    sqlx::query("DROP TABLE sessions")
        .execute(&grpc.sessions().database().pool)
        .await
        .unwrap();
    let (csr, _) = fake_identity::csr("laptop");
    grpc.password_login("alice", PASSWORD, csr)
        .await
        .unwrap_err();
    assert!(
        identity.issued()[0].revoked_at.is_some(),
        "the cert was undone"
    );
    assert_eq!(queued(grpc.sessions()).await, []);
}

/// Session writes cut off at every point (the future dropped, as when a caller goes away)
/// leave the session and its events together, or neither.
async fn a_cancelled_session_write_leaves_the_row_and_its_events_together_or_neither(
    store: SessionStore,
) {
    let fid = FederationId::parse(ALICE).unwrap();
    let (mut cut, mut whole) = (0, 0);
    for step in 0..40u64 {
        let session_id = SessionId::parse(&format!("s{step}")).unwrap();
        let token = SessionToken::generate();
        let write = store.put_with_events(
            fid.as_str(),
            session_id.as_str(),
            token.hash(),
            1,
            u64::MAX / 2,
            vec![new_session(session_id.as_str(), "PEM")],
        );
        if step < 8 {
            // Cut after a number of polls: certain to stop some writes midway however fast
            // the database answers (a timer cannot be shorter than its 1 ms tick).
            let mut write = std::pin::pin!(write);
            for _ in 0..=step {
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(write.as_mut().poll(cx).is_ready())
                })
                .await;
                if ready {
                    break;
                }
                tokio::task::yield_now().await;
            }
        } else {
            let _ = tokio::time::timeout(Duration::from_micros(step * step * 10), write).await;
        }
        // Let a rollback of the dropped transaction reach the database.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let stored = store
            .get(fid.as_str(), session_id.as_str())
            .await
            .unwrap()
            .is_some();
        let events: Vec<_> = queued(&store)
            .await
            .into_iter()
            .filter(|m| match m {
                Message::OpenSession(r) => {
                    r.session.as_ref().unwrap().session_id == session_id.as_str()
                }
                Message::Publish(r) => {
                    r.event.as_ref().unwrap().data_json.contains("PEM")
                        && r.audience == Some(actor_audience(ALICE, Some(session_id.as_str())))
                }
                Message::CloseSession(_) => false,
            })
            .collect();
        assert_eq!(
            events.len(),
            if stored { 2 } else { 0 },
            "step {step}: stored {stored}, events {events:?}"
        );
        if stored {
            whole += 1;
        } else {
            cut += 1;
        }
    }
    assert!(cut > 0 && whole > 0, "{cut} writes cut, {whole} not");
    // An uncut write stores both.
    let before = queued(&store).await.len();
    store
        .put_with_events(
            ALICE,
            "whole",
            SessionToken::generate().hash(),
            1,
            u64::MAX / 2,
            vec![new_session("whole", "PEM")],
        )
        .await
        .unwrap();
    assert!(store.get(ALICE, "whole").await.unwrap().is_some());
    assert_eq!(
        queued(&store).await[before..],
        [
            Message::open_session(ALICE, "whole"),
            new_session("whole", "PEM")
        ]
    );
}

mod cancelled_session_writes {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let (store, _dir) = crate::common::sqlite_store().await;
        super::a_cancelled_session_write_leaves_the_row_and_its_events_together_or_neither(store)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let store = crate::common::postgres_store().await;
        super::a_cancelled_session_write_leaves_the_row_and_its_events_together_or_neither(store)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_with_memory_index() {
        let (store, _dir) = crate::common::sqlite_indexed_store().await;
        super::a_cancelled_session_write_leaves_the_row_and_its_events_together_or_neither(store)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_delivers_the_session_events_in_order_once_the_events_service_answers() {
    let (_identity, events, grpc, _dir) = deployment().await;
    // The events service does not implement its RPCs yet: the operations go through anyway.
    events.fail_with(Some(Code::Unimplemented));
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = grpc.relay().with_options(fast()).spawn(stop.clone());
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = grpc.password_login("alice", PASSWORD, csr).await.unwrap();
    let (csr, _) = fake_identity::csr("phone");
    let phone = grpc
        .request_id_cert(&caller_of(&grpc, "laptop"), csr, PASSWORD.into())
        .await
        .unwrap();
    grpc.end_session(&caller_of(&grpc, "phone"), None, None)
        .await
        .unwrap();
    let expected = vec![
        Message::open_session(ALICE, "laptop"),
        new_session("laptop", &laptop.id_cert_pem),
        Message::open_session(ALICE, "phone"),
        new_session("phone", &phone.id_cert_pem),
        Message::close_session(ALICE, "phone"),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.attempts() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        queued(grpc.sessions()).await,
        expected,
        "nothing is lost meanwhile"
    );
    events.fail_with(Some(Code::Unavailable));
    tokio::time::sleep(Duration::from_millis(100)).await;
    events.fail_with(None);
    let calls = events.wait_for(expected.len(), WAIT).await;
    // In order, each once; the fake admits OpenSession and CloseSession from the session
    // component only, so the relay presented the session's own credential.
    assert_eq!(received(&calls), expected);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !queued(grpc.sessions()).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered rows stay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(grpc.sessions().outbox().stats().delivered(), 5);
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_bound_comes_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = p2_session::SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: None,
        redis_prefix: p2_session::storage::redis::DEFAULT_PREFIX.to_owned(),
        domain: "example.com".to_owned(),
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        outbox: p2_outbox::OutboxConfig {
            capacity: 3,
            ..p2_outbox::OutboxConfig::new(crate::common::DEAD_EVENTS_URL)
        },
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        options: p2_session::SessionOptions::default(),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(&InternalKey::generate()),
    };
    let grpc = SessionGrpc::open(&config).await.unwrap();
    assert_eq!(grpc.sessions().outbox().capacity(), 3);
    let fid = FederationId::parse(ALICE).unwrap();
    for n in 0..5 {
        grpc.issue_token(&fid, &SessionId::parse(&format!("s{n}")).unwrap())
            .await
            .unwrap();
    }
    // Every session still got its token; the outbox kept the newest three events.
    assert_eq!(grpc.sessions().list(ALICE).await.unwrap().len(), 5);
    assert_eq!(
        queued(grpc.sessions()).await,
        (2..5)
            .map(|n| Message::open_session(ALICE, &format!("s{n}")))
            .collect::<Vec<_>>()
    );
    assert_eq!(grpc.sessions().outbox().stats().dropped(), 2);
}
