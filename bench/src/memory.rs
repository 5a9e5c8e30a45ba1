//! Gateway memory under distinct public reads: the process's resident memory (`VmRSS`) before
//! and after a series of public reads that each make a new cache key
//! (`GET idcert/actor/{fid}?timestamp=<t>`, every `t` distinct and inside the cert's validity,
//! so every answer is the actor's one cert and is cached), against the public read cache's
//! byte budget.
//!
//! The reads go through a second gateway that the bench serves itself (`p2_gateway::serve`,
//! the stack's gateway options with a smaller budget and a long TTL) in front of the stack's
//! services: `polyproto_server::stack::Stack` does not expose its gateway's state, and this
//! one's cache can be read (`AppState::cache_weighted_bytes`). The long TTL makes the byte
//! budget, not expiry, what bounds the cache during the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use p2_runtime::shutdown::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Default byte budget of the measured gateway's public read cache: 8 MiB (the gateway's own
/// default is [`p2_gateway::cache::DEFAULT_CACHE_MAX_BYTES`], 32 MiB).
pub const DEFAULT_BUDGET_BYTES: u64 = 8 * MIB;
/// Target: RSS growth at most the budget plus this (allocator slack, connections, moka's own
/// structures beyond the weighed overhead).
pub const SLACK_BYTES: u64 = 8 * MIB;
/// Entry lifetime of the measured gateway's cache (`--public-cache-ms`): longer than the run,
/// so entries leave only by the byte bound.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Reads of one fixed URL before the first RSS figure (connections, buffers, code paths).
const WARMUP_READS: u64 = 200;

const MIB: u64 = 1024 * 1024;

/// What the memory measurement found.
#[derive(Debug, Clone)]
pub struct MemoryCheck {
    /// Distinct reads made (each answered 200 with one cert).
    pub reads: u64,
    /// Reads in flight at a time.
    pub concurrency: usize,
    /// Time the distinct reads took.
    pub elapsed: Duration,
    /// Bytes of the answers' bodies (what was offered to the cache, without keys and overhead).
    pub body_bytes: u64,
    /// The cache's byte budget.
    pub budget: u64,
    /// `VmRSS` before the distinct reads, in bytes.
    pub rss_before: u64,
    /// `VmRSS` right after them, in bytes.
    pub rss_after: u64,
    /// The cache's weighed size after them (`AppState::cache_weighted_bytes`).
    pub weighed: u64,
    /// The cache's entries after them.
    pub entries: u64,
}

impl MemoryCheck {
    /// RSS growth in bytes (negative when it shrank).
    pub fn growth(&self) -> i128 {
        i128::from(self.rss_after) - i128::from(self.rss_before)
    }

    /// The most growth the target allows.
    pub fn allowed(&self) -> u64 {
        self.budget + SLACK_BYTES
    }

    /// Whether the growth stayed within [`MemoryCheck::allowed`].
    pub fn pass(&self) -> bool {
        self.growth() <= i128::from(self.allowed())
    }
}

/// `VmRSS` of this process, in bytes, from `/proc/self/status`.
pub fn vm_rss_bytes() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    parse_vm_rss(&status).context("no VmRSS line in /proc/self/status")
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// What the measurement needs of the running stack.
pub struct Target<'a> {
    /// The stack's gRPC addresses: identity, session, discovery, events.
    pub grpc_addrs: [SocketAddr; 4],
    /// The stack's internal key.
    pub internal_key: &'a p2_runtime::internal::InternalKey,
    /// The stack's gateway options (the budget and TTL are replaced).
    pub options: p2_gateway::GatewayOptions,
    /// The actor whose certs are read.
    pub fid: &'a str,
}

