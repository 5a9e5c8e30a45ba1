//! The reference SDK's own gateway client (`polyproto` 0.21, feature `gateway`: its
//! `TungsteniteBackend`, `Gateway` and the `CoreEvent`/`Payload` types) against our WebSocket
//! gateway: it connects (and reads our Hello), identifies with a session token, and receives
//! op 3 (another login of the actor), op 4 (that session deleted; the SDK verifies the revoked
//! cert's cache signature) and op 6 (an admin rotates the server key) as its own types, with
//! their sequence numbers. On a gateway with a 1 s heartbeat interval, the SDK's heartbeat task
//! keeps the connection alive: its heartbeats are answered with ACKs, not closed.
//!
//! The SDK hands received messages over a `tokio::sync::watch` channel, which keeps only the
//! newest one (`polyproto-0.21.0/src/gateway/backends/tungstenite/mod.rs`, lines 95–96 and
//! 124). So the test causes one server message at a time and reads it before causing the next;
//! and the event part runs with the default 45 s interval, so no Heartbeat ACK can overwrite an
//! event in that channel before the test reads it.

use std::sync::Arc;
use std::time::Duration;

use polyproto::api::{HttpClient, Session};
use polyproto::gateway::backends::GatewayMessage;
use polyproto::gateway::backends::tungstenite::TungsteniteBackend;
use polyproto::gateway::{BackendBehavior as _, Gateway};
use polyproto::types::gateway::payload::Identify;
use polyproto::types::gateway::{CoreEvent, Payload};
use polyproto::url::Url;

use crate::gateway_ws::{WAIT, gateway_url};
use crate::helpers::{TEST_PASSWORD, TestStack, admin_storage, login, now, own_gateway};
use crate::sdk_pki::{SdkPriv, SdkPub, SdkSig};

type SdkGateway = Gateway<SdkSig, SdkPriv>;

/// The SDK's gateway client, connected to the gateway at `base` for a session of `token`.
async fn sdk_connect(base: &str, token: &str) -> SdkGateway {
    let client = HttpClient::new().unwrap();
    let session = Session::<SdkSig, SdkPriv>::new(&client, token, Url::parse(base).unwrap(), None);
    let url = Url::parse(&gateway_url(base)).unwrap();
    TungsteniteBackend::new()
        .connect(Arc::new(session), &url)
        .await
        .expect("the SDK's gateway client did not connect (or did not read our Hello)")
}

/// Sends `payload` as the SDK serialises a `CoreEvent` (no `s`).
fn sdk_send(gateway: &SdkGateway, payload: Payload) {
    let text = serde_json::to_string(&CoreEvent::new(payload, None)).unwrap();
    gateway
        .send_channel
        .send(GatewayMessage::Text(text))
        .expect("the SDK's sender task is gone");
}

/// The next message the SDK received, parsed by the SDK; panics on a close or a timeout.
async fn sdk_next(gateway: &mut SdkGateway) -> CoreEvent {
    loop {
        tokio::time::timeout(WAIT, gateway.receive_channel.changed())
            .await
            .expect("the SDK received nothing in time")
            .expect("the SDK's receiver task ended");
        let message = gateway.receive_channel.borrow_and_update().clone();
        match message {
            GatewayMessage::Text(text) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|error| panic!("the SDK cannot parse {text}: {error}"));
            }
            // Pings and pongs come through as binary messages.
            GatewayMessage::Binary(_) => {}
            GatewayMessage::Close(close) => {
                panic!("the gateway closed the SDK's socket: {close:?}")
            }
        }
    }
}

/// Connects the SDK and identifies `token`; asserts the Identify ACK (op 12, `s` 1).
async fn sdk_identified(base: &str, token: &str) -> SdkGateway {
    let mut gateway = sdk_connect(base, token).await;
    sdk_send(
        &gateway,
        Payload::Identify(Identify {
            token: token.to_owned(),
        }),
    );
    let ready = sdk_next(&mut gateway).await;
    assert!(
        matches!(ready.data(), Payload::IdentifyAck(ack) if ack.token == token),
        "{ready:?}"
    );
    assert_eq!(ready.sequence(), Some(1));
    gateway
}

