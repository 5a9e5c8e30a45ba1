//! Federation end to end (issue 10): two full stacks on loopback, `a.test` and `b.test`, the
//! second reaching the first through `P2_FEDERATION_HOSTS`; alice@a.test signs in on b.test
//! with a key trial, uses b's Bearer routes and WebSocket gateway, renews her cert on a and
//! tells b, and b ends her session once a revoked the cert and b's trust in it ran out. Then
//! every refusal the issue lists, each a problem+json with the reason and no session, against
//! real stacks and small misbehaving home servers, and a hanging home server that delays
//! nobody else. The SDK's own key-trial types (`polyproto` 0.21) build and parse the bodies.

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use polyproto::types::{KeyTrial, KeyTrialCompleted, KeyTrialResponse};
use serde_json::{Value, json};

use crate::gateway_ws::{connect, expect_close, identify};
use crate::helpers::{Backend, TEST_PASSWORD, TestStack, expect_problem, spawn_stack_for};

const A: &str = "a.test";
const B: &str = "b.test";

/// A session on a.test: its token there, its cert and key.
struct HomeSession {
    fid: String,
    token: String,
    key: p2_model::SigningKey,
    pem: String,
}

impl HomeSession {
    fn serial(&self) -> u64 {
        p2_model::IdCert::from_pem(&self.pem)
            .unwrap()
            .serial_u64()
            .unwrap()
    }
}

