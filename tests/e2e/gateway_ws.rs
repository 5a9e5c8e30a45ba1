//! The WebSocket gateway (`GET /.p2/core/v1/gateway`, spec 3.2) driven by a real WebSocket
//! client (tokio-tungstenite) against the whole stack: the Hello → Identify → heartbeat cycle,
//! every close code a client can provoke, re-sends of lost events, Resume on another gateway,
//! revocation, shutdown, and a client that stops reading. Test events are published straight
//! into the events service with the stack's internal key (as session and identity do).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use p2_proto::events::v1 as pb;
use p2_proto::events::v1::events_client::EventsClient;
use p2_runtime::grpc::TracedChannel;
use p2_runtime::internal::Component;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestSession, TestStack, own_gateway, register_and_login};

/// A client connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for one server message.
pub const WAIT: Duration = Duration::from_secs(10);

/// The gateway URL of a gateway at `base` (`http://host:port`).
pub fn gateway_url(base: &str) -> String {
    format!(
        "{}/.p2/core/v1/gateway",
        base.replacen("http://", "ws://", 1)
    )
}

/// Opens a WebSocket to the gateway at `base`.
pub async fn connect(base: &str) -> Ws {
    let (ws, response) = tokio_tungstenite::connect_async(gateway_url(base))
        .await
        .expect("the WebSocket handshake failed");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `message` as a text frame.
pub async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next text message as JSON (pings and pongs skipped); panics on a close or a timeout.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the gateway sent nothing in time")
            .expect("the connection ended")
            .expect("the connection failed");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame; asserts its code and returns its reason.
pub async fn expect_close(ws: &mut Ws, code: u16) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no close {code} in time"));
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), code, "closed with {frame:?}");
                return frame.reason.as_str().to_owned();
            }
            Some(Ok(Message::Text(text))) => {
                // Events or ACKs still in flight before the close are fine.
                let _ = text;
            }
            Some(Ok(_)) => {}
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// A heartbeat of `[from, to]` without `except`.
pub fn heartbeat(from: u64, to: u64, except: &[u64]) -> Value {
    let except: Vec<String> = except.iter().map(u64::to_string).collect();
    json!({"n": "core", "op": "0", "d": {"from": from.to_string(), "to": to.to_string(), "except": except}})
}

/// Reads Hello, identifies with `token`, reads the Identify ACK (op 12).
pub async fn identify(ws: &mut Ws, token: &str) {
    let hello = recv(ws).await;
    assert_eq!(hello["op"], "1");
    assert_eq!(hello["s"], "0");
    send(ws, json!({"n": "core", "op": "2", "d": {"token": token}})).await;
    let ready = recv(ws).await;
    assert_eq!(ready["op"], "12", "{ready}");
    assert_eq!(ready["s"], "1");
}

/// An events client with the session service's credential (publishers are identity and
/// session).
pub fn events_client(stack: &TestStack) -> EventsClient<TracedChannel> {
    let running = stack.stack.as_ref().expect("a running stack");
    let channel = p2_runtime::grpc::channel(
        &format!("http://{}", running.grpc_addrs[3]),
        &running.internal_key.credential(Component::Session),
    )
    .unwrap();
    EventsClient::new(channel)
}

fn session_ref(session: &TestSession) -> pb::SessionRef {
    pb::SessionRef {
        fid: session.fid.clone(),
        session_id: session.session_id.clone(),
    }
}

/// Publishes one core event with `op` and `data` to `session` (opening its log first: the
/// session service does that at login, idempotently).
pub async fn publish(stack: &TestStack, session: &TestSession, op: u32, data: Value) {
    let mut events = events_client(stack);
    events
        .open_session(pb::OpenSessionRequest {
            session: Some(session_ref(session)),
        })
        .await
        .expect("events.OpenSession failed");
    events
        .publish(pb::PublishRequest {
            audience: Some(pb::Audience {
                target: Some(pb::audience::Target::Session(session_ref(session))),
            }),
            event: Some(pb::Event {
                namespace: "core".into(),
                op,
                data_json: data.to_string(),
                position: 0,
            }),
            idempotency_key: format!("test-{:032x}", rand::random::<u128>()),
        })
        .await
        .expect("events.Publish failed");
}

