//! Client-side load balancing of internal gRPC calls over every replica of a service.
//!
//! An upstream setting (`--session-url` and the like) holds one URL or a comma-separated list.
//! A single URL whose host is an IP literal is one plain connection. Otherwise a task watches
//! the endpoints: a URL whose host is a name is re-resolved every [`resolve_interval`]
//! (`P2_UPSTREAM_RESOLVE_MS`, default 5 s) and every address it resolves to is a candidate;
//! with a Kubernetes headless Service (or Docker's DNS under `docker compose up --scale`) that
//! is every ready pod. Every [`HEALTH_INTERVAL`] each candidate is asked for its gRPC health,
//! and only those answering SERVING get calls, spread by tower's power-of-two-choices balancer
//! (fewest calls in flight of two random endpoints). So a new replica gets its share within one
//! resolution, and a replica that shuts down (NOT_SERVING during its grace period, 2 s by
//! default), loses its database, or dies stops getting calls within a second, before it stops
//! accepting them. When no candidate serves, all of them (or the URL itself, when nothing
//! resolves) stay endpoints: calls then fail at once with `UNAVAILABLE` and succeed again as
//! soon as one answers. The servers also close connections after [`MAX_CONNECTION_AGE`], so a
//! client that balances by other means (a ClusterIP Service, an L4 proxy) still moves.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// Default interval between two resolutions of an upstream host name, in milliseconds.
pub const DEFAULT_RESOLVE_MS: u64 = 5_000;

/// How long an internal gRPC server keeps one client connection before asking the client to
/// reconnect (HTTP/2 GOAWAY after the calls in flight). Five minutes: rare enough to cost
/// nothing, often enough that connections that do not go through [`channel`]'s balancing
/// spread over new replicas.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// How long a health probe of one address may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Most endpoints one upstream setting may expand to (addresses of every URL together); more
/// are ignored (logged once per resolution).
pub const MAX_ENDPOINTS: usize = 256;

static RESOLVE_MS: AtomicU64 = AtomicU64::new(DEFAULT_RESOLVE_MS);

/// How the process reaches the replicas of the services it calls.
#[derive(Debug, Clone, Args)]
pub struct UpstreamConfig {
    /// Milliseconds between two DNS resolutions of an upstream service's host name (at least
    /// 100); every address it resolves to gets calls. See README "Scaling".
    #[arg(
        long = "upstream-resolve-ms",
        env = "P2_UPSTREAM_RESOLVE_MS",
        default_value_t = DEFAULT_RESOLVE_MS,
        value_parser = clap::value_parser!(u64).range(100..),
        global = true
    )]
    pub upstream_resolve_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            upstream_resolve_ms: DEFAULT_RESOLVE_MS,
        }
    }
}

impl UpstreamConfig {
    /// Makes this the setting of every channel opened afterwards in this process (one process,
    /// one DNS view: the setting is process-wide like the log filter).
    pub fn apply(&self) {
        RESOLVE_MS.store(self.upstream_resolve_ms.max(100), Ordering::Relaxed);
    }
}

/// The process-wide interval between two resolutions of an upstream host name.
pub fn resolve_interval() -> Duration {
    Duration::from_millis(RESOLVE_MS.load(Ordering::Relaxed))
}

/// One URL of an upstream setting.
#[derive(Debug, Clone)]
struct Target {
    /// The URL as configured (used as the endpoint while nothing better is known).
    url: http::Uri,
    /// Host name to resolve, or `None` for an IP literal.
    name: Option<(String, u16)>,
}

/// Where an endpoint came from: a resolved address of URL number `.0`, or URL `.0` itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(usize, SocketAddr),
    Url(usize),
}

/// Parses an upstream setting: one URL or a comma-separated list (`http://host:port`).
fn targets(setting: &str) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for part in setting.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url: http::Uri = part
            .parse()
            .with_context(|| format!("invalid service URL {part:?}"))?;
        let host = url
            .host()
            .with_context(|| format!("service URL {part:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(match url.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(_) => None,
            Err(_) => Some((host.to_owned(), port)),
        };
        out.push(Target { url, name });
    }
    anyhow::ensure!(!out.is_empty(), "empty service URL {setting:?}");
    Ok(out)
}

