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
