//! Actors, sessions and their ID-Certs over HTTP: registration, login with a CSR, cert
//! lookup and verification, challenges, session deletion, renewal, server key rotation, and
//! every bad input of the issue — with nothing half-written.

use std::time::{Duration, Instant};

use der::{Decode as _, Encode as _};
use ed25519_dalek::Signer as _;
use p2_model::IdCert;
use serde_json::Value;
use x509_cert::request::CertReq;

use crate::helpers::{
    DOMAIN, TEST_PASSWORD, TestSession, TestStack, csr_for, expect_problem, login, login_request,
    now, register, register_and_login,
};
use crate::on_both_backends;

async fn server_cert(stack: &TestStack, timestamp: Option<u64>) -> IdCert {
    let mut url = stack.url("/.p2/core/v1/idcert/server");
    if let Some(t) = timestamp {
        url = format!("{url}?timestamp={t}");
    }
    let body: Value = stack
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    IdCert::from_pem(body["idCertPem"].as_str().unwrap()).unwrap()
}

async fn actor_certs(stack: &TestStack, fid: &str, query: &str) -> Vec<Value> {
    let response = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{fid}{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert!(polyproto::is_canonicalized_json(&text), "not JCS: {text}");
    serde_json::from_str(&text).unwrap()
}

fn u64_of(value: &Value, field: &str) -> u64 {
    value[field].as_str().unwrap().parse().unwrap()
}

/// Checks a CacheableIdCert entry: cert verifies against `server`, cache signature verifies.
fn assert_attested(entry: &Value, server: &IdCert) -> IdCert {
    let cert = IdCert::from_pem(entry["idCertPem"].as_str().unwrap()).unwrap();
    let nb = u64_of(entry, "cacheNotValidBefore");
    let na = u64_of(entry, "cacheNotValidAfter");
    assert!(cert.not_before() <= nb && na <= cert.not_after() && na - nb <= 12 * 3600);
    let invalidated = entry
        .get("invalidatedAt")
        .map(|_| u64_of(entry, "invalidatedAt"));
    assert_eq!(entry["invalidated"], invalidated.is_some());
    p2_model::verify_cache_signature(
        &server.public_key().unwrap(),
        &cert.serial(),
        nb,
        na,
        invalidated,
        entry["cacheSignature"].as_str().unwrap(),
    )
    .expect("cache signature");
    cert
}

async fn bearer_get(stack: &TestStack, path: &str, token: &str) -> reqwest::Response {
    stack
        .http
        .get(stack.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn delete_session(
    stack: &TestStack,
    session: &TestSession,
    target: Option<&str>,
    sensitive: Option<&str>,
) -> reqwest::Response {
    let mut url = stack.url("/.p2/core/v1/session");
    if let Some(target) = target {
        url = format!("{url}?session_id={target}");
    }
    let mut request = stack.http.delete(url).bearer_auth(&session.token);
    if let Some(solution) = sensitive {
        request = request.header("X-P2-Sensitive-Solution", solution);
    }
    request.send().await.unwrap()
}

async fn request_id_cert(
    stack: &TestStack,
    session: &TestSession,
    csr: &str,
    sensitive: Option<&str>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .post(stack.url("/.p2/core/v1/idcert"))
        .bearer_auth(&session.token)
        .header("content-type", "text/plain")
        .body(csr.to_owned());
    if let Some(solution) = sensitive {
        request = request.header("X-P2-Sensitive-Solution", solution);
    }
    request.send().await.unwrap()
}

async fn register_login_and_verify_the_issued_cert(stack: TestStack) {
    let response = register(&stack, "Alice", TEST_PASSWORD).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["fid"],
        format!("alice@{DOMAIN}"),
        "names are normalised"
    );

    let alice = login(&stack, "alice", "laptop").await;
    let server = server_cert(&stack, None).await;
    let cert = IdCert::from_pem(&alice.id_cert_pem).unwrap();
    p2_model::verify_actor_cert(&cert, &server, now()).unwrap();
    assert_eq!(cert.subject_fid().unwrap().to_string(), alice.fid);
    assert_eq!(cert.session_id().unwrap().to_string(), "laptop");
    assert_eq!(cert.public_key().unwrap(), alice.key.verifying_key());
    assert!(cert.not_after() - cert.not_before() <= 60 * 86_400);

    let certs = actor_certs(&stack, &alice.fid, "").await;
    assert_eq!(certs.len(), 1);
    let listed = assert_attested(&certs[0], &server);
    assert_eq!(listed.der(), cert.der());
    assert_eq!(certs[0]["invalidated"], false);
    // FIDs are case-insensitive.
    assert_eq!(
        actor_certs(&stack, &format!("ALICE@{}", DOMAIN.to_uppercase()), "")
            .await
            .len(),
        1
    );
}

async fn challenges_are_long_mixed_unique_and_need_a_token(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let response = bearer_get(&stack, "/.p2/core/v1/challenge", &alice.token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let challenge = body["challenge"].as_str().unwrap().to_owned();
        assert_eq!(challenge.len(), 64);
        assert!(challenge.chars().any(|c| c.is_ascii_lowercase()));
        assert!(challenge.chars().any(|c| c.is_ascii_uppercase()));
        assert!(challenge.chars().any(|c| c.is_ascii_digit()));
        let expires: u64 = body["expires"].as_str().unwrap().parse().unwrap();
        assert!(expires > now() && expires <= now() + 301);
        assert!(seen.insert(challenge), "challenges must be unique");
    }
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    let response = bearer_get(&stack, "/.p2/core/v1/challenge", "not-a-token").await;
    expect_problem(response, 401).await;
}

async fn deleting_a_session_kills_its_token_and_revokes_its_cert(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let response = delete_session(&stack, &alice, None, None).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    let response = bearer_get(&stack, "/.p2/core/v1/challenge", &alice.token).await;
    expect_problem(response, 401).await;
    let certs = actor_certs(&stack, &alice.fid, "").await;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["invalidated"], true);
    let at = u64_of(&certs[0], "invalidatedAt");
    assert!(at <= now() && at + 60 >= now());
    assert_attested(&certs[0], &server_cert(&stack, None).await);
    // The session ID is free again.
    let again = login(&stack, "alice", "s1").await;
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", &again.token)
            .await
            .status(),
        200
    );
}