/// Serves a gateway with a `budget`-byte cache, makes `reads` distinct public reads through
/// it, `concurrency` at a time, and reads RSS and the cache's weight around them.
pub async fn measure(
    target: Target<'_>,
    reads: u64,
    concurrency: usize,
    budget: u64,
) -> anyhow::Result<MemoryCheck> {
    if reads == 0 || concurrency == 0 {
        bail!("--distinct-reads and --read-concurrency must be at least 1");
    }
    let mut options = target.options;
    options.cache_max_bytes = budget;
    options.public_cache_ms = u64::try_from(CACHE_TTL.as_millis()).unwrap_or(u64::MAX);
    let config = crate::setup::gateway_config(
        target.grpc_addrs,
        target.internal_key,
        options,
        polyproto_server::stack::DEFAULT_UP_TOKEN_CACHE_MS,
    );
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind the measured gateway")?;
    let addr = listener.local_addr()?;
    let state = p2_gateway::AppState::new(&config, addr)?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(p2_gateway::serve(state.clone(), listener, shutdown.clone()));
    let result = run_reads(&state, addr, target.fid, reads, concurrency, budget).await;
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => eprintln!("the measured gateway failed: {error:#}"),
        Ok(Err(error)) => eprintln!("the measured gateway's task failed: {error}"),
        Err(_) => eprintln!("the measured gateway did not stop within 10 s"),
    }
    result
}

async fn run_reads(
    state: &p2_gateway::AppState,
    addr: SocketAddr,
    fid: &str,
    reads: u64,
    concurrency: usize,
    budget: u64,
) -> anyhow::Result<MemoryCheck> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let base = Arc::<str>::from(format!("http://{addr}/.p2/core/v1/idcert/actor/{fid}"));

    // Warm-up: one cached key, every connection opened.
    let warm = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, warm) = (http.clone(), base.to_string(), warm.clone());
        tasks.spawn(async move {
            while warm.fetch_add(1, Ordering::Relaxed) < WARMUP_READS {
                read(&http, &url).await?;
            }
            anyhow::Ok(0)
        });
    }
    join_all(&mut tasks).await.context("warm-up")?;

    // Distinct timestamps from now on: inside the cert's validity (it was issued before now
    // and lasts days), so each answer lists the cert under a key of its own.
    let first = p2_runtime::unix_now() + 1;
    let rss_before = vm_rss_bytes()?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for _ in 0..concurrency {
        let (http, base, next) = (http.clone(), base.clone(), next.clone());
        tasks.spawn(async move {
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= reads {
                    break;
                }
                let url = format!("{base}?timestamp={}", first + i);
                bytes += read(&http, &url).await?;
            }
            anyhow::Ok(bytes)
        });
    }
    let body_bytes = join_all(&mut tasks).await?;
    let elapsed = start.elapsed();
    let rss_after = vm_rss_bytes()?;
    let weighed = state.cache_weighted_bytes();
    let entries = state.cache().entry_count();
    Ok(MemoryCheck {
        reads,
        concurrency,
        elapsed,
        body_bytes,
        budget,
        rss_before,
        rss_after,
        weighed,
        entries,
    })
}

/// Waits for every task; returns the sum of their results or the first error.
async fn join_all(tasks: &mut JoinSet<anyhow::Result<u64>>) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(bytes) => total += bytes,
            Err(error) => {
                first_error.get_or_insert(error);
                tasks.abort_all();
            }
        }
    }
    first_error.map_or(Ok(total), Err)
}

/// `GET url`: must answer 200 with a non-empty cert list; returns the body's length.
async fn read(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    if status != reqwest::StatusCode::OK {
        bail!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    if body.len() <= 2 {
        bail!(
            "GET {url} listed no cert: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(u64::try_from(body.len()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tp2-bench\nVmPeak:\t  99 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(51200 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert!(vm_rss_bytes().is_ok_and(|rss| rss > 0));
    }

    #[test]
    fn the_target_allows_the_budget_plus_the_slack() {
        let check = MemoryCheck {
            reads: 1,
            concurrency: 1,
            elapsed: Duration::ZERO,
            body_bytes: 0,
            budget: 8 * MIB,
            rss_before: 100 * MIB,
            rss_after: 100 * MIB + 16 * MIB,
            weighed: 0,
            entries: 0,
        };
        assert_eq!(check.growth(), i128::from(16 * MIB));
        assert!(check.pass());
        let over = MemoryCheck {
            rss_after: check.rss_after + 1,
            ..check.clone()
        };
        assert!(!over.pass());
        let shrank = MemoryCheck {
            rss_after: 90 * MIB,
            ..check
        };
        assert!(shrank.growth() < 0 && shrank.pass());
    }
}
