//! Conformance suite of the challenge store, run against the in-process store (with paused
//! time) and real Redis (real time, a unique key prefix per test).

use std::sync::Arc;
use std::time::Duration;

use p2_session::storage::{ChallengeStore, MemoryChallengeStore, RedisChallengeStore, StoreError};

type Store = Arc<dyn ChallengeStore>;

const TTL: Duration = Duration::from_secs(60);
/// The owner of the entries of tests that are not about owners, and a limit they never reach.
const OWNER: &str = "challenge:alice@example.com\nlaptop";
const LIMIT: usize = 1000;

async fn a_value_is_taken_exactly_once(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:a", "alice", OWNER, LIMIT, TTL)
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
            .put_if_absent("challenge:b", "first", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_absent("challenge:b", "second", OWNER, LIMIT, TTL)
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
            .put_if_absent("challenge:b", "third", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
}

async fn values_expire_after_their_ttl_and_free_their_key(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:short", "s", OWNER, LIMIT, Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("challenge:long", "l", OWNER, LIMIT, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("challenge:again", "1", OWNER, LIMIT, Duration::from_secs(1))
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
            .put_if_absent("challenge:again", "2", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.take("challenge:again").await.unwrap().as_deref(),
        Some("2")
    );
}

async fn keys_are_independent(store: Store) {
    assert!(
        store
            .put_if_absent("challenge:x", "x", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("challenge:y", "y", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("keytrial:x", "k", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
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
        assert!(
            store
                .put_if_absent(&key, "prize", OWNER, LIMIT, TTL)
                .await
                .unwrap()
        );
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
                    .put_if_absent("challenge:contended", &i.to_string(), OWNER, LIMIT, TTL)
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

async fn put(
    store: &Store,
    key: &str,
    owner: &str,
    limit: usize,
    ttl: Duration,
) -> Result<bool, StoreError> {
    store.put_if_absent(key, "v", owner, limit, ttl).await
}

fn is_owner_full(result: Result<bool, StoreError>, limit: usize) -> bool {
    matches!(result, Err(StoreError::OwnerFull { limit: l }) if l == limit)
}

const ALICE: &str = "challenge:alice@example.com\nlaptop";
const BOB: &str = "challenge:bob@example.com\nlaptop";

async fn an_owner_at_its_limit_is_refused_while_other_owners_still_put(store: Store) {
    for i in 0..3 {
        assert!(
            put(&store, &format!("challenge:a{i}"), ALICE, 3, TTL)
                .await
                .unwrap()
        );
    }
    let refused = put(&store, "challenge:a3", ALICE, 3, TTL).await;
    assert!(is_owner_full(refused, 3));
    // The refused put stored nothing.
    assert_eq!(store.take("challenge:a3").await.unwrap(), None);
    // Another actor's session is untouched by Alice's bound, and so is a key collision check.
    for i in 0..3 {
        assert!(
            put(&store, &format!("challenge:b{i}"), BOB, 3, TTL)
                .await
                .unwrap()
        );
    }
    assert!(!put(&store, "challenge:b0", BOB, 3, TTL).await.unwrap());
    assert!(is_owner_full(
        put(&store, "challenge:b3", BOB, 3, TTL).await,
        3
    ));
    // Alice's entries are all still there: nothing was evicted to make room.
    for i in 0..3 {
        assert!(
            store
                .take(&format!("challenge:a{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
}

async fn taking_a_value_frees_its_owners_slot_at_once(store: Store) {
    for i in 0..3 {
        assert!(
            put(&store, &format!("challenge:t{i}"), ALICE, 3, TTL)
                .await
                .unwrap()
        );
    }
    assert!(is_owner_full(
        put(&store, "challenge:t3", ALICE, 3, TTL).await,
        3
    ));
    assert!(store.take("challenge:t1").await.unwrap().is_some());
    assert!(put(&store, "challenge:t3", ALICE, 3, TTL).await.unwrap());
    assert!(is_owner_full(
        put(&store, "challenge:t4", ALICE, 3, TTL).await,
        3
    ));
    // A take of someone else's key (a thief consuming it) frees the owner's slot too.
    assert!(store.take("challenge:t0").await.unwrap().is_some());
    assert!(put(&store, "challenge:t4", ALICE, 3, TTL).await.unwrap());
}

async fn expired_values_free_their_owners_slots(store: Store) {
    let short = Duration::from_secs(1);
    for i in 0..2 {
        assert!(
            put(&store, &format!("challenge:e{i}"), ALICE, 3, short)
                .await
                .unwrap()
        );
    }
    assert!(put(&store, "challenge:e2", ALICE, 3, TTL).await.unwrap());
    assert!(is_owner_full(
        put(&store, "challenge:e3", ALICE, 3, TTL).await,
        3
    ));
    // Paused time (memory) jumps; Redis really waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(put(&store, "challenge:e3", ALICE, 3, TTL).await.unwrap());
    assert!(put(&store, "challenge:e4", ALICE, 3, TTL).await.unwrap());
    assert!(is_owner_full(
        put(&store, "challenge:e5", ALICE, 3, TTL).await,
        3
    ));
}

async fn concurrent_puts_of_one_owner_never_exceed_its_limit(store: Store) {
    let putters: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                match put(&store, &format!("challenge:c{i}"), ALICE, 5, TTL).await {
                    Ok(stored) => stored,
                    Err(StoreError::OwnerFull { limit: 5 }) => false,
                    Err(other) => panic!("{other:?}"),
                }
            })
        })
        .collect();
    let mut stored = 0;
    for putter in putters {
        stored += usize::from(putter.await.unwrap());
    }
    assert_eq!(stored, 5);
    let mut live = 0;
    for i in 0..64 {
        live += usize::from(
            store
                .take(&format!("challenge:c{i}"))
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(live, 5);
}

/// Run against stores of capacity [`SMALL_CAPACITY`].
async fn a_full_store_refuses_every_owner_until_values_are_taken_or_expire(store: Store) {
    let owners: Vec<String> = (0..SMALL_CAPACITY + 1)
        .map(|i| format!("challenge:actor{i}@example.com\nlaptop"))
        .collect();
    for (i, owner) in owners.iter().take(SMALL_CAPACITY).enumerate() {
        let ttl = if i == 0 { Duration::from_secs(1) } else { TTL };
        assert!(
            put(&store, &format!("challenge:f{i}"), owner, 3, ttl)
                .await
                .unwrap()
        );
    }
    let last = &owners[SMALL_CAPACITY];
    let full = put(&store, "challenge:late", last, 3, TTL).await;
    assert!(
        matches!(
            full,
            Err(StoreError::Full {
                capacity: SMALL_CAPACITY
            })
        ),
        "{full:?}"
    );
    // A taken value frees a place at once.
    assert!(store.take("challenge:f1").await.unwrap().is_some());
    assert!(put(&store, "challenge:late", last, 3, TTL).await.unwrap());
    assert!(matches!(
        put(&store, "challenge:later", last, 3, TTL).await,
        Err(StoreError::Full { .. })
    ));
    // An expired value frees its place too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(put(&store, "challenge:later", last, 3, TTL).await.unwrap());
    assert!(matches!(
        put(&store, "challenge:latest", last, 3, TTL).await,
        Err(StoreError::Full { .. })
    ));
}

/// Run against stores of capacity [`SMALL_CAPACITY`].
async fn concurrent_puts_of_many_owners_never_exceed_the_capacity(store: Store) {
    let putters: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("challenge:actor{i}@example.com\nlaptop");
                match put(&store, &format!("challenge:g{i}"), &owner, 3, TTL).await {
                    Ok(stored) => stored,
                    Err(StoreError::Full { .. }) => false,
                    Err(other) => panic!("{other:?}"),
                }
            })
        })
        .collect();
    let mut stored = 0;
    for putter in putters {
        stored += usize::from(putter.await.unwrap());
    }
    assert_eq!(stored, SMALL_CAPACITY);
}

/// The capacity of the stores the capacity tests run against.
const SMALL_CAPACITY: usize = 8;

async fn redis_store() -> Store {
    redis_store_with(p2_session::storage::DEFAULT_CAPACITY)
        .await
        .0
}

/// A Redis store of `capacity` under a fresh prefix, and that prefix.
async fn redis_store_with(capacity: usize) -> (Store, String) {
    let conn = p2_runtime::kv::connect(&crate::common::redis_url(), "session-test")
        .await
        .unwrap();
    let prefix = format!("{}:", crate::common::unique("p2test"));
    let store = RedisChallengeStore::new(conn, prefix.clone()).with_capacity(capacity);
    (Arc::new(store), prefix)
}

macro_rules! conformance {
    (default: [$($name:ident),* $(,)?], small: [$($small:ident),* $(,)?] $(,)?) => {
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
            $(
                #[tokio::test(start_paused = true)]
                async fn $small() {
                    super::$small(std::sync::Arc::new(
                        p2_session::storage::MemoryChallengeStore::new(super::SMALL_CAPACITY),
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
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $small() {
                    super::$small(super::redis_store_with(super::SMALL_CAPACITY).await.0).await;
                }
            )*
        }
    };
}

conformance!(
    default: [
        a_value_is_taken_exactly_once,
        unknown_keys_take_nothing,
        put_if_absent_refuses_to_overwrite_a_live_value,
        values_expire_after_their_ttl_and_free_their_key,
        keys_are_independent,
        concurrent_takes_of_one_value_have_exactly_one_winner,
        concurrent_puts_of_one_key_have_exactly_one_winner,
        an_owner_at_its_limit_is_refused_while_other_owners_still_put,
        taking_a_value_frees_its_owners_slot_at_once,
        expired_values_free_their_owners_slots,
        concurrent_puts_of_one_owner_never_exceed_its_limit,
    ],
    small: [
        a_full_store_refuses_every_owner_until_values_are_taken_or_expire,
        concurrent_puts_of_many_owners_never_exceed_the_capacity,
    ],
);

#[tokio::test(start_paused = true)]
async fn the_memory_store_forgets_an_owner_with_its_last_entry() {
    let store = MemoryChallengeStore::default();
    let short = Duration::from_secs(5);
    for i in 0..3 {
        assert!(
            store
                .put_if_absent(&format!("a{i}"), "v", ALICE, 3, short)
                .await
                .unwrap()
        );
    }
    assert!(store.put_if_absent("b", "v", BOB, 3, TTL).await.unwrap());
    assert_eq!(store.owners(), 2);
    assert!(store.take("b").await.unwrap().is_some());
    assert_eq!(store.owners(), 1);
    // Expired entries and their owner go with the next sweep.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(store.put_if_absent("c", "v", BOB, 3, TTL).await.unwrap());
    assert_eq!((store.len(), store.owners()), (1, 1));
}

/// Every key under `prefix`, with its remaining lifetime in milliseconds.
async fn redis_keys(prefix: &str) -> Vec<(String, i64)> {
    let mut conn = p2_runtime::kv::connect(&crate::common::redis_url(), "session-test")
        .await
        .unwrap();
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((key.strip_prefix(prefix).unwrap().to_owned(), pttl));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bookkeeping_expires_with_its_last_entry_and_goes_with_takes() {
    let (store, prefix) = redis_store_with(100).await;
    let short = Duration::from_secs(1);
    assert!(put(&store, "challenge:x", ALICE, 3, short).await.unwrap());
    assert!(put(&store, "challenge:y", ALICE, 3, short).await.unwrap());
    assert!(put(&store, "challenge:z", BOB, 3, short).await.unwrap());
    let keys = redis_keys(&prefix).await;
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "challenge:x",
            "challenge:y",
            "challenge:z",
            "store:owner:challenge:alice@example.com\nlaptop",
            "store:owner:challenge:bob@example.com\nlaptop",
            "store:owners",
            "store:pending",
        ]
    );
    // Nothing lives without an expiry, and nothing outlives the last entry.
    for (key, pttl) in &keys {
        assert!((1..=1000).contains(pttl), "{key}: {pttl}");
    }
    // Taking Bob's only entry removes his owner set at once.
    assert!(store.take("challenge:z").await.unwrap().is_some());
    let keys = redis_keys(&prefix).await;
    assert!(!keys.iter().any(|(k, _)| k.contains("bob")), "{keys:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(redis_keys(&prefix).await, Vec::<(String, i64)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_prunes_expired_bookkeeping_as_it_is_written() {
    let (store, prefix) = redis_store_with(100).await;
    for i in 0..20 {
        let owner = format!("challenge:actor{i}@example.com\nlaptop");
        assert!(
            put(
                &store,
                &format!("challenge:p{i}"),
                &owner,
                3,
                Duration::from_secs(1)
            )
            .await
            .unwrap()
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(put(&store, "challenge:fresh", ALICE, 3, TTL).await.unwrap());
    let mut conn = p2_runtime::kv::connect(&crate::common::redis_url(), "session-test")
        .await
        .unwrap();
    let pending: i64 = ::redis::cmd("ZCARD")
        .arg(format!("{prefix}store:pending"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let owners: i64 = ::redis::cmd("HLEN")
        .arg(format!("{prefix}store:owners"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((pending, owners), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_full_memory_store_refuses_new_keys_until_entries_expire() {
    let store = MemoryChallengeStore::new(2);
    assert!(
        store
            .put_if_absent("a", "1", OWNER, LIMIT, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("b", "2", OWNER, LIMIT, Duration::from_secs(100))
            .await
            .unwrap()
    );
    let err = store
        .put_if_absent("c", "3", OWNER, LIMIT, TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { capacity: 2 }), "{err:?}");
    // A taken entry frees its place at once.
    assert_eq!(store.take("b").await.unwrap().as_deref(), Some("2"));
    assert!(
        store
            .put_if_absent("c", "3", OWNER, LIMIT, Duration::from_secs(100))
            .await
            .unwrap()
    );
    // An expired entry frees its place when the full store sweeps.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(
        store
            .put_if_absent("d", "4", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert_eq!(store.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_purges_expired_entries_as_it_is_written() {
    let store = MemoryChallengeStore::default();
    for i in 0..100 {
        assert!(
            store
                .put_if_absent(&format!("k{i}"), "v", OWNER, LIMIT, Duration::from_secs(5))
                .await
                .unwrap()
        );
    }
    assert_eq!(store.len(), 100);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(
        store
            .put_if_absent("fresh", "v", OWNER, LIMIT, TTL)
            .await
            .unwrap()
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn memory_expiry_is_exact_to_the_instant() {
    let store = MemoryChallengeStore::default();
    assert!(
        store
            .put_if_absent("k", "v", OWNER, LIMIT, Duration::from_secs(300))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_if_absent("k2", "v", OWNER, LIMIT, Duration::from_secs(300))
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
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: Some(crate::common::redis_url()),
        redis_prefix: p2_session::storage::redis::DEFAULT_PREFIX.to_owned(),
        domain: "example.com".to_owned(),
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        outbox: p2_outbox::OutboxConfig::new(crate::common::DEAD_EVENTS_URL),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_challenge_caps_hold_across_replicas_sharing_redis() {
    let dir = tempfile::tempdir().unwrap();
    let config = p2_session::SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: Some(crate::common::redis_url()),
        redis_prefix: p2_session::storage::redis::DEFAULT_PREFIX.to_owned(),
        domain: "example.com".to_owned(),
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        outbox: p2_outbox::OutboxConfig::new(crate::common::DEAD_EVENTS_URL),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        options: p2_session::SessionOptions {
            challenge_ttl_secs: 60,
            max_challenges_per_session: 3,
            ..p2_session::SessionOptions::default()
        },
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &p2_runtime::internal::InternalKey::generate(),
        ),
    };
    let one = p2_session::SessionGrpc::open(&config).await.unwrap();
    let two = p2_session::SessionGrpc::open(&config).await.unwrap();
    assert_eq!(one.max_challenges_per_session(), 3);
    // Production's prefix is shared by every test run on this Redis: a session of its own.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let session_id = format!("cap {}", nanos % 1_000_000_000_000);
    let mint = |grpc: &p2_session::SessionGrpc, fid: &str| {
        let assertion = p2_proto::common::v1::CallerAssertion {
            token: grpc.assertion_key().mint(
                fid,
                &session_id,
                p2_runtime::internal::unix_now_ms() + 60_000,
            ),
        };
        p2_session::Caller::verify(Some(assertion), grpc.assertion_key()).unwrap()
    };
    let alice = mint(&one, "alice@example.com");
    let first = one.issue_challenge(&alice).await.unwrap();
    two.issue_challenge(&alice).await.unwrap();
    one.issue_challenge(&alice).await.unwrap();
    for replica in [&one, &two] {
        let err = replica.issue_challenge(&alice).await.unwrap_err();
        assert!(
            matches!(
                err,
                p2_session::SessionError::TooManyChallenges { limit: 3 }
            ),
            "{err:?}"
        );
    }
    // Bob's session is not affected.
    let bob = mint(&one, "bob@example.com");
    two.issue_challenge(&bob).await.unwrap();
    // Used on one replica, the slot is free on the other.
    let used = two
        .check_challenge_solution(&alice, &first.challenge, "00")
        .await
        .unwrap_err();
    assert!(
        matches!(used, p2_session::SessionError::Unavailable(_)),
        "{used:?}"
    );
    one.issue_challenge(&alice).await.unwrap();
    assert!(two.issue_challenge(&alice).await.is_err());
}