async fn deleting_another_session_needs_the_sensitive_solution(stack: TestStack) {
    let phone = register_and_login(&stack, "alice").await;
    let laptop = login(&stack, "alice", "laptop").await;
    let response = delete_session(&stack, &laptop, Some("s1"), None).await;
    expect_problem(response, 403).await;
    let response = delete_session(&stack, &laptop, Some("s1"), Some("wrong password")).await;
    expect_problem(response, 403).await;
    let response = delete_session(&stack, &laptop, Some("nope"), Some(TEST_PASSWORD)).await;
    expect_problem(response, 404).await;
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", &phone.token)
            .await
            .status(),
        200
    );
    let response = delete_session(&stack, &laptop, Some("s1"), Some(TEST_PASSWORD)).await;
    assert_eq!(response.status(), 204);
    expect_problem(
        bearer_get(&stack, "/.p2/core/v1/challenge", &phone.token).await,
        401,
    )
    .await;
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", &laptop.token)
            .await
            .status(),
        200
    );
    // Another actor's session cannot be named.
    let bob = register_and_login(&stack, "bob").await;
    let response = delete_session(&stack, &bob, Some("laptop"), Some(TEST_PASSWORD)).await;
    expect_problem(response, 404).await;
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", &laptop.token)
            .await
            .status(),
        200
    );
}