/// A lazily connecting channel over every endpoint of `setting`, each configured by
/// `configure` (timeouts and the like). Must be called inside a Tokio runtime: the resolver
/// runs as a task that ends when the channel is dropped.
pub fn channel(
    setting: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
) -> anyhow::Result<Channel> {
    channel_with(setting, configure, Arc::new(system_resolver))
}

/// Resolves a host name and port into addresses.
type Resolver = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

fn system_resolver(
    host: String,
    port: u16,
) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
    Box::pin(async move {
        Ok(tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect())
    })
}

fn channel_with(
    setting: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    resolver: Resolver,
) -> anyhow::Result<Channel> {
    let targets = targets(setting)?;
    let endpoint_of = move |uri: http::Uri| configure(Endpoint::from(uri));
    // One IP literal: a plain channel, nothing to resolve or balance.
    if let [target] = targets.as_slice()
        && target.name.is_none()
    {
        return Ok(endpoint_of(target.url.clone()).connect_lazy());
    }
    let (channel, changes) = Channel::balance_channel::<Key>(MAX_ENDPOINTS + targets.len());
    // Every URL is an endpoint until its resolution says better: the first calls never wait.
    for (i, target) in targets.iter().enumerate() {
        let key = match target.name {
            Some(_) => Key::Url(i),
            None => Key::Address(i, literal_address(&target.url)?),
        };
        changes
            .try_send(Change::Insert(key, endpoint_of(target.url.clone())))
            .context("internal: the balancer's change queue is full")?;
    }
    tokio::spawn(resolve_loop(targets, changes, endpoint_of, resolver));
    Ok(channel)
}

fn literal_address(url: &http::Uri) -> anyhow::Result<SocketAddr> {
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().context("not an IP address")?;
    Ok(SocketAddr::new(ip, url.port_u16().unwrap_or(80)))
}

/// The endpoint URL for one resolved address of `url`: same scheme and path, the address as
/// authority (the original host name stays the `:authority` via `origin`).
fn address_url(url: &http::Uri, address: SocketAddr) -> anyhow::Result<http::Uri> {
    let scheme = url.scheme_str().unwrap_or("http");
    format!("{scheme}://{address}")
        .parse()
        .context("internal: resolved address is not a URL")
}

/// How often every known address is asked for its gRPC health (and dropped from the balancer
/// while it does not answer SERVING). Shorter than the services' default shutdown grace
/// (2 s), so a replica that starts shutting down stops getting calls before it stops
/// accepting them.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(1000);

/// Health clients of the addresses being watched, one lazy connection each.
type HealthClients =
    std::collections::HashMap<SocketAddr, tonic_health::pb::health_client::HealthClient<Channel>>;

/// Whether `address` answers SERVING for the whole server (`""`) within [`PROBE_TIMEOUT`].
async fn serving(mut client: tonic_health::pb::health_client::HealthClient<Channel>) -> bool {
    let check = client.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, check).await,
        Ok(Ok(response)) if response.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

