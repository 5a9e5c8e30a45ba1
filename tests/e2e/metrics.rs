//! `/metrics` on every process: a split deployment's five processes each serve their own
//! series on their own listener, and `polyproto up` serves all of them on one.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use crate::split::{BIN, Component, SplitStack};

/// The value of the series `series` (name and labels exactly as rendered), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn has_series(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

fn http_requests(route: &str, method: &str, status: u16) -> String {
    format!(
        r#"polyproto_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
    )
}

fn http_count(route: &str, method: &str) -> String {
    format!(r#"polyproto_http_request_duration_seconds_count{{route="{route}",method="{method}"}}"#)
}

fn grpc_requests(service: &str, method: &str, code: &str) -> String {
    format!(
        r#"polyproto_grpc_server_requests_total{{service="polyproto.{service}.v1.{}",method="{method}",code="{code}"}}"#,
        capitalised(service)
    )
}

fn grpc_count(service: &str, method: &str) -> String {
    format!(
        r#"polyproto_grpc_server_request_duration_seconds_count{{service="polyproto.{service}.v1.{}",method="{method}"}}"#,
        capitalised(service)
    )
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Register, log in, take a challenge, miss a route, read certs: what the series must show.
async fn drive(http: &reqwest::Client, base: &str, domain: &str) {
    let token = &crate::split::register_and_login(http, base, domain, "alice", "m1").await;
    let challenge = http
        .get(format!("{base}/.p2/core/v1/challenge"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    let missing = http
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let certs = http
        .get(format!("{base}/.p2/core/v1/idcert/actor/alice@{domain}"))
        .send()
        .await
        .unwrap();
    assert_eq!(certs.status(), 200);
}

fn assert_build_info(text: &str, what: &str) {
    let line = format!(
        r#"polyproto_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&line), "{what}: no build_info:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_a_split_deployment_serves_its_own_metrics() {
    let stack = SplitStack::builder().domain("metrics.test").start().await;
    let mut before = Vec::new();
    for component in Component::ALL {
        before.push(stack.scrape(component, 0).await);
    }
    drive(stack.http(), &stack.base(), stack.domain()).await;
    let mut after = Vec::new();
    for component in Component::ALL {
        after.push(stack.scrape(component, 0).await);
    }
    let [identity, session, discovery, events, gateway] = &after[..] else {
        unreachable!()
    };
    let [identity0, session0, _, _, gateway0] = &before[..] else {
        unreachable!()
    };
    for (component, text) in Component::ALL.iter().zip(&after) {
        assert_build_info(text, component.name());
    }

    // The gateway: by route template, method and status; latency histograms; in flight.
    let moved = |series: &str| value(gateway, series) - value(gateway0, series);
    assert_eq!(
        moved(&http_requests("/.p2/auth/v1/register", "POST", 201)),
        1.0,
        "{gateway}"
    );
    assert_eq!(
        moved(&http_requests("/.p2/auth/v1/session", "POST", 201)),
        1.0
    );
    assert_eq!(
        moved(&http_requests("/.p2/core/v1/challenge", "GET", 200)),
        1.0
    );
    assert!(
        moved(&http_requests("unmatched", "GET", 404)) >= 1.0,
        "{gateway}"
    );
    assert_eq!(
        moved(&http_requests(
            "/.p2/core/v1/idcert/actor/{fid}",
            "GET",
            200
        )),
        1.0,
        "{gateway}"
    );
    assert!(
        !gateway.contains("alice@") && !gateway.contains("/no/such/route"),
        "raw paths must never become labels:\n{gateway}"
    );
    assert!(moved(&http_count("/.p2/auth/v1/session", "POST")) >= 1.0);
    assert!(
        value(
            gateway,
            "polyproto_http_request_duration_seconds_sum{route=\"/.p2/auth/v1/session\",method=\"POST\"}"
        ) > 0.0
    );
    assert!(has_series(gateway, "polyproto_http_requests_in_flight"));
    assert!(
        gateway.contains("# TYPE polyproto_http_request_duration_seconds histogram"),
        "{gateway}"
    );
    // Its caches (the token cache is off with several gateways: misses only when on).
    assert!(
        has_series(gateway, "polyproto_gateway_cache_hits_total")
            || has_series(gateway, "polyproto_gateway_cache_misses_total"),
        "{gateway}"
    );
    assert!(
        has_series(gateway, "polyproto_gateway_cache_weighted_bytes"),
        "{gateway}"
    );

    // The services: the RPCs the login used, by service, method and code.
    let moved_in = |now: &str, then: &str, series: &str| value(now, series) - value(then, series);
    assert_eq!(
        moved_in(
            identity,
            identity0,
            &grpc_requests("identity", "RegisterActor", "OK")
        ),
        1.0,
        "{identity}"
    );
    assert_eq!(
        moved_in(
            identity,
            identity0,
            &grpc_requests("identity", "IssueLoginCert", "OK")
        ),
        1.0,
        "{identity}"
    );
    assert_eq!(
        moved_in(session, session0, &grpc_requests("session", "Login", "OK")),
        1.0,
        "{session}"
    );
    assert!(
        moved_in(
            session,
            session0,
            &grpc_requests("session", "Authenticate", "OK")
        ) >= 1.0,
        "{session}"
    );
    assert_eq!(
        moved_in(
            session,
            session0,
            &grpc_requests("session", "CreateChallenge", "OK")
        ),
        1.0,
        "{session}"
    );
    assert!(moved_in(session, session0, &grpc_count("session", "Login")) >= 1.0);
    assert!(
        moved_in(
            identity,
            identity0,
            &grpc_count("identity", "IssueLoginCert")
        ) >= 1.0
    );
    assert!(session.contains("# TYPE polyproto_grpc_server_request_duration_seconds histogram"));
    // Health checks (the gateway's /readyz) are counted too, under their own service.
    assert!(
        value(
            identity,
            r#"polyproto_grpc_server_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"}"#
        ) >= 1.0,
        "{identity}"
    );
    // Nothing in flight but the gateway's invalidation feed (a stream open all along).
    for (text, service, in_flight) in [
        (identity, "identity", 0),
        (session, "session", 0),
        (discovery, "discovery", 0),
        (events, "events", 1),
    ] {
        assert!(
            text.contains(&format!(
                "polyproto_grpc_server_requests_in_flight{{service=\"polyproto.{service}.v1.{}\"}} {in_flight}",
                capitalised(service)
            )),
            "{text}"
        );
    }

    // Pools where there is a database, none elsewhere.
    for (text, pool) in [
        (identity, "identity"),
        (session, "session"),
        (discovery, "discovery"),
    ] {
        for gauge in [
            "polyproto_db_pool_connections",
            "polyproto_db_pool_idle_connections",
        ] {
            assert!(
                text.contains(&format!("{gauge}{{pool=\"{pool}\"}} ")),
                "{gauge} of {pool}:\n{text}"
            );
        }
        assert_eq!(
            value(
                text,
                &format!("polyproto_db_pool_max_connections{{pool=\"{pool}\"}}")
            ),
            f64::from(p2_runtime::storage::SQLITE_POOL)
        );
    }
    assert!(!has_series(events, "polyproto_db_pool_connections"));
    // The event log's counters and streams, sampled at the scrape.
    for series in [
        "polyproto_events_subscribers",
        "polyproto_events_invalidation_feeds",
        "polyproto_events_total{kind=\"appended\"}",
    ] {
        assert!(has_series(events, series), "{series}:\n{events}");
        assert!(!has_series(identity, series));
    }
    assert!(!has_series(gateway, "polyproto_db_pool_connections"));
    assert!(has_series(
        gateway,
        "polyproto_gateway_invalidation_feed_live"
    ));
    assert!(!has_series(
        events,
        "polyproto_gateway_invalidation_feed_live"
    ));
    // Each process shows its own calls only.
    assert!(!has_series(gateway, "polyproto_grpc_server_requests_total"));
    assert!(!has_series(identity, "polyproto_http_requests_total"));

    // The listener serves GET /metrics and nothing else.
    let metrics = stack.metrics_url(Component::Gateway, 0);
    let base = metrics.trim_end_matches("/metrics");
    for response in [
        stack.http().get(format!("{base}/")).send().await.unwrap(),
        stack
            .http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap(),
        stack.http().post(&metrics).send().await.unwrap(),
    ] {
        crate::helpers::expect_problem(response, 404).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_every_components_series_on_one_listener() {
    p2_runtime::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let loopback = ([127, 0, 0, 1], 0).into();
    let mut config =
        polyproto_server::stack::StackConfig::embedded(loopback, "up-metrics.test", dir.path());
    config.metrics_listen = Some(loopback);
    let stack = polyproto_server::stack::start(config).await.unwrap();
    let metrics = format!(
        "http://{}/metrics",
        stack.metrics_addr.expect("asked for a metrics listener")
    );
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.addr);
    let before = http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    drive(&http, &base, "up-metrics.test").await;
    let text = http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_build_info(&text, "up");
    // One process, one registry: other in-process stacks of this test binary count here too,
    // so only growth is asserted.
    for series in [
        http_requests("/.p2/auth/v1/register", "POST", 201),
        http_requests("/.p2/auth/v1/session", "POST", 201),
        grpc_requests("identity", "RegisterActor", "OK"),
        grpc_requests("identity", "IssueLoginCert", "OK"),
        grpc_requests("session", "Login", "OK"),
        grpc_requests("session", "CreateChallenge", "OK"),
    ] {
        assert!(
            value(&text, &series) >= value(&before, &series) + 1.0,
            "{series} did not grow:\n{text}"
        );
    }
    for pool in ["identity", "session", "discovery"] {
        assert!(
            text.contains(&format!(
                "polyproto_db_pool_connections{{pool=\"{pool}\"}} "
            )),
            "{pool}:\n{text}"
        );
    }
    assert!(
        value(
            &text,
            r#"polyproto_gateway_cache_hits_total{cache="token"}"#
        ) + value(
            &text,
            r#"polyproto_gateway_cache_misses_total{cache="token"}"#
        ) >= 1.0,
        "the token cache is on in up:\n{text}"
    );
    stack.stop().await.unwrap();
}

/// The in-process stack binds no metrics port unless asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_stack_binds_no_metrics_port_by_default() {
    let stack = crate::helpers::spawn_stack(crate::helpers::Backend::Sqlite).await;
    assert_eq!(stack.stack.as_ref().unwrap().metrics_addr, None);
}

/// `polyproto up` prints its metrics URL on the line after its main URL line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_its_metrics_url_after_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--domain",
            "up-cli.test",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("P2_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().unwrap();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        (
            lines.next().unwrap().unwrap(),
            lines.next().unwrap().unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    let metrics = second
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("unexpected second line {second:?}"));
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{metrics}"
    );
    let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    assert_build_info(&text, "up");
    assert!(has_series(&text, "polyproto_db_pool_connections"), "{text}");
}

/// A metrics port that is taken stops start-up with one clear line.
#[test]
fn a_taken_metrics_port_stops_start_up_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("identity.db").display());
    let output = Command::new(BIN)
        .args([
            "identity",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--key-encryption-key",
            crate::split::SPLIT_KEK,
            "--metrics-listen",
            &addr,
        ])
        .env("P2_INTERNAL_KEY", "7a".repeat(32))
        .env("P2_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("cannot listen on {addr} for metrics")),
        "{stderr}"
    );
    // And `off` is accepted, a bad value is refused by the parser.
    let output = Command::new(BIN)
        .args(["identity", "--metrics-listen", "nowhere"])
        .env("P2_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("neither host:port"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(taken);
}

/// Kills the child when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