async fn renewal_keeps_the_session_id_and_revokes_the_old_cert(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let (csr, key) = csr_for("alice", "s1");
    // Sensitive action: no or wrong solution is 403.
    expect_problem(request_id_cert(&stack, &alice, &csr, None).await, 403).await;
    expect_problem(
        request_id_cert(&stack, &alice, &csr, Some("nope nope")).await,
        403,
    )
    .await;
    let response = request_id_cert(&stack, &alice, &csr, Some(TEST_PASSWORD)).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id_cert"], body["idCert"]);
    let new_token = body["token"].as_str().unwrap();
    let renewed = IdCert::from_pem(body["id_cert"].as_str().unwrap()).unwrap();
    assert_eq!(renewed.session_id().unwrap().to_string(), "s1");
    assert_eq!(renewed.public_key().unwrap(), key.verifying_key());

    let certs = actor_certs(&stack, &alice.fid, "?session_id=s1").await;
    assert_eq!(certs.len(), 2);
    // The API promises no order (both were issued in the same second).
    let (old, new): (Vec<&Value>, Vec<&Value>) =
        certs.iter().partition(|c| c["invalidated"] == true);
    assert_eq!(old.len(), 1, "the old cert is revoked");
    assert_eq!(old[0]["idCertPem"], alice.id_cert_pem.as_str());
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["idCertPem"], body["id_cert"]);
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", new_token)
            .await
            .status(),
        200
    );
    expect_problem(
        bearer_get(&stack, "/.p2/core/v1/challenge", &alice.token).await,
        401,
    )
    .await;

    // A CSR for a new session ID opens a second session; one held by a valid cert is 409.
    let renewed_session = TestSession {
        token: new_token.to_owned(),
        ..alice
    };
    let (csr2, _) = csr_for("alice", "tablet");
    let response = request_id_cert(&stack, &renewed_session, &csr2, Some(TEST_PASSWORD)).await;
    assert_eq!(response.status(), 201);
    let second: Value = response.json().await.unwrap();
    assert_eq!(
        bearer_get(
            &stack,
            "/.p2/core/v1/challenge",
            second["token"].as_str().unwrap()
        )
        .await
        .status(),
        200
    );
    let (csr3, _) = csr_for("alice", "tablet");
    let response = request_id_cert(&stack, &renewed_session, &csr3, Some(TEST_PASSWORD)).await;
    expect_problem(response, 409).await;
    assert_eq!(actor_certs(&stack, "alice@p2.test", "").await.len(), 3);
}

async fn actor_cert_filters_select_by_session_and_time(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    login(&stack, "alice", "laptop").await;
    let all = actor_certs(&stack, &alice.fid, "").await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        actor_certs(&stack, &alice.fid, "?sessionId=laptop")
            .await
            .len(),
        1
    );
    assert_eq!(
        actor_certs(&stack, &alice.fid, "?session_id=none")
            .await
            .len(),
        0
    );
    let t = now();
    assert_eq!(
        actor_certs(&stack, &alice.fid, &format!("?timestamp={t}"))
            .await
            .len(),
        2
    );
    assert_eq!(
        actor_certs(&stack, &alice.fid, "?timestamp=1000")
            .await
            .len(),
        0
    );
    // notBefore/notAfter select by issue time (validity start), as the OpenAPI says.
    let nb = all
        .iter()
        .map(|c| {
            IdCert::from_pem(c["idCertPem"].as_str().unwrap())
                .unwrap()
                .not_before()
        })
        .min()
        .unwrap();
    assert_eq!(
        actor_certs(&stack, &alice.fid, &format!("?notAfter={}", nb - 1))
            .await
            .len(),
        0
    );
    assert_eq!(
        actor_certs(&stack, &alice.fid, &format!("?notAfter={}", t + 5))
            .await
            .len(),
        2
    );
    assert_eq!(
        actor_certs(&stack, &alice.fid, &format!("?notBefore={}", t + 100))
            .await
            .len(),
        0
    );
    // The same filters in a GET body.
    let response = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{}", alice.fid)))
        .body(r#"{"session_id": "laptop"}"#)
        .send()
        .await
        .unwrap();
    let body: Vec<Value> = response.json().await.unwrap();
    assert_eq!(body.len(), 1);
}

async fn unknown_and_invalid_actors_are_404_and_400(stack: TestStack) {
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/actor/nobody@p2.test"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/actor/nobody@other.example"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;
    for bad in ["not-a-fid", "a@b@c", "%20@p2.test", "x@bad..test", "x@"] {
        let response = stack
            .http
            .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{bad}")))
            .send()
            .await
            .unwrap();
        expect_problem(response, 400).await;
    }
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/actor/nobody@p2.test?timestamp=x"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
}

