//! The connection state machine against a fake socket and fake services.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use p2_proto::common::v1::{Caller, CallerAssertion};
use p2_proto::events::v1 as pb;
use p2_proto::events::v1::delivery::Kind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::connection::{self, Settings};
use super::upstream::{AuthFailure, Deliveries, Upstream};
use crate::auth::Authenticated;

/// The server's end of a fake WebSocket.
struct FakeSocket {
    incoming: mpsc::Receiver<Result<Message, String>>,
    outgoing: mpsc::Sender<Message>,
}

impl Stream for FakeSocket {
    type Item = Result<Message, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.incoming).poll_next(cx)
    }
}

impl Sink<Message> for FakeSocket {
    type Error = mpsc::SendError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outgoing).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.outgoing).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outgoing).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outgoing).poll_close(cx)
    }
}

/// The client's end.
struct Client {
    tx: mpsc::Sender<Result<Message, String>>,
    rx: mpsc::Receiver<Message>,
    /// How long to wait for a server message (long in paused time, where waiting is free).
    wait: Duration,
}

const WAIT: Duration = Duration::from_secs(5);

impl Client {
    async fn send(&mut self, message: Value) {
        self.tx
            .send(Ok(Message::Text(message.to_string().into())))
            .await
            .unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.tx
            .send(Ok(Message::Text(text.to_owned().into())))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(self.wait, self.rx.next())
            .await
            .expect("the server sent nothing in time")
    }

    /// The next message, which must be JSON text.
    async fn recv(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next message must be a close frame with `code`.
    async fn expect_close(&mut self, code: u16) {
        match self.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, code, "closed with {frame:?}");
            }
            Some(Message::Text(text)) => panic!("expected close {code}, got {text}"),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

#[derive(Default)]
struct FakeInner {
    /// Prepared Subscribe feeds, taken in order.
    feeds: Mutex<VecDeque<mpsc::UnboundedReceiver<Result<pb::Delivery, tonic::Status>>>>,
    subscribes: Mutex<Vec<(u64, bool)>>,
    resume: Mutex<Option<pb::ResumeFromResponse>>,
    records: Mutex<Vec<pb::DeliveredEvent>>,
    invalid: Mutex<HashSet<String>>,
    /// RecordDelivered calls still to fail with UNAVAILABLE.
    failing_records: std::sync::atomic::AtomicUsize,
}

/// Fake services: every token but `bad` (and those revoked) resolves to alice's session.
#[derive(Clone, Default)]
struct Fake(Arc<FakeInner>);

impl Fake {
    /// Prepares the next Subscribe feed; returns its sender.
    fn feed(&self) -> mpsc::UnboundedSender<Result<pb::Delivery, tonic::Status>> {
        let (tx, rx) = mpsc::unbounded();
        self.0.feeds.lock().unwrap().push_back(rx);
        tx
    }

    fn records(&self) -> Vec<(u64, u64)> {
        self.0
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|d| (d.sequence, d.position))
            .collect()
    }

    fn revoke(&self, token: &str) {
        self.0.invalid.lock().unwrap().insert(token.to_owned());
    }
}

fn event(op: u32, data: Value, position: u64) -> Result<pb::Delivery, tonic::Status> {
    Ok(pb::Delivery {
        kind: Some(Kind::Event(pb::Event {
            namespace: "core".into(),
            op,
            data_json: data.to_string(),
            position,
        })),
    })
}

fn namespaced(namespace: &str, position: u64) -> Result<pb::Delivery, tonic::Status> {
    Ok(pb::Delivery {
        kind: Some(Kind::Event(pb::Event {
            namespace: namespace.into(),
            op: 1,
            data_json: "{}".into(),
            position,
        })),
    })
}

impl Upstream for Fake {
    async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthFailure> {
        if token == "bad" || self.0.invalid.lock().unwrap().contains(token) {
            return Err(AuthFailure::Invalid);
        }
        if token == "down" {
            return Err(AuthFailure::Unavailable);
        }
        Ok(Authenticated {
            caller: Caller {
                fid: "alice@p2.test".into(),
                session_id: "s1".into(),
            },
            assertion: CallerAssertion {
                token: token.as_bytes().to_vec(),
            },
        })
    }

