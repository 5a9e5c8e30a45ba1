//! The events the identity service causes, against real SQLite and real PostgreSQL: op 4 for
//! every early revocation (deletion, renewal, revoke-all) and op 6 for every key generation
//! after the first, queued in the identity database's outbox in the transaction of the change
//! (exactly these rows after a success, none after a failure or a cancellation), with the
//! payloads the gateway passes on; and relayed to a fake events service.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use p2_identity::actors::Registrant;
use p2_outbox::Message;
use p2_outbox::message::{actor_audience, server_audience};
use p2_outbox::testing::{Call, FakeEvents};
use p2_proto::common::v1::CallerAssertion;
use p2_proto::identity::v1 as pb;
use p2_proto::identity::v1::identity_server::Identity as _;
use p2_runtime::internal::InternalKey;
use tonic::Code;

const KEK: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";
const PASSWORD: &str = "alice password 1";
const WAIT: Duration = Duration::from_secs(10);

async fn sqlite_url(dir: &tempfile::TempDir) -> String {
    p2_runtime::storage::sqlite_url_in(dir.path(), "identity")
}

async fn postgres_url() -> String {
    p2_runtime::storage::fresh_test_postgres_database("idevents")
        .await
        .unwrap()
}

/// An identity service of the deployment `key` on `database_url`, relaying to `events_url`.
async fn open(
    database_url: String,
    key: &InternalKey,
    events_url: &str,
) -> p2_identity::IdentityState {
    let config = p2_identity::IdentityConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url,
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: None,
        redis_prefix: p2_identity::throttle::REDIS_PREFIX.into(),
        options: p2_identity::IdentityOptions {
            key_encryption_key: Some(KEK.to_owned().into()),
            ..p2_identity::IdentityOptions::for_domain("events.example")
        },
        outbox: p2_outbox::OutboxConfig::new(events_url),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(key),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
    };
    p2_identity::IdentityState::open(&config).await.unwrap()
}

/// Alice, registered, with a login cert for each of `sessions`; returns her FID.
async fn alice_with(
    state: &p2_identity::IdentityState,
    sessions: &[&str],
) -> p2_model::FederationId {
    let alice = state
        .register(
            "alice",
            PASSWORD.into(),
            Registrant::Operator { admin: true },
        )
        .await
        .unwrap();
    for session in sessions {
        state
            .issue_login_cert("alice", PASSWORD.into(), &csr(&alice, session), None)
            .await
            .unwrap();
    }
    alice
}

fn csr(fid: &p2_model::FederationId, session: &str) -> Vec<u8> {
    let key = p2_model::generate_signing_key();
    let session = p2_model::SessionId::parse(session).unwrap();
    p2_model::build_csr(&key, fid, &session)
        .unwrap()
        .into_bytes()
}

fn session(id: &str) -> p2_model::SessionId {
    p2_model::SessionId::parse(id).unwrap()
}

async fn queued(state: &p2_identity::IdentityState) -> Vec<Message> {
    p2_outbox::pending(state.store().database())
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.message.expect("every row decodes"))
        .collect()
}

/// `(audience, op, d)` of a queued Publish.
fn published(message: &Message) -> (p2_proto::events::v1::Audience, u32, serde_json::Value) {
    let Message::Publish(request) = message else {
        panic!("not a publish: {message:?}");
    };
    let event = request.event.as_ref().unwrap();
    assert_eq!(event.namespace, "core");
    (
        request.audience.clone().unwrap(),
        event.op,
        serde_json::from_str(&event.data_json).unwrap(),
    )
}