async fn register(stack: &TestStack, name: &str) {
    let response = stack
        .http
        .post(stack.url("/.p2/auth/v1/register"))
        .json(&json!({"local_name": name, "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn login(stack: &TestStack, name: &str, session_id: &str) -> HomeSession {
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(name, A).unwrap();
    let csr =
        p2_model::build_csr(&key, &fid, &p2_model::SessionId::parse(session_id).unwrap()).unwrap();
    let response = stack
        .http
        .post(stack.url("/.p2/auth/v1/session"))
        .json(&json!({"local_name": name, "password": TEST_PASSWORD, "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    HomeSession {
        fid: fid.to_string(),
        token: body["token"].as_str().unwrap().to_owned(),
        key,
        pem: body["id_cert"].as_str().unwrap().to_owned(),
    }
}

/// `GET session/auth` on `stack`, parsed by the SDK.
async fn key_trial(stack: &TestStack) -> KeyTrial {
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/session/auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The SDK's `KeyTrialCompleted` body for `trial` signed by `key`, claiming `fid`/`serial`.
fn answer(trial: &KeyTrial, key: &p2_model::SigningKey, fid: &str, serial: u64) -> Value {
    let completed = KeyTrialCompleted {
        signature: p2_model::sign_hex(key, trial.trial.as_bytes()),
        fid: polyproto::types::FederationId::new(fid).unwrap(),
        serial_number: serial,
    };
    serde_json::to_value(completed).unwrap()
}

async fn sign_in(stack: &TestStack, body: &Value) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/.p2/core/v1/session/auth"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A full sign-in of `session` on `stack`: the token.
async fn signed_in(stack: &TestStack, session: &HomeSession) -> String {
    let trial = key_trial(stack).await;
    let response = sign_in(
        stack,
        &answer(&trial, &session.key, &session.fid, session.serial()),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

async fn get(stack: &TestStack, path: &str, token: &str) -> reqwest::Response {
    stack
        .http
        .get(stack.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Starts a.test, then b.test mapping a.test (and `extra` domains) to local URLs.
async fn pair(
    backend: Backend,
    extra: &[(&str, String)],
    configure_b: impl FnOnce(&mut polyproto_server::stack::StackConfig),
) -> (TestStack, TestStack) {
    let a = spawn_stack_for(backend, A, |_| {}).await;
    let mut hosts = vec![format!("{A}={}", a.base)];
    hosts.extend(extra.iter().map(|(d, u)| format!("{d}={u}")));
    let hosts = hosts.join(",");
    let b = spawn_stack_for(backend, B, move |config| {
        config.session.federation.hosts = hosts;
        // A foreign session's cert is re-verified when its token is resolved: no gateway
        // token cache in front (it would delay that by its lifetime).
        config.token_cache_ms = 0;
        configure_b(config);
    })
    .await;
    (a, b)
}

async fn alice_signs_in_on_b_uses_it_renews_and_is_ended_by_a_revocation(backend: Backend) {
    let (a, b) = pair(backend, &[], |config| {
        // b trusts a verified cert for 5 s before asking a again (the cache window a signs
        // is up to 12 h; b may ask sooner, never later).
        config.session.federation.max_trust_secs = 5;
        config.session.federation.key_trial_ttl_secs = 2;
    })
    .await;
    register(&a, "alice").await;
    let alice = login(&a, "alice", "laptop").await;

    // Sign in on b with nothing but the key and the cert's serial (the trial is the last one
    // this client was given: the body is exactly the SDK's KeyTrialCompleted).
    let trial = key_trial(&b).await;
    assert!(trial.expires > crate::helpers::now());
    let body = answer(&trial, &alice.key, &alice.fid, alice.serial());
    let response = sign_in(&b, &body).await;
    assert_eq!(response.status(), 200);
    let token = response.text().await.unwrap();
    assert_eq!(token.len(), 64);

    // The trial is used up: the same answer again, naming the trial, is refused.
    let mut again = body.clone();
    again["trial"] = json!(trial.trial);
    let detail = expect_problem(sign_in(&b, &again).await, 401).await;
    assert!(detail.contains("key trial unknown"), "{detail}");

    // b now answers alice's cert from its verified cache, exactly as a serves it.
    let served: Vec<Value> = a
        .http
        .get(a.url(&format!("/.p2/core/v1/idcert/actor/{}", alice.fid)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = b
        .http
        .get(b.url(&format!("/.p2/core/v1/idcert/actor/{}", alice.fid)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(polyproto::is_canonicalized_json(&text), "{text}");
    let cached: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cached.len(), 1);
    assert!(served.contains(&cached[0]), "{cached:?} not in {served:?}");
    let response = b
        .http
        .get(b.url("/.p2/core/v1/idcert/actor/nobody@a.test"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;

    // b's Bearer routes that make sense for a foreign session...
    let response = get(&b, "/.p2/core/v1/challenge", &token).await;
    assert_eq!(response.status(), 200);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(get(&b, "/.p2/core/v1/events", &token).await.status(), 200);
    let mut ws = connect(&b.base).await;
    identify(&mut ws, &token).await;
    // ...and the ones only a home server may serve.
    let response = b
        .http
        .post(b.url("/.p2/core/v1/services"))
        .bearer_auth(&token)
        .json(&json!({"service": "chat", "url": "https://chat.example", "primary": true}))
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    let (csr, _) = {
        let key = p2_model::generate_signing_key();
        let fid = p2_model::FederationId::parse(&alice.fid).unwrap();
        let csr =
            p2_model::build_csr(&key, &fid, &p2_model::SessionId::parse("x").unwrap()).unwrap();
        (csr, key)
    };
    let response = b
        .http
        .post(b.url("/.p2/core/v1/idcert"))
        .bearer_auth(&token)
        .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
        .body(csr)
        .send()
        .await
        .unwrap();
    let detail = expect_problem(response, 403).await;
    assert!(detail.contains("another home server"), "{detail}");
    let response = b
        .http
        .put(b.url("/.p2/core/v1/key/server"))
        .bearer_auth(&token)
        .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    let response = b
        .http
        .delete(b.url("/.p2/core/v1/session?session_id=phone"))
        .bearer_auth(&token)
        .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    assert_eq!(challenge["challenge"].as_str().unwrap().len(), 64);

    // Renewal on a (same session ID), then b is told with the SDK's body: a JSON string.
    let new_key = p2_model::generate_signing_key();
    let csr = p2_model::build_csr(
        &new_key,
        &p2_model::FederationId::parse(&alice.fid).unwrap(),
        &p2_model::SessionId::parse("laptop").unwrap(),
    )
    .unwrap();
    let response = a
        .http
        .post(a.url("/.p2/core/v1/idcert"))
        .bearer_auth(&alice.token)
        .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
        .body(csr)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let renewed: Value = response.json().await.unwrap();
    let renewed = HomeSession {
        fid: alice.fid.clone(),
        token: renewed["token"].as_str().unwrap().to_owned(),
        key: new_key,
        pem: renewed["id_cert"].as_str().unwrap().to_owned(),
    };
    // Not the session's cert (another session's) and not a cert at all: 400 with the reason.
    let response = b
        .http
        .put(b.url("/.p2/core/v1/session/idcert/extern"))
        .bearer_auth(&token)
        .body("garbage")
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
    let other = login(&a, "alice", "phone").await;
    let response = b
        .http
        .put(b.url("/.p2/core/v1/session/idcert/extern"))
        .bearer_auth(&token)
        .body(other.pem.clone())
        .send()
        .await
        .unwrap();
    let detail = expect_problem(response, 400).await;
    assert!(detail.contains("session"), "{detail}");
    let response = b
        .http
        .put(b.url("/.p2/core/v1/session/idcert/extern"))
        .bearer_auth(&token)
        .body(serde_json::to_string(&renewed.pem).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    assert_eq!(
        get(&b, "/.p2/core/v1/challenge", &token).await.status(),
        200
    );
    // alice's phone signs in on b too, and listens.
    let phone_token = signed_in(&b, &other).await;
    let mut phone_ws = connect(&b.base).await;
    identify(&mut phone_ws, &phone_token).await;

    // alice's completed trial is public once it expired (2 s), in the SDK's shape.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = b
        .http
        .get(b.url(&format!("/.p2/core/v1/keytrial/{}", alice.fid)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(polyproto::is_canonicalized_json(&text), "{text}");
    let trials: Vec<KeyTrialResponse> = serde_json::from_str(&text).unwrap();
    // The laptop's and (once expired) the phone's, newest first.
    let serial = alice.serial().to_string();
    assert!(!trials.is_empty() && trials.len() <= 2, "{trials:?}");
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t["keyTrial"]["trial"] == trial.trial.as_str()
                && t["keyTrialCompletion"][0]["serialNumber"].as_str() == Some(serial.as_str())
                && t["signature"] == t["keyTrialCompletion"][0]["signature"]),
        "{text}"
    );

    // alice deletes the session on a: a revokes the cert. Once b's trust ran out (5 s), b asks
    // a again, sees the revocation and ends the session: the token dies, the socket closes.
    let response = a
        .http
        .delete(a.url("/.p2/core/v1/session"))
        .bearer_auth(&renewed.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    expect_problem(get(&b, "/.p2/core/v1/challenge", &token).await, 401).await;
    expect_close(&mut ws, 4003).await;
    // The phone hears of it: op 4 with a's own signed revocation (its CacheableIdCert object).
    let op4 = loop {
        let event = crate::gateway_ws::recv(&mut phone_ws).await;
        if event["op"] == "4" {
            break event;
        }
    };
    assert_eq!(op4["d"]["serial"], renewed.serial().to_string());
    assert!(op4["d"]["invalidatedAt"].is_string(), "{op4}");
    assert_eq!(op4["d"]["idCertPem"], renewed.pem.as_str());
    // And the revoked cert cannot sign in again.
    let trial = key_trial(&b).await;
    let detail = expect_problem(
        sign_in(
            &b,
            &answer(&trial, &renewed.key, &renewed.fid, renewed.serial()),
        )
        .await,
        401,
    )
    .await;
    assert!(detail.contains("revoked"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_signs_in_on_b_uses_it_renews_and_is_ended_by_a_revocation_sqlite() {
    alice_signs_in_on_b_uses_it_renews_and_is_ended_by_a_revocation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_signs_in_on_b_uses_it_renews_and_is_ended_by_a_revocation_postgres() {
    alice_signs_in_on_b_uses_it_renews_and_is_ended_by_a_revocation(Backend::Postgres).await;
}

/// A home server that misbehaves in one way, on a free loopback port: its base URL.
async fn misbehaving(kind: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match kind {
        // Accepts connections and never answers.
        "hang" => {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    held.push(socket);
                }
            });
        }
        _ => {
            let app = axum::Router::new().fallback(move || async move {
                match kind {
                    "garbage" => "this is not JSON {".into_response(),
                    "huge" => vec![b' '; 10 * 1024 * 1024].into_response(),
                    "redirect" => (
                        axum::http::StatusCode::FOUND,
                        [("location", "http://127.0.0.1:9/.well-known/polyproto-core")],
                    )
                        .into_response(),
                    _ => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    format!("http://{addr}")
}

/// A server claiming to be a home server for `mallory.test` but serving a root cert for
/// a.test made with another key (an impostor).
async fn impostor() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let key = p2_model::generate_signing_key();
    let now = crate::helpers::now();
    let root = p2_model::issue_root_cert(&key, A, 1, now - 60, now + 86_400).unwrap();
    let signature = p2_model::sign_cache(&key, &root.serial(), now - 60, now + 3600, None);
    let served = json!({
        "idCertPem": root.to_pem(), "cacheNotValidBefore": (now - 60).to_string(),
        "cacheNotValidAfter": (now + 3600).to_string(), "cacheSignature": signature,
        "invalidated": false,
    });
    let api = format!("{base}/.p2/core/");
    let app = axum::Router::new()
        .route(
            "/.well-known/polyproto-core",
            axum::routing::get(move || async move { axum::Json(json!({ "api": api })) }),
        )
        .route(
            "/.p2/core/v1/idcert/server",
            axum::routing::get(move || async move { axum::Json(served) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn every_refusal_is_a_clear_problem_and_creates_no_session(backend: Backend) {
    let extra = vec![
        ("hang.test", misbehaving("hang").await),
        ("garbage.test", misbehaving("garbage").await),
        ("huge.test", misbehaving("huge").await),
        ("redirect.test", misbehaving("redirect").await),
        ("mallory.test", impostor().await),
    ];
    let (a, b) = pair(backend, &extra, |config| {
        config.session.federation.key_trial_ttl_secs = 1;
        config.session.federation.timeout_ms = 1500;
    })
    .await;
    register(&a, "alice").await;
    register(&a, "bob").await;
    let alice = login(&a, "alice", "laptop").await;
    let bob = login(&a, "bob", "laptop").await;

    // A forged trial signature (another key), with and without the cert sent along.
    let forger = p2_model::generate_signing_key();
    for with_cert in [false, true] {
        let trial = key_trial(&b).await;
        let mut body = answer(&trial, &forger, &alice.fid, alice.serial());
        if with_cert {
            body["idCertPem"] = json!(alice.pem);
        }
        let detail = expect_problem(sign_in(&b, &body).await, 401).await;
        assert!(detail.contains("signature does not verify"), "{detail}");
    }
    // An expired trial.
    let trial = key_trial(&b).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let detail = expect_problem(
        sign_in(&b, &answer(&trial, &alice.key, &alice.fid, alice.serial())).await,
        401,
    )
    .await;
    assert!(detail.contains("key trial unknown"), "{detail}");
    // A reused trial: the first (refused) attempt used it up.
    let trial = key_trial(&b).await;
    let mut body = answer(&trial, &forger, &alice.fid, alice.serial());
    body["trial"] = json!(trial.trial);
    expect_problem(sign_in(&b, &body).await, 401).await;
    let mut body = answer(&trial, &alice.key, &alice.fid, alice.serial());
    body["trial"] = json!(trial.trial);
    let detail = expect_problem(sign_in(&b, &body).await, 401).await;
    assert!(detail.contains("key trial unknown"), "{detail}");
    // A cert of a.test made by an impostor (self-signed root with another key), sent along.
    let impostor_key = p2_model::generate_signing_key();
    let now = crate::helpers::now();
    let fake_root = p2_model::issue_root_cert(&impostor_key, A, 1, now - 60, now + 86_400).unwrap();
    let eve_key = p2_model::generate_signing_key();
    let csr = p2_model::build_csr(
        &eve_key,
        &p2_model::FederationId::parse(&alice.fid).unwrap(),
        &p2_model::SessionId::parse("laptop").unwrap(),
    )
    .unwrap();
    let fake = p2_model::issue_actor_cert(
        &fake_root,
        &impostor_key,
        &p2_model::IdCsr::from_pem(&csr).unwrap(),
        alice.serial(),
        now - 60,
        now + 3600,
    )
    .unwrap();
    let trial = key_trial(&b).await;
    let mut body = answer(&trial, &eve_key, &alice.fid, alice.serial());
    body["idCertPem"] = json!(fake.to_pem());
    let detail = expect_problem(sign_in(&b, &body).await, 401).await;
    assert!(detail.contains("not the cert"), "{detail}");
    // A home server impersonating a.test: what mallory.test serves is a root for a.test.
    let mallory_key = p2_model::generate_signing_key();
    let trial = key_trial(&b).await;
    let detail = expect_problem(
        sign_in(&b, &answer(&trial, &mallory_key, "alice@mallory.test", 7)).await,
        401,
    )
    .await;
    assert!(detail.contains("Wrong domain"), "{detail}");
    // A revoked cert.
    let phone = login(&a, "alice", "phone").await;
    let response = a
        .http
        .delete(a.url("/.p2/core/v1/session"))
        .bearer_auth(&phone.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let trial = key_trial(&b).await;
    let detail = expect_problem(
        sign_in(&b, &answer(&trial, &phone.key, &phone.fid, phone.serial())).await,
        401,
    )
    .await;
    assert!(detail.contains("revoked"), "{detail}");
    // A serial that is not alice's (bob's), signed with bob's key.
    let trial = key_trial(&b).await;
    let detail = expect_problem(
        sign_in(&b, &answer(&trial, &bob.key, &alice.fid, bob.serial())).await,
        401,
    )
    .await;
    assert!(detail.contains("knows no cert"), "{detail}");
    // Home servers that hang, answer garbage, answer 10 MB, or redirect to 127.0.0.1.
    for (domain, expected) in [
        ("hang.test", "did not answer"),
        ("garbage.test", "not JSON"),
        ("huge.test", "more than"),
        ("redirect.test", "redirects"),
    ] {
        let trial = key_trial(&b).await;
        let started = Instant::now();
        let detail = expect_problem(
            sign_in(
                &b,
                &answer(&trial, &alice.key, &format!("alice@{domain}"), 1),
            )
            .await,
            401,
        )
        .await;
        assert!(detail.contains(expected), "{domain}: {detail}");
        assert!(started.elapsed() < Duration::from_secs(4), "{domain}");
    }
    // An actor of b itself is told to log in with its password.
    let trial = key_trial(&b).await;
    let detail = expect_problem(
        sign_in(&b, &answer(&trial, &alice.key, "carol@b.test", 1)).await,
        400,
    )
    .await;
    assert!(detail.contains("actor of this server"), "{detail}");
    // Malformed answers are 400.
    let response = sign_in(&b, &json!({"fid": alice.fid, "signature": "00"})).await;
    expect_problem(response, 400).await;

    // No session was created: no trial of alice was completed on b.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = b
        .http
        .get(b.url(&format!("/.p2/core/v1/keytrial/{}", alice.fid)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_clear_problem_and_creates_no_session_sqlite() {
    every_refusal_is_a_clear_problem_and_creates_no_session(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_clear_problem_and_creates_no_session_postgres() {
    every_refusal_is_a_clear_problem_and_creates_no_session(Backend::Postgres).await;
}

/// While sign-ins at a hanging home server wait for their timeout, everything else — local
/// reads, and a sign-in of a.test's actor — answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_home_server_delays_nobody_else() {
    let extra = vec![("hang.test", misbehaving("hang").await)];
    let (a, b) = pair(Backend::Sqlite, &extra, |config| {
        config.session.federation.timeout_ms = 3000;
    })
    .await;
    register(&a, "alice").await;
    let alice = login(&a, "alice", "laptop").await;
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let trial = key_trial(&b).await;
        let mut body = answer(&trial, &alice.key, "alice@hang.test", 1);
        body["trial"] = json!(trial.trial);
        let http = b.http.clone();
        let url = b.url("/.p2/core/v1/session/auth");
        hanging.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = http.post(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let response = b
        .http
        .get(b.url("/.p2/core/v1/idcert/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = signed_in(&b, &alice).await;
    assert_eq!(
        get(&b, "/.p2/core/v1/challenge", &token).await.status(),
        200
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    for task in hanging {
        let (status, elapsed) = task.await.unwrap();
        assert!(status == 401 || status == 429, "{status}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
}

/// A home server for `home.test` built by hand, counting the requests it answers: its root,
/// one actor cert for `alice@home.test` (session `laptop`), and the actor's key.
async fn counting_home(
    rotated: bool,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    p2_model::SigningKey,
    u64,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let now = crate::helpers::now();
    // With `rotated`, the actor's cert was issued under an earlier key: the server serves its
    // current root, and the earlier one for `?timestamp=` before the rotation.
    let old_key = p2_model::generate_signing_key();
    let old_root =
        p2_model::issue_root_cert(&old_key, "home.test", 1, now - 120, now + 86_400).unwrap();
    let root_key = p2_model::generate_signing_key();
    let root =
        p2_model::issue_root_cert(&root_key, "home.test", 2, now - 90, now + 86_400).unwrap();
    let (issuer, issuer_key) = if rotated {
        (&old_root, &old_key)
    } else {
        (&root, &root_key)
    };
    let actor_key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::parse("alice@home.test").unwrap();
    let csr = p2_model::build_csr(
        &actor_key,
        &fid,
        &p2_model::SessionId::parse("laptop").unwrap(),
    )
    .unwrap();
    let serial = 4242;
    let actor = p2_model::issue_actor_cert(
        issuer,
        issuer_key,
        &p2_model::IdCsr::from_pem(&csr).unwrap(),
        serial,
        // Issued before the rotation (at now - 90) when rotated.
        if rotated { now - 100 } else { now - 60 },
        now + 3600,
    )
    .unwrap();
    let cacheable = |cert: &p2_model::IdCert, key: &p2_model::SigningKey| {
        let (nb, na) = (now - 60, now + 3000);
        json!({
            "idCertPem": cert.to_pem(), "cacheNotValidBefore": nb.to_string(),
            "cacheNotValidAfter": na.to_string(), "invalidated": false,
            "cacheSignature": p2_model::sign_cache(key, &cert.serial(), nb, na, None),
        })
    };
    let (server, certs) = (
        cacheable(&root, &root_key),
        json!([cacheable(&actor, &root_key)]),
    );
    let earlier = cacheable(&old_root, &old_key);
    let rotation = now - 90;
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let api = format!("{base}/.p2/core/");
    let app = axum::Router::new()
        .route(
            "/.well-known/polyproto-core",
            axum::routing::get(move || async move { axum::Json(json!({ "api": api })) }),
        )
        .route(
            "/.p2/core/v1/idcert/server",
            axum::routing::get(
                move |axum::extract::Query(query): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    let at = query.get("timestamp").and_then(|t| t.parse::<u64>().ok());
                    match at {
                        Some(at) if at < rotation => axum::Json(earlier),
                        _ => axum::Json(server),
                    }
                },
            ),
        )
        .route(
            "/.p2/core/v1/idcert/actor/{fid}",
            axum::routing::get(move || async move { axum::Json(certs) }),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, count, actor_key, serial)
}

/// Outbound requests per sign-in: three cold (well-known, root cert, actor certs), none warm;
/// and the sign-in times of both (debug build: figures only, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sign_in_makes_no_outbound_request_and_a_cold_one_three() {
    use std::sync::atomic::Ordering;
    let (home, count, key, serial) = counting_home(false).await;
    let b = spawn_stack_for(Backend::Sqlite, B, move |config| {
        config.session.federation.hosts = format!("home.test={home}");
    })
    .await;
    let session = HomeSession {
        fid: "alice@home.test".into(),
        token: String::new(),
        key,
        pem: String::new(),
    };
    let sign_in_once = || async {
        let trial = key_trial(&b).await;
        let started = Instant::now();
        let response = sign_in(&b, &answer(&trial, &session.key, &session.fid, serial)).await;
        assert_eq!(response.status(), 200);
        started.elapsed()
    };
    let cold = sign_in_once().await;
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let mut warm = Duration::ZERO;
    for _ in 0..10 {
        warm += sign_in_once().await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 3, "warm sign-ins fetched");
    println!(
        "foreign sign-in: cold {cold:?}, warm {:?} (mean of 10)",
        warm / 10
    );
}

/// An actor cert issued before its home server rotated its key verifies against the root of
/// its issue time (fetched once: four requests cold), and warm sign-ins still fetch nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_issued_before_a_key_rotation_signs_in() {
    use std::sync::atomic::Ordering;
    let (home, count, key, serial) = counting_home(true).await;
    let b = spawn_stack_for(Backend::Sqlite, B, move |config| {
        config.session.federation.hosts = format!("home.test={home}");
    })
    .await;
    for _ in 0..2 {
        let trial = key_trial(&b).await;
        let response = sign_in(&b, &answer(&trial, &key, "alice@home.test", serial)).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    assert_eq!(count.load(Ordering::SeqCst), 4);
    let response = b
        .http
        .get(b.url("/.p2/core/v1/idcert/actor/alice@home.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
