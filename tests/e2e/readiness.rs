//! Readiness that means something: a service reports NOT_SERVING while its Redis or database
//! does not answer, and SERVING again on its own when they return. The dependency is reached
//! through a TCP proxy the test can cut, in front of the real Redis and PostgreSQL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A TCP forwarder to `target` on a fixed local port; dropping or cutting it closes the
/// listener and every forwarded connection.
struct Proxy {
    port: u16,
    target: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(port: u16, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port,
            target,
            tasks,
        }
    }

    /// Closes the listener and every connection (the dependency "stops answering").
    async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Listens again on the same port.
    async fn restore(&mut self) {
        *self = Self::start(self.port, self.target).await;
    }
}

fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split(['/', '?']).next().unwrap();
    host_port.parse().unwrap()
}

async fn status_of(addr: SocketAddr, service: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

async fn wait_for(addr: SocketAddr, service: &str, wanted: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if status_of(addr, service).await == Some(wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "{service} never became {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_serving_while_its_redis_is_gone_and_recovers_by_itself() {
    let redis = addr_of(&crate::helpers::redis_url());
    let mut proxy = Proxy::start(0, redis).await;
    let config = p2_events::EventsConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        redis_url: Some(format!("redis://127.0.0.1:{}/", proxy.port)),
        options: p2_events::EventsOptions::default(),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &p2_runtime::internal::InternalKey::generate(),
        ),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(p2_events::serve(config, listener, stop.clone()));
    let name = "polyproto.events.v1.Events";
    wait_for(addr, name, SERVING, "serving").await;
    proxy.cut().await;
    wait_for(addr, name, NOT_SERVING, "not serving after Redis went away").await;
    assert_eq!(
        status_of(addr, "").await,
        Some(NOT_SERVING),
        "the overall status too"
    );
    proxy.restore().await;
    wait_for(addr, name, SERVING, "serving again after Redis returned").await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_serving_while_its_database_is_gone_and_recovers_by_itself() {
    let url = crate::helpers::fresh_postgres_database("readiness").await;
    let mut proxy = Proxy::start(0, addr_of(&url)).await;
    let via_proxy = {
        let (scheme_user, rest) = url.rsplit_once('@').unwrap();
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_user}@127.0.0.1:{}/{path}", proxy.port)
    };
    let config = p2_discovery::DiscoveryConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url: via_proxy,
        pool: p2_runtime::storage::PoolConfig::default(),
        identity_url: "http://127.0.0.1:1".into(),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(
            &p2_runtime::internal::InternalKey::generate(),
        ),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(p2_discovery::serve(config, listener, stop.clone()));
    let name = "polyproto.discovery.v1.Discovery";
    wait_for(addr, name, SERVING, "serving").await;
    proxy.cut().await;
    wait_for(
        addr,
        name,
        NOT_SERVING,
        "not serving after the database went away",
    )
    .await;
    proxy.restore().await;
    wait_for(
        addr,
        name,
        SERVING,
        "serving again after the database returned",
    )
    .await;
    stop.cancel();
}