/// Checks an op 4 `d` against the revoked `cert` of `session_id`, revoked at `since`.
fn check_invalidation(
    state: &p2_identity::IdentityState,
    message: &Message,
    session_id: &str,
    cert: &p2_identity::store::CertRow,
) {
    let (audience, op, d) = published(message);
    assert_eq!(op, 4);
    assert_eq!(
        audience,
        actor_audience("alice@events.example", Some(session_id))
    );
    let since = cert.invalidated_at.unwrap();
    let text = |key: &str| {
        d[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {d}"))
            .to_owned()
    };
    // The spec's fields (u64 as decimal strings, API.md "Wire dialect")...
    assert_eq!(text("serial"), cert.serial);
    assert_eq!(text("invalidSince"), since.to_string());
    // ...signed by the server's current key over invalidSince ‖ serial.
    let current = state.keyring().current().unwrap();
    p2_model::verify_hex(
        &current.cert.public_key().unwrap(),
        format!("{since}{}", cert.serial).as_bytes(),
        &text("signature"),
    )
    .unwrap();
    // ...and the revoked cert as the gateway renders a CacheableIdCert, its cache signature
    // covering the revocation.
    assert_eq!(text("idCertPem"), cert.cert_pem);
    assert_eq!(text("id_cert"), cert.cert_pem);
    assert_eq!(d["invalidated"], serde_json::Value::Bool(true));
    assert_eq!(text("invalidatedAt"), since.to_string());
    let nb: u64 = text("cacheNotValidBefore").parse().unwrap();
    let na: u64 = text("cacheNotValidAfter").parse().unwrap();
    assert!(nb < na && na - nb <= 12 * 3600);
    let issuer = state.keyring().by_number(cert.generation).unwrap();
    p2_model::verify_cache_signature(
        &issuer.cert.public_key().unwrap(),
        &cert.serial,
        nb,
        na,
        Some(u64::try_from(since).unwrap()),
        &text("cacheSignature"),
    )
    .unwrap();
    let mut keys: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cacheNotValidAfter",
            "cacheNotValidBefore",
            "cacheSignature",
            "idCertPem",
            "id_cert",
            "invalidSince",
            "invalidated",
            "invalidatedAt",
            "serial",
            "signature",
        ]
    );
}

async fn logins_queue_nothing_and_a_revocation_queues_op_4_for_the_others(url: String) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    // The first key generation is no change of the server cert; new sessions are the session
    // service's to announce.
    let alice = alice_with(&state, &["laptop", "phone"]).await;
    assert_eq!(queued(&state).await, []);
    let revoked = state.revoke(&alice, &session("phone")).await.unwrap();
    let rows = queued(&state).await;
    assert_eq!(rows.len(), 1);
    check_invalidation(&state, &rows[0], "phone", &revoked);
    // Nothing left to revoke: refused, nothing queued.
    assert!(state.revoke(&alice, &session("phone")).await.is_err());
    assert!(state.revoke(&alice, &session("ghost")).await.is_err());
    assert_eq!(queued(&state).await.len(), 1);
}

async fn a_renewal_queues_op_4_for_the_old_cert_except_the_renewing_session(url: String) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    let alice = alice_with(&state, &["laptop"]).await;
    let renewed = state
        .sign_for(
            &alice,
            &session("laptop"),
            &csr(&alice, "laptop"),
            PASSWORD,
            None,
        )
        .await
        .unwrap();
    let old = renewed.replaced.unwrap();
    let rows = queued(&state).await;
    assert_eq!(rows.len(), 1);
    check_invalidation(&state, &rows[0], "laptop", &old);
    // Another session ID: a new session, no revocation.
    state
        .sign_for(
            &alice,
            &session("laptop"),
            &csr(&alice, "phone"),
            PASSWORD,
            None,
        )
        .await
        .unwrap();
    assert_eq!(queued(&state).await.len(), 1);
}

async fn revoking_every_cert_queues_op_4_for_each(url: String) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    let alice = alice_with(&state, &["a", "b", "c"]).await;
    state.revoke(&alice, &session("b")).await.unwrap();
    let all = state.revoke_all(&alice).await.unwrap();
    assert_eq!(all.len(), 2);
    let rows = queued(&state).await;
    assert_eq!(rows.len(), 3);
    for (message, cert) in rows[1..].iter().zip(&all) {
        check_invalidation(&state, message, &cert.session_id, cert);
    }
    assert!(state.revoke_all(&alice).await.unwrap().is_empty());
    assert_eq!(queued(&state).await.len(), 3);
}

