//! Conformance suite of the `sessions` table, run against real SQLite and real PostgreSQL.

use p2_session::storage::{SessionRow, SessionStore};
use p2_session::token::SessionToken;
use sha2::Digest as _;
use sqlx::Row as _;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn row(fid: &str, session_id: &str, created_at: u64) -> SessionRow {
    SessionRow {
        fid: fid.into(),
        session_id: session_id.into(),
        created_at,
        expires_at: expiry(created_at),
    }
}

/// When the test's tokens expire: a day after their creation (saturating, as storage does).
fn expiry(created_at: u64) -> u64 {
    created_at.saturating_add(86_400).min(i64::MAX as u64)
}

async fn stored_sessions_are_found_by_their_token_only(store: SessionStore) {
    let token = SessionToken::generate();
    store
        .put(
            ALICE,
            "laptop",
            token.hash(),
            1_700_000_000,
            expiry(1_700_000_000),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_by_token(token.hash()).await.unwrap(),
        Some(row(ALICE, "laptop", 1_700_000_000))
    );
    let stranger = SessionToken::generate();
    assert_eq!(store.find_by_token(stranger.hash()).await.unwrap(), None);
    assert_eq!(
        store.get(ALICE, "laptop").await.unwrap(),
        Some(row(ALICE, "laptop", 1_700_000_000))
    );
    assert_eq!(store.get(ALICE, "phone").await.unwrap(), None);
}

async fn odd_session_ids_and_large_times_round_trip(store: SessionStore) {
    let token = SessionToken::generate();
    let far = i64::MAX as u64;
    store
        .put(ALICE, "Laptop #2 (work)", token.hash(), far, expiry(far))
        .await
        .unwrap();
    assert_eq!(
        store.find_by_token(token.hash()).await.unwrap(),
        Some(row(ALICE, "Laptop #2 (work)", far))
    );
    // The version-1 `admin` column is a leftover: always written 0, never an admin right.
    let admin: i64 = sqlx::query("SELECT admin FROM sessions")
        .fetch_one(&store.database().pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(admin, 0);
}

async fn replacing_a_session_kills_its_old_token(store: SessionStore) {
    let old = SessionToken::generate();
    let new = SessionToken::generate();
    store
        .put(ALICE, "laptop", old.hash(), 1, expiry(1))
        .await
        .unwrap();
    store
        .put(ALICE, "laptop", new.hash(), 2, expiry(2))
        .await
        .unwrap();
    assert_eq!(store.find_by_token(old.hash()).await.unwrap(), None);
    assert_eq!(
        store.find_by_token(new.hash()).await.unwrap(),
        Some(row(ALICE, "laptop", 2))
    );
    assert_eq!(store.list(ALICE).await.unwrap().len(), 1);
}

async fn deleting_a_session_kills_its_token_and_reports_whether_it_existed(store: SessionStore) {
    let token = SessionToken::generate();
    store
        .put(ALICE, "laptop", token.hash(), 1, expiry(1))
        .await
        .unwrap();
    assert!(store.delete(ALICE, "laptop").await.unwrap());
    assert_eq!(store.find_by_token(token.hash()).await.unwrap(), None);
    assert!(!store.delete(ALICE, "laptop").await.unwrap());
    assert!(!store.delete(ALICE, "never").await.unwrap());
}

async fn one_session_id_of_two_actors_names_two_sessions(store: SessionStore) {
    let alice = SessionToken::generate();
    let bob = SessionToken::generate();
    store
        .put(ALICE, "laptop", alice.hash(), 1, expiry(1))
        .await
        .unwrap();
    store
        .put(BOB, "laptop", bob.hash(), 1, expiry(1))
        .await
        .unwrap();
    assert!(store.delete(BOB, "laptop").await.unwrap());
    assert_eq!(
        store.find_by_token(alice.hash()).await.unwrap(),
        Some(row(ALICE, "laptop", 1))
    );
    assert_eq!(store.find_by_token(bob.hash()).await.unwrap(), None);
    // Session IDs compare exactly (case-sensitive).
    let upper = SessionToken::generate();
    store
        .put(ALICE, "LAPTOP", upper.hash(), 1, expiry(1))
        .await
        .unwrap();
    assert_eq!(store.list(ALICE).await.unwrap().len(), 2);
}

async fn only_the_hash_of_a_token_is_stored(store: SessionStore) {
    let token = SessionToken::generate();
    store
        .put(ALICE, "laptop", token.hash(), 1, expiry(1))
        .await
        .unwrap();
    let rows = sqlx::query("SELECT token_hash, fid, session_id FROM sessions")
        .fetch_all(&store.database().pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: String = rows[0].try_get(0).unwrap();
    let raw = hex::decode(token.as_str()).unwrap();
    assert_eq!(stored, hex::encode(sha2::Sha256::digest(&raw)));
    for column in 0..3 {
        let value: String = rows[0].try_get(column).unwrap();
        assert!(
            !value.contains(token.as_str()),
            "column {column} holds the token"
        );
    }
}

async fn concurrent_replacements_of_one_session_leave_exactly_one_live_token(store: SessionStore) {
    let tokens: Vec<SessionToken> = (0..8).map(|_| SessionToken::generate()).collect();
    let writes = tokens.iter().enumerate().map(|(i, token)| {
        let store = store.clone();
        let hash = *token.hash();
        async move {
            store
                .put(ALICE, "laptop", &hash, i as u64, expiry(i as u64))
                .await
        }
    });
    for result in futures_join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(store.list(ALICE).await.unwrap().len(), 1);
    let mut live = 0;
    for token in &tokens {
        if store.find_by_token(token.hash()).await.unwrap().is_some() {
            live += 1;
        }
    }
    assert_eq!(live, 1);
}

/// Runs futures concurrently on the runtime's workers and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = crate::common::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::postgres_store().await).await;
                }
            )*
        }
        /// Embedded mode: SQLite plus the write-through in-memory token index.
        mod sqlite_with_memory_index {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = crate::common::sqlite_indexed_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    stored_sessions_are_found_by_their_token_only,
    odd_session_ids_and_large_times_round_trip,
    replacing_a_session_kills_its_old_token,
    deleting_a_session_kills_its_token_and_reports_whether_it_existed,
    one_session_id_of_two_actors_names_two_sessions,
    only_the_hash_of_a_token_is_stored,
    concurrent_replacements_of_one_session_leave_exactly_one_live_token,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_index_is_rebuilt_from_the_table_at_start() {
    let (store, dir) = crate::common::sqlite_indexed_store().await;
    let token = SessionToken::generate();
    store
        .put("alice@x.test", "s1", token.hash(), 1, expiry(1))
        .await
        .unwrap();
    drop(store);
    let url = p2_runtime::storage::sqlite_url_in(dir.path(), "session");
    let db = p2_runtime::storage::connect(&url, "session", p2_session::MIGRATIONS)
        .await
        .unwrap();
    let reopened = p2_session::storage::SessionStore::with_memory_index(db)
        .await
        .unwrap();
    let found = reopened.find_by_token(token.hash()).await.unwrap().unwrap();
    assert_eq!(found, row("alice@x.test", "s1", 1));
    assert!(reopened.delete("alice@x.test", "s1").await.unwrap());
    assert!(
        reopened
            .find_by_token(token.hash())
            .await
            .unwrap()
            .is_none()
    );
}
