//! Replicas share the load: two session processes behind one gateway (which gets both URLs)
//! both serve calls, seen in each one's own `/metrics`; and when one stops, the other takes
//! every call without a client noticing more than the calls in flight.

use std::time::Duration;

use crate::helpers;
use crate::split::{Component, SplitStack};

/// The sum of the samples of `metric` whose labels contain `filter`.
fn sum(text: &str, metric: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const SESSION_CALLS: &str = r#"service="polyproto.session.v1.Session""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_session_replicas_behind_one_gateway_both_serve() {
    let mut stack = SplitStack::builder()
        .postgres()
        .redis(&helpers::redis_url())
        .replicas(Component::Session, 2)
        .env_for(Component::Gateway, "P2_RATE_LIMIT_BEARER", "0")
        // Every request must reach a session replica: no token cache in between.
        .env_for(Component::Gateway, "P2_TOKEN_CACHE_MS", "0")
        .env_for(
            Component::Session,
            "P2_MAX_CHALLENGES_PER_SESSION",
            "100000",
        )
        .start()
        .await;
    let http = stack.http().clone();
    let token = stack.register_and_login("rita", "r1").await;

    let metric = "polyproto_grpc_server_requests_total";
    let scrape = async |replica: usize| {
        sum(
            &stack.scrape(Component::Session, replica).await,
            metric,
            SESSION_CALLS,
        )
    };
    let before = [scrape(0).await, scrape(1).await];
    // Each challenge is two session calls (Authenticate, CreateChallenge), four at a time so
    // the balancer sees calls in flight. Rounds until both replicas took a real share: a
    // replica whose readiness probe timed out on this busy machine is out of the balancer
    // for a couple of seconds (as it should be), so one round alone could miss it.
    let requests = 100;
    let mut served = [0.0, 0.0];
    for _round in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (http, url, token) = (
                http.clone(),
                stack.url("/.p2/core/v1/challenge"),
                token.clone(),
            );
            tasks.spawn(async move {
                for _ in 0..requests / 4 {
                    let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        served = [scrape(0).await - before[0], scrape(1).await - before[1]];
        let total = served[0] + served[1];
        if served.iter().all(|n| *n >= total * 0.1) {
            break;
        }
    }
    let total = served[0] + served[1];
    assert!(
        total >= f64::from(2 * requests),
        "every request reached a session replica: {served:?}"
    );
    // Power of two choices over two endpoints: both take a real share (seen here: 60–80 % on
    // one, as the warmer replica answers faster and so has fewer calls in flight).
    for (i, n) in served.iter().enumerate() {
        assert!(
            *n >= total * 0.1,
            "replica {i} served {n} of {total} session calls: {served:?}"
        );
    }

    // One replica stops (SIGTERM: NOT_SERVING, grace, drain): the other serves everything.
    stack.terminate(Component::Session, 1, Duration::from_secs(20));
    for _ in 0..20 {
        let response = http
            .get(stack.url("/.p2/core/v1/challenge"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the remaining replica serves");
    }
}
