//! What the running server serves, checked by the reference SDK itself (API.md "Wire
//! dialect"): `idcert/server` is JCS-canonical JSON that parses as the SDK's
//! `CacheableIdCert`, its cache signature verifies, and the root cert passes the SDK's
//! home-server verification.

use polyproto::api::cacheable_cert::CacheableIdCert;

use crate::helpers::{TestStack, now};
use crate::on_both_backends;
use crate::sdk_pki::{SdkPub, SdkSig};

async fn the_sdk_accepts_the_served_server_certificate(stack: TestStack) {
    let text = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/server"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        polyproto::is_canonicalized_json(&text),
        "not JCS-canonical: {text}"
    );
    let cacheable: CacheableIdCert = serde_json::from_str(&text).unwrap();
    assert!(cacheable.invalidated_at.is_none());

    let key_pem = stack
        .http
        .get(stack.url("/.p2/core/v1/key/server"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = SdkPub(p2_model::public_key_from_pem(&key_pem).unwrap());
    cacheable
        .verify::<SdkSig, SdkPub>(&key)
        .expect("the SDK rejects our cache signature");
    cacheable
        .try_to_homeserver_idcert::<SdkSig, SdkPub>(now(), &key)
        .expect("the SDK rejects our root certificate");

    // A cache signature for another window must not verify in the SDK either.
    let mut forged = cacheable.clone();
    forged.cache_not_valid_after += 1;
    assert!(forged.verify::<SdkSig, SdkPub>(&key).is_err());
}

on_both_backends!(the_sdk_accepts_the_served_server_certificate);

/// The SDK's own HTTP client fetches the server cert and an actor's certs from us; an ID-CSR
/// built by the SDK logs in; the issued cert passes the SDK's actor verification.
async fn the_sdk_client_logs_in_with_its_csr_and_verifies_actor_certs(stack: TestStack) {
    use crate::helpers::{TEST_PASSWORD, login_request, register};
    use crate::sdk_pki::{sdk_build_csr, sdk_verify_actor_pem, sdk_verify_cacheable};

    assert_eq!(register(&stack, "alice", TEST_PASSWORD).await.status(), 201);
    let (csr, _key) = sdk_build_csr("alice@p2.test", "sdk-session");
    let response = login_request(&stack, "alice", TEST_PASSWORD, &csr).await;
    assert_eq!(response.status(), 201, "our login refuses the SDK's CSR");
    let body: serde_json::Value = response.json().await.unwrap();
    let pem = body["id_cert"].as_str().unwrap();

    let url = polyproto::url::Url::parse(&stack.base).unwrap();
    let client = polyproto::api::HttpClient::new().unwrap();
    let server = client
        .get_server_id_cert(None, &url)
        .await
        .expect("SDK: idcert/server");
    let server_key = p2_model::IdCert::from_pem(&server.cert)
        .unwrap()
        .public_key()
        .unwrap();
    let server_again = client
        .get_server_id_cert(Some(now()), &url)
        .await
        .expect("SDK: idcert/server?timestamp");
    assert_eq!(server_again.cert, server.cert);
    sdk_verify_actor_pem(pem, now(), &server_key).unwrap();

    let fid = polyproto::types::FederationId::new("alice@p2.test").unwrap();
    let sid = polyproto::types::SessionId::new_validated("sdk-session").unwrap();
    let certs = client
        .get_actor_id_certs(&fid, None, None, Some(&sid), &url)
        .await
        .expect("SDK: idcert/actor");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].cert, pem);
    certs[0]
        .verify::<SdkSig, SdkPub>(&SdkPub(server_key))
        .expect("SDK: cacheSignature");
    certs[0]
        .try_to_actor_idcert::<SdkSig, SdkPub>(now(), &SdkPub(server_key))
        .expect("SDK: actor cert from the cache entry");

    // Revoked certs keep verifying as cache entries with invalidatedAt.
    let token = body["token"].as_str().unwrap();
    let deleted = stack
        .http
        .delete(stack.url("/.p2/core/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let text = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/actor/alice@p2.test"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let revoked = sdk_verify_cacheable(&entries[0].to_string(), &server_key).unwrap();
    assert!(revoked.invalidated_at.is_some());
    let parsed: Vec<CacheableIdCert> = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed.len(), 1);
}

on_both_backends!(the_sdk_client_logs_in_with_its_csr_and_verifies_actor_certs);