/// Reads messages until an event (op 3, 4 or 6) arrives; returns it.
pub async fn recv_event(ws: &mut Ws) -> Value {
    loop {
        let message = recv(ws).await;
        if matches!(message["op"].as_str(), Some("3" | "4" | "6")) {
            return message;
        }
    }
}

fn seq(message: &Value) -> u64 {
    message["s"].as_str().unwrap().parse().unwrap()
}

async fn the_full_cycle_follows_the_spec(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["n"], "core");
    assert_eq!(hello["op"], "1");
    assert_eq!(hello["s"], "0");
    assert_eq!(hello["d"]["heartbeat_interval"], 45_000);
    assert_eq!(hello["d"]["heartbeatInterval"], "45");
    // A heartbeat before identifying is answered.
    send(&mut ws, heartbeat(0, 0, &[])).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"n": "core", "op": "7", "d": [], "s": "1"})
    );
    send(
        &mut ws,
        json!({"n": "core", "op": "2", "d": {"token": alice.token}}),
    )
    .await;
    let ready = recv(&mut ws).await;
    assert_eq!(ready["op"], "12");
    assert_eq!(ready["s"], "2");
    assert_eq!(ready["d"]["token"], alice.token.as_str());
    publish(&stack, &alice, 3, json!({"cert": "PEM of a new session"})).await;
    let event = recv_event(&mut ws).await;
    assert_eq!(event["n"], "core");
    assert_eq!(event["op"], "3");
    assert_eq!(event["d"], json!({"cert": "PEM of a new session"}));
    let s = seq(&event);
    assert_eq!(s, 3);
    send(&mut ws, heartbeat(0, s, &[])).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack, json!({"n": "core", "op": "7", "d": [], "s": "4"}));
    ws.close(None).await.unwrap();
}

async fn close_codes(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let cases: Vec<(Vec<Value>, u16)> = vec![
        (vec![json!({"n": "core", "op": "99", "d": {}})], 4001),
        (vec![json!("not an object")], 4002),
        (vec![json!({"op": "0", "d": {"from": "zero"}})], 4002),
        (
            vec![json!({"op": "8", "d": {"action": "subscribe", "service": "chat"}})],
            4003,
        ),
        (
            vec![json!({"op": "2", "d": {"token": "not-a-session-token"}})],
            4004,
        ),
        (
            vec![
                json!({"op": "2", "d": {"token": alice.token}}),
                json!({"op": "2", "d": {"token": alice.token}}),
            ],
            4005,
        ),
        (vec![heartbeat(0, 5, &[])], 4007),
        (vec![heartbeat(0, 0, &[3])], 4007),
        (
            vec![
                json!({"op": "2", "d": {"token": alice.token}}),
                json!({"op": "8", "d": {"action": "join", "service": "chat"}}),
            ],
            4002,
        ),
    ];
    for (messages, code) in cases {
        let mut ws = connect(&stack.base).await;
        recv(&mut ws).await;
        for message in &messages {
            send(&mut ws, message.clone()).await;
        }
        expect_close(&mut ws, code).await;
    }
    // 4008: more than 60 messages at once.
    let mut ws = connect(&stack.base).await;
    recv(&mut ws).await;
    for _ in 0..61 {
        send(&mut ws, heartbeat(0, 0, &[])).await;
    }
    let reason = expect_close(&mut ws, 4008).await;
    assert!(!reason.is_empty());
    // 4010: a session that never had a connection has nothing to resume.
    let fresh = crate::helpers::login(&stack, "alice", "s2").await;
    let mut ws = connect(&stack.base).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"op": "5", "d": {"s": "3", "token": fresh.token}}),
    )
    .await;
    expect_close(&mut ws, 4010).await;
    // An unknown token on Resume is 4004 as on Identify.
    let mut ws = connect(&stack.base).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"op": "5", "d": {"s": "3", "token": "nope"}}),
    )
    .await;
    expect_close(&mut ws, 4004).await;
}