async fn resolve_loop<F>(
    targets: Vec<Target>,
    changes: tokio::sync::mpsc::Sender<Change<Key, Endpoint>>,
    endpoint_of: F,
    resolver: Resolver,
) where
    F: Fn(http::Uri) -> Endpoint + Send + Sync + 'static,
{
    // What the balancer holds now: every URL as configured (see `channel_with`).
    let mut current: HashSet<Key> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| match t.name {
            Some(_) => Key::Url(i),
            None => literal_address(&t.url)
                .map(|a| Key::Address(i, a))
                .unwrap_or(Key::Url(i)),
        })
        .collect();
    // The addresses of every target, from the last resolution.
    let mut addresses: Vec<Vec<SocketAddr>> = vec![Vec::new(); targets.len()];
    let mut clients = HealthClients::new();
    let mut last_resolution: Option<tokio::time::Instant> = None;
    loop {
        if last_resolution.is_none_or(|at| at.elapsed() >= resolve_interval()) {
            last_resolution = Some(tokio::time::Instant::now());
            let mut budget = MAX_ENDPOINTS;
            for (i, target) in targets.iter().enumerate() {
                let mut found = match &target.name {
                    None => literal_address(&target.url).into_iter().collect(),
                    Some((host, port)) => match resolver(host.clone(), *port).await {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::debug!(%host, %error, "upstream name does not resolve");
                            Vec::new()
                        }
                    },
                };
                found.sort();
                found.dedup();
                found.truncate(budget);
                budget = budget.saturating_sub(found.len());
                addresses[i] = found;
            }
            let known: HashSet<SocketAddr> = addresses.iter().flatten().copied().collect();
            clients.retain(|address, _| known.contains(address));
            for address in known {
                if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(address)
                    && let Ok(uri) = format!("http://{address}").parse::<http::Uri>()
                {
                    let channel = Endpoint::from(uri)
                        .connect_timeout(PROBE_TIMEOUT)
                        .timeout(PROBE_TIMEOUT)
                        .connect_lazy();
                    slot.insert(tonic_health::pb::health_client::HealthClient::new(channel));
                }
            }
        }
        let probes = clients.iter().map(|(address, client)| {
            let (address, client) = (*address, client.clone());
            async move { (address, serving(client).await) }
        });
        let healthy: HashSet<SocketAddr> = join_all(probes)
            .await
            .into_iter()
            .filter_map(|(address, ok)| ok.then_some(address))
            .collect();
        let mut wanted: HashSet<Key> = HashSet::new();
        for (i, found) in addresses.iter().enumerate() {
            wanted.extend(
                found
                    .iter()
                    .filter(|a| healthy.contains(a))
                    .map(|a| Key::Address(i, *a)),
            );
        }
        if wanted.is_empty() {
            // Nothing serves: keep every address (or the URL itself where nothing resolved),
            // so calls fail fast with UNAVAILABLE and recover the moment one answers.
            for (i, found) in addresses.iter().enumerate() {
                if found.is_empty() {
                    wanted.insert(Key::Url(i));
                } else {
                    wanted.extend(found.iter().map(|a| Key::Address(i, *a)));
                }
            }
        }
        for key in wanted.difference(&current) {
            let endpoint = match key {
                Key::Url(i) => endpoint_of(targets[*i].url.clone()),
                Key::Address(i, address) => match address_url(&targets[*i].url, *address) {
                    Ok(uri) => endpoint_of(uri).origin(targets[*i].url.clone()),
                    Err(_) => continue,
                },
            };
            if changes
                .send(Change::Insert(key.clone(), endpoint))
                .await
                .is_err()
            {
                return; // The channel is gone.
            }
        }
        for key in current.difference(&wanted) {
            if changes.send(Change::Remove(key.clone())).await.is_err() {
                return;
            }
        }
        if current != wanted {
            let serving: Vec<String> = wanted
                .iter()
                .map(|key| match key {
                    Key::Address(_, address) => address.to_string(),
                    Key::Url(i) => targets[*i].url.to_string(),
                })
                .collect();
            tracing::info!(endpoints = ?serving, "upstream endpoints changed");
        }
        current = wanted;
        tokio::select! {
            () = changes.closed() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL.min(resolve_interval())) => {}
        }
    }
}

