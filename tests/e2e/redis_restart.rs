//! Redis restarted mid-test loses no acknowledged event, and clients resume. The test runs its
//! own redis-server (append-only file, fsync at every write, no snapshots: what Redis
//! acknowledged survives a SIGKILL) under a split deployment whose every component uses it.
//! Events before the outage are delivered and recorded; Redis is killed; sessions are deleted
//! meanwhile (op 4 to the others, queued in the identity service's outbox, whose relay retries
//! while the events service cannot append); Redis comes back on the same port and directory.
//! Then the identified client gets every event once, in order — live on the socket it kept, or
//! after a resumable close through Resume — and resumes once more; a session without a socket
//! polls the same events from `GET /.p2/core/v1/events`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::gateway_resume::{
    Login, acknowledge, delete_session, expect_event, login, register, resume, seq, without_s,
};
use crate::gateway_ws::{WAIT, Ws, connect, heartbeat, identify, send};
use crate::split::{Component, SplitStack, free_port};

/// Close codes after which a client may Resume (spec 3.2.4).
const RESUMABLE: [u16; 5] = [4000, 4001, 4002, 4007, 4009];

/// The redis-server binary: on `PATH`, else `/usr/bin/redis-server`.
fn redis_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    let binary = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    assert!(
        binary.is_file(),
        "redis-server is not installed (neither on PATH nor at /usr/bin/redis-server): this \
         test runs a Redis of its own; install it (scripts/test.sh does: apt-get install \
         redis-server) and run the tests through scripts/test.sh"
    );
    binary
}