async fn a_silent_client_is_asked_for_a_heartbeat_then_closed_with_4009(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut options = p2_gateway::GatewayOptions::default();
    options.websocket.heartbeat_interval_ms = 300;
    options.websocket.heartbeat_grace_ms = 300;
    let (_state, base) = own_gateway(&stack, options, None).await;
    let mut ws = connect(&base).await;
    let started = std::time::Instant::now();
    let hello = recv(&mut ws).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 300);
    assert_eq!(hello["d"]["heartbeatInterval"], "1");
    send(&mut ws, json!({"op": "2", "d": {"token": alice.token}})).await;
    assert_eq!(recv(&mut ws).await["op"], "12");
    let request = recv(&mut ws).await;
    assert_eq!(request["op"], "11");
    assert_eq!(request["d"], json!({}));
    assert!(started.elapsed() >= Duration::from_millis(550));
    expect_close(&mut ws, 4009).await;
    assert!(started.elapsed() >= Duration::from_millis(850));
}

async fn a_lost_event_is_resent_in_the_heartbeat_ack(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    identify(&mut ws, &alice.token).await;
    for n in 0..3 {
        publish(&stack, &alice, 3, json!({"cert": format!("cert {n}")})).await;
    }
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(recv_event(&mut ws).await);
    }
    let first = seq(&events[0]);
    let last = seq(&events[2]);
    // The client "lost" the middle one.
    let lost = seq(&events[1]);
    send(&mut ws, heartbeat(first, last, &[lost])).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["op"], "7");
    assert_eq!(
        ack["d"],
        json!([events[1]]),
        "the ACK re-sends the lost event"
    );
    // And again, should the re-send be lost too (spec 3.2.6).
    send(&mut ws, heartbeat(first, seq(&ack), &[lost])).await;
    let again = recv(&mut ws).await;
    assert_eq!(again["d"], json!([events[1]]));
}

async fn resume_on_another_gateway_replays_what_was_missed(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    identify(&mut ws, &alice.token).await;
    publish(&stack, &alice, 3, json!({"cert": "seen"})).await;
    let seen = recv_event(&mut ws).await;
    let last = seq(&seen);
    send(&mut ws, heartbeat(0, last, &[])).await;
    recv(&mut ws).await;
    ws.close(None).await.unwrap();
    // The close is recorded as the gateway notices it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&stack, &alice, 3, json!({"cert": "missed 1"})).await;
    publish(
        &stack,
        &alice,
        6,
        json!({"cert": "missed 2", "oldInvalidSince": "1"}),
    )
    .await;

    // Another gateway (as another replica would be) resumes from the recorded position.
    let (_state, other) = own_gateway(&stack, p2_gateway::GatewayOptions::default(), None).await;
    let mut ws = connect(&other).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"n": "core", "op": "5", "d": {"s": last.to_string(), "token": alice.token}}),
    )
    .await;
    let resumed = recv(&mut ws).await;
    assert_eq!(resumed["op"], "10", "{resumed}");
    assert_eq!(resumed["s"], "1");
    assert_eq!(
        resumed["d"],
        json!([
            {"n": "core", "op": "3", "d": {"cert": "missed 1"}},
            {"n": "core", "op": "6", "d": {"cert": "missed 2", "oldInvalidSince": "1"}},
        ])
    );
    // Then live events, numbered on from there.
    publish(&stack, &alice, 3, json!({"cert": "live"})).await;
    let live = recv_event(&mut ws).await;
    assert_eq!(live["d"]["cert"], "live");
    assert_eq!(live["s"], "2");
}