/// Runs the probes concurrently (a handful of addresses; no extra crate for it).
async fn join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        if let Ok(value) = result {
            out.push(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_into_named_and_literal_targets() {
        let t = targets("http://127.0.0.1:1, http://session:50052,http://[::1]:7").unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[0].name.is_none());
        assert_eq!(t[1].name, Some(("session".to_owned(), 50052)));
        assert!(t[2].name.is_none());
        assert_eq!(
            literal_address(&t[2].url).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert!(targets("").is_err());
        assert!(targets(" , ").is_err());
        assert!(targets("not a url at all").is_err());
    }

    /// A health server on a free port that counts the calls it serves.
    async fn counting_server() -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        tonic_health::server::HealthReporter,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (count, reporter) = counting_server_on(listener);
        (addr, count, reporter)
    }

    /// A health server on `listener` that counts the calls it serves.
    fn counting_server_on(
        listener: tokio::net::TcpListener,
    ) -> (
        Arc<std::sync::atomic::AtomicUsize>,
        tonic_health::server::HealthReporter,
    ) {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (reporter, health) = tonic_health::server::health_reporter();
        let counter = count.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tower::util::MapRequestLayer::new(
                    move |request: http::Request<tonic::body::Body>| {
                        // Only the test's own calls, not the balancer's health probes.
                        if request.headers().contains_key("x-test-routed") {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        request
                    },
                ))
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (count, reporter)
    }

    /// A call the balancer routes (marked, so the servers count it and not the probes).
    async fn call(channel: &Channel) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request.metadata_mut().insert(
            "x-test-routed",
            tonic::metadata::MetadataValue::from_static("1"),
        );
        tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(request)
            .await
            .map(|_| ())
    }

    /// A name that resolves to two replicas spreads calls over both; when DNS drops one, it
    /// gets no more calls after one interval; an address that refuses connections is never
    /// used while another answers; a name that resolves to nothing leaves the URL itself as
    /// the endpoint (calls fail with UNAVAILABLE instead of hanging).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resolved_name_spreads_calls_over_every_replica_and_follows_dns() {
        UpstreamConfig {
            upstream_resolve_ms: 100,
        }
        .apply();
        let (a, count_a, reporter_a) = counting_server().await;
        let (b, count_b, _reporter_b) = counting_server().await;
        // A closed port: resolvable, but nothing listens.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let answer = Arc::new(std::sync::Mutex::new(vec![a, b, dead]));
        let resolver: Resolver = {
            let answer = answer.clone();
            Arc::new(move |host: String, _port: u16| {
                assert_eq!(host, "session.test");
                let addresses = answer.lock().unwrap().clone();
                Box::pin(async move { Ok(addresses) })
            })
        };
        let channel = channel_with(
            "http://session.test:50052",
            |e| e.timeout(Duration::from_secs(2)),
            resolver,
        )
        .unwrap();
        // The first resolution replaces the URL placeholder with the two live addresses.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for _ in 0..200 {
            call(&channel)
                .await
                .expect("every call reaches a live replica");
        }
        let (na, nb) = (
            count_a.load(Ordering::SeqCst),
            count_b.load(Ordering::SeqCst),
        );
        assert_eq!(na + nb, 200, "calls served: {na} + {nb}");
        assert!(na >= 40 && nb >= 40, "both replicas serve: {na} and {nb}");

        // DNS drops A: after an interval (plus the probe), A gets nothing more.
        *answer.lock().unwrap() = vec![b];
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = count_a.load(Ordering::SeqCst);
        for _ in 0..50 {
            call(&channel).await.unwrap();
        }
        assert_eq!(count_a.load(Ordering::SeqCst), before, "A was removed");

        // A replica that reports NOT_SERVING (shutting down, database gone) gets no calls
        // once probed; SERVING again, it gets calls again.
        *answer.lock().unwrap() = vec![a, b];
        reporter_a
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = count_a.load(Ordering::SeqCst);
        for _ in 0..50 {
            call(&channel).await.unwrap();
        }
        assert_eq!(count_a.load(Ordering::SeqCst), before, "A is not serving");
        reporter_a
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = count_a.load(Ordering::SeqCst);
        for _ in 0..100 {
            call(&channel).await.unwrap();
        }
        assert!(count_a.load(Ordering::SeqCst) > before, "A serves again");

        // Nothing resolves: the URL itself is the endpoint; calls fail, they do not hang.
        *answer.lock().unwrap() = vec![];
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failed = tokio::time::timeout(Duration::from_secs(10), call(&channel))
            .await
            .expect("a call with no endpoint must not hang");
        assert!(failed.is_err(), "session.test does not exist");
    }

    /// A replica that starts after the client (a rolling update, a slow pod) joins once it
    /// answers its health probe; a listed address nobody serves yet is no reason to fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_starts_later_joins_the_balancer() {
        let (a, count_a, _reporter_a) = counting_server().await;
        let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = late.local_addr().unwrap();
        drop(late);
        let channel = channel(&format!("http://{a},http://{b}"), |e| {
            e.timeout(Duration::from_secs(2))
        })
        .unwrap();
        // B is absent: after a probe every call goes to A and succeeds.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for _ in 0..20 {
            call(&channel).await.expect("A serves while B is absent");
        }
        assert_eq!(count_a.load(Ordering::SeqCst), 20);
        // B starts on its address; within a probe or two it gets calls.
        let listener = tokio::net::TcpListener::bind(b).await.unwrap();
        let (count_b, _reporter_b) = counting_server_on(listener);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for _ in 0..100 {
            call(&channel).await.unwrap();
        }
        assert!(count_b.load(Ordering::SeqCst) > 0, "B joined");
    }
}