    async fn subscribe(
        &self,
        _caller: CallerAssertion,
        after_position: u64,
        only_new: bool,
    ) -> Result<Deliveries, tonic::Status> {
        self.0
            .subscribes
            .lock()
            .unwrap()
            .push((after_position, only_new));
        let feed = self.0.feeds.lock().unwrap().pop_front();
        match feed {
            Some(rx) => Ok(Box::pin(rx)),
            None => Err(tonic::Status::unavailable("no feed prepared")),
        }
    }

    async fn resume_from(
        &self,
        _caller: CallerAssertion,
        _sequence: u64,
    ) -> Result<pb::ResumeFromResponse, tonic::Status> {
        Ok((*self.0.resume.lock().unwrap()).unwrap_or_default())
    }

    async fn record_delivered(
        &self,
        _caller: CallerAssertion,
        _connection_id: String,
        delivered: Vec<pb::DeliveredEvent>,
    ) -> Result<(), tonic::Status> {
        if self
            .0
            .failing_records
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |left| left.checked_sub(1),
            )
            .is_ok()
        {
            return Err(tonic::Status::unavailable("events down"));
        }
        // As the events service does: one position per sequence number, in the order sent.
        if delivered
            .windows(2)
            .any(|pair| pair[0].sequence >= pair[1].sequence)
        {
            return Err(tonic::Status::invalid_argument(
                "sequence numbers strictly increasing",
            ));
        }
        self.0.records.lock().unwrap().extend(delivered);
        Ok(())
    }
}

fn settings() -> Settings {
    Settings {
        heartbeat_interval_ms: 45_000,
        heartbeat_grace: Duration::from_secs(10),
        identify_timeout: Duration::from_secs(30),
        service_channels: ["chat".to_owned()].into(),
        rate_burst: 60,
        rate_window: Duration::from_secs(10),
        queue: 256,
        resend_messages: 1024,
        resend_bytes: 1 << 20,
        replay_idle: Duration::from_millis(50),
        replay_max_events: 1000,
        replay_max_bytes: 1 << 20,
    }
}

/// A connection on a fake socket whose client side buffers `client_buffer` messages.
fn start_with(
    fake: &Fake,
    settings: Settings,
    client_buffer: usize,
) -> (Client, CancellationToken, tokio::task::JoinHandle<()>) {
    let (client_tx, incoming) = mpsc::channel(16);
    let (outgoing, client_rx) = mpsc::channel(client_buffer);
    let socket = FakeSocket { incoming, outgoing };
    let closing = CancellationToken::new();
    let task = tokio::spawn(connection::run(
        socket,
        fake.clone(),
        Arc::new(settings),
        closing.clone(),
    ));
    (
        Client {
            tx: client_tx,
            rx: client_rx,
            wait: WAIT,
        },
        closing,
        task,
    )
}

fn start(fake: &Fake) -> (Client, CancellationToken, tokio::task::JoinHandle<()>) {
    start_with(fake, settings(), 64)
}

fn heartbeat(from: u64, to: u64, except: &[u64]) -> Value {
    let except: Vec<String> = except.iter().map(u64::to_string).collect();
    json!({"n": "core", "op": "0", "d": {"from": from.to_string(), "to": to.to_string(), "except": except}})
}

/// Hello, Identify with `token`, the Identify ACK.
async fn identified(client: &mut Client, token: &str) {
    let hello = client.recv().await;
    assert_eq!(hello["op"], "1");
    assert_eq!(hello["s"], "0");
    client
        .send(json!({"n": "core", "op": "2", "d": {"token": token}}))
        .await;
    let ack = client.recv().await;
    assert_eq!(ack["op"], "12");
    assert_eq!(ack["s"], "1");
    assert_eq!(ack["d"]["token"], token);
}

