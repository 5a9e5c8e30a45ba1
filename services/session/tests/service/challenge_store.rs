//! Conformance suite of the challenge store, run against the in-process store (with paused
//! time) and real Redis (real time, a unique key prefix per test).

use std::sync::Arc;
use std::time::Duration;

use p2_session::storage::{ChallengeStore, MemoryChallengeStore, RedisChallengeStore, StoreError};

type Store = Arc<dyn ChallengeStore>;

const TTL: Duration = Duration::from_secs(60);

async fn a_value_is_taken_exactly_once(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:a", "alice", TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.take("challenge:a").await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(store.take("challenge:a").await.unwrap(), None);
}

async fn unknown_keys_take_nothing(store: Store) {
    assert_eq!(store.take("challenge:never").await.unwrap(), None);
}

async fn put_if_absent_refuses_to_overwrite_a_live_value(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:b", "first", TTL)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_absent("challenge:b", "second", TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.take("challenge:b").await.unwrap().as_deref(),
        Some("first")
    );
    // Once taken, the key is free again.
    assert!(
        store
            .put_if_absent("challenge:b", "third", TTL)
            .await
            .unwrap()
    );
}

async fn values_expire_after_their_ttl_and_free_their_key(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:short", "s", Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("challenge:long", "l", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("challenge:again", "1", Duration::from_secs(1))
            .await
            .unwrap()
    );
    // Paused time (memory) jumps; Redis really waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.take("challenge:short").await.unwrap(), None);
    assert_eq!(
        store.take("challenge:long").await.unwrap().as_deref(),
        Some("l")
    );
    assert!(
        store
            .put_if_absent("challenge:again", "2", TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.take("challenge:again").await.unwrap().as_deref(),
        Some("2")
    );
}

async fn keys_are_independent(store: Store) {
    assert!(store.put_if_absent("challenge:x", "x", TTL).await.unwrap());
    assert!(store.put_if_absent("challenge:y", "y", TTL).await.unwrap());
    assert!(store.put_if_absent("keytrial:x", "k", TTL).await.unwrap());
    assert_eq!(
        store.take("challenge:y").await.unwrap().as_deref(),
        Some("y")
    );
    assert_eq!(
        store.take("keytrial:x").await.unwrap().as_deref(),
        Some("k")
    );
    assert_eq!(
        store.take("challenge:x").await.unwrap().as_deref(),
        Some("x")
    );
}

async fn concurrent_takes_of_one_value_have_exactly_one_winner(store: Store) {
    for round in 0..5 {
        let key = format!("challenge:race{round}");
        assert!(store.put_if_absent(&key, "prize", TTL).await.unwrap());
        let takers: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move { store.take(&key).await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for taker in takers {
            if let Some(value) = taker.await.unwrap() {
                assert_eq!(value, "prize");
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

async fn concurrent_puts_of_one_key_have_exactly_one_winner(store: Store) {
    let putters: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent("challenge:contended", &i.to_string(), TTL)
                    .await
                    .unwrap()
                    .then_some(i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for putter in putters {
        winners.extend(putter.await.unwrap());
    }
    assert_eq!(winners.len(), 1);
    let stored = store.take("challenge:contended").await.unwrap().unwrap();
    assert_eq!(stored, winners[0].to_string());
}

async fn redis_store() -> Store {
    let conn = p2_runtime::kv::connect(&crate::common::redis_url(), "session-test")
        .await
        .unwrap();
    let prefix = format!("{}:", crate::common::unique("p2test"));
    Arc::new(RedisChallengeStore::new(conn, prefix))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(
                        p2_session::storage::MemoryChallengeStore::default(),
                    ))
                    .await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis_store().await).await;
                }
            )*
        }
    };
}

conformance!(
    a_value_is_taken_exactly_once,
    unknown_keys_take_nothing,
    put_if_absent_refuses_to_overwrite_a_live_value,
    values_expire_after_their_ttl_and_free_their_key,
    keys_are_independent,
    concurrent_takes_of_one_value_have_exactly_one_winner,
    concurrent_puts_of_one_key_have_exactly_one_winner,
);

#[tokio::test(start_paused = true)]
async fn a_full_memory_store_refuses_new_keys_until_entries_expire() {
    let store = MemoryChallengeStore::new(2);
    assert!(
        store
            .put_if_absent("a", "1", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("b", "2", Duration::from_secs(100))
            .await
            .unwrap()
    );
    let err = store.put_if_absent("c", "3", TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::Full { capacity: 2 }), "{err:?}");
    // A taken entry frees its place at once.
    assert_eq!(store.take("b").await.unwrap().as_deref(), Some("2"));
    assert!(
        store
            .put_if_absent("c", "3", Duration::from_secs(100))
            .await
            .unwrap()
    );
    // An expired entry frees its place when the full store sweeps.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(store.put_if_absent("d", "4", TTL).await.unwrap());
    assert_eq!(store.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_purges_expired_entries_as_it_is_written() {
    let store = MemoryChallengeStore::default();
    for i in 0..100 {
        assert!(
            store
                .put_if_absent(&format!("k{i}"), "v", Duration::from_secs(5))
                .await
                .unwrap()
        );
    }
    assert_eq!(store.len(), 100);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(store.put_if_absent("fresh", "v", TTL).await.unwrap());
    assert_eq!(store.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn memory_expiry_is_exact_to_the_instant() {
    let store = MemoryChallengeStore::default();
    assert!(
        store
            .put_if_absent("k", "v", Duration::from_secs(300))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("k2", "v", Duration::from_secs(300))
            .await
            .unwrap()
    );
    tokio::time::advance(Duration::from_millis(299_999)).await;
    assert_eq!(store.take("k").await.unwrap().as_deref(), Some("v"));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.take("k2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_live_in_redis_under_p2_challenge_with_the_configured_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let config = p2_session::SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
        redis_url: Some(crate::common::redis_url()),
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        options: p2_session::SessionOptions {
            challenge_ttl_secs: 120,
            ..p2_session::SessionOptions::default()
        },
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &p2_runtime::internal::InternalKey::generate(),
        ),
    };
    let grpc = p2_session::SessionGrpc::open(&config).await.unwrap();
    let expires_ms = p2_runtime::internal::unix_now_ms() + 60_000;
    let assertion = p2_proto::common::v1::CallerAssertion {
        token: grpc
            .assertion_key()
            .mint("alice@example.com", "laptop", expires_ms),
    };
    let caller = p2_session::Caller::verify(Some(assertion), grpc.assertion_key()).unwrap();
    let issued = grpc.issue_challenge(&caller).await.unwrap();
    let mut conn = p2_runtime::kv::connect(&crate::common::redis_url(), "session-test")
        .await
        .unwrap();
    let key = format!("p2:challenge:{}", issued.challenge);
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((110..=120).contains(&ttl), "TTL {ttl}");
    let value: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "alice@example.com\nlaptop");
    // A second replica on the same Redis sees it, and it is single use across both.
    let replica = p2_session::SessionGrpc::open(&config).await.unwrap();
    let first = replica
        .check_challenge_solution(&caller, &issued.challenge, "00")
        .await
        .unwrap_err();
    // Taken, then the (dead) identity service was asked for the session's cert.
    assert!(
        matches!(first, p2_session::SessionError::Unavailable(_)),
        "{first:?}"
    );
    let again = grpc
        .check_challenge_solution(&caller, &issued.challenge, "00")
        .await
        .unwrap_err();
    assert!(
        matches!(again, p2_session::SessionError::ChallengeUnknown),
        "{again:?}"
    );
    let gone: Option<String> = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None);
}
