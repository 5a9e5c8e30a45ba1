//! Events over HTTP (`GET /.p2/core/v1/events`, spec 3.3): what a session missed, oldest
//! first, capped with `X-P2-Events-Truncated`, and nothing that a WebSocket already delivered.

use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway_ws::{connect, heartbeat, identify, publish, recv, recv_event, send};
use crate::helpers::{TestSession, TestStack, expect_problem, register_and_login};

async fn poll(stack: &TestStack, session: &TestSession, query: &str) -> (Vec<Value>, String) {
    let response = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/events{query}")))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let truncated = response.headers()["x-p2-events-truncated"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Vec<Value> = response.json().await.unwrap();
    (body, truncated)
}

async fn get_events_answers_what_the_session_missed_oldest_first(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    for n in 0..3 {
        publish(&stack, &alice, 3, json!({"cert": format!("cert {n}")})).await;
    }
    publish(
        &stack,
        &alice,
        6,
        json!({"cert": "root", "oldInvalidSince": "5"}),
    )
    .await;
    let (events, truncated) = poll(&stack, &alice, "").await;
    assert_eq!(truncated, "false");
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["d"]["cert"]
                .as_str()
                .is_some_and(|c| c.starts_with("cert ") || c == "root")
        })
        .collect();
    assert_eq!(
        ours,
        [
            &json!({"n": "core", "op": "3", "d": {"cert": "cert 0"}}),
            &json!({"n": "core", "op": "3", "d": {"cert": "cert 1"}}),
            &json!({"n": "core", "op": "3", "d": {"cert": "cert 2"}}),
            &json!({"n": "core", "op": "6", "d": {"cert": "root", "oldInvalidSince": "5"}}),
        ]
    );
    // No sequence numbers over HTTP.
    assert!(events.iter().all(|e| e.get("s").is_none()));
    // The cursor moved: nothing new.
    let (again, _) = poll(&stack, &alice, "").await;
    assert_eq!(again, Vec::<Value>::new());
}

async fn a_capped_poll_drops_the_oldest_and_says_so(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    // Whatever the login published is polled away first.
    poll(&stack, &alice, "").await;
    for n in 0..5 {
        publish(&stack, &alice, 3, json!({"n": n})).await;
    }
    let (events, truncated) = poll(&stack, &alice, "?limit=2").await;
    assert_eq!(truncated, "true");
    assert_eq!(
        events,
        [
            json!({"n": "core", "op": "3", "d": {"n": 3}}),
            json!({"n": "core", "op": "3", "d": {"n": 4}}),
        ]
    );
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/events?limit=0"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/events?limit=1001"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/events"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
}

async fn events_a_websocket_delivered_are_not_polled_again(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    let mut ws = connect(&stack.base).await;
    identify(&mut ws, &alice.token).await;
    publish(&stack, &alice, 3, json!({"cert": "over the socket"})).await;
    let event = recv_event(&mut ws).await;
    let s: u64 = event["s"].as_str().unwrap().parse().unwrap();
    send(&mut ws, heartbeat(0, s, &[])).await;
    assert_eq!(recv(&mut ws).await["op"], "7");
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Missed after the socket closed: only this one.
    publish(&stack, &alice, 3, json!({"cert": "missed"})).await;
    let (events, _) = poll(&stack, &alice, "").await;
    assert_eq!(
        events,
        [json!({"n": "core", "op": "3", "d": {"cert": "missed"}})]
    );
}

crate::on_both_backends!(
    get_events_answers_what_the_session_missed_oldest_first,
    a_capped_poll_drops_the_oldest_and_says_so,
    events_a_websocket_delivered_are_not_polled_again,
);
