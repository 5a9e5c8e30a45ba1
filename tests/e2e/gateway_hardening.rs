//! The gateway against hostile clients: the public read cache stays within its byte budget
//! whatever keys clients choose (and empties after expiry), large answers are not cached,
//! equivalent queries share an entry, failed mutations clear nothing; and the HTTP server
//! closes slow and idle connections and caps connections per client address.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{DOMAIN, TestSession, TestStack, register_and_login, spawn_stack};

const SERVICES: &str = "/.p2/core/v1/services";

/// A stack (embedded storage) whose gateway runs with `gateway` options.
async fn stack_with(gateway: p2_gateway::GatewayOptions) -> TestStack {
    p2_runtime::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let mut config = polyproto_server::stack::StackConfig::embedded(
        ([127, 0, 0, 1], 0).into(),
        DOMAIN,
        dir.path(),
    );
    config.gateway = gateway;
    let stack = polyproto_server::stack::start(config.clone())
        .await
        .unwrap();
    TestStack {
        base: format!("http://{}", stack.addr),
        stack: Some(stack),
        http: reqwest::Client::new(),
        storage: config.storage,
        _dir: Some(dir),
    }
}

/// A second gateway of our own in front of `stack`'s services, so the test can look at its
/// cache. Returns its state and base URL.
async fn own_gateway(
    stack: &TestStack,
    options: p2_gateway::GatewayOptions,
) -> (p2_gateway::AppState, String) {
    crate::helpers::own_gateway(stack, options, None).await
}

