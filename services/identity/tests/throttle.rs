//! The password-guess throttle against real SQLite and, for its shared state, the in-process
//! store and real Redis: the 4th wrong guess in a window is refused before any hashing, while
//! another actor logs in fine; a correct password clears the account; the address key holds
//! across accounts.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use p2_identity::actors::Registrant;
use p2_identity::throttle::{
    FREE_ACCOUNT_FAILURES, FailureStore, Guess, MemoryFailureStore, RedisFailureStore, Throttle,
};

const KEK: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";

fn redis_url() -> String {
    std::env::var("P2_TEST_REDIS_URL").expect("P2_TEST_REDIS_URL must be set: run scripts/test.sh")
}

async fn open(redis: Option<String>) -> (p2_identity::IdentityState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = p2_identity::IdentityConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "identity"),
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: redis,
        redis_prefix: p2_identity::throttle::REDIS_PREFIX.into(),
        options: p2_identity::IdentityOptions {
            key_encryption_key: Some(KEK.to_owned().into()),
            ..p2_identity::IdentityOptions::for_domain("throttle.example")
        },
        outbox: p2_outbox::OutboxConfig::new("http://127.0.0.1:1"),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &p2_runtime::internal::InternalKey::generate(),
        ),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
    };
    (
        p2_identity::IdentityState::open(&config).await.unwrap(),
        dir,
    )
}

fn csr(local: &str, session: &str) -> Vec<u8> {
    let fid = p2_model::FederationId::new(local, "throttle.example").unwrap();
    let session = p2_model::SessionId::parse(session).unwrap();
    p2_model::build_csr(&p2_model::generate_signing_key(), &fid, &session)
        .unwrap()
        .into_bytes()
}

async fn wrong_guesses_are_throttled_per_account_without_locking_others_out(redis: Option<String>) {
    let (state, _dir) = open(redis).await;
    // A fresh name per run: the Redis state outlives the test database.
    let name = format!(
        "alice{}",
        p2_runtime::internal::unix_now_ms() % 1_000_000_000
    );
    state
        .register(&name, "alice password 1".into(), Registrant::Public)
        .await
        .unwrap();
    let bob = format!("bob{}", p2_runtime::internal::unix_now_ms() % 1_000_000_000);
    state
        .register(&bob, "bob password 12".into(), Registrant::Public)
        .await
        .unwrap();
    for i in 0..FREE_ACCOUNT_FAILURES {
        let status = tonic::Status::from(
            state
                .issue_login_cert(&name, "wrong".into(), &csr(&name, &format!("w{i}")), None)
                .await
                .unwrap_err(),
        );
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "guess {i}");
    }
    // The next try, even with the right password, waits; and says for how long.
    let started = std::time::Instant::now();
    let status = tonic::Status::from(
        state
            .issue_login_cert(&name, "alice password 1".into(), &csr(&name, "ok"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(p2_runtime::error::retry_after_of(&status).is_some_and(|s| s >= 1));
    assert!(
        started.elapsed() < Duration::from_millis(40),
        "a refused guess must not cost a password hash"
    );
    // Another actor logs in meanwhile.
    state
        .issue_login_cert(&bob, "bob password 12".into(), &csr(&bob, "s1"), None)
        .await
        .unwrap();
    // After the backoff, the owner gets in, and that clears the account's failures.
    tokio::time::sleep(p2_identity::throttle::BASE_BACKOFF + Duration::from_millis(200)).await;
    state
        .issue_login_cert(&name, "alice password 1".into(), &csr(&name, "ok"), None)
        .await
        .unwrap();
    state
        .issue_login_cert(&name, "wrong".into(), &csr(&name, "x"), None)
        .await
        .unwrap_err();
    state
        .issue_login_cert(&name, "alice password 1".into(), &csr(&name, "ok2"), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_wrong_guesses_are_throttled_per_account() {
    wrong_guesses_are_throttled_per_account_without_locking_others_out(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wrong_guesses_are_throttled_per_account() {
    wrong_guesses_are_throttled_per_account_without_locking_others_out(Some(redis_url())).await;
}

/// One client address guessing at many accounts is throttled by its address key.
async fn an_address_guessing_many_accounts_is_throttled(store: std::sync::Arc<dyn FailureStore>) {
    let throttle = Throttle::new(store);
    let address = format!("192.0.2.{}", p2_runtime::internal::unix_now_ms() % 250);
    let run = p2_runtime::internal::unix_now_ms();
    let mut refused = None;
    for i in 0..100 {
        let guess = Guess::new(&format!("victim{run}-{i}"), Some(&address));
        match throttle.admit(&guess).await.unwrap() {
            Ok(admission) => throttle.record(&guess, admission, false).await.unwrap(),
            Err(wait) => {
                refused = Some((i, wait));
                break;
            }
        }
    }
    let (i, wait) = refused.expect("the address was never throttled");
    assert_eq!(i, p2_identity::throttle::FREE_ADDRESS_FAILURES as usize);
    assert!(wait > Duration::ZERO);
    // The same accounts from nowhere in particular are still admitted.
    let guess = Guess::new(&format!("victim{run}-0"), None);
    assert!(throttle.admit(&guess).await.unwrap().is_ok());
}

/// Once an account has failures, guesses in flight together are checked one at a time: the
/// others are told to retry, so a burst cannot slip through when a backoff ends.
async fn an_account_under_attack_is_checked_one_guess_at_a_time(
    store: std::sync::Arc<dyn FailureStore>,
) {
    let throttle = Throttle::new(store);
    let account = format!("burst{}", p2_runtime::internal::unix_now_ms());
    let guess = Guess::new(&account, None);
    // No failures yet: parallel checks are admitted (the owner's devices).
    let a = throttle.admit(&guess).await.unwrap().unwrap();
    let b = throttle.admit(&guess).await.unwrap().unwrap();
    throttle.record(&guess, a, true).await.unwrap();
    throttle.record(&guess, b, true).await.unwrap();
    // One failure: from now on one check at a time.
    let first = throttle.admit(&guess).await.unwrap().unwrap();
    throttle.record(&guess, first, false).await.unwrap();
    let running = throttle.admit(&guess).await.unwrap().unwrap();
    assert_eq!(
        throttle.admit(&guess).await.unwrap(),
        Err(p2_identity::throttle::BUSY_RETRY),
        "a second guess while one runs"
    );
    throttle.record(&guess, running, false).await.unwrap();
    // Its end frees the account for the next (when no backoff applies yet).
    let next = throttle.admit(&guess).await.unwrap().unwrap();
    throttle.abandon(&guess, next).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_guesses_at_an_attacked_account_run_one_at_a_time() {
    an_account_under_attack_is_checked_one_guess_at_a_time(std::sync::Arc::new(
        MemoryFailureStore::default(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_guesses_at_an_attacked_account_run_one_at_a_time() {
    let conn = p2_runtime::kv::connect(&redis_url(), "test").await.unwrap();
    an_account_under_attack_is_checked_one_guess_at_a_time(std::sync::Arc::new(
        RedisFailureStore::new(conn, "p2test:throttle:"),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_addresses_are_throttled_across_accounts() {
    an_address_guessing_many_accounts_is_throttled(std::sync::Arc::new(
        MemoryFailureStore::default(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_addresses_are_throttled_across_accounts() {
    let conn = p2_runtime::kv::connect(&redis_url(), "test").await.unwrap();
    an_address_guessing_many_accounts_is_throttled(std::sync::Arc::new(RedisFailureStore::new(
        conn,
        "p2test:throttle:",
    )))
    .await;
}