#[tokio::test]
async fn hello_identify_events_and_heartbeats_follow_the_spec_cycle() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    let hello = client.recv().await;
    assert_eq!(
        hello,
        json!({"n": "core", "op": "1", "d": {"heartbeat_interval": 45000, "heartbeatInterval": "45"}, "s": "0"})
    );
    // A heartbeat before identifying is fine.
    client.send(heartbeat(0, 0, &[])).await;
    let ack = client.recv().await;
    assert_eq!(ack, json!({"n": "core", "op": "7", "d": [], "s": "1"}));
    client
        .send(json!({"n": "core", "op": 2, "d": {"token": "t"}}))
        .await;
    let ready = client.recv().await;
    assert_eq!(ready["op"], "12");
    assert_eq!(ready["s"], "2");
    assert_eq!(fake.0.subscribes.lock().unwrap().as_slice(), &[(0, true)]);
    feed.unbounded_send(event(3, json!({"cert": "PEM"}), 41))
        .unwrap();
    feed.unbounded_send(event(
        6,
        json!({"cert": "ROOT", "oldInvalidSince": "7"}),
        42,
    ))
    .unwrap();
    let first = client.recv().await;
    assert_eq!(
        first,
        json!({"n": "core", "op": "3", "d": {"cert": "PEM"}, "s": "3"})
    );
    let second = client.recv().await;
    assert_eq!(second["op"], "6");
    assert_eq!(second["s"], "4");
    assert_eq!(second["d"]["oldInvalidSince"], "7");
    client.send(heartbeat(0, 4, &[])).await;
    let ack = client.recv().await;
    assert_eq!(ack, json!({"n": "core", "op": "7", "d": [], "s": "5"}));
    // The heartbeat recorded which sequence numbers carried which positions.
    tokio::time::timeout(WAIT, async {
        while fake.records() != [(3, 41), (4, 42)] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("deliveries were not recorded");
}

#[tokio::test]
async fn events_listed_in_except_are_resent_in_the_ack_as_they_were_sent() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    identified(&mut client, "t").await;
    for position in 1..=3 {
        feed.unbounded_send(event(3, json!({"cert": position}), position))
            .unwrap();
    }
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(client.recv().await);
    }
    assert_eq!(sent[1]["s"], "3");
    // The client missed 3 (and asks for the Hello and a number twice: deduplicated).
    client.send(heartbeat(0, 4, &[3, 0, 3])).await;
    let ack = client.recv().await;
    assert_eq!(ack["op"], "7");
    assert_eq!(ack["s"], "5");
    assert_eq!(ack["d"].as_array().unwrap().len(), 2);
    assert_eq!(ack["d"][0]["op"], "1");
    assert_eq!(ack["d"][1], sent[1]);
    // An ACK is never re-sent: asking for it yields an empty ACK.
    client.send(heartbeat(5, 5, &[5])).await;
    let again = client.recv().await;
    assert_eq!(again["d"], json!([]));
}

#[tokio::test]
async fn messages_older_than_the_resend_buffer_are_left_out_of_the_ack() {
    let fake = Fake::default();
    let feed = fake.feed();
    let mut small = settings();
    small.resend_messages = 2;
    let (mut client, _closing, _task) = start_with(&fake, small, 64);
    identified(&mut client, "t").await;
    for position in 1..=4 {
        feed.unbounded_send(event(3, json!({}), position)).unwrap();
    }
    for _ in 0..4 {
        client.recv().await;
    }
    // 2..=5 were events; only 4 and 5 are still held.
    client.send(heartbeat(0, 5, &[2, 4])).await;
    let ack = client.recv().await;
    let resent = ack["d"].as_array().unwrap();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0]["s"], "4");
}

async fn closed_with(messages: &[Value], code: u16) {
    let fake = Fake::default();
    let _feed = fake.feed();
    let (mut client, _closing, task) = start(&fake);
    let hello = client.recv().await;
    assert_eq!(hello["op"], "1");
    for message in messages {
        client.send(message.clone()).await;
    }
    loop {
        match client.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, code, "{messages:?}: {frame:?}");
                break;
            }
            Some(Message::Text(_)) => continue,
            other => panic!("{messages:?}: expected close {code}, got {other:?}"),
        }
    }
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the connection did not end")
        .unwrap();
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let identify = json!({"op": "2", "d": {"token": "t"}});
    closed_with(&[json!({"op": "9", "d": {}})], 4001).await;
    closed_with(&[json!({"n": "chat", "op": "1", "d": {}})], 4001).await;
    closed_with(&[json!({"op": "zero"})], 4002).await;
    closed_with(&[json!({"op": "0", "d": {"to": "1"}})], 4002).await;
    closed_with(
        &[
            identify.clone(),
            json!({"op": "8", "d": {"action": "join", "service": "chat"}}),
        ],
        4002,
    )
    .await;
    closed_with(
        &[json!({"op": "8", "d": {"action": "subscribe", "service": "chat"}})],
        4003,
    )
    .await;
    closed_with(&[json!({"op": "2", "d": {"token": "bad"}})], 4004).await;
    closed_with(&[json!({"op": "5", "d": {"s": "3", "token": "bad"}})], 4004).await;
    closed_with(&[identify.clone(), identify.clone()], 4005).await;
    closed_with(
        &[
            identify.clone(),
            json!({"op": "5", "d": {"s": "1", "token": "t"}}),
        ],
        4005,
    )
    .await;
    // Nothing above 1 was sent yet (Hello 0, Identify ACK 1).
    closed_with(&[identify.clone(), heartbeat(0, 2, &[])], 4007).await;
    closed_with(&[heartbeat(3, 1, &[])], 4007).await;
    closed_with(&[heartbeat(0, 0, &[1])], 4007).await;
    // Resume of a session with nothing recorded.
    closed_with(&[json!({"op": "5", "d": {"s": "3", "token": "t"}})], 4010).await;
    // The session service is down: unknown error, try again.
    closed_with(&[json!({"op": "2", "d": {"token": "down"}})], 4000).await;
}

