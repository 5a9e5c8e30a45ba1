//! Contract fixes found by testing: the `idcert/actor` time filters select by issue time, each
//! cert object carries the seed's `id_cert`, closed registration is a clear 403, and every
//! rejection — axum's own extractors included — is problem+json.

use crate::helpers::{TestStack, expect_problem, now, register, register_and_login};
use crate::on_both_backends;

async fn actor_cert_filters_select_by_issue_time_and_carry_id_cert(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let get = |query: Vec<(&'static str, String)>| {
        let request = stack
            .http
            .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{}", alice.fid)))
            .query(&query);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Vec<serde_json::Value>>().await.unwrap()
        }
    };
    let t = now();
    // A 30-day cert issued a moment ago: issued at or before now, and at or after an hour ago.
    let certs = get(vec![("notAfter", (t + 1).to_string())]).await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0]["id_cert"], certs[0]["idCertPem"]);
    assert_eq!(certs[0]["idCertPem"].as_str().unwrap(), alice.id_cert_pem);
    let certs = get(vec![("notBefore", (t - 3600).to_string())]).await;
    assert_eq!(certs.len(), 1);
    // Issued after the window ends / before it starts: not selected.
    assert!(
        get(vec![("notAfter", (t - 3600).to_string())])
            .await
            .is_empty()
    );
    assert!(
        get(vec![("notBefore", (t + 3600).to_string())])
            .await
            .is_empty()
    );
}

on_both_backends!(actor_cert_filters_select_by_issue_time_and_carry_id_cert);

