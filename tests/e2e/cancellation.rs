//! Multi-step operations survive clients that hang up: login, `POST /idcert` and
//! `DELETE /session` are aborted at random moments, and afterwards the session's ID-Cert
//! (identity) and its token row (session) agree — both there or both gone, never one of them.

use std::time::Duration;

use rand::Rng as _;

use crate::helpers::{TEST_PASSWORD, TestStack, csr_for, login, register_and_login};
use polyproto_server::stack::Storage;

/// Attempts per operation and backend.
const ATTEMPTS: usize = 10;
/// Aborts happen after 0 to this many milliseconds.
const MAX_DELAY_MS: u64 = 25;

/// Sends `request` and drops it after `delay`, as a client that disconnects does.
async fn interrupt(request: reqwest::RequestBuilder, delay: Duration) {
    let task = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
    tokio::time::sleep(delay).await;
    task.abort();
    let _ = task.await;
}

/// The session service's database, read directly.
pub(crate) async fn session_db(stack: &TestStack) -> p2_runtime::storage::Database {
    let url = match &stack.storage {
        Storage::Embedded { data_dir } => p2_runtime::storage::sqlite_url_in(data_dir, "session"),
        Storage::External {
            session_database_url,
            ..
        } => session_database_url.clone(),
    };
    p2_runtime::storage::connect(&url, "session", p2_session::MIGRATIONS)
        .await
        .unwrap()
}

/// (the session has a valid cert, the session has a token row).
async fn state_of(
    stack: &TestStack,
    db: &p2_runtime::storage::Database,
    fid: &str,
    session_id: &str,
) -> (bool, bool) {
    let now = crate::helpers::now();
    let certs: serde_json::Value = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{fid}")))
        .query(&[("session_id", session_id), ("timestamp", &now.to_string())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let valid_cert = certs
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["invalidated"] == false);
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE fid = $1 AND session_id = $2")
            .bind(fid)
            .bind(session_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    (valid_cert, rows == 1)
}

/// How long the state must stay unchanged to count as settled: well above the time one
/// operation takes (a password hash, a few database writes), since an aborted client does not
/// tell when the server-side work ends.
const QUIET: Duration = Duration::from_millis(800);

/// Waits for an interrupted operation to finish (the state stops changing), then asserts that
/// cert and token agree; returns whether the session exists. A half-done state may be seen
/// while the operation runs, never after it.
async fn settled(
    stack: &TestStack,
    db: &p2_runtime::storage::Database,
    fid: &str,
    session_id: &str,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = state_of(stack, db, fid, session_id).await;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = state_of(stack, db, fid, session_id).await;
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= QUIET {
            let (cert, token) = last;
            assert_eq!(
                cert, token,
                "{session_id}: valid cert {cert} but token {token}, and nothing is changing"
            );
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{session_id} kept changing for 10 s"
        );
    }
}

async fn interrupted_operations_complete_or_leave_nothing(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let db = session_db(&stack).await;
    let mut outcomes = [0usize; 2];
    let delay = || Duration::from_millis(rand::thread_rng().gen_range(0..=MAX_DELAY_MS));
    for attempt in 0..ATTEMPTS {
        // Login.
        let session_id = format!("login-{attempt}");
        let (csr, _) = csr_for("alice", &session_id);
        let request = stack
            .http
            .post(stack.url("/.p2/auth/v1/session"))
            .json(&serde_json::json!({
                "local_name": "alice", "password": TEST_PASSWORD, "csr": csr,
            }));
        interrupt(request, delay()).await;
        outcomes[usize::from(settled(&stack, &db, &alice.fid, &session_id).await)] += 1;

        // A new session's ID-Cert.
        let session_id = format!("idcert-{attempt}");
        let (csr, _) = csr_for("alice", &session_id);
        let request = stack
            .http
            .post(stack.url("/.p2/core/v1/idcert"))
            .bearer_auth(&alice.token)
            .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
            .body(csr);
        interrupt(request, delay()).await;
        outcomes[usize::from(settled(&stack, &db, &alice.fid, &session_id).await)] += 1;

        // Deleting another session.
        let victim = login(&stack, "alice", &format!("victim-{attempt}")).await;
        let request = stack
            .http
            .delete(stack.url("/.p2/core/v1/session"))
            .bearer_auth(&alice.token)
            .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
            .query(&[("session_id", victim.session_id.as_str())]);
        interrupt(request, delay()).await;
        let alive = settled(&stack, &db, &alice.fid, &victim.session_id).await;
        outcomes[usize::from(alive)] += 1;
        let response = stack
            .http
            .get(stack.url("/.p2/core/v1/challenge"))
            .bearer_auth(&victim.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().is_success(),
            alive,
            "the victim's token must work exactly while its session exists"
        );
    }
    // The caller's own session was never touched.
    assert!(settled(&stack, &db, &alice.fid, &alice.session_id).await);
    eprintln!(
        "interrupted operations: {} left nothing, {} completed",
        outcomes[0], outcomes[1]
    );
}

crate::on_both_backends!(interrupted_operations_complete_or_leave_nothing);
