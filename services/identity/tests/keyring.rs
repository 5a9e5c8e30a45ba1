//! Service tests of the identity service's key generations, against real SQLite and real
//! PostgreSQL (the same portable implementation serves both).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use p2_identity::actors::Registrant;
use p2_identity::cipher::KeyCipher;
use p2_identity::keyring::Keyring;
use p2_identity::store::{MIGRATIONS, Store};
use p2_proto::common::v1::CallerAssertion;
use p2_proto::identity::v1 as pb;
use p2_proto::identity::v1::identity_server::Identity as _;
use p2_runtime::internal::InternalKey;

/// A URL where nothing listens, for services whose outbox relay is not under test.
const DEAD_EVENTS_URL: &str = "http://127.0.0.1:1";
const KEK: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";
const YEAR: u64 = 365 * 86_400;

async fn sqlite_url(dir: &tempfile::TempDir) -> String {
    p2_runtime::storage::sqlite_url_in(dir.path(), "identity")
}

async fn postgres_url() -> String {
    p2_runtime::storage::fresh_test_postgres_database("keyring")
        .await
        .unwrap()
}

async fn open(url: &str, domain: &str, kek: &str) -> anyhow::Result<Keyring> {
    let db = p2_runtime::storage::connect(url, "identity", MIGRATIONS).await?;
    Keyring::open(
        Store::new(db),
        KeyCipher::from_hex(kek)?,
        domain.to_owned(),
        2 * YEAR,
    )
    .await
}

async fn first_start_creates_one_generation_and_restarts_reuse_it(url: String) {
    let keyring = open(&url, "example.org", KEK).await.unwrap();
    let first = keyring.current().unwrap();
    assert_eq!(first.generation, 1);
    p2_model::verify_root_cert(&first.cert, "example.org", Some(p2_runtime::unix_now())).unwrap();
    drop(keyring);
    let again = open(&url, "example.org", KEK).await.unwrap();
    assert_eq!(again.all().len(), 1);
    assert_eq!(again.current().unwrap().cert_pem, first.cert_pem);
}

async fn rotation_keeps_every_generation_retrievable_by_time(url: String) {
    let keyring = open(&url, "example.org", KEK).await.unwrap();
    let first = keyring.current().unwrap();
    let later = first.active_from + 100;
    let second = keyring.rotate(later).await.unwrap();
    assert_eq!(second.generation, 2);
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(keyring.at(first.active_from).unwrap().generation, 1);
    assert_eq!(keyring.at(later - 1).unwrap().generation, 1);
    assert_eq!(keyring.at(later).unwrap().generation, 2);
    assert_eq!(keyring.at(later + YEAR).unwrap().generation, 2);
    assert!(keyring.at(first.active_from - 1).is_err());
    // Another replica on the same database sees the rotation after a refresh.
    let replica = open(&url, "example.org", KEK).await.unwrap();
    assert_eq!(replica.current().unwrap().cert_pem, second.cert_pem);
    let third = keyring.rotate(later + 10).await.unwrap();
    replica.refresh().await.unwrap();
    assert_eq!(replica.current().unwrap().cert_pem, third.cert_pem);
}

async fn replicas_starting_together_agree_on_one_first_key(url: String) {
    let (a, b) = tokio::join!(
        open(&url, "example.org", KEK),
        open(&url, "example.org", KEK)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(a.all().len(), b.all().len());
    assert_eq!(
        a.at(p2_runtime::unix_now()).unwrap().cert_pem,
        b.at(p2_runtime::unix_now()).unwrap().cert_pem
    );
}

async fn a_database_of_another_domain_or_key_is_refused(url: String) {
    open(&url, "example.org", KEK).await.unwrap();
    let err = open(&url, "other.example", KEK).await.err().unwrap();
    assert!(format!("{err:#}").contains("example.org"), "{err:#}");
    let wrong_key = "11".repeat(32);
    let err = open(&url, "example.org", &wrong_key).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("P2_KEY_ENCRYPTION_KEY"),
        "{err:#}"
    );
}

