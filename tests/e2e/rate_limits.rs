//! Request rate limits per client address and route class: 429 problem+json with
//! `Retry-After`, classes counted apart, and one count across gateway replicas sharing Redis.

use crate::helpers::{Backend, TEST_PASSWORD, TestStack, expect_problem, register, spawn_stack};

/// A gateway of our own with `limits`.
async fn gateway_with(
    stack: &TestStack,
    limits: p2_gateway::ratelimit::RateLimitOptions,
    redis: Option<(String, String)>,
) -> String {
    let options = p2_gateway::GatewayOptions {
        rate_limits: limits,
        ..p2_gateway::GatewayOptions::default()
    };
    crate::helpers::own_gateway(stack, options, redis).await.1
}

/// Long windows: a test never straddles two.
fn limits(public: u64, bearer: u64, password: u64) -> p2_gateway::ratelimit::RateLimitOptions {
    p2_gateway::ratelimit::RateLimitOptions {
        window_ms: 3_600_000,
        public,
        bearer,
        password,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_class_has_its_own_limit_answered_with_429_and_retry_after() {
    let stack = spawn_stack(Backend::Sqlite).await;
    let base = gateway_with(&stack, limits(5, 0, 2), None).await;
    let limited = TestStack {
        base: base.clone(),
        stack: None,
        http: reqwest::Client::new(),
        storage: stack.storage.clone(),
        _dir: None,
    };
    // Password routes: 2 per window, then 429 with a Retry-After inside the window.
    for name in ["one", "two"] {
        assert_eq!(register(&limited, name, TEST_PASSWORD).await.status(), 201);
    }
    let refused = register(&limited, "three", TEST_PASSWORD).await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    let detail = expect_problem(refused, 429).await;
    assert!(detail.contains("password"), "{detail}");
    // Public reads are counted apart: 5 pass, the 6th is refused.
    let read = || {
        limited
            .http
            .get(limited.url("/.p2/core/v1/idcert/server"))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(read().await.unwrap().status(), 200);
    }
    expect_problem(read().await.unwrap(), 429).await;
    // Operator endpoints are never limited.
    let ready = limited
        .http
        .get(limited.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // The stack's own gateway (its own counters) is untouched.
    let own = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replicas_sharing_redis_share_one_count() {
    let stack = spawn_stack(Backend::Postgres).await;
    let prefix = format!("p2test:ratelimit:{}:", p2_runtime::internal::unix_now_ms());
    let redis = Some((crate::helpers::redis_url(), prefix));
    let a = gateway_with(&stack, limits(10, 0, 0), redis.clone()).await;
    let b = gateway_with(&stack, limits(10, 0, 0), redis).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..14 {
        let base = if i % 2 == 0 { &a } else { &b };
        let response = http
            .get(format!("{base}/.p2/core/v1/idcert/server"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (admitted, refused),
        (10, 4),
        "one limit across both replicas: {statuses:?}"
    );
}

/// Behind a trusted proxy the client named by `X-Forwarded-For` is counted, not the proxy; a
/// peer that is not trusted cannot pick its address with the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_count() {
    let stack = spawn_stack(Backend::Sqlite).await;
    let http = reqwest::Client::new();
    let read = |base: String, forwarded: &'static str| {
        http.get(format!("{base}/.p2/core/v1/idcert/server"))
            .header("x-forwarded-for", forwarded)
            .send()
    };
    // The test client connects from 127.0.0.1: trusted here.
    let trusting = crate::helpers::own_gateway(
        &stack,
        p2_gateway::GatewayOptions {
            rate_limits: limits(2, 0, 0),
            trusted_proxies: "127.0.0.0/8".into(),
            ..p2_gateway::GatewayOptions::default()
        },
        None,
    )
    .await
    .1;
    for _ in 0..2 {
        let ok = read(trusting.clone(), "198.51.100.1").await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let refused = read(trusting.clone(), "198.51.100.1").await.unwrap();
    expect_problem(refused, 429).await;
    // Another client behind the same proxy has its own count; a forged entry on the left
    // does not move the first client out of its own.
    let other = read(trusting.clone(), "198.51.100.2").await.unwrap();
    assert_eq!(other.status(), 200);
    let forged = read(trusting.clone(), "203.0.113.7, 198.51.100.1")
        .await
        .unwrap();
    expect_problem(forged, 429).await;

    // Without trust, the header is ignored: every request counts against 127.0.0.1.
    let plain = gateway_with(&stack, limits(2, 0, 0), None).await;
    for forwarded in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(read(plain.clone(), forwarded).await.unwrap().status(), 200);
    }
    let refused = read(plain.clone(), "198.51.100.3").await.unwrap();
    expect_problem(refused, 429).await;
}