async fn registration_rejects_bad_names_weak_passwords_and_duplicates(stack: TestStack) {
    assert_eq!(register(&stack, "alice", TEST_PASSWORD).await.status(), 201);
    expect_problem(register(&stack, "alice", TEST_PASSWORD).await, 409).await;
    expect_problem(register(&stack, "ALICE", TEST_PASSWORD).await, 409).await;
    expect_problem(register(&stack, "bob", "short").await, 400).await;
    for bad in ["", "a b", "x@y", "new\nline"] {
        expect_problem(register(&stack, bad, TEST_PASSWORD).await, 400).await;
    }
    let response = stack
        .http
        .post(stack.url("/.p2/auth/v1/register"))
        .body(r#"{"local_name": "carol"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
    let response = stack
        .http
        .post(stack.url("/.p2/auth/v1/register"))
        .body(format!(
            r#"{{"local_name": "dave", "password": "{}"}}"#,
            "p".repeat(70 * 1024)
        ))
        .send()
        .await
        .unwrap();
    expect_problem(response, 413).await;
}

/// Re-signs a CSR after `modify` changed its info, so that only the change is wrong.
fn resign_csr(pem: &str, key: &p2_model::SigningKey, modify: impl FnOnce(&mut CertReq)) -> String {
    let der = pem_to_der(pem);
    let mut req = CertReq::from_der(&der).unwrap();
    modify(&mut req);
    let info = req.info.to_der().unwrap();
    req.signature = der::asn1::BitString::from_bytes(&key.sign(&info).to_bytes()).unwrap();
    der_to_pem(&req.to_der().unwrap())
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let (_, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    der
}

fn der_to_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, der).unwrap()
}

/// Replaces the value of every subject attribute with `oid` by `value` (DER of the new value).
fn set_subject_attribute(req: &mut CertReq, oid: &str, value: der::Any) {
    for rdn in req.info.subject.0.iter_mut() {
        let mut atvs: Vec<_> = rdn.0.iter().cloned().collect();
        for atv in &mut atvs {
            if atv.oid.to_string() == oid {
                atv.value = value.clone();
            }
        }
        *rdn = x509_cert::name::RelativeDistinguishedName::try_from(atvs).unwrap();
    }
}