/// A redis-server of the test's own on a fixed port and directory; killed when dropped.
struct OwnRedis {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl OwnRedis {
    async fn start() -> Self {
        let mut redis = Self {
            binary: redis_server_binary(),
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            starts: 0,
        };
        redis.spawn().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let log = self.dir.path().join(format!("redis-{n}.log"));
                format!(
                    "--- redis-server start {n} ---\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Starts redis-server (append-only, fsync always, no RDB snapshots) and waits for PONG.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let start = Instant::now();
        while !ping(self.port).await {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited with {status}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING within 10 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (no shutdown save: only what the append-only file holds survives).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis answers PING on `port`.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(&answer == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .is_ok_and(|answer| answer.is_ok_and(|pong| pong))
}

/// What a client reads next: a text message, or the close code.
enum Next {
    Text(Value),
    Closed(Option<u16>),
}

async fn next(ws: &mut Ws) -> Next {
    loop {
        let message = tokio::time::timeout(WAIT, futures::StreamExt::next(ws))
            .await
            .expect("the gateway sent nothing in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Next::Text(serde_json::from_str(text.as_str()).unwrap());
            }
            Some(Ok(Message::Close(frame))) => {
                return Next::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Next::Closed(None),
        }
    }
}

/// The Publish calls the events service answered with an error (Redis down) so far.
async fn failed_publishes(stack: &SplitStack) -> f64 {
    let text = stack.scrape(Component::Events, 0).await;
    text.lines()
        .filter(|line| {
            line.starts_with("polyproto_grpc_server_requests_total")
                && line.contains(r#"method="Publish""#)
                && !line.contains(r#"code="OK""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// The services that use Redis (the gateway's rate limiter fails open without it).
const ON_REDIS: [Component; 3] = [Component::Identity, Component::Session, Component::Events];

/// The overall gRPC health status of the first replica of `component`, if it answers.
async fn health(stack: &SplitStack, component: Component) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(stack.grpc_url(component, 0))
        .unwrap()
        .connect()
        .await
        .ok()?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Waits until every service on Redis reports `wanted` (each probes Redis every 2 s).
async fn wait_health(stack: &SplitStack, wanted: i32, what: &str) {
    for component in ON_REDIS {
        tokio::time::timeout(Duration::from_secs(10), async {
            while health(stack, component).await != Some(wanted) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not report {what} within 10 s:\n{}",
                component.name(),
                stack.logs()
            )
        });
    }
}

/// `GET /.p2/core/v1/events` for `session` at `base`.
async fn poll(http: &reqwest::Client, base: &str, session: &Login) -> Vec<Value> {
    let response = http
        .get(format!("{base}/.p2/core/v1/events"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-p2-events-truncated"], "false");
    response.json().await.unwrap()
}

fn is_event(message: &Value) -> bool {
    matches!(message["op"].as_str(), Some("3" | "4" | "6"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_event_and_clients_resume() {
    let mut redis = OwnRedis::start().await;
    let stack = SplitStack::builder().redis(&redis.url()).start().await;
    let (http, domain, base) = (stack.http(), stack.domain(), stack.base());

    register(http, &base, "alice").await;
    // A session that never connects: it polls at the end.
    let poller = login(http, &base, domain, "alice", "poller").await;
    // Its OpenSession and op 3 delivered before s1 exists: else s1, opened by its Identify
    // before the relay caught up, would receive that op 3 as well.
    tokio::time::timeout(WAIT, async {
        while stack
            .metric_sum(
                Component::Session,
                0,
                "polyproto_outbox_events_total",
                &["outcome=\"delivered\""],
            )
            .await
            < 2.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the session outbox delivered the poller's login");
    let s1 = login(http, &base, domain, "alice", "s1").await;
    let mut ws = connect(&base).await;
    identify(&mut ws, &s1.token).await;

    // Before the outage: two logins (op 3), delivered and recorded.
    let s2 = login(http, &base, domain, "alice", "s2").await;
    expect_event(&mut ws, "3", "cert", &s2.cert).await;
    let s3 = login(http, &base, domain, "alice", "s3").await;
    let before = expect_event(&mut ws, "3", "cert", &s3.cert).await;
    let mut last = seq(&before);
    acknowledge(&stack, &mut ws, last).await;
    let failed_before = failed_publishes(&stack).await;

    // The outage: both deletions succeed; their op 4 wait in the identity outbox.
    redis.kill();
    assert!(!ping(redis.port).await, "Redis still answers after SIGKILL");
    let outage = Instant::now();
    // Every service on Redis notices: its readiness probe found Redis gone.
    wait_health(&stack, NOT_SERVING, "NOT_SERVING while Redis is down").await;
    delete_session(http, &base, &s2.token).await;
    delete_session(http, &base, &s3.token).await;
    // The relay tried: the events service refused a Publish while Redis was away.
    tokio::time::timeout(WAIT, async {
        while failed_publishes(&stack).await <= failed_before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Publish failed while Redis was down:\n{}", stack.logs()));
    // The socket is still served meanwhile (a heartbeat is answered) — unless the gateway
    // closed it, resumably.
    send(&mut ws, heartbeat(0, last, &[])).await;
    let mut closed_during_outage = None;
    match next(&mut ws).await {
        Next::Text(ack) => {
            assert_eq!(ack["op"], "7", "{ack}");
            last = seq(&ack);
        }
        Next::Closed(code) => closed_during_outage = Some(code),
    }

    redis.spawn().await;
    let down_for = outage.elapsed();
    // The deployment is ready again once every service has reached the restarted Redis
    // (their connections to the old process are gone only once they used them).
    wait_health(&stack, SERVING, "SERVING again after Redis returned").await;

    // Every event published during the outage arrives once, in order: live, or through a
    // Resume after a resumable close.
    let expected = [("4", "idCertPem", &s2.cert), ("4", "idCertPem", &s3.cert)];
    let mut received: Vec<Value> = Vec::new();
    let mut resumes = 0;
    let mut pending_close = closed_during_outage;
    while received.len() < expected.len() {
        let message = match pending_close.take() {
            Some(code) => Next::Closed(code),
            None => next(&mut ws).await,
        };
        match message {
            Next::Text(message) => {
                last = seq(&message);
                if is_event(&message) {
                    received.push(without_s(&message));
                }
            }
            Next::Closed(code) => {
                assert!(
                    code.is_some_and(|c| RESUMABLE.contains(&c)),
                    "the socket closed with {code:?}, not a resumable code:\n{}",
                    stack.logs()
                );
                resumes += 1;
                assert!(resumes <= 3, "closed again and again:\n{}", stack.logs());
                let (again, resumed) = resume(&base, &s1.token, last).await;
                ws = again;
                last = 1;
                received.extend(resumed["d"].as_array().unwrap().iter().cloned());
            }
        }
    }
    assert_eq!(received.len(), expected.len(), "{received:?}");
    for (event, (op, field, value)) in received.iter().zip(expected) {
        assert_eq!(event["op"], op, "{received:?}");
        assert_eq!(event["d"][field].as_str(), Some(value.as_str()), "{event}");
    }
    // Nothing twice: the next event is one published after everything above.
    let s4 = login(http, &base, domain, "alice", "s4").await;
    let after = expect_event(&mut ws, "3", "cert", &s4.cert).await;

    // And the client resumes once more (deliveries recorded in the restarted Redis).
    acknowledge(&stack, &mut ws, seq(&after)).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let s5 = login(http, &base, domain, "alice", "s5").await;
    // The poller's log has it once the session service's outbox delivered it (no socket to
    // watch: polled until it shows, the cursor keeping what earlier polls returned).
    let mut polled = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            polled.extend(poll(http, &base, &poller).await);
            if polled
                .last()
                .is_some_and(|e| e["d"]["cert"] == s5.cert.as_str())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the poller never got s5's op 3: {polled:?}"));
    let (_ws, resumed) = resume(&base, &s1.token, seq(&after)).await;
    assert_eq!(
        resumed["d"],
        json!([{"n": "core", "op": "3", "d": {"cert": s5.cert}}]),
        "{resumed}"
    );

    // The session without a socket sees the same: before, during and after the outage.
    let op3 = |login: &Login| json!({"n": "core", "op": "3", "d": {"cert": login.cert}});
    let mut expected_polled = vec![op3(&s1), op3(&s2), op3(&s3)];
    expected_polled.extend(received.iter().cloned());
    expected_polled.extend([op3(&s4), op3(&s5)]);
    assert_eq!(polled, expected_polled, "GET /events of the poller");
    eprintln!(
        "redis down for {down_for:?}; socket closed during the outage: {closed_during_outage:?}; \
         resumes: {resumes}"
    );
}