#[tokio::test]
async fn unparseable_text_is_an_invalid_payload() {
    let fake = Fake::default();
    let (mut client, _closing, _task) = start(&fake);
    client.recv().await;
    client.send_text("{not json").await;
    client.expect_close(4002).await;
}

#[tokio::test]
async fn a_client_sending_too_fast_is_closed_with_4008() {
    let fake = Fake::default();
    let mut limited = settings();
    limited.rate_burst = 5;
    limited.rate_window = Duration::from_secs(60);
    let (mut client, _closing, _task) = start_with(&fake, limited, 64);
    client.recv().await;
    for _ in 0..6 {
        client.send(heartbeat(0, 0, &[])).await;
    }
    for _ in 0..5 {
        assert_eq!(client.recv().await["op"], "7");
    }
    client.expect_close(4008).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_gets_a_heartbeat_request_then_4009() {
    let fake = Fake::default();
    let _feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    client.wait = Duration::from_secs(3600);
    identified(&mut client, "t").await;
    let started = tokio::time::Instant::now();
    // Interval (45 s) + grace (10 s) without a heartbeat: a request.
    let request = client.recv().await;
    assert_eq!(request, json!({"n": "core", "op": "11", "d": {}, "s": "2"}));
    assert_eq!(started.elapsed().as_secs(), 55);
    // Answered: the clock starts over.
    client.send(heartbeat(0, 2, &[])).await;
    assert_eq!(client.recv().await["op"], "7");
    let request = client.recv().await;
    assert_eq!(request["op"], "11");
    assert_eq!(started.elapsed().as_secs(), 110);
    // Not answered within the grace: timed out.
    client.expect_close(4009).await;
    assert_eq!(started.elapsed().as_secs(), 120);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_identifies_is_closed_with_4003() {
    let fake = Fake::default();
    let (mut client, _closing, _task) = start(&fake);
    client.wait = Duration::from_secs(3600);
    client.recv().await;
    let started = tokio::time::Instant::now();
    // Heartbeats keep it alive, but not past the identify timeout.
    tokio::time::sleep(Duration::from_secs(20)).await;
    client.send(heartbeat(0, 0, &[])).await;
    assert_eq!(client.recv().await["op"], "7");
    client.expect_close(4003).await;
    assert_eq!(started.elapsed().as_secs(), 30);
}

#[tokio::test]
async fn resume_replays_the_missed_events_inside_resumed_then_goes_live() {
    let fake = Fake::default();
    *fake.0.resume.lock().unwrap() = Some(pb::ResumeFromResponse {
        resumable: true,
        after_position: 5,
    });
    let feed = fake.feed();
    feed.unbounded_send(event(3, json!({"cert": "six"}), 6))
        .unwrap();
    feed.unbounded_send(event(4, json!({"serial": "7"}), 7))
        .unwrap();
    // Another namespace: a resumed connection has no service channels yet.
    feed.unbounded_send(namespaced("chat", 8)).unwrap();
    let (mut client, _closing, _task) = start(&fake);
    client.recv().await;
    client
        .send(json!({"n": "core", "op": "5", "d": {"s": "12", "token": "t"}}))
        .await;
    let resumed = client.recv().await;
    assert_eq!(resumed["op"], "10");
    assert_eq!(resumed["s"], "1");
    assert_eq!(
        resumed["d"],
        json!([
            {"n": "core", "op": "3", "d": {"cert": "six"}},
            {"n": "core", "op": "4", "d": {"serial": "7"}},
        ])
    );
    assert_eq!(fake.0.subscribes.lock().unwrap().as_slice(), &[(5, false)]);
    feed.unbounded_send(event(3, json!({"cert": "nine"}), 9))
        .unwrap();
    let live = client.recv().await;
    assert_eq!(live["s"], "2");
    assert_eq!(live["d"]["cert"], "nine");
    client.send(heartbeat(0, 2, &[])).await;
    client.recv().await;
    // The Resumed's positions as a record takes them (one per sequence number, increasing):
    // the last under Hello's 0, the first under the Resumed's 1.
    tokio::time::timeout(WAIT, async {
        while fake.records() != [(0, 7), (1, 6), (2, 9)] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("recorded {:?}", fake.records()));
}

#[tokio::test]
async fn resume_with_events_no_longer_retained_is_4010() {
    let fake = Fake::default();
    *fake.0.resume.lock().unwrap() = Some(pb::ResumeFromResponse {
        resumable: true,
        after_position: 5,
    });
    let feed = fake.feed();
    feed.unbounded_send(Ok(pb::Delivery {
        kind: Some(Kind::Gap(pb::Gap { oldest_retained: 9 })),
    }))
    .unwrap();
    let (mut client, _closing, _task) = start(&fake);
    client.recv().await;
    client
        .send(json!({"op": 5, "d": {"s": 12, "token": "t"}}))
        .await;
    client.expect_close(4010).await;
}

#[tokio::test]
async fn a_closed_session_is_closed_with_4003_at_once() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, _closing, task) = start(&fake);
    identified(&mut client, "t").await;
    feed.unbounded_send(Ok(pb::Delivery {
        kind: Some(Kind::Closed(pb::SessionClosed {})),
    }))
    .unwrap();
    client.expect_close(4003).await;
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_session_whose_token_stopped_resolving_is_closed_at_the_next_heartbeat() {
    let fake = Fake::default();
    let _feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    identified(&mut client, "t").await;
    fake.revoke("t");
    client.send(heartbeat(0, 1, &[])).await;
    assert_eq!(client.recv().await["op"], "7");
    client.expect_close(4003).await;
}

#[tokio::test]
async fn a_broken_feed_closes_with_4000_after_recording() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    identified(&mut client, "t").await;
    feed.unbounded_send(event(3, json!({}), 10)).unwrap();
    client.recv().await;
    drop(feed);
    client.expect_close(4000).await;
    assert_eq!(fake.records(), [(2, 10)]);
}

#[tokio::test]
async fn shutdown_records_the_deliveries_then_closes_with_4000() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, closing, task) = start(&fake);
    identified(&mut client, "t").await;
    feed.unbounded_send(event(3, json!({}), 21)).unwrap();
    client.recv().await;
    closing.cancel();
    client.expect_close(4000).await;
    assert_eq!(fake.records(), [(2, 21)]);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn service_channels_are_acknowledged_and_gate_their_namespace() {
    let fake = Fake::default();
    let feed = fake.feed();
    let (mut client, _closing, _task) = start(&fake);
    identified(&mut client, "t").await;
    // Not subscribed yet: a chat event is not delivered.
    feed.unbounded_send(namespaced("chat", 1)).unwrap();
    feed.unbounded_send(event(3, json!({}), 2)).unwrap();
    assert_eq!(client.recv().await["n"], "core");
    client
        .send(json!({"op": "8", "d": {"action": "subscribe", "service": "Chat"}}))
        .await;
    let ack = client.recv().await;
    assert_eq!(
        ack,
        json!({"n": "core", "op": "9", "d": {"action": "subscribe", "service": "Chat", "success": true}, "s": "3"})
    );
    feed.unbounded_send(namespaced("chat", 3)).unwrap();
    let chat = client.recv().await;
    assert_eq!(chat["n"], "chat");
    assert_eq!(chat["s"], "4");
    client
        .send(json!({"op": "8", "d": {"action": "subscribe", "service": "files"}}))
        .await;
    let refused = client.recv().await;
    assert_eq!(refused["d"]["success"], false);
    assert!(refused["d"]["error"].is_string());
    client
        .send(json!({"op": "8", "d": {"action": "unsubscribe", "service": "chat"}}))
        .await;
    assert_eq!(client.recv().await["d"]["success"], true);
    feed.unbounded_send(namespaced("chat", 4)).unwrap();
    feed.unbounded_send(event(3, json!({}), 5)).unwrap();
    let next = client.recv().await;
    assert_eq!(next["n"], "core");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_deliveries_recorded() {
    let fake = Fake::default();
    let feed = fake.feed();
    let mut small = settings();
    small.queue = 4;
    // The client's socket takes one message and is then never read again.
    let (mut client, _closing, task) = start_with(&fake, small, 0);
    identified(&mut client, "t").await;
    for position in 1..=50 {
        feed.unbounded_send(event(3, json!({"n": position}), position))
            .unwrap();
    }
    tokio::time::timeout(WAIT, task)
        .await
        .expect("a client that does not read was not dropped")
        .unwrap();
    // Everything queued for it was recorded: a Resume continues from there.
    let recorded = fake.records();
    assert!(!recorded.is_empty() && recorded.len() < 50, "{recorded:?}");
    assert_eq!(recorded[0], (2, 1));
    // No close frame was queued behind the stuck messages.
    let mut seen = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(100), client.rx.next()).await
    {
        seen.push(message);
    }
    assert!(
        seen.iter().all(|m| !matches!(m, Message::Close(_))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn one_stuck_client_does_not_delay_another() {
    let fake = Fake::default();
    let stuck_feed = fake.feed();
    let live_feed = fake.feed();
    let (mut stuck, _c1, _t1) = start_with(&fake, settings(), 0);
    identified(&mut stuck, "t").await;
    let (mut live, _c2, _t2) = start(&fake);
    identified(&mut live, "t").await;
    for position in 1..=500 {
        stuck_feed
            .unbounded_send(event(3, json!({}), position))
            .unwrap();
    }
    live_feed
        .unbounded_send(event(3, json!({"to": "live"}), 1))
        .unwrap();
    let event = live.recv().await;
    assert_eq!(event["d"]["to"], "live");
}

#[tokio::test]
async fn caught_up_ends_the_replay_at_once_and_later_events_go_live() {
    let fake = Fake::default();
    *fake.0.resume.lock().unwrap() = Some(pb::ResumeFromResponse {
        resumable: true,
        after_position: 5,
    });
    let feed = fake.feed();
    feed.unbounded_send(event(3, json!({"cert": "six"}), 6))
        .unwrap();
    feed.unbounded_send(Ok(pb::Delivery {
        kind: Some(Kind::CaughtUp(pb::CaughtUp {})),
    }))
    .unwrap();
    // Right behind the mark, before any quiet time: live, not part of the replay.
    feed.unbounded_send(event(3, json!({"cert": "seven"}), 7))
        .unwrap();
    let mut settings = settings();
    // Far longer than the test may wait: only the mark can end the replay.
    settings.replay_idle = Duration::from_secs(60);
    let (mut client, _closing, _task) = start_with(&fake, settings, 64);
    client.recv().await;
    client
        .send(json!({"n": "core", "op": "5", "d": {"s": "3", "token": "t"}}))
        .await;
    let resumed = client.recv().await;
    assert_eq!(resumed["op"], "10");
    assert_eq!(
        resumed["d"],
        json!([{"n": "core", "op": "3", "d": {"cert": "six"}}])
    );
    let live = client.recv().await;
    assert_eq!(live["s"], "2");
    assert_eq!(live["d"]["cert"], "seven");
}

#[tokio::test]
async fn deliveries_the_events_service_did_not_take_are_recorded_with_the_next_batch() {
    let fake = Fake::default();
    let feed = fake.feed();
    fake.0
        .failing_records
        .store(1, std::sync::atomic::Ordering::Release);
    let (mut client, _closing, _task) = start(&fake);
    identified(&mut client, "t").await;
    feed.unbounded_send(event(3, json!({"cert": "a"}), 5))
        .unwrap();
    assert_eq!(client.recv().await["s"], "2");
    // The heartbeat's record fails (events down)...
    client.send(heartbeat(0, 2, &[])).await;
    client.recv().await;
    tokio::time::timeout(WAIT, async {
        while fake
            .0
            .failing_records
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the heartbeat tried to record");
    assert!(fake.records().is_empty());
    feed.unbounded_send(event(3, json!({"cert": "b"}), 6))
        .unwrap();
    assert_eq!(client.recv().await["s"], "4");
    // ... and the next one carries both deliveries, in order.
    client.send(heartbeat(0, 4, &[])).await;
    client.recv().await;
    tokio::time::timeout(WAIT, async {
        while fake.records() != [(2, 5), (4, 6)] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("recorded {:?}", fake.records()));
}