async fn every_rejection_is_problem_json(stack: TestStack) {
    for path in [
        "/.p2/core/v1/idcert/actor/%FF",
        "/.p2/core/v1/services/discover/%FF",
        "/.p2/core/v1/idcert/actor/not-a-fid",
    ] {
        let response = stack.http.get(stack.url(path)).send().await.unwrap();
        let detail = expect_problem(response, 400).await;
        assert!(!detail.is_empty(), "{path}");
    }
    // A body that is not JSON, where JSON is expected.
    let response = stack
        .http
        .post(stack.url("/.p2/auth/v1/register"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
}

on_both_backends!(every_rejection_is_problem_json);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_is_refused_over_http_with_a_clear_403() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = polyproto_server::stack::StackConfig::embedded(
        ([127, 0, 0, 1], 0).into(),
        crate::helpers::DOMAIN,
        dir.path(),
    );
    config.identity.registration = p2_identity::Registration::Closed;
    let stack = polyproto_server::stack::start(config.clone())
        .await
        .unwrap();
    let test_stack = TestStack {
        base: format!("http://{}", stack.addr),
        stack: Some(stack),
        http: reqwest::Client::new(),
        storage: config.storage,
        _dir: Some(dir),
    };
    let response = register(&test_stack, "mallory", crate::helpers::TEST_PASSWORD).await;
    let detail = expect_problem(response, 403).await;
    assert!(detail.contains("registration is closed"), "{detail}");
    // Nothing was created: logging in as mallory fails like any unknown actor.
    let (csr, _) = crate::helpers::csr_for("mallory", "s1");
    let response =
        crate::helpers::login_request(&test_stack, "mallory", crate::helpers::TEST_PASSWORD, &csr)
            .await;
    expect_problem(response, 401).await;
}

/// The `expires_at` of a session's token row.
async fn token_expiry(stack: &TestStack, fid: &str, session_id: &str) -> u64 {
    let db = crate::cancellation::session_db(stack).await;
    let expires: i64 =
        sqlx::query_scalar("SELECT expires_at FROM sessions WHERE fid = $1 AND session_id = $2")
            .bind(fid)
            .bind(session_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    u64::try_from(expires).unwrap()
}

async fn tokens_expire_with_their_cert_and_renewals_extend_them(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let cert = p2_model::IdCert::from_pem(&alice.id_cert_pem).unwrap();
    assert_eq!(
        token_expiry(&stack, &alice.fid, &alice.session_id).await,
        cert.not_after()
    );
    // Renew the session's cert (same session ID) a second later: the new token's expiry is
    // the new cert's end.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (csr, _) = crate::helpers::csr_for("alice", &alice.session_id);
    let response = stack
        .http
        .post(stack.url("/.p2/core/v1/idcert"))
        .bearer_auth(&alice.token)
        .header("X-P2-Sensitive-Solution", crate::helpers::TEST_PASSWORD)
        .body(csr)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    let renewed = p2_model::IdCert::from_pem(body["id_cert"].as_str().unwrap()).unwrap();
    assert!(renewed.not_after() > cert.not_after());
    assert_eq!(
        token_expiry(&stack, &alice.fid, &alice.session_id).await,
        renewed.not_after()
    );
}

on_both_backends!(tokens_expire_with_their_cert_and_renewals_extend_them);

async fn a_password_beyond_ascii_passes_the_sensitive_check_and_unsendable_ones_are_refused(
    stack: TestStack,
) {
    let password = "pässwört-1234 ünïcödé";
    let response = register(&stack, "umlaut", password).await;
    assert_eq!(response.status(), 201);
    let (csr, _) = crate::helpers::csr_for("umlaut", "s1");
    let response = crate::helpers::login_request(&stack, "umlaut", password, &csr).await;
    assert_eq!(response.status(), 201);
    let token = response.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The header carries the password as raw UTF-8 bytes.
    let (csr, _) = crate::helpers::csr_for("umlaut", "s2");
    let response = stack
        .http
        .post(stack.url("/.p2/core/v1/idcert"))
        .bearer_auth(&token)
        .header(
            "X-P2-Sensitive-Solution",
            reqwest::header::HeaderValue::from_bytes(password.as_bytes()).unwrap(),
        )
        .body(csr)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // What HTTP cannot carry is refused when it is set.
    for unsendable in [" leading space pw", "trailing space pw "] {
        let detail = expect_problem(register(&stack, "spacey", unsendable).await, 400).await;
        assert!(detail.contains("whitespace"), "{detail}");
    }
}

on_both_backends!(
    a_password_beyond_ascii_passes_the_sensitive_check_and_unsendable_ones_are_refused
);

/// Waits until `token` is refused (401) on a Bearer route; the embedded mode picks up an
/// operator's change within its index refresh interval (5 s).
async fn token_dies(stack: &TestStack, token: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    loop {
        let response = stack
            .http
            .get(stack.url("/.p2/core/v1/challenge"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if response.status() == 401 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn operators_list_end_sessions_and_disable_actors(stack: TestStack) {
    use polyproto_server::admin;
    let alice = register_and_login(&stack, "alice").await;
    let phone = crate::helpers::login(&stack, "alice", "phone").await;
    let storage = crate::helpers::admin_storage(&stack);
    let listed = admin::list_sessions(&storage, "alice").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["phone", "s1"]);

    // One session ended: its token dies and its cert is revoked; the other lives on.
    assert_eq!(
        admin::revoke_sessions(&storage, "alice", Some("phone"))
            .await
            .unwrap(),
        1
    );
    token_dies(&stack, &phone.token).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Disabled: every session ends, and the password no longer logs in.
    admin::set_disabled(&storage, "alice", true).await.unwrap();
    token_dies(&stack, &alice.token).await;
    let (csr, _) = crate::helpers::csr_for("alice", "again");
    let response =
        crate::helpers::login_request(&stack, "alice", crate::helpers::TEST_PASSWORD, &csr).await;
    let detail = expect_problem(response, 403).await;
    assert!(detail.contains("disabled"), "{detail}");
    // Re-enabled: logging in works again.
    admin::set_disabled(&storage, "alice", false).await.unwrap();
    let again = crate::helpers::login(&stack, "alice", "again").await;
    assert!(!again.token.is_empty());
    assert!(admin::set_disabled(&storage, "nobody", true).await.is_err());
}

on_both_backends!(operators_list_end_sessions_and_disable_actors);

async fn the_fourth_wrong_password_in_a_row_gets_429_while_others_log_in(stack: TestStack) {
    let _alice = register_and_login(&stack, "alice").await;
    let _bob = register_and_login(&stack, "bob").await;
    for i in 0..p2_identity::throttle::FREE_ACCOUNT_FAILURES {
        let (csr, _) = crate::helpers::csr_for("alice", &format!("guess{i}"));
        let response =
            crate::helpers::login_request(&stack, "alice", "not the password", &csr).await;
        expect_problem(response, 401).await;
    }
    let (csr, _) = crate::helpers::csr_for("alice", "guess-next");
    let response = crate::helpers::login_request(&stack, "alice", "not the password", &csr).await;
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "429 must say when to retry");
    expect_problem(response, 429).await;
    let bob = crate::helpers::login(&stack, "bob", "second").await;
    assert!(
        !bob.token.is_empty(),
        "another actor logs in fine meanwhile"
    );
}

on_both_backends!(the_fourth_wrong_password_in_a_row_gets_429_while_others_log_in);

/// The gateway passes the client's address through session to identity: one address guessing
/// at many accounts is throttled by it, though no account had more than one failure.
async fn one_address_guessing_many_accounts_is_throttled(stack: TestStack) {
    let free = p2_identity::throttle::FREE_ADDRESS_FAILURES;
    for i in 0..free {
        let name = format!("target{i}");
        let (csr, _) = crate::helpers::csr_for(&name, "s1");
        let response = crate::helpers::login_request(&stack, &name, "guess", &csr).await;
        expect_problem(response, 401).await;
    }
    let (csr, _) = crate::helpers::csr_for("target-next", "s1");
    let response = crate::helpers::login_request(&stack, "target-next", "guess", &csr).await;
    assert!(response.headers().contains_key("retry-after"));
    expect_problem(response, 429).await;
}

on_both_backends!(one_address_guessing_many_accounts_is_throttled);

/// A token whose session's cert has ended is 401 on every Bearer route (the expiry is set in
/// the past in the session database, as time would; embedded mode picks the change up within
/// its index refresh).
async fn an_expired_token_gets_401(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let db = crate::cancellation::session_db(&stack).await;
    sqlx::query("UPDATE sessions SET expires_at = $1 WHERE fid = $2 AND session_id = $3")
        .bind(i64::try_from(now()).unwrap() - 1)
        .bind(&alice.fid)
        .bind(&alice.session_id)
        .execute(&db.pool)
        .await
        .unwrap();
    token_dies(&stack, &alice.token).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let detail = expect_problem(response, 401).await;
    assert!(detail.contains("unknown session token"), "{detail}");
}

on_both_backends!(an_expired_token_gets_401);
