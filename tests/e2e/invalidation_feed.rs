//! Several gateways sharing Redis stay consistent through the events service's invalidation
//! feed (issue 9, "Several gateways"): with token and public caches on for a long time, a
//! session deleted through gateway A fails on gateway B within one feed delivery (measured
//! and printed), the actor's other session stays cached, and a discovery change made
//! through A shows on B at once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::split::{Component, PASSWORD, SplitStack};

fn sum(text: &str, metric: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn token_hits(stack: &SplitStack, replica: usize) -> f64 {
    sum(
        &stack.scrape(Component::Gateway, replica).await,
        "polyproto_gateway_cache_hits_total",
        "cache=\"token\"",
    )
}

/// `GET /events` on `base` with `token`: the status.
async fn poll(stack: &SplitStack, base: &str, token: &str) -> u16 {
    stack
        .http()
        .get(format!("{base}/.p2/core/v1/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Logs `local_name` in again as `session_id` at `base`; the token.
async fn login(stack: &SplitStack, base: &str, local_name: &str, session_id: &str) -> String {
    let key = p2_model::generate_signing_key();
    let fid = p2_model::FederationId::new(local_name, stack.domain()).unwrap();
    let sid = p2_model::SessionId::parse(session_id).unwrap();
    let csr = p2_model::build_csr(&key, &fid, &sid).unwrap();
    let response = stack
        .http()
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
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_through_one_gateway_fails_on_the_other_with_caches_on() {
    let stack = SplitStack::builder()
        .domain("feed.test")
        .replicas(Component::Gateway, 2)
        .redis(&crate::helpers::redis_url())
        // Far longer than the test: only the feed can make B forget.
        .env_for(Component::Gateway, "P2_TOKEN_CACHE_MS", "600000")
        .env_for(Component::Gateway, "P2_PUBLIC_CACHE_MS", "600000")
        .env_for(Component::Gateway, "P2_RATE_LIMIT_PUBLIC", "0")
        .env_for(Component::Gateway, "P2_RATE_LIMIT_BEARER", "0")
        .start()
        .await;
    stack.wait_gateway_ready(1, Duration::from_secs(60)).await;
    let (a, b) = (stack.gateway_base(0), stack.gateway_base(1));
    let keep = stack.register_and_login("alice", "keep").await;
    let doomed = login(&stack, &a, "alice", "doomed").await;

    // B resolves both tokens once and then answers from its cache (once its feed is live).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = token_hits(&stack, 1).await;
        assert_eq!(poll(&stack, &b, &keep).await, 200);
        assert_eq!(poll(&stack, &b, &doomed).await, 200);
        assert_eq!(poll(&stack, &b, &keep).await, 200);
        assert_eq!(poll(&stack, &b, &doomed).await, 200);
        if token_hits(&stack, 1).await - before >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway B never served a token from its cache:\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted through A.
    let deleted = stack
        .http()
        .delete(format!("{a}/.p2/core/v1/session"))
        .bearer_auth(&doomed)
        .json(&json!({"session_id": "doomed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let deleted_at = Instant::now();
    assert_eq!(poll(&stack, &a, &doomed).await, 401, "A forgets at once");
    loop {
        let status = poll(&stack, &b, &doomed).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            deleted_at.elapsed() < Duration::from_secs(5),
            "gateway B still accepts a deleted session's token after 5 s (its cache lasts 600 s)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = deleted_at.elapsed();
    eprintln!(
        "deleted through gateway A -> refused by gateway B after {} ms",
        elapsed.as_millis()
    );
    // Alice's other session is still served from B's cache.
    let before = token_hits(&stack, 1).await;
    assert_eq!(poll(&stack, &b, &keep).await, 200);
    assert_eq!(poll(&stack, &b, &keep).await, 200);
    let after = token_hits(&stack, 1).await;
    assert!(
        after - before >= 1.0,
        "the other session's token was dropped too ({before} -> {after} hits)\n{}",
        stack.log(Component::Gateway, 1)
    );

    // Public reads: B caches alice's providers; a provider added through A shows on B.
    let discover = format!("{b}/.p2/core/v1/services/discover/alice@feed.test");
    let providers = async || -> Vec<serde_json::Value> {
        let response = stack.http().get(&discover).send().await.unwrap();
        // No providers: 204 without a body.
        if response.status() == 204 {
            return Vec::new();
        }
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    };
    let add = async |name: &str| {
        let added = stack
            .http()
            .post(format!("{a}/.p2/core/v1/services"))
            .bearer_auth(&keep)
            .json(&json!({"service": {"service": name, "url": "https://chat.example/", "primary": false}}))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 201, "adding {name}");
    };
    add("chat").await;
    let public_hits = async || {
        sum(
            &stack.scrape(Component::Gateway, 1).await,
            "polyproto_gateway_cache_hits_total",
            "cache=\"public\"",
        )
    };
    // Until B answers from its cache (the invalidations of the first add may still arrive).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = public_hits().await;
        assert_eq!(providers().await.len(), 1);
        assert_eq!(providers().await.len(), 1);
        if public_hits().await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never answered from its public cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    add("files").await;
    let added_at = Instant::now();
    loop {
        if providers().await.len() == 2 {
            break;
        }
        assert!(
            added_at.elapsed() < Duration::from_secs(5),
            "gateway B still serves the old providers after 5 s (its cache lasts 600 s)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "provider added through gateway A -> discovered on gateway B after {} ms",
        added_at.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feed_the_token_cache_serves_nothing_and_comes_back_with_it() {
    let mut stack = SplitStack::builder()
        .domain("nofeed.test")
        .env_for(Component::Gateway, "P2_TOKEN_CACHE_MS", "600000")
        .start()
        .await;
    let token = stack.register_and_login("bob", "one").await;
    let base = stack.base();
    let warm = async |stack: &SplitStack| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let before = token_hits(stack, 0).await;
            // Challenge strings need only the token and do not touch the events service.
            for _ in 0..2 {
                let response = stack
                    .http()
                    .get(format!("{base}/.p2/core/v1/challenge"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
            if token_hits(stack, 0).await - before >= 1.0 {
                return;
            }
            assert!(Instant::now() < deadline, "no token cache hits");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    warm(&stack).await;
    // The events service goes away: the feed ends, and the cache stops serving.
    stack.terminate(Component::Events, 0, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = token_hits(&stack, 0).await;
        let response = stack
            .http()
            .get(format!("{base}/.p2/core/v1/challenge"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "tokens still resolve, uncached");
        if token_hits(&stack, 0).await == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the token cache kept serving without its feed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let feed_live = async |stack: &SplitStack| {
        sum(
            &stack.scrape(Component::Gateway, 0).await,
            "polyproto_gateway_invalidation_feed_live",
            "",
        )
    };
    assert_eq!(feed_live(&stack).await, 0.0);
    // It comes back: the feed goes live again and the cache is used again.
    stack.restart(Component::Events, 0);
    warm(&stack).await;
    assert_eq!(feed_live(&stack).await, 1.0);
}