async fn add_providers(
    stack: &TestStack,
    session: &TestSession,
    service: &str,
    n: usize,
    url_len: usize,
) {
    for i in 0..n {
        let prefix = format!("https://p{i}.example.com/");
        let url = format!("{prefix}{}", "a".repeat(url_len - prefix.len()));
        let response = stack
            .http
            .post(stack.url(SERVICES))
            .bearer_auth(&session.token)
            .json(&serde_json::json!({ "service": service, "url": url, "primary": i == 0 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
}

async fn get(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.get(url).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_cache_stays_within_its_byte_budget_over_http() {
    let stack = spawn_stack(crate::helpers::Backend::Sqlite).await;
    let alice = register_and_login(&stack, "alice").await;
    // 24 providers with 1.5 KB URLs: one answer of about 37 KB, under the 64 KiB entry limit.
    add_providers(&stack, &alice, "chat", 24, 1500).await;
    let budget: u64 = 256 * 1024;
    let (state, base) = own_gateway(
        &stack,
        p2_gateway::GatewayOptions {
            public_cache_ms: 1500,
            cache_max_bytes: budget,
            ..p2_gateway::GatewayOptions::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    // 400 distinct keys chosen by the client: ~15 MB offered to a 256 KiB budget. The bound
    // holds all along, not only at the end.
    let mut most = 0;
    for limit in 2..402 {
        let url = format!(
            "{base}/.p2/core/v1/services/discover/{}?limit={limit}",
            alice.fid
        );
        let response = get(&http, &url).await;
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.unwrap().len() > 2000);
        if limit % 25 == 0 {
            let held = state.cache_weighted_bytes();
            assert!(held <= budget, "{held} bytes held, budget {budget}");
            most = most.max(held);
        }
    }
    assert!(
        most > budget / 2,
        "the cache was barely used: {most} bytes at most"
    );
    // After the TTL the memory is given back, with no request touching the cache.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.cache_weighted_bytes() > 0 {
        assert!(
            Instant::now() < deadline,
            "expired entries were never evicted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_queries_share_one_entry_and_large_answers_are_not_cached() {
    let stack = spawn_stack(crate::helpers::Backend::Sqlite).await;
    let alice = register_and_login(&stack, "alice").await;
    add_providers(&stack, &alice, "chat", 3, 100).await;
    let bob = register_and_login(&stack, "bob").await;
    // 40 providers with 2 KB URLs: an 80 KB answer, over the 64 KiB default entry limit.
    add_providers(&stack, &bob, "chat", 40, 2000).await;
    let (state, base) = own_gateway(
        &stack,
        p2_gateway::GatewayOptions {
            public_cache_ms: 60_000,
            ..p2_gateway::GatewayOptions::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let path = "/.p2/core/v1/services/discover";
    let mut answers = Vec::new();
    for query in [
        format!("{path}/alice@{DOMAIN}"),
        format!("{path}/ALICE@{DOMAIN}?limit=1000"),
        format!("{path}/alice@{DOMAIN}/?limit=2000"),
        format!("{path}/Alice@{DOMAIN}?limit=18446744073709551615"),
    ] {
        let response = get(&http, &format!("{base}{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
        answers.push(response.text().await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(state.cache().entry_count(), 1);

    let url = format!("{base}{path}/{}", bob.fid);
    let response = get(&http, &url).await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(body.len() > 64 * 1024, "{} bytes", body.len());
    assert_eq!(
        state.cache().entry_count(),
        1,
        "the large answer was cached"
    );
    // Served in full all the same.
    assert_eq!(get(&http, &url).await.bytes().await.unwrap(), body);

    // Failed mutations clear nothing: no route, bad input.
    let response = http.post(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(state.cache().entry_count(), 1);
    // A services change by alice clears her entries, not through a failure.
    let response = http
        .post(format!("{base}{SERVICES}"))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(state.cache().entry_count(), 1);
    let response = http
        .post(format!("{base}{SERVICES}"))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({ "service": "chat", "url": "https://new.example.com", "primary": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let fresh: serde_json::Value = get(&http, &format!("{base}{path}/alice@{DOMAIN}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        fresh.as_array().unwrap().len(),
        4,
        "a stale answer was served"
    );
}

/// Reads until the peer closes (EOF or reset); returns how long that took, or `None` if it
/// stayed open for `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + wait).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one full keep-alive request and reads its response head and body.
async fn request_ok(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before answering");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

fn short_timeouts() -> p2_gateway::GatewayOptions {
    p2_gateway::GatewayOptions {
        header_timeout_ms: 400,
        idle_timeout_ms: 800,
        request_timeout_ms: 5_000,
        max_connections_per_ip: 4,
        ..p2_gateway::GatewayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_header_is_cut_off_after_the_header_timeout() {
    let stack = stack_with(short_timeouts()).await;
    let addr = stack.stack.as_ref().unwrap().addr;
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();
    let took = closed_within(&mut partial, Duration::from_secs(5))
        .await
        .expect("a partial header held its connection");
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    // A connection that sends nothing at all goes the same way.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection was kept");
    // Normal requests still work, on a fresh connection and through reqwest.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    request_ok(&mut fresh).await;
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let stack = stack_with(p2_gateway::GatewayOptions {
        // Long header timeout: what closes the connection here is the idle timeout.
        header_timeout_ms: 10_000,
        ..short_timeouts()
    })
    .await;
    let addr = stack.stack.as_ref().unwrap().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    request_ok(&mut stream).await;
    // Activity keeps it open: a second request 400 ms later on the same connection.
    tokio::time::sleep(Duration::from_millis(400)).await;
    request_ok(&mut stream).await;
    let took = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection was kept");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_are_closed_at_once() {
    let stack = stack_with(p2_gateway::GatewayOptions {
        header_timeout_ms: 10_000,
        idle_timeout_ms: 10_000,
        ..short_timeouts()
    })
    .await;
    let addr = stack.stack.as_ref().unwrap().addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        request_ok(&mut stream).await;
        held.push(stream);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut extra, Duration::from_secs(2))
            .await
            .expect("a connection beyond the cap was kept");
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }
    // The held ones still work.
    for stream in &mut held {
        request_ok(stream).await;
    }
    // Closing two frees two slots.
    held.truncate(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut admitted = Vec::new();
    while admitted.len() < 2 {
        assert!(Instant::now() < deadline, "freed slots were not reused");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if closed_within(&mut stream, Duration::from_millis(200))
            .await
            .is_none()
        {
            request_ok(&mut stream).await;
            admitted.push(stream);
        }
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    closed_within(&mut extra, Duration::from_secs(2))
        .await
        .expect("the cap was not enforced again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_request_timeout_is_answered_503_problem_json() {
    let stack = stack_with(p2_gateway::GatewayOptions {
        request_timeout_ms: 1,
        ..p2_gateway::GatewayOptions::default()
    })
    .await;
    // Registration hashes a password (Argon2id): far longer than 1 ms.
    let response = crate::helpers::register(&stack, "slow", crate::helpers::TEST_PASSWORD).await;
    crate::helpers::expect_problem(response, 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_waiting_for_its_next_header_is_bound_by_the_header_timeout() {
    let stack = stack_with(p2_gateway::GatewayOptions {
        header_timeout_ms: 400,
        idle_timeout_ms: 10_000,
        ..short_timeouts()
    })
    .await;
    let addr = stack.stack.as_ref().unwrap().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    request_ok(&mut stream).await;
    let took = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("a keep-alive connection outlived the header timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}