async fn private_keys_are_stored_encrypted(url: String) {
    let keyring = open(&url, "example.org", KEK).await.unwrap();
    let seed_hex = hex::encode(keyring.current().unwrap().signing_key().as_bytes());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let (stored,): (String,) = sqlx::query_as("SELECT private_key_enc FROM server_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.starts_with("v1:"));
    assert!(!stored.contains(&seed_hex));
}

async fn cache_signatures_are_reused_within_a_window(url: String) {
    let keyring = open(&url, "example.org", KEK).await.unwrap();
    let generation = keyring.current().unwrap();
    let cert = &generation.cert;
    let now = p2_runtime::unix_now();
    let a = keyring.attest(
        &generation,
        &cert.serial(),
        cert.not_before(),
        cert.not_after(),
        None,
        now,
    );
    let b = keyring.attest(
        &generation,
        &cert.serial(),
        cert.not_before(),
        cert.not_after(),
        None,
        now + 1,
    );
    if a.not_valid_after > now + 1 {
        assert_eq!(a, b, "same window, same attestation");
    }
    p2_model::verify_cache_signature(
        &cert.public_key().unwrap(),
        &cert.serial(),
        a.not_valid_before,
        a.not_valid_after,
        None,
        &a.signature,
    )
    .unwrap();
    let revoked = keyring.attest(
        &generation,
        &cert.serial(),
        cert.not_before(),
        cert.not_after(),
        Some(now),
        now,
    );
    assert_ne!(revoked.signature, a.signature);
}

async fn grpc_answers_server_certs_by_time(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let config = service_config(
        url,
        p2_identity::IdentityOptions {
            key_encryption_key_file: Some(dir.path().join("unused")),
            ..options_for("grpc.example")
        },
    );
    let state = p2_identity::IdentityState::open(&config).await.unwrap();
    let grpc = p2_identity::grpc::IdentityGrpc::new(state.clone());
    let cert = grpc
        .get_server_id_cert(tonic::Request::new(pb::GetServerIdCertRequest {
            timestamp: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .cert
        .unwrap();
    assert_eq!(
        cert.id_cert_pem,
        state.keyring().current().unwrap().cert_pem
    );
    let status = grpc
        .get_server_public_key(tonic::Request::new(pb::GetServerPublicKeyRequest {
            timestamp: Some(5),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    // Rotation needs an assertion of an administrator who sends its password.
    let admin = state
        .register(
            "root",
            "root password 1".into(),
            Registrant::Operator { admin: true },
        )
        .await
        .unwrap();
    let plain = state
        .register("plain", "plain password 1".into(), Registrant::Public)
        .await
        .unwrap();
    let rotate = |caller: Option<CallerAssertion>, solution: &str| {
        let grpc = grpc.clone();
        let solution = solution.to_owned();
        async move {
            grpc.rotate_server_key(tonic::Request::new(pb::RotateServerKeyRequest {
                caller,
                sensitive_solution: solution,
            }))
            .await
        }
    };
    let refusals = [
        (None, "root password 1", tonic::Code::Unauthenticated),
        (
            Some(assert_with(&InternalKey::generate(), admin.as_str())),
            "root password 1",
            tonic::Code::Unauthenticated,
        ),
        (
            Some(assert_with(&KEY, plain.as_str())),
            "plain password 1",
            tonic::Code::PermissionDenied,
        ),
        (
            Some(assert_with(&KEY, admin.as_str())),
            "",
            tonic::Code::PermissionDenied,
        ),
        (
            Some(assert_with(&KEY, admin.as_str())),
            "plain password 1",
            tonic::Code::PermissionDenied,
        ),
    ];
    for (caller, solution, code) in refusals {
        let status = rotate(caller, solution).await.unwrap_err();
        assert_eq!(status.code(), code, "{solution:?}: {}", status.message());
        assert_eq!(state.keyring().all().len(), 1, "a refused rotation rotated");
    }
    let rotated = rotate(Some(assert_with(&KEY, admin.as_str())), "root password 1")
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.cert.unwrap().id_cert_pem, cert.id_cert_pem);

    // A CSR is signed only for the asserted actor, and only with its password.
    let alice = state
        .register("alice", "alice password 1".into(), Registrant::Public)
        .await
        .unwrap();
    let key = p2_model::generate_signing_key();
    let session = p2_model::SessionId::parse("laptop").unwrap();
    let csr = p2_model::build_csr(&key, &alice, &session)
        .unwrap()
        .into_bytes();
    let sign = |caller: CallerAssertion, solution: &str| {
        let grpc = grpc.clone();
        let csr = csr.clone();
        let solution = solution.to_owned();
        async move {
            grpc.sign_csr(tonic::Request::new(pb::SignCsrRequest {
                caller: Some(caller),
                csr,
                sensitive_solution: solution,
            }))
            .await
        }
    };
    // Plain's assertion with plain's own password cannot get a cert for alice's key.
    let status = sign(assert_with(&KEY, plain.as_str()), "plain password 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = sign(assert_with(&KEY, alice.as_str()), "wrong")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        state
            .store()
            .certs("alice", &p2_identity::store::CertFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let issued = sign(assert_with(&KEY, alice.as_str()), "alice password 1")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.fid, "alice@grpc.example");
    assert_eq!(issued.session_id, "laptop");
}

static KEY: std::sync::LazyLock<InternalKey> = std::sync::LazyLock::new(InternalKey::generate);

/// The options of a test server for `domain`, with the test key encryption key.
fn options_for(domain: &str) -> p2_identity::IdentityOptions {
    p2_identity::IdentityOptions {
        key_encryption_key: Some(KEK.to_owned().into()),
        ..p2_identity::IdentityOptions::for_domain(domain)
    }
}

/// A whole service configuration on `database_url` with `options` (in-process throttle, the
/// test deployment key, no shutdown grace).
fn service_config(
    database_url: String,
    options: p2_identity::IdentityOptions,
) -> p2_identity::IdentityConfig {
    p2_identity::IdentityConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url,
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: None,
        redis_prefix: p2_identity::throttle::REDIS_PREFIX.into(),
        options,
        outbox: p2_outbox::OutboxConfig::new(DEAD_EVENTS_URL),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(&KEY),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
    }
}

/// An assertion for `fid` (session "s1"), valid for a minute, minted with `key`.
fn assert_with(key: &InternalKey, fid: &str) -> CallerAssertion {
    CallerAssertion {
        token: key
            .assertion_key()
            .mint(fid, "s1", p2_runtime::internal::unix_now_ms() + 60_000),
    }
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

/// Per-actor bounds (CONVENTIONS 17): concurrent sessions, and the size of one cert answer.
async fn sessions_per_actor_are_bounded_atomically_and_answers_are_capped(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let config = service_config(
        url,
        p2_identity::IdentityOptions {
            key_encryption_key_file: Some(dir.path().join("unused")),
            max_sessions_per_actor: 3,
            ..options_for("bounds.example")
        },
    );
    let state = p2_identity::IdentityState::open(&config).await.unwrap();
    let alice = state
        .register("alice", "alice password 1".into(), Registrant::Public)
        .await
        .unwrap();
    let csr = |session: &str| {
        let key = p2_model::generate_signing_key();
        let session = p2_model::SessionId::parse(session).unwrap();
        p2_model::build_csr(&key, &alice, &session)
            .unwrap()
            .into_bytes()
    };
    // Eight issuances of new sessions at once (the store's transaction, where the bound is
    // counted; logins of one account are serialised by the password throttle anyway):
    // exactly three get a cert.
    let generation = state.keyring().current().unwrap();
    let now = p2_runtime::unix_now();
    let issuances: Vec<_> = (0..8)
        .map(|i| {
            let state = state.clone();
            let cert_pem = generation.cert_pem.clone();
            let number = generation.generation;
            tokio::spawn(async move {
                let session = format!("s{i}");
                let row = p2_identity::store::CertRow {
                    serial: format!("8{i:08}"),
                    local_name: "alice".into(),
                    session_id: session.clone(),
                    generation: number,
                    not_before: i64::try_from(now).unwrap(),
                    not_after: i64::try_from(now + 3600).unwrap(),
                    cert_pem,
                    issued_at: i64::try_from(now).unwrap(),
                    invalidated_at: None,
                };
                state
                    .store()
                    .issue_cert(
                        "alice",
                        &session,
                        false,
                        3,
                        i64::try_from(now).unwrap(),
                        || Ok(row),
                        |_| Ok(Vec::new()),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut issued = 0;
    for issuance in issuances {
        match issuance.await.unwrap() {
            Ok(_) => issued += 1,
            Err(refusal) => assert!(
                matches!(refusal, p2_identity::store::IssueRefusal::TooManySessions),
                "{refusal:?}"
            ),
        }
    }
    assert_eq!(issued, 3, "the bound must hold under concurrency");
    // Through the login path, the fourth session is refused with a clear answer.
    let status = tonic::Status::from(
        state
            .issue_login_cert("alice", "alice password 1".into(), &csr("fourth"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // Renewing a held session still works at the bound; revoking one frees a place.
    let held = state
        .certs_of(&alice, p2_identity::actors::CertQuery::default())
        .await
        .unwrap();
    let session = p2_model::SessionId::parse(&held[0].session_id).unwrap();
    state
        .sign_for(
            &alice,
            &session,
            &csr(session.as_str()),
            "alice password 1",
            None,
        )
        .await
        .unwrap();
    state.revoke(&alice, &session).await.unwrap();
    state
        .issue_login_cert("alice", "alice password 1".into(), &csr("fresh"), None)
        .await
        .unwrap();

    // One answer holds at most MAX_CERTS_PER_ANSWER certs, newest first.
    let generation = state.keyring().current().unwrap();
    let now = p2_runtime::unix_now();
    for i in 0..(p2_identity::actors::MAX_CERTS_PER_ANSWER + 5) {
        let row = p2_identity::store::CertRow {
            serial: format!("9{i:08}"),
            local_name: "alice".into(),
            session_id: "history".into(),
            generation: generation.generation,
            not_before: i64::try_from(now).unwrap(),
            not_after: i64::try_from(now + 3600).unwrap(),
            cert_pem: generation.cert_pem.clone(),
            issued_at: i64::try_from(now + i).unwrap(),
            invalidated_at: Some(i64::try_from(now).unwrap()),
        };
        state
            .store()
            .issue_cert(
                "alice",
                "history",
                true,
                1000,
                i64::try_from(now).unwrap(),
                || Ok(row),
                |_| Ok(Vec::new()),
            )
            .await
            .unwrap()
            .unwrap();
    }
    let answer = state
        .certs_of(
            &alice,
            p2_identity::actors::CertQuery {
                session_id: Some(p2_model::SessionId::parse("history").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        answer.len() as u64,
        p2_identity::actors::MAX_CERTS_PER_ANSWER
    );
    assert!(
        answer.windows(2).all(|w| w[0].issued_at >= w[1].issued_at),
        "newest first"
    );
}

on_both_databases!(
    sessions_per_actor_are_bounded_atomically_and_answers_are_capped,
    first_start_creates_one_generation_and_restarts_reuse_it,
    rotation_keeps_every_generation_retrievable_by_time,
    replicas_starting_together_agree_on_one_first_key,
    a_database_of_another_domain_or_key_is_refused,
    private_keys_are_stored_encrypted,
    cache_signatures_are_reused_within_a_window,
    grpc_answers_server_certs_by_time,
);

/// Shutdown order (CONVENTIONS 10): health turns NOT_SERVING at once, calls are still served
/// for the grace period, then the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_serving_through_the_grace_period_then_closes() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let dir = tempfile::tempdir().unwrap();
    let config = p2_identity::IdentityConfig {
        shutdown: p2_runtime::config::ShutdownConfig {
            shutdown_grace_ms: 1_500,
        },
        ..service_config(sqlite_url(&dir).await, options_for("grace.example"))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(p2_identity::serve(config, listener, stop.clone()));
    let check = || async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "polyproto.identity.v1.Identity".into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1);
        Ok::<i32, tonic::transport::Error>(status)
    };
    let start = std::time::Instant::now();
    loop {
        if check().await.ok() == Some(ServingStatus::Serving as i32) {
            break;
        }
        assert!(start.elapsed().as_secs() < 20, "never served");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Within the grace: reachable, and saying it is going away.
    assert_eq!(
        check().await.unwrap(),
        ServingStatus::NotServing as i32,
        "health must turn NOT_SERVING first"
    );
    // After it: the listener is closed and the task ended cleanly.
    tokio::time::timeout(std::time::Duration::from_secs(15), server)
        .await
        .expect("the server did not stop after its grace period")
        .unwrap()
        .unwrap();
    assert!(start.elapsed() >= std::time::Duration::from_millis(1_500));
    assert!(check().await.is_err(), "the listener must be closed");
}