async fn a_rotation_queues_op_6_with_the_new_root(url: String) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    alice_with(&state, &["laptop"]).await;
    // The operator's rotation (`polyproto admin rotate-key`)...
    let (generation, since) = state.rotate_now().await.unwrap();
    // ...and an admin's, over the RPC.
    let grpc = p2_identity::grpc::IdentityGrpc::new(state.clone());
    let answer = grpc
        .rotate_server_key(tonic::Request::new(pb::RotateServerKeyRequest {
            caller: Some(CallerAssertion {
                token: key.assertion_key().mint(
                    "alice@events.example",
                    "laptop",
                    p2_runtime::internal::unix_now_ms() + 60_000,
                ),
            }),
            sensitive_solution: PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let rows = queued(&state).await;
    assert_eq!(rows.len(), 2);
    let expected = [
        (generation.cert_pem.clone(), since),
        (
            answer.cert.unwrap().id_cert_pem,
            answer.previous_invalid_since,
        ),
    ];
    for (message, (pem, since)) in rows.iter().zip(expected) {
        let (audience, op, d) = published(message);
        assert_eq!(audience, server_audience());
        assert_eq!(op, 6);
        assert_eq!(
            d,
            serde_json::json!({ "cert": pem, "oldInvalidSince": since.to_string() })
        );
    }
    // A refused rotation (wrong solution) stores no key and queues nothing.
    let refused = grpc
        .rotate_server_key(tonic::Request::new(pb::RotateServerKeyRequest {
            caller: Some(CallerAssertion {
                token: key.assertion_key().mint(
                    "alice@events.example",
                    "laptop",
                    p2_runtime::internal::unix_now_ms() + 60_000,
                ),
            }),
            sensitive_solution: "wrong".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(queued(&state).await.len(), 2);
    assert_eq!(state.keyring().all().len(), 3);
}

async fn a_revocation_whose_event_cannot_be_queued_does_not_happen(url: String) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    let alice = alice_with(&state, &["laptop"]).await;
    // The outbox breaks: the revocation fails as a whole, the cert stays valid.
    sqlx::query("DROP TABLE event_outbox")
        .execute(&state.store().database().pool)
        .await
        .unwrap();
    assert!(state.revoke(&alice, &session("laptop")).await.is_err());
    let certs = state
        .certs_of(&alice, p2_identity::actors::CertQuery::default())
        .await
        .unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].invalidated_at, None);
}

/// Revocations cut off at every point (the future dropped) leave the revocation and its op 4
/// together, or neither.
async fn a_cancelled_revocation_leaves_the_revocation_and_its_event_together_or_neither(
    url: String,
) {
    let key = InternalKey::generate();
    let state = open(url, &key, "http://127.0.0.1:1").await;
    let names: Vec<String> = (0..20).map(|n| format!("s{n}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let alice = alice_with(&state, &refs).await;
    let (mut cut, mut whole) = (0, 0);
    for (step, name) in names.iter().enumerate() {
        let step = u64::try_from(step).unwrap();
        let target = session(name);
        let revocation = state.revoke(&alice, &target);
        let _ = tokio::time::timeout(Duration::from_micros(step * step * 20), revocation).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cert = state
            .certs_of(
                &alice,
                p2_identity::actors::CertQuery {
                    session_id: Some(session(name)),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .remove(0);
        let events = queued(&state)
            .await
            .iter()
            .filter(|m| published(m).0 == actor_audience("alice@events.example", Some(name)))
            .count();
        let revoked = cert.invalidated_at.is_some();
        assert_eq!(
            events,
            usize::from(revoked),
            "step {step}: revoked {revoked}"
        );
        if revoked {
            whole += 1;
        } else {
            cut += 1;
        }
    }
    assert!(cut > 0 && whole > 0, "{cut} revocations cut, {whole} not");
}

async fn the_relay_delivers_identitys_events_with_its_own_credential(url: String) {
    let key = InternalKey::generate();
    let events = FakeEvents::start(&key).await.unwrap();
    events.fail_with(Some(Code::Unimplemented));
    let state = open(url, &key, &events.url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = state
        .relay()
        .with_options(p2_outbox::RelayOptions {
            poll_interval: Duration::from_millis(50),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(80),
            lease: Duration::from_secs(2),
            batch: 10,
            call_timeout: Duration::from_secs(2),
        })
        .spawn(stop.clone());
    let alice = alice_with(&state, &["laptop", "phone"]).await;
    state.revoke(&alice, &session("phone")).await.unwrap();
    state.rotate_now().await.unwrap();
    let expected = queued(&state).await;
    assert_eq!(expected.len(), 2);
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.attempts() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    events.fail_with(None);
    let calls = events.wait_for(2, WAIT).await;
    let received: Vec<_> = calls
        .iter()
        .map(|call| match call {
            Call::Publish(request) => Message::Publish(request.clone()),
            other => panic!("identity only publishes: {other:?}"),
        })
        .collect();
    // In order, with the rows' idempotency keys; the fake admits Publish from identity.
    assert_eq!(received, expected);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !queued(&state).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered rows stay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::sqlite_url(&dir).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::postgres_url().await).await;
                }
            }
        )*
    };
}

on_both_databases!(
    logins_queue_nothing_and_a_revocation_queues_op_4_for_the_others,
    a_renewal_queues_op_4_for_the_old_cert_except_the_renewing_session,
    revoking_every_cert_queues_op_4_for_each,
    a_rotation_queues_op_6_with_the_new_root,
    a_revocation_whose_event_cannot_be_queued_does_not_happen,
    a_cancelled_revocation_leaves_the_revocation_and_its_event_together_or_neither,
    the_relay_delivers_identitys_events_with_its_own_credential,
);