async fn bad_csrs_are_rejected_and_leave_nothing_behind(stack: TestStack) {
    assert_eq!(register(&stack, "alice", TEST_PASSWORD).await.status(), 201);
    let (good, key) = csr_for("alice", "s1");
    let other_key = p2_model::generate_signing_key();
    let uid_oid = "0.9.2342.19200300.100.1.1";
    let unique_id_oid = "0.9.2342.19200300.100.1.44";

    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed PEM",
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
        ),
        ("DER garbage", vec![0x30, 0x82, 0x01, 0x00, 0xde, 0xad]),
        ("empty", Vec::new()),
    ];
    // Signed by another key than the one it carries.
    let swapped = {
        let mut req = CertReq::from_der(&pem_to_der(&good)).unwrap();
        let info = req.info.to_der().unwrap();
        req.signature =
            der::asn1::BitString::from_bytes(&other_key.sign(&info).to_bytes()).unwrap();
        der_to_pem(&req.to_der().unwrap())
    };
    bad.push(("CSR signed by a different key", swapped.into_bytes()));
    bad.push((
        "CSR naming another actor",
        csr_for("bob", "s1").0.into_bytes(),
    ));
    let other_domain = {
        let fid = p2_model::FederationId::new("alice", "elsewhere.example").unwrap();
        p2_model::build_csr(&key, &fid, &p2_model::SessionId::parse("s1").unwrap()).unwrap()
    };
    bad.push(("CSR for another domain", other_domain.into_bytes()));
    let uid_mismatch = resign_csr(&good, &key, |req| {
        set_subject_attribute(
            req,
            uid_oid,
            der::Any::new(der::Tag::Utf8String, "mallory@p2.test".as_bytes()).unwrap(),
        );
    });
    bad.push(("UID/CN mismatch", uid_mismatch.into_bytes()));
    let long_sid = resign_csr(&good, &key, |req| {
        set_subject_attribute(
            req,
            unique_id_oid,
            der::Any::new(der::Tag::Ia5String, "x".repeat(33).as_bytes()).unwrap(),
        );
    });
    bad.push(("session ID of 33 chars", long_sid.into_bytes()));
    let non_ia5 = resign_csr(&good, &key, |req| {
        set_subject_attribute(
            req,
            unique_id_oid,
            der::Any::new(der::Tag::Utf8String, "sé".as_bytes()).unwrap(),
        );
    });
    bad.push(("non-IA5 session ID", non_ia5.into_bytes()));
    let ca_flag = resign_csr(&good, &key, |req| {
        // basicConstraints { cA TRUE }
        let value = der::Any::new(der::Tag::Sequence, vec![0x01, 0x01, 0xff]).unwrap();
        for attr in req.info.attributes.iter() {
            let _ = attr;
        }
        let attrs: Vec<x509_cert::attr::Attribute> = req
            .info
            .attributes
            .iter()
            .cloned()
            .map(|mut attr| {
                if attr.oid.to_string() == "2.5.29.19" {
                    attr.values = der::asn1::SetOfVec::try_from(vec![value.clone()]).unwrap();
                }
                attr
            })
            .collect();
        req.info.attributes = der::asn1::SetOfVec::try_from(attrs).unwrap();
    });
    bad.push(("CA flag", ca_flag.into_bytes()));

    for (what, csr) in bad {
        let response = stack
            .http
            .post(stack.url("/.p2/auth/v1/session"))
            .json(&serde_json::json!({
                "local_name": "alice",
                "password": TEST_PASSWORD,
                "csr": String::from_utf8_lossy(&csr),
            }))
            .send()
            .await
            .unwrap();
        let detail = expect_problem(response, 400).await;
        assert!(!detail.is_empty(), "{what}");
    }
    // Wrong password, unknown actor: 401; nothing was written by any failed attempt.
    expect_problem(
        login_request(&stack, "alice", "wrong password", &good).await,
        401,
    )
    .await;
    expect_problem(
        login_request(&stack, "nobody", TEST_PASSWORD, &good).await,
        401,
    )
    .await;
    assert!(actor_certs(&stack, "alice@p2.test", "").await.is_empty());
    assert_eq!(count_sessions(&stack).await, 0);

    // A duplicate session ID is 409 and does not disturb the first session.
    let first = login(&stack, "alice", "s1").await;
    let (dup, _) = csr_for("alice", "s1");
    expect_problem(
        login_request(&stack, "alice", TEST_PASSWORD, &dup).await,
        409,
    )
    .await;
    assert_eq!(actor_certs(&stack, "alice@p2.test", "").await.len(), 1);
    assert_eq!(count_sessions(&stack).await, 1);
    assert_eq!(
        bearer_get(&stack, "/.p2/core/v1/challenge", &first.token)
            .await
            .status(),
        200
    );
}

