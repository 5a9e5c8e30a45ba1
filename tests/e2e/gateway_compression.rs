//! zstd on the WebSocket gateway (spec 3.6): `?compression=zstd` turns every server message
//! into a binary frame of one zstd frame, the client may send zstd frames, a decompression
//! bomb closes the socket with 4002, and an unknown compression is refused before the upgrade.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::gateway_ws::{WAIT, Ws, expect_close, gateway_url, publish};
use crate::helpers::{TestStack, register_and_login};

async fn connect_zstd(base: &str) -> Ws {
    let (ws, response) =
        tokio_tungstenite::connect_async(format!("{}?compression=zstd", gateway_url(base)))
            .await
            .expect("the WebSocket handshake failed");
    assert_eq!(response.status(), 101);
    ws
}

/// The next server message: it must be a binary zstd frame; returns its JSON and its size.
async fn recv_zstd(ws: &mut Ws) -> (Value, usize) {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the gateway sent nothing in time")
            .expect("the connection ended")
            .expect("the connection failed");
        match message {
            Message::Binary(frame) => {
                let json = zstd::stream::decode_all(frame.as_ref()).expect("a zstd frame");
                return (serde_json::from_slice(&json).unwrap(), frame.len());
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a binary zstd frame, got {other:?}"),
        }
    }
}

async fn send_zstd(ws: &mut Ws, message: &Value) {
    let frame = zstd::bulk::compress(message.to_string().as_bytes(), 3).unwrap();
    ws.send(Message::binary(frame)).await.unwrap();
}

async fn zstd_frames_both_ways(stack: TestStack) {
    let session = register_and_login(&stack, "zara").await;
    let mut ws = connect_zstd(&stack.base).await;
    let (hello, _) = recv_zstd(&mut ws).await;
    assert_eq!(hello["op"], "1", "{hello}");
    // Identify sent compressed; plain text would do as well.
    send_zstd(
        &mut ws,
        &json!({"n": "core", "op": "2", "d": {"token": session.token}}),
    )
    .await;
    let (ready, _) = recv_zstd(&mut ws).await;
    assert_eq!(ready["op"], "12", "{ready}");
    // An event, large enough that compression shows.
    let big = "a polyproto certificate, say ".repeat(200);
    publish(&stack, &session, 3, json!({"cert": big})).await;
    let (event, size) = recv_zstd(&mut ws).await;
    assert_eq!(event["op"], "3");
    assert_eq!(event["d"]["cert"], big.as_str());
    assert!(
        size * 10 < big.len(),
        "{size} bytes on the wire for {} of data",
        big.len()
    );
    // A heartbeat in plain text is understood and answered compressed.
    ws.send(Message::text(
        json!({"n": "core", "op": "0", "d": {"from": "0", "to": "2", "except": []}}).to_string(),
    ))
    .await
    .unwrap();
    let (ack, _) = recv_zstd(&mut ws).await;
    assert_eq!(ack["op"], "7", "{ack}");
    // A frame that inflates past the message limit: 4002, nothing read into memory beyond it.
    let bomb = zstd::bulk::compress(&vec![b' '; 8 << 20], 3).unwrap();
    assert!(bomb.len() < 64 * 1024);
    ws.send(Message::binary(bomb)).await.unwrap();
    expect_close(&mut ws, 4002).await;
}

async fn an_unknown_compression_is_refused_before_the_upgrade(stack: TestStack) {
    let url = format!("{}/.p2/core/v1/gateway?compression=brotli", stack.base);
    let response = stack
        .http
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let detail = crate::helpers::expect_problem(response, 400).await;
    assert!(detail.contains("zstd"), "{detail}");
    // Without the parameter: text frames, as before.
    let mut ws = crate::gateway_ws::connect(&stack.base).await;
    let hello = crate::gateway_ws::recv(&mut ws).await;
    assert_eq!(hello["op"], "1");
}

crate::on_both_backends!(
    zstd_frames_both_ways,
    an_unknown_compression_is_refused_before_the_upgrade,
);
