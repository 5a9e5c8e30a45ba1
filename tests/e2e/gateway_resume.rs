//! Resume (spec 3.2.3.6) across gateway replicas: a split deployment with two gateway
//! processes sharing the test Redis. A client identified on gateway A receives an event and
//! disconnects; real core events are published meanwhile through the services' outboxes (a
//! login: op 3 New Session; a session deletion: op 4); the client resumes on gateway B and gets
//! exactly the missed events in Resumed (op 10), in order, then live events on B. Then back
//! from B to A, and once more on the same gateway. A second session of the actor stays
//! identified on B throughout as a witness: every event reaches it too, which is how the test
//! knows an event is in the log before it resumes.

use serde_json::{Value, json};

use crate::gateway_ws::{WAIT, Ws, connect, heartbeat, identify, recv, recv_event, send};
use crate::helpers;
use crate::split::{Component, PASSWORD, READY_TIMEOUT, SplitStack};

/// A logged-in session of a split stack.
pub struct Login {
    /// Bearer token.
    pub token: String,
    /// Its ID-Cert (PEM), as the login answered it.
    pub cert: String,
}

/// `POST /.p2/auth/v1/register` at the gateway `base`; asserts 201.
pub async fn register(http: &reqwest::Client, base: &str, local_name: &str) {
    let response = http
        .post(format!("{base}/.p2/auth/v1/register"))
        .json(&json!({"local_name": local_name, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "register {local_name}");
}

/// Logs `local_name@domain` in at the gateway `base` as a new session `session_id`; asserts
/// 201.
pub async fn login(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    local_name: &str,
    session_id: &str,
) -> Login {
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(local_name, domain).unwrap();
    let sid = p2_model::SessionId::parse(session_id).unwrap();
    let csr = p2_model::build_csr(&key, &fid, &sid).unwrap();
    let response = http
        .post(format!("{base}/.p2/auth/v1/session"))
        .json(&json!({"local_name": local_name, "password": PASSWORD, "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "log in {local_name} as {session_id}"
    );
    let body: Value = response.json().await.unwrap();
    Login {
        token: body["token"].as_str().unwrap().to_owned(),
        cert: body["id_cert"].as_str().unwrap().to_owned(),
    }
}

/// `DELETE /.p2/core/v1/session` of the token's own session at the gateway `base`; asserts 204.
pub async fn delete_session(http: &reqwest::Client, base: &str, token: &str) {
    let response = http
        .delete(format!("{base}/.p2/core/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "delete a session");
}

/// A message's sequence number.
pub fn seq(message: &Value) -> u64 {
    message["s"]
        .as_str()
        .unwrap_or_else(|| panic!("no string s in {message}"))
        .parse()
        .unwrap()
}

/// The next event (op 3, 4 or 6) on `ws`; asserts its op and that `d[field]` is `value`.
pub async fn expect_event(ws: &mut Ws, op: &str, field: &str, value: &str) -> Value {
    let event = recv_event(ws).await;
    assert_eq!(event["n"], "core", "{event}");
    assert_eq!(event["op"], op, "{event}");
    assert_eq!(
        event["d"][field].as_str(),
        Some(value),
        "op {op}: unexpected {field} in {event}"
    );
    event
}

/// `event` as Resumed (op 10) and `GET /events` carry it: without `s`.
pub fn without_s(event: &Value) -> Value {
    json!({"n": event["n"], "op": event["op"], "d": event["d"]})
}

/// The RecordDelivered calls the (first) events process answered with OK so far.
pub async fn records_ok(stack: &SplitStack) -> f64 {
    stack
        .metric_sum(
            Component::Events,
            0,
            "polyproto_grpc_server_requests_total",
            &[r#"method="RecordDelivered""#, r#"code="OK""#],
        )
        .await
}

/// Heartbeats every number up to `last` on `ws`, reads the Heartbeat ACK, and waits until the
/// events service has recorded the deliveries it triggers (one more RecordDelivered answered
/// OK), so that a Resume anywhere finds them.
pub async fn acknowledge(stack: &SplitStack, ws: &mut Ws, last: u64) {
    let before = records_ok(stack).await;
    send(ws, heartbeat(0, last, &[])).await;
    let ack = recv(ws).await;
    assert_eq!(ack["op"], "7", "{ack}");
    assert_eq!(ack["d"], json!([]), "{ack}");
    tokio::time::timeout(WAIT, async {
        while records_ok(stack).await <= before {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the deliveries up to {last} were not recorded (no RecordDelivered answered OK):\n{}",
            stack.logs()
        )
    });
}

/// Connects to the gateway at `base`, reads Hello and resumes `token`'s session after
/// sequence number `after`; asserts the Resumed (op 10, `s` 1) and returns it.
pub async fn resume(base: &str, token: &str, after: u64) -> (Ws, Value) {
    let mut ws = connect(base).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["op"], "1", "{hello}");
    send(
        &mut ws,
        json!({"n": "core", "op": "5", "d": {"s": after.to_string(), "token": token}}),
    )
    .await;
    let resumed = recv(&mut ws).await;
    assert_eq!(resumed["op"], "10", "{resumed}");
    assert_eq!(resumed["s"], "1", "{resumed}");
    (ws, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_the_other_gateway_and_back_with_exactly_what_it_missed() {
    // The test Redis is shared: keys of our own.
    let tag = format!("{:016x}", rand::random::<u64>());
    let stack = SplitStack::builder()
        .redis(&helpers::redis_url())
        .replicas(Component::Gateway, 2)
        .env_for(
            Component::Identity,
            "P2_REDIS_PREFIX",
            &format!("p2:throttle:{tag}:"),
        )
        .env_for(
            Component::Events,
            "P2_REDIS_PREFIX",
            &format!("p2:events:{tag}:"),
        )
        .env_for(
            Component::Gateway,
            "P2_REDIS_PREFIX",
            &format!("p2:ratelimit:{tag}:"),
        )
        .start()
        .await;
    stack.wait_gateway_ready(1, READY_TIMEOUT).await;
    let (a, b) = (stack.gateway_base(0), stack.gateway_base(1));
    assert_ne!(a, b);
    let (http, domain) = (stack.http(), stack.domain());

    register(http, &a, "alice").await;
    let s1 = login(http, &a, domain, "alice", "s1").await;
    let mut on_a = connect(&a).await;
    identify(&mut on_a, &s1.token).await;
    // An event on A: the witness session's login (op 3, published by the session service).
    let w = login(http, &b, domain, "alice", "witness").await;
    let seen = expect_event(&mut on_a, "3", "cert", &w.cert).await;
    assert_eq!(seen["s"], "2");
    let mut witness = connect(&b).await;
    identify(&mut witness, &w.token).await;
    acknowledge(&stack, &mut on_a, seq(&seen)).await;
    on_a.close(None).await.unwrap();
    drop(on_a);

    // Missed while disconnected: a new session (op 3), then its deletion (op 4, published by
    // the identity service). Each is awaited on the witness (on B) before the next, so their
    // order is the order of the two services' outboxes.
    let s2 = login(http, &a, domain, "alice", "s2").await;
    let missed_new = expect_event(&mut witness, "3", "cert", &s2.cert).await;
    delete_session(http, &b, &s2.token).await;
    let missed_gone = expect_event(&mut witness, "4", "idCertPem", &s2.cert).await;
    assert!(missed_gone["d"]["serial"].is_string(), "{missed_gone}");

    // Resume on B: exactly the missed events, in order.
    let (mut on_b, resumed) = resume(&b, &s1.token, seq(&seen)).await;
    assert_eq!(
        resumed["d"],
        json!([without_s(&missed_new), without_s(&missed_gone)]),
        "Resumed on B"
    );
    // Then a live event on B, numbered on from the Resumed.
    let s3 = login(http, &a, domain, "alice", "s3").await;
    let live = expect_event(&mut on_b, "3", "cert", &s3.cert).await;
    assert_eq!(live["s"], "2");
    expect_event(&mut witness, "3", "cert", &s3.cert).await;
    // What B delivered (the Resumed's events and the live one) is recorded too.
    acknowledge(&stack, &mut on_b, 2).await;
    on_b.close(None).await.unwrap();
    drop(on_b);

    // The reverse direction: missed while away from B, resumed on A.
    delete_session(http, &a, &s3.token).await;
    let missed_gone = expect_event(&mut witness, "4", "idCertPem", &s3.cert).await;
    let s4 = login(http, &b, domain, "alice", "s4").await;
    let missed_new = expect_event(&mut witness, "3", "cert", &s4.cert).await;
    let (mut on_a, resumed) = resume(&a, &s1.token, 2).await;
    assert_eq!(
        resumed["d"],
        json!([without_s(&missed_gone), without_s(&missed_new)]),
        "Resumed on A after B"
    );
    delete_session(http, &b, &s4.token).await;
    let live = expect_event(&mut on_a, "4", "idCertPem", &s4.cert).await;
    assert_eq!(live["s"], "2");
    expect_event(&mut witness, "4", "idCertPem", &s4.cert).await;
    acknowledge(&stack, &mut on_a, 2).await;
    on_a.close(None).await.unwrap();
    drop(on_a);

    // The same gateway once more.
    let s5 = login(http, &a, domain, "alice", "s5").await;
    let missed_new = expect_event(&mut witness, "3", "cert", &s5.cert).await;
    let (mut on_a, resumed) = resume(&a, &s1.token, 2).await;
    assert_eq!(
        resumed["d"],
        json!([without_s(&missed_new)]),
        "Resumed on A again"
    );
    delete_session(http, &a, &s5.token).await;
    let live = expect_event(&mut on_a, "4", "idCertPem", &s5.cert).await;
    assert_eq!(live["s"], "2");
    expect_event(&mut witness, "4", "idCertPem", &s5.cert).await;
}
