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