async fn a_revoked_session_is_closed_with_4003(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    identify(&mut ws, &alice.token).await;
    let response = stack
        .http
        .delete(stack.url("/.p2/core/v1/session"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // At once: no heartbeat needed (the events service ends the session's feed).
    expect_close(&mut ws, 4003).await;
}

async fn shutdown_closes_every_socket_with_a_resumable_4000(mut stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    identify(&mut ws, &alice.token).await;
    publish(&stack, &alice, 3, json!({"cert": "before shutdown"})).await;
    recv_event(&mut ws).await;
    let running = stack.stack.take().unwrap();
    let stopping = tokio::spawn(running.stop());
    let reason = expect_close(&mut ws, 4000).await;
    assert!(reason.contains("shutting down"), "{reason}");
    stopping.await.unwrap().unwrap();
}

async fn open_websockets_outlive_the_idle_timeout_and_count_against_the_caps(stack: TestStack) {
    let options = p2_gateway::GatewayOptions {
        idle_timeout_ms: 300,
        header_timeout_ms: 300,
        max_connections_per_ip: 2,
        ..Default::default()
    };
    let (state, base) = own_gateway(&stack, options, None).await;
    let mut first = connect(&base).await;
    recv(&mut first).await;
    let mut second = connect(&base).await;
    recv(&mut second).await;
    assert_eq!(state.websockets().open(), 2);
    // Counted in the metrics (every gateway of this test process adds its own).
    let rendered = p2_runtime::metrics::global().render();
    let open: u64 = rendered
        .lines()
        .find_map(|line| line.strip_prefix("polyproto_websockets_open "))
        .expect("no polyproto_websockets_open series")
        .trim()
        .parse()
        .unwrap();
    assert!(open >= 2, "{open} open WebSockets reported");
    // Silent for longer than the idle timeout: a WebSocket is bound by heartbeats instead.
    tokio::time::sleep(Duration::from_millis(900)).await;
    send(&mut first, heartbeat(0, 0, &[])).await;
    assert_eq!(recv(&mut first).await["op"], "7");
    // Both sockets hold their connection slots: a third connection is refused.
    let third = tokio_tungstenite::connect_async(gateway_url(&base)).await;
    assert!(third.is_err(), "a third connection was accepted");
    second.close(None).await.unwrap();
    drop(second);
    tokio::time::timeout(WAIT, async {
        while state.websockets().open() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed socket was not counted down");
    let mut third = connect(&base).await;
    assert_eq!(recv(&mut third).await["op"], "1");
}

async fn a_client_that_stops_reading_does_not_delay_others(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let bob = register_and_login(&stack, "bob").await;
    let mut options = p2_gateway::GatewayOptions::default();
    options.websocket.queue_messages = 4;
    let (state, base) = own_gateway(&stack, options, None).await;

    // Alice's client has a small receive buffer and stops reading after identifying.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut slow, _) = tokio_tungstenite::client_async(gateway_url(&base), stream)
        .await
        .unwrap();
    identify(&mut slow, &alice.token).await;
    let mut live = connect(&base).await;
    identify(&mut live, &bob.token).await;
    assert_eq!(state.websockets().open(), 2);

    // More than alice's socket buffers hold.
    let big = "x".repeat(60 * 1024);
    for n in 0..32 {
        publish(&stack, &alice, 3, json!({"cert": big, "n": n})).await;
    }
    // Bob still gets his event at once.
    let started = std::time::Instant::now();
    publish(&stack, &bob, 3, json!({"cert": "for bob"})).await;
    let event = recv_event(&mut live).await;
    assert_eq!(event["d"]["cert"], "for bob");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bob waited {:?}",
        started.elapsed()
    );
    // Until alice's queue is full too and the gateway drops her.
    let mut published = 32;
    while state.websockets().open() == 2 && published < 400 {
        publish(&stack, &alice, 3, json!({"cert": big, "n": published})).await;
        published += 1;
    }
    tokio::time::timeout(WAIT, async {
        while state.websockets().open() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the slow client was not dropped after {published} events"));
    // What reached her socket before is readable; then the connection ends without a close
    // frame (she was not reading, so none was sent).
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return Some(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the slow client's connection did not end");
    assert!(
        ended.is_none(),
        "the slow client got a close frame: {ended:?}"
    );
    // Bob is unaffected.
    send(&mut live, heartbeat(0, seq(&event), &[])).await;
    assert_eq!(recv(&mut live).await["op"], "7");
}

/// The next text message, parsed by the reference SDK (`polyproto` 0.21) as a core event.
async fn recv_sdk(ws: &mut Ws) -> polyproto::types::gateway::CoreEvent {
    let text = recv(ws).await.to_string();
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("the SDK cannot parse {text}: {error}"))
}

/// `event` as the SDK sends it.
fn sdk_message(payload: polyproto::types::gateway::Payload) -> Value {
    serde_json::to_value(polyproto::types::gateway::CoreEvent::new(payload, None)).unwrap()
}

async fn the_sdk_parses_what_the_gateway_sends_and_is_understood(stack: TestStack) {
    use polyproto::types::gateway::Payload;
    use polyproto::types::gateway::payload::{
        Heartbeat, Identify, ServiceChannel, ServiceChannelAction,
    };
    let alice = register_and_login(&stack, "alice").await;
    let mut options = p2_gateway::GatewayOptions::default();
    options.websocket.heartbeat_interval_ms = 2_000;
    options.websocket.heartbeat_grace_ms = 500;
    options.websocket.service_channels = "chat".into();
    let (_state, base) = own_gateway(&stack, options, None).await;
    let mut ws = connect(&base).await;
    let hello = recv_sdk(&mut ws).await;
    assert_eq!(hello.sequence(), Some(0));
    let Payload::Hello(data) = hello.data() else {
        panic!("not a Hello: {hello:?}");
    };
    // The SDK waits this many seconds between heartbeats.
    assert_eq!(data.heartbeat_interval, 2);
    // The SDK's Identify, heartbeat and service channel request are understood.
    let identify = Payload::Identify(Identify {
        token: alice.token.clone(),
    });
    send(&mut ws, sdk_message(identify)).await;
    let ready = recv_sdk(&mut ws).await;
    assert!(matches!(ready.data(), Payload::IdentifyAck(ack) if ack.token == alice.token));
    assert_eq!(ready.sequence(), Some(1));
    publish(&stack, &alice, 3, json!({"cert": "NEW SESSION PEM"})).await;
    let new_session = recv_sdk(&mut ws).await;
    assert!(matches!(new_session.data(), Payload::NewSession(n) if n.cert == "NEW SESSION PEM"));
    publish(
        &stack,
        &alice,
        6,
        json!({"cert": "ROOT PEM", "oldInvalidSince": "1767225600"}),
    )
    .await;
    let changed = recv_sdk(&mut ws).await;
    assert!(matches!(
        changed.data(),
        Payload::ServerCertificateChange(c) if c.old_invalid_since == 1_767_225_600
    ));
    let received = [
        0,
        1,
        new_session.sequence().unwrap(),
        changed.sequence().unwrap(),
    ];
    let heartbeat = Payload::Heartbeat(Heartbeat::from_sequence_numbers(&received));
    send(&mut ws, sdk_message(heartbeat)).await;
    let ack = recv_sdk(&mut ws).await;
    assert!(matches!(ack.data(), Payload::HeartbeatAck(a) if a.inner.is_empty()));
    let subscribe = Payload::ServiceChannel(ServiceChannel {
        action: ServiceChannelAction::Subscribe,
        service: "chat".into(),
    });
    send(&mut ws, sdk_message(subscribe)).await;
    let channel = recv_sdk(&mut ws).await;
    assert!(matches!(channel.data(), Payload::ServiceChannelAck(a) if a.success));
    // No heartbeat for 2.5 s: the SDK reads the heartbeat request.
    let request = recv_sdk(&mut ws).await;
    assert!(matches!(request.data(), Payload::RequestHeartbeat));
}

crate::on_both_backends!(
    the_sdk_parses_what_the_gateway_sends_and_is_understood,
    the_full_cycle_follows_the_spec,
    close_codes,
    a_silent_client_is_asked_for_a_heartbeat_then_closed_with_4009,
    a_lost_event_is_resent_in_the_heartbeat_ack,
    resume_on_another_gateway_replays_what_was_missed,
    a_revoked_session_is_closed_with_4003,
    shutdown_closes_every_socket_with_a_resumable_4000,
    open_websockets_outlive_the_idle_timeout_and_count_against_the_caps,
    a_client_that_stops_reading_does_not_delay_others,
);