async fn count_sessions(stack: &TestStack) -> i64 {
    use polyproto_server::stack::Storage;
    let url = match &stack.storage {
        Storage::Embedded { data_dir } => p2_runtime::storage::sqlite_url_in(data_dir, "session"),
        Storage::External {
            session_database_url,
            ..
        } => session_database_url.clone(),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

async fn a_wrong_password_takes_as_long_for_unknown_actors(stack: TestStack) {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    // One wrong guess per account: the throttle (tested on its own) stays out of the timing.
    for i in 0..5 {
        let name = format!("alice{i}");
        assert_eq!(register(&stack, &name, TEST_PASSWORD).await.status(), 201);
        let (csr, _) = csr_for(&name, "s1");
        let start = Instant::now();
        expect_problem(
            login_request(&stack, &name, "wrong password", &csr).await,
            401,
        )
        .await;
        known.push(start.elapsed());
        let start = Instant::now();
        expect_problem(
            login_request(&stack, &format!("nobody{i}"), "wrong password", &csr).await,
            401,
        )
        .await;
        unknown.push(start.elapsed());
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[2], unknown[2]);
    // The failure this guards against is an unknown actor answered without hashing, i.e.
    // an order of magnitude faster; both paths run one Argon2id verification.
    assert!(u * 3 >= k && k * 3 >= u, "known {k:?} vs unknown {u:?}");
    assert!(
        k > Duration::from_millis(1),
        "a password check must actually hash"
    );
}

async fn rotation_keeps_old_certs_retrievable_by_time(stack: TestStack) {
    // `polyproto admin create-actor` against the running server's storage.
    let storage = crate::helpers::admin_storage(&stack);
    polyproto_server::admin::create_actor(&storage, "root", true, TEST_PASSWORD.to_owned())
        .await
        .unwrap();
    let root = login(&stack, "root", "console").await;
    let alice = register_and_login(&stack, "alice").await;
    let old_server = server_cert(&stack, None).await;
    let old_key = bearer_get(&stack, "/.p2/core/v1/key/server", "")
        .await
        .text()
        .await
        .unwrap();

    // Not an admin / not sensitive / no token.
    let put = |token: Option<String>, sensitive: Option<&'static str>| {
        let mut request = stack.http.put(stack.url("/.p2/core/v1/key/server"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(solution) = sensitive {
            request = request.header("X-P2-Sensitive-Solution", solution);
        }
        request.send()
    };
    expect_problem(put(None, None).await.unwrap(), 401).await;
    expect_problem(
        put(Some(alice.token.clone()), Some(TEST_PASSWORD))
            .await
            .unwrap(),
        403,
    )
    .await;
    expect_problem(put(Some(root.token.clone()), None).await.unwrap(), 403).await;

    // Second-resolution timestamps: let the old generation own a second of its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = put(Some(root.token.clone()), Some(TEST_PASSWORD))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let new_pem = response.text().await.unwrap();
    let new_server = IdCert::from_pem(&new_pem).unwrap();
    assert_ne!(new_server.der(), old_server.der());
    p2_model::verify_root_cert(&new_server, DOMAIN, Some(now())).unwrap();
    assert_eq!(server_cert(&stack, None).await.der(), new_server.der());
    let old_time = old_server.not_before();
    assert_eq!(
        server_cert(&stack, Some(old_time)).await.der(),
        old_server.der()
    );
    let old_key_again = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/key/server?timestamp={old_time}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(old_key_again, old_key);

    // Certs issued before the rotation verify against the old server cert, and their cache
    // signatures against the key that issued them; new ones against the new cert.
    let certs = actor_certs(&stack, &alice.fid, "").await;
    let alice_cert = assert_attested(&certs[0], &old_server);
    p2_model::verify_actor_cert(&alice_cert, &old_server, now()).unwrap();
    let bob = register_and_login(&stack, "bob").await;
    let bob_cert = IdCert::from_pem(&bob.id_cert_pem).unwrap();
    p2_model::verify_actor_cert(&bob_cert, &new_server, now()).unwrap();
    assert!(p2_model::verify_actor_cert(&bob_cert, &old_server, now()).is_err());

    // `polyproto admin rotate-key` works beside the running server too.
    let rotated = polyproto_server::admin::rotate_key(&storage).await.unwrap();
    p2_model::verify_root_cert(&IdCert::from_pem(&rotated).unwrap(), DOMAIN, None).unwrap();

    // Demoted by the operator: the very next rotation is refused, with the same token.
    polyproto_server::admin::set_admin(&storage, "root", false)
        .await
        .unwrap();
    expect_problem(
        put(Some(root.token.clone()), Some(TEST_PASSWORD))
            .await
            .unwrap(),
        403,
    )
    .await;
    // Promoted back: allowed again, no new login needed.
    polyproto_server::admin::set_admin(&storage, "root", true)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = put(Some(root.token.clone()), Some(TEST_PASSWORD))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        polyproto_server::admin::set_admin(&storage, "nobody", true)
            .await
            .is_err()
    );
}

on_both_backends!(
    register_login_and_verify_the_issued_cert,
    challenges_are_long_mixed_unique_and_need_a_token,
    deleting_a_session_kills_its_token_and_revokes_its_cert,
    deleting_another_session_needs_the_sensitive_solution,
    renewal_keeps_the_session_id_and_revokes_the_old_cert,
    actor_cert_filters_select_by_session_and_time,
    unknown_and_invalid_actors_are_404_and_400,
    registration_rejects_bad_names_weak_passwords_and_duplicates,
    bad_csrs_are_rejected_and_leave_nothing_behind,
    a_wrong_password_takes_as_long_for_unknown_actors,
    rotation_keeps_old_certs_retrievable_by_time,
);