async fn the_sdk_gateway_client_receives_ops_3_4_and_6(stack: TestStack) {
    let storage = admin_storage(&stack);
    polyproto_server::admin::create_actor(&storage, "root", true, TEST_PASSWORD.to_owned())
        .await
        .unwrap();
    let root = login(&stack, "root", "console").await;
    let alice = crate::helpers::register_and_login(&stack, "alice").await;
    let mut gateway = sdk_identified(&stack.base, &alice.token).await;

    // op 3: alice logs in elsewhere.
    let phone = login(&stack, "alice", "phone").await;
    let event = sdk_next(&mut gateway).await;
    let Payload::NewSession(new_session) = event.data() else {
        panic!("expected op 3, got {event:?}");
    };
    assert_eq!(new_session.cert, phone.id_cert_pem);
    assert_eq!(event.n(), "core");
    assert_eq!(event.sequence(), Some(2));

    // op 4: that session is deleted; the SDK reads the revoked cert as a CacheableIdCert and
    // verifies its cache signature with the server's key.
    let deleted = stack
        .http
        .delete(stack.url("/.p2/core/v1/session"))
        .bearer_auth(&phone.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let event = sdk_next(&mut gateway).await;
    let Payload::ActorCertificateInvalidation(invalidation) = event.data() else {
        panic!("expected op 4, got {event:?}");
    };
    let revoked = &invalidation.certificate;
    assert_eq!(revoked.cert, phone.id_cert_pem);
    assert!(revoked.invalidated_at.is_some(), "{revoked:?}");
    let key_pem = stack
        .http
        .get(stack.url("/.p2/core/v1/key/server"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server_key = SdkPub(p2_model::public_key_from_pem(&key_pem).unwrap());
    revoked
        .verify::<SdkSig, SdkPub>(&server_key)
        .expect("the SDK rejects the cache signature of op 4");
    assert_eq!(event.sequence(), Some(3));

    // op 6: the admin rotates the server key.
    let before = now();
    let rotated = stack
        .http
        .put(stack.url("/.p2/core/v1/key/server"))
        .bearer_auth(&root.token)
        .header("X-P2-Sensitive-Solution", TEST_PASSWORD)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let new_root = rotated.text().await.unwrap();
    let event = sdk_next(&mut gateway).await;
    let Payload::ServerCertificateChange(change) = event.data() else {
        panic!("expected op 6, got {event:?}");
    };
    assert_eq!(change.cert, new_root);
    assert!(
        (before..=now()).contains(&change.old_invalid_since),
        "oldInvalidSince {} not within the rotation ({before}..)",
        change.old_invalid_since
    );
    assert_eq!(event.sequence(), Some(4));
}

async fn the_sdks_heartbeats_keep_its_connection_alive(stack: TestStack) {
    let alice = crate::helpers::register_and_login(&stack, "alice").await;
    let mut options = p2_gateway::GatewayOptions::default();
    // The SDK heartbeats every `heartbeatInterval` seconds: 1 s here. A heartbeat 3 s late
    // would be requested (op 11), and 3 s more of silence would close with 4009.
    options.websocket.heartbeat_interval_ms = 1_000;
    options.websocket.heartbeat_grace_ms = 3_000;
    let (_state, base) = own_gateway(&stack, options, None).await;
    let mut gateway = sdk_identified(&base, &alice.token).await;
    let started = std::time::Instant::now();
    // Three heartbeats of the SDK's own task, each answered with an ACK that re-sends nothing
    // (the SDK's minified list has no gaps), and no heartbeat request or close in between.
    for expected_sequence in 2..5 {
        let ack = sdk_next(&mut gateway).await;
        assert!(
            matches!(ack.data(), Payload::HeartbeatAck(a) if a.inner.is_empty()),
            "expected a Heartbeat ACK, got {ack:?}"
        );
        assert_eq!(ack.sequence(), Some(expected_sequence));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "three heartbeats came faster than every second: {:?}",
        started.elapsed()
    );
}

crate::on_both_backends!(
    the_sdk_gateway_client_receives_ops_3_4_and_6,
    the_sdks_heartbeats_keep_its_connection_alive,
);
