//! The server's identity over HTTP: `.well-known`, `idcert/server`, `key/server`, with the
//! leniency rules and errors of API.md.

use der::{Decode as _, DecodePem as _};
use p2_model::IdCert;
use serde_json::Value;
use x509_cert::Certificate;

use crate::helpers::{DOMAIN, TestStack, expect_problem, now};
use crate::on_both_backends;

const IDCERT_SERVER: &str = "/.p2/core/v1/idcert/server";
const KEY_SERVER: &str = "/.p2/core/v1/key/server";

async fn get_json(stack: &TestStack, path: &str) -> (String, Value) {
    let response = stack.http.get(stack.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

async fn get_text(stack: &TestStack, path: &str) -> String {
    let response = stack.http.get(stack.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

fn u64_string(value: &Value, field: &str) -> u64 {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} must be a decimal string: {value}"))
        .parse()
        .unwrap()
}

/// Checks API.md's root-cert constraints on the DER itself, independently of `p2-model`.
fn assert_root_cert_layout(pem: &str) {
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    let cert = Certificate::from_pem(pem).expect("served cert is a parseable X.509 PEM");
    let tbs = &cert.tbs_certificate;
    assert_eq!(tbs.version, x509_cert::Version::V3);
    assert_eq!(
        cert.signature_algorithm.oid.to_string(),
        "1.3.101.112",
        "Ed25519"
    );
    assert!(cert.signature_algorithm.parameters.is_none());
    assert_eq!(
        tbs.subject_public_key_info.algorithm.oid.to_string(),
        "1.3.101.112"
    );
    assert_eq!(tbs.issuer, tbs.subject, "a root cert is self-signed");
    assert!(tbs.issuer_unique_id.is_none() && tbs.subject_unique_id.is_none());
    // Issuer: dc components only, top-level domain first, spelling the domain.
    let mut labels = Vec::new();
    for rdn in tbs.issuer.0.iter() {
        for atv in rdn.0.iter() {
            assert_eq!(atv.oid.to_string(), "0.9.2342.19200300.100.1.25", "dc only");
            labels.push(
                der::asn1::Ia5StringRef::try_from(&atv.value)
                    .unwrap()
                    .to_string(),
            );
        }
    }
    labels.reverse();
    assert_eq!(labels.join("."), DOMAIN);
    // Extensions: exactly basicConstraints and keyUsage, both critical.
    let extensions = tbs.extensions.as_ref().expect("extensions");
    let oids: Vec<String> = extensions.iter().map(|e| e.extn_id.to_string()).collect();
    assert_eq!(oids, ["2.5.29.19", "2.5.29.15"]);
    assert!(extensions.iter().all(|e| e.critical));
    let bc = BasicConstraints::from_der(extensions[0].extn_value.as_bytes()).unwrap();
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = KeyUsage::from_der(extensions[1].extn_value.as_bytes()).unwrap();
    assert!(ku.0.contains(KeyUsages::KeyCertSign));
    // The signature verifies with the cert's own key.
    let key = ed25519_dalek::VerifyingKey::try_from(
        tbs.subject_public_key_info.subject_public_key.raw_bytes(),
    )
    .unwrap();
    let tbs_der = der::Encode::to_der(tbs).unwrap();
    let signature = ed25519_dalek::Signature::from_slice(cert.signature.raw_bytes()).unwrap();
    key.verify_strict(&tbs_der, &signature).unwrap();
}

async fn well_known_announces_the_public_api_url(stack: TestStack) {
    let (_, body) = get_json(&stack, "/.well-known/polyproto-core").await;
    assert_eq!(body["api"], format!("{}/.p2/core/", stack.base));
    assert!(
        body.get("oidc_issuer").is_none(),
        "no issuer unless configured"
    );
}

async fn server_id_cert_is_a_valid_root_cert_for_the_domain(stack: TestStack) {
    let (text, body) = get_json(&stack, IDCERT_SERVER).await;
    assert!(
        !text.contains(": ") && !text.ends_with('\n'),
        "compact JSON"
    );
    let pem = body["idCertPem"].as_str().unwrap();
    assert_root_cert_layout(pem);

    let cert = IdCert::from_pem(pem).unwrap();
    let at = now();
    p2_model::verify_root_cert(&cert, DOMAIN, Some(at)).unwrap();
    assert!(cert.not_before() <= at && at < cert.not_after());

    // The cache window: decimal strings, inside the validity, at most 12 hours, containing now.
    let before = u64_string(&body, "cacheNotValidBefore");
    let after = u64_string(&body, "cacheNotValidAfter");
    assert!(cert.not_before() <= before && after <= cert.not_after());
    assert!(before < after && after - before <= 12 * 3600);
    assert!(before <= at && at <= after);
    assert_eq!(body["invalidated"], false);
    assert!(body.get("invalidatedAt").is_none());

    // key/server serves this cert's key, and that key signed the cache attestation.
    let key_pem = get_text(&stack, KEY_SERVER).await;
    let key = p2_model::public_key_from_pem(&key_pem).unwrap();
    assert_eq!(key, cert.public_key().unwrap());
    p2_model::verify_cache_signature(
        &key,
        &cert.serial(),
        before,
        after,
        None,
        body["cacheSignature"].as_str().unwrap(),
    )
    .unwrap();
    // A tampered window does not verify.
    assert!(
        p2_model::verify_cache_signature(
            &key,
            &cert.serial(),
            before,
            after + 1,
            None,
            body["cacheSignature"].as_str().unwrap(),
        )
        .is_err()
    );
}

async fn bare_pem_is_served_to_clients_that_ask_for_it(stack: TestStack) {
    let (_, body) = get_json(&stack, IDCERT_SERVER).await;
    for accept in ["application/x-pem-file", "text/plain"] {
        let response = stack
            .http
            .get(stack.url(IDCERT_SERVER))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(accept)
        );
        let pem = response.text().await.unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(pem, body["idCertPem"].as_str().unwrap());
    }
}

async fn trailing_slashes_and_timestamps_in_query_or_body_are_accepted(stack: TestStack) {
    let (_, current) = get_json(&stack, IDCERT_SERVER).await;
    let t = now();
    let variants = [
        (format!("{IDCERT_SERVER}/"), None),
        (format!("{IDCERT_SERVER}?timestamp={t}"), None),
        (format!("{IDCERT_SERVER}/?timestamp={t}"), None),
        (
            IDCERT_SERVER.to_owned(),
            Some(format!(r#"{{"timestamp": {t}}}"#)),
        ),
        (
            IDCERT_SERVER.to_owned(),
            Some(format!(r#"{{"timestamp": "{t}"}}"#)),
        ),
        // The query wins over a (bad) body value.
        (
            format!("{IDCERT_SERVER}?timestamp={t}"),
            Some(r#"{"timestamp": 1}"#.to_owned()),
        ),
    ];
    for (path, body) in variants {
        let mut request = stack.http.get(stack.url(&path));
        if let Some(body) = body {
            // No Content-Type, as older clients send it.
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let value: Value = response.json().await.unwrap();
        assert_eq!(value["idCertPem"], current["idCertPem"], "{path}");
    }
    let key_now = get_text(&stack, KEY_SERVER).await;
    assert_eq!(
        get_text(&stack, &format!("{KEY_SERVER}/?timestamp={t}")).await,
        key_now
    );
    assert!(key_now.starts_with("-----BEGIN PUBLIC KEY-----\n"));
}

async fn a_timestamp_before_the_first_key_is_not_found(stack: TestStack) {
    for path in [IDCERT_SERVER, KEY_SERVER] {
        let response = stack
            .http
            .get(stack.url(&format!("{path}?timestamp=1000")))
            .send()
            .await
            .unwrap();
        let detail = expect_problem(response, 404).await;
        assert!(detail.contains("1000"), "{detail}");
    }
}

async fn malformed_timestamps_are_rejected_naming_the_parameter(stack: TestStack) {
    for path in [IDCERT_SERVER, KEY_SERVER] {
        for (query, body) in [
            ("?timestamp=abc", None),
            ("?timestamp=-1", None),
            ("?timestamp=1.5", None),
            ("", Some(r#"{"timestamp": "soon"}"#)),
            ("", Some(r#"{"timestamp": -3}"#)),
            ("", Some("{not json")),
        ] {
            let mut request = stack.http.get(stack.url(&format!("{path}{query}")));
            if let Some(body) = body {
                request = request.body(body);
            }
            let detail = expect_problem(request.send().await.unwrap(), 400).await;
            if body != Some("{not json") {
                assert!(detail.contains("`timestamp`"), "{path}{query}: {detail}");
            }
        }
    }
}

async fn unknown_routes_are_problem_json_404s(stack: TestStack) {
    for path in [
        "/nope",
        "/.p2/core/v1/idcert/servers",
        "/.p2/core/v2/key/server",
    ] {
        let response = stack.http.get(stack.url(path)).send().await.unwrap();
        expect_problem(response, 404).await;
    }
}

async fn oversized_bodies_are_rejected_with_413(stack: TestStack) {
    let body = format!(r#"{{"timestamp": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let response = stack
        .http
        .get(stack.url(IDCERT_SERVER))
        .body(body)
        .send()
        .await
        .unwrap();
    expect_problem(response, 413).await;
}

async fn a_restart_serves_the_same_certificate(mut stack: TestStack) {
    let (_, before) = get_json(&stack, IDCERT_SERVER).await;
    let key_before = get_text(&stack, KEY_SERVER).await;
    stack.restart().await;
    let (_, after) = get_json(&stack, IDCERT_SERVER).await;
    assert_eq!(before["idCertPem"], after["idCertPem"]);
    assert_eq!(key_before, get_text(&stack, KEY_SERVER).await);
}

async fn health_endpoints_report_ready(stack: TestStack) {
    assert_eq!(get_text(&stack, "/healthz").await, "ok\n");
    assert_eq!(get_text(&stack, "/readyz").await, "ready\n");
}

on_both_backends!(
    well_known_announces_the_public_api_url,
    server_id_cert_is_a_valid_root_cert_for_the_domain,
    bare_pem_is_served_to_clients_that_ask_for_it,
    trailing_slashes_and_timestamps_in_query_or_body_are_accepted,
    a_timestamp_before_the_first_key_is_not_found,
    malformed_timestamps_are_rejected_naming_the_parameter,
    unknown_routes_are_problem_json_404s,
    oversized_bodies_are_rejected_with_413,
    a_restart_serves_the_same_certificate,
    health_endpoints_report_ready,
);
