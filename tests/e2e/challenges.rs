//! Challenge strings end to end: issued over HTTP, solved with the session key, checked by
//! the gateway's `X-P2-Challenge-String-Solution` helper against the real session service.
//! Single use, bound to the session, signed by the right key.

use axum::http::{HeaderMap, HeaderValue};
use ed25519_dalek::Signer as _;
use p2_gateway::auth::Authenticated;
use p2_gateway::auth::require_challenge_solution;

use crate::helpers::{TestSession, TestStack, login, register_and_login};
use crate::on_both_backends;

fn gateway_state(stack: &TestStack) -> p2_gateway::AppState {
    let grpc = stack.stack.as_ref().unwrap().grpc_addrs;
    let url = |i: usize| format!("http://{}", grpc[i]);
    let config = p2_gateway::GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        options: p2_gateway::GatewayOptions {
            public_cache_ms: 0,
            ..p2_gateway::GatewayOptions::default()
        },
        identity_url: url(0),
        session_url: url(1),
        discovery_url: url(2),
        events_url: url(3),
        token_cache_ms: 0,
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &stack.stack.as_ref().unwrap().internal_key,
        ),
        component_credential: None,
        redis_url: None,
        redis_prefix: p2_gateway::ratelimit::DEFAULT_REDIS_PREFIX.into(),
    };
    p2_gateway::AppState::new(&config, ([127, 0, 0, 1], 1).into()).unwrap()
}

async fn challenge(stack: &TestStack, session: &TestSession) -> String {
    let body: serde_json::Value = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["challenge"].as_str().unwrap().to_owned()
}

/// The session's caller as every Bearer route resolves it (token → caller assertion).
async fn caller(state: &p2_gateway::AppState, session: &TestSession) -> Authenticated {
    let resolved = p2_gateway::auth::authenticate(state, &session.token)
        .await
        .unwrap();
    assert_eq!(resolved.caller.fid, session.fid);
    assert_eq!(resolved.caller.session_id, session.session_id);
    resolved
}

fn solution(challenge: &str, key: &p2_model::SigningKey) -> HeaderMap {
    let signature = hex::encode(key.sign(challenge.as_bytes()).to_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-P2-Challenge-String-Solution",
        HeaderValue::from_str(&format!("{challenge}:{signature}")).unwrap(),
    );
    headers
}

async fn solved_challenges_pass_once_and_only_for_their_session(stack: TestStack) {
    let state = gateway_state(&stack);
    let alice = register_and_login(&stack, "alice").await;
    let laptop = login(&stack, "alice", "laptop").await;

    let c = challenge(&stack, &alice).await;
    let headers = solution(&c, &alice.key);
    require_challenge_solution(&state, &caller(&state, &alice).await, &headers)
        .await
        .unwrap();
    // Reused: 403.
    let err = require_challenge_solution(&state, &caller(&state, &alice).await, &headers)
        .await
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);

    // Signed by another key: 403.
    let c = challenge(&stack, &alice).await;
    let err = require_challenge_solution(
        &state,
        &caller(&state, &alice).await,
        &solution(&c, &laptop.key),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);

    // Issued to another session: 403.
    let c = challenge(&stack, &alice).await;
    let err = require_challenge_solution(
        &state,
        &caller(&state, &laptop).await,
        &solution(&c, &laptop.key),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);

    // Missing or malformed header: 403.
    let err = require_challenge_solution(&state, &caller(&state, &alice).await, &HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-P2-Challenge-String-Solution",
        HeaderValue::from_static("nosig"),
    );
    let err = require_challenge_solution(&state, &caller(&state, &alice).await, &headers)
        .await
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);
}

on_both_backends!(solved_challenges_pass_once_and_only_for_their_session);

/// Expiry: a stack whose challenges live one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_challenges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = polyproto_server::stack::StackConfig::embedded(
        ([127, 0, 0, 1], 0).into(),
        crate::helpers::DOMAIN,
        dir.path(),
    );
    config.session.challenge_ttl_secs = 1;
    let stack = polyproto_server::stack::start(config.clone())
        .await
        .unwrap();
    let test_stack = TestStack {
        base: format!("http://{}", stack.addr),
        stack: Some(stack),
        http: reqwest::Client::new(),
        storage: config.storage,
        _dir: Some(dir),
    };
    let state = gateway_state(&test_stack);
    let alice = register_and_login(&test_stack, "alice").await;
    let c = challenge(&test_stack, &alice).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let err = require_challenge_solution(
        &state,
        &caller(&state, &alice).await,
        &solution(&c, &alice.key),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status.as_u16(), 403);
}
