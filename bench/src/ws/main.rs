//! `p2-ws-bench`: the WebSocket gateway under load (issue 9, "Performance").
//!
//! Runs the deployment as separate processes of the release `polyproto` binary (Redis,
//! identity replicas, session, discovery, two events replicas, one or two gateways), logs in
//! as many sessions as the largest connection count, then for one gateway and for two
//! gateways sharing Redis: holds N identified WebSocket connections (N = 1 000, then 10 000),
//! reads each gateway process's resident memory (`VmRSS` in `/proc/<pid>/status`) before and
//! with the N idle connections, and publishes events at 1 000/s through `events.Publish`
//! spread over the connections, timing publish → deliver at the clients. Prints the figures
//! next to their targets (10 000 connections held, ≤ 32 KiB per idle connection, p99 < 50 ms)
//! without asserting them. See `bench/README.md`; run it through `scripts/bench.sh ws`.

mod clients;
mod procfs;
mod publish;
mod sessions;
mod stack;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::clients::{Clients, Opened};
use crate::publish::{Published, quantile};
use crate::sessions::{Session, SetupTimes};
use crate::stack::{Stack, StackOptions};

/// Domain of the benchmarked home server.
const DOMAIN: &str = "wsbench.test";
/// Target: connections one gateway holds.
const TARGET_CONNECTIONS: usize = 10_000;
/// Target: resident memory per idle connection, bytes.
const TARGET_BYTES_PER_CONNECTION: f64 = 32.0 * 1024.0;
/// Target: p99 publish → deliver latency, µs.
const TARGET_P99_US: u64 = 50_000;
/// Connections opened and closed on a fresh gateway before its "before" figure.
const WARMUP_CONNECTIONS: usize = 16;

/// WebSocket gateway load benchmark (see bench/README.md; run through `scripts/bench.sh ws`).
#[derive(Debug, Parser)]
#[command(name = "p2-ws-bench", version, about)]
struct Args {
    /// Connection counts to measure, ascending, comma-separated (each step adds connections
    /// to those already held).
    #[arg(long, short = 'n', value_delimiter = ',', default_value = "1000,10000")]
    connections: Vec<usize>,
    /// Gateway counts to measure (1: one gateway; 2: connections split over two gateways
    /// sharing Redis, each in front of its own events replica).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    gateways: Vec<usize>,
    /// Events published per second during each latency measurement.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of each measured publishing run.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Seconds of publishing before each measured run, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Seconds the connections stay idle before the memory figure is read.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Heartbeat interval the gateways announce (`P2_GATEWAY_HEARTBEAT_INTERVAL_MS`).
    #[arg(long, default_value_t = 45_000)]
    heartbeat_interval_ms: u32,
    /// Sessions per bench actor (each login also sends op 3 to the actor's other sessions).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    sessions_per_actor: u64,
    /// Identity processes: each hashes passwords on half the cores, so two use both.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    identity_replicas: u64,
    /// Registrations and logins in flight.
    #[arg(long, default_value_t = 8)]
    login_concurrency: usize,
    /// WebSocket handshakes (connect to Identify ACK) in flight.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Keep the SQLite files and the sessions here, and reuse them on the next run (skips
    /// most logins; the sessions' certs last 30 days).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The `polyproto` binary (default: next to this one, i.e. target/release/polyproto).
    #[arg(long)]
    polyproto: Option<PathBuf>,
    /// An existing Redis shared by every component (default: start `redis-server` on a free
    /// loopback port).
    #[arg(long, env = "P2_TEST_REDIS_URL")]
    redis_url: Option<String>,
    /// The `redis-server` executable started when no Redis URL is given.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// `P2_LOG` of the stack's processes (their logs go to files in a temporary directory).
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A progress line on stderr.
pub fn progress(message: &str) {
    eprintln!("==> {message}");
}

/// One measured step: `gateways` gateways holding `n` connections.
#[derive(Debug, Clone)]
struct Row {
    gateways: usize,
    n: usize,
    held: usize,
    opened: Opened,
    rss_before: Vec<u64>,
    rss_idle: Vec<u64>,
    published: Published,
    delivered: u64,
    latencies: Vec<u64>,
    cpu: Cpu,
    dropped: usize,
    first_drop: Option<String>,
}

impl Row {
    fn growth(&self) -> i128 {
        self.rss_idle.iter().map(|&b| i128::from(b)).sum::<i128>()
            - self.rss_before.iter().map(|&b| i128::from(b)).sum::<i128>()
    }

    fn per_connection(&self) -> f64 {
        self.growth() as f64 / self.n.max(1) as f64
    }

    fn p99(&self) -> Option<u64> {
        quantile(&self.latencies, 0.99)
    }
}

/// CPU time used during a publishing run, as a share of one core.
#[derive(Debug, Clone, Default)]
struct Cpu {
    gateways: f64,
    events: f64,
    redis: Option<f64>,
    bench: f64,
}

struct CpuProbe {
    wall: Instant,
    gateways: Vec<u32>,
    events: Vec<u32>,
    redis: Option<u32>,
    before: Vec<Duration>,
}

impl CpuProbe {
    fn pids(&self) -> Vec<Option<u32>> {
        let mut pids: Vec<Option<u32>> = self.gateways.iter().map(|&p| Some(p)).collect();
        pids.extend(self.events.iter().map(|&p| Some(p)));
        pids.extend(self.redis.map(Some));
        pids.push(None);
        pids
    }

    fn start(stack: &Stack) -> Self {
        let mut probe = Self {
            wall: Instant::now(),
            gateways: stack.gateways.iter().map(stack::Process::pid).collect(),
            events: stack
                .services
                .iter()
                .filter(|p| p.name.starts_with("events-"))
                .map(stack::Process::pid)
                .collect(),
            redis: stack.redis.as_ref().map(stack::Process::pid),
            before: Vec::new(),
        };
        probe.before = probe.sample();
        probe.wall = Instant::now();
        probe
    }

    fn sample(&self) -> Vec<Duration> {
        self.pids()
            .into_iter()
            .map(|pid| procfs::cpu_time(pid).unwrap_or_default())
            .collect()
    }

    fn finish(self) -> Cpu {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let after = self.sample();
        let used: Vec<f64> = after
            .iter()
            .zip(&self.before)
            .map(|(a, b)| a.saturating_sub(*b).as_secs_f64() / wall)
            .collect();
        let g = self.gateways.len();
        let e = self.events.len();
        Cpu {
            gateways: used[..g].iter().sum(),
            events: used[g..g + e].iter().sum(),
            redis: self.redis.map(|_| used[g + e]),
            bench: used[used.len() - 1],
        }
    }
}

/// Sums of the `polyproto_outbox_events_total` series in a metrics text.
fn outbox_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("polyproto_outbox_events_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the session service's outbox counters stop moving for 3 s (at most 10 min):
/// its OpenSession and op 3 rows are then delivered and will not arrive during a measurement.
async fn wait_outbox_drained(stack: &Stack) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = -1.0;
    let mut stable_since = Instant::now();
    loop {
        let total = outbox_total(&stack.session_metrics().await?);
        if (total - last).abs() > f64::EPSILON {
            last = total;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(3) {
            return Ok(started.elapsed().saturating_sub(Duration::from_secs(3)));
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the session outbox was still delivering after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ws_url(base: &str) -> String {
    format!(
        "{}/.p2/core/v1/gateway",
        base.replacen("http://", "ws://", 1)
    )
}

async fn run(args: Args) -> anyhow::Result<String> {
    let mut steps = args.connections.clone();
    steps.sort_unstable();
    steps.dedup();
    let max_n = *steps.last().context("--connections lists no count")?;
    if steps[0] == 0 {
        bail!("--connections must be at least 1");
    }
    if args.gateways.iter().any(|&g| !(1..=2).contains(&g)) {
        bail!("--gateways takes 1 and/or 2");
    }
    // The bench holds every connection; a gateway holds its share.
    let needed = max_n as u64 + 1024;
    let limit = procfs::open_files_limit().unwrap_or(0);
    if limit < needed {
        bail!(
            "the open-file limit is {limit}, {max_n} connections need about {needed}: raise it \
             (`ulimit -n {}`; scripts/bench.sh ws does)",
            needed.max(65_536)
        );
    }
    let binary = match &args.polyproto {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the bench binary")?
            .join("polyproto"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it (`cargo build --release --bin polyproto`) or pass --polyproto",
            binary.display()
        );
    }
    let load_start = procfs::load_average();
    let run_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => run_dir.path().join("data"),
    };
    std::fs::create_dir_all(&data_dir)?;
    let cap = (max_n * 2 + 1000).to_string();
    let gateway_env: Vec<(String, String)> = [
        ("P2_RATE_LIMIT_PUBLIC", "0".to_owned()),
        ("P2_RATE_LIMIT_BEARER", "0".to_owned()),
        ("P2_RATE_LIMIT_PASSWORD", "0".to_owned()),
        ("P2_MAX_CONNECTIONS", cap.clone()),
        ("P2_MAX_CONNECTIONS_PER_IP", cap),
        (
            "P2_GATEWAY_HEARTBEAT_INTERVAL_MS",
            args.heartbeat_interval_ms.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let options = StackOptions {
        binary: binary.clone(),
        redis_server: args.redis_server.clone(),
        redis_url: args.redis_url.clone(),
        data_dir: data_dir.clone(),
        run_dir: run_dir.path().to_owned(),
        domain: DOMAIN.to_owned(),
        identity_replicas: usize::try_from(args.identity_replicas).unwrap_or(1),
        log: args.log.clone(),
        gateway_env: gateway_env.clone(),
    };

    progress(&format!(
        "starting the stack ({}; logs in {})",
        binary.display(),
        run_dir.path().display()
    ));
    let started = Instant::now();
    let mut stack = Stack::start(options).await?;
    stack.start_gateways(1).await?;
    let stack_start = started.elapsed();

    let result = measure(&args, &steps, &mut stack).await;
    let check = stack.check_alive();
    progress("stopping the stack");
    stack.stop();
    let (times, rows) = result?;
    check?;

    let mut out = String::new();
    let context = Context {
        binary: &binary,
        gateway_env: &gateway_env,
        stack_start,
        load_start: &load_start,
    };
    report(&mut out, &args, &steps, &context, &times, &rows)?;
    Ok(out)
}

async fn measure(
    args: &Args,
    steps: &[usize],
    stack: &mut Stack,
) -> anyhow::Result<(SetupTimes, Vec<Row>)> {
    let max_n = *steps.last().context("no step")?;
    let mut times = SetupTimes::default();
    let saved = match &args.state_dir {
        Some(dir) => sessions::load(dir)?,
        None => Vec::new(),
    };
    let base = stack.gateways[0].url();
    let sessions = sessions::create(
        &base,
        DOMAIN,
        saved,
        max_n,
        usize::try_from(args.sessions_per_actor).unwrap_or(16),
        args.login_concurrency,
        &mut times,
    )
    .await?;
    if let Some(dir) = &args.state_dir
        && times.logged_in > 0
    {
        sessions::save(dir, &sessions)?;
    }
    progress("waiting for the session outbox to deliver (OpenSession, op 3)");
    times.outbox_drain = wait_outbox_drained(stack).await?;
    let sessions: Arc<[Session]> = sessions.into();

    let events = publish::client(&stack.events_url(0)?, &stack.internal_key)?;
    let mut rows = Vec::new();
    let mut next_event = 0u64;
    for &gateways in &args.gateways {
        progress(&format!("starting {gateways} fresh gateway(s)"));
        stack.start_gateways(gateways).await?;
        let urls: Vec<String> = stack.gateways.iter().map(|g| ws_url(&g.url())).collect();
        let target = |i: usize| (urls[i % urls.len()].clone(), sessions[i].token.clone());

        // Warm-up: a few connections opened and closed (code paths, gRPC channels).
        let mut warm = Clients::new();
        let opened = warm
            .open(
                (0..WARMUP_CONNECTIONS.min(max_n)).map(target).collect(),
                args.connect_concurrency,
                1,
            )
            .await;
        if opened.ok == 0 {
            bail!(
                "no warm-up connection was identified: {}",
                opened.first_error.unwrap_or_default()
            );
        }
        warm.close_all(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = gateway_rss(stack)?;

        let mut clients = Clients::new();
        for &n in steps {
            let from = clients.len();
            progress(&format!(
                "{gateways} gateway(s): opening connections {from}..{n}"
            ));
            let opened = clients
                .open(
                    (from..n).map(target).collect(),
                    args.connect_concurrency,
                    max_n,
                )
                .await;
            progress(&format!(
                "  {} identified, {} failed in {:.1} s{}",
                opened.ok,
                opened.failed,
                opened.elapsed.as_secs_f64(),
                opened
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ));
            tokio::time::sleep(Duration::from_secs(args.settle)).await;
            stack.check_alive()?;
            let rss_idle = gateway_rss(stack)?;
            let held = clients.shared.open.load(Ordering::Relaxed);

            progress(&format!(
                "  publishing {}/s for {} s (+{} s warm-up) over {n} connections",
                args.rate, args.duration, args.warmup
            ));
            let warmup_events = args.warmup * u64::from(args.rate);
            clients
                .shared
                .sample_from
                .store(next_event + warmup_events, Ordering::Relaxed);
            let received_before = clients.shared.received.load(Ordering::Relaxed);
            let probe = CpuProbe::start(stack);
            let published = publish::run(
                events.clone(),
                sessions[..n].into(),
                next_event,
                args.rate,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.duration),
            )
            .await;
            let cpu = probe.finish();
            next_event += published.started + published.skipped;
            // Deliveries still under way.
            let drain = Instant::now();
            let delivered = loop {
                let got = clients.shared.received.load(Ordering::Relaxed) - received_before;
                if got >= published.ok || drain.elapsed() > Duration::from_secs(5) {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut latencies: Vec<u64> = clients
                .shared
                .take_samples()
                .into_iter()
                .map(|(_, us)| us)
                .collect();
            latencies.sort_unstable();
            let row = Row {
                gateways,
                n,
                held,
                opened,
                rss_before: rss_before.clone(),
                rss_idle,
                published,
                delivered,
                latencies,
                cpu,
                dropped: clients.shared.dropped.load(Ordering::Relaxed),
                first_drop: clients
                    .shared
                    .first_drop
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            };
            progress(&format!(
                "  {} held, {:.1} KiB per idle connection, p50 {}, p99 {}",
                row.held,
                row.per_connection() / 1024.0,
                fmt_us(quantile(&row.latencies, 0.5)),
                fmt_us(row.p99())
            ));
            rows.push(row);
        }
        progress("closing the connections");
        clients.close_all(Duration::from_secs(60)).await;
    }
    Ok((times, rows))
}

fn gateway_rss(stack: &Stack) -> anyhow::Result<Vec<u64>> {
    stack
        .gateways
        .iter()
        .map(|g| procfs::rss_bytes(Some(g.pid())))
        .collect()
}

fn fmt_us(us: Option<u64>) -> String {
    us.map_or_else(|| "–".to_owned(), |us| format!("{:.1} ms", us as f64 / 1e3))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// What the report says about the run besides its rows.
struct Context<'a> {
    binary: &'a std::path::Path,
    gateway_env: &'a [(String, String)],
    stack_start: Duration,
    load_start: &'a str,
}

fn report(
    out: &mut String,
    args: &Args,
    steps: &[usize],
    context: &Context<'_>,
    times: &SetupTimes,
    rows: &[Row],
) -> anyhow::Result<()> {
    let Context {
        binary,
        gateway_env,
        stack_start,
        load_start,
    } = context;
    writeln!(out, "# p2-ws-bench: WebSocket gateway under load")?;
    writeln!(out)?;
    writeln!(out, "Machine: {}", procfs::machine())?;
    writeln!(
        out,
        "Load average: {load_start} at start, {} at end",
        procfs::load_average()
    )?;
    writeln!(
        out,
        "Stack: separate processes of {}: Redis, identity ×{}, session, discovery, events ×2, \
         gateways (gateway j → events replica j; the publisher → events-0)",
        binary.display(),
        args.identity_replicas
    )?;
    let env: Vec<String> = gateway_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out, "Gateway settings: {}", env.join(" "))?;
    writeln!(
        out,
        "Load: connections {steps:?} (cumulative), {} events/s for {} s after {} s warm-up, \
         events to one session each, spread over the connections; {} s idle before the memory figure",
        args.rate, args.duration, args.warmup, args.settle
    )?;
    writeln!(out)?;
    writeln!(out, "## Setup")?;
    writeln!(out)?;
    writeln!(
        out,
        "- stack start (services + first gateway ready): {}",
        secs(*stack_start)
    )?;
    writeln!(
        out,
        "- sessions: {} reused from --state-dir; {} actors registered in {}; {} logins in {} \
         ({:.1}/s; one Argon2id hash each, {} in flight, over {} identity replicas)",
        times.reused,
        times.registered,
        secs(times.register),
        times.logged_in,
        secs(times.login),
        times.logged_in as f64 / times.login.as_secs_f64().max(1e-9),
        args.login_concurrency,
        args.identity_replicas
    )?;
    writeln!(
        out,
        "- session outbox delivered (OpenSession, op 3 to the actors' other sessions) {} after the logins",
        secs(times.outbox_drain)
    )?;
    for row in rows {
        writeln!(
            out,
            "- {} gateway(s), connections up to {}: {} identified in {} ({:.0}/s, {} handshakes in flight){}",
            row.gateways,
            row.n,
            row.opened.ok,
            secs(row.opened.elapsed),
            row.opened.ok as f64 / row.opened.elapsed.as_secs_f64().max(1e-9),
            args.connect_concurrency,
            if row.opened.failed > 0 {
                format!(
                    "; {} failed (first: {})",
                    row.opened.failed,
                    row.opened.first_error.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            }
        )?;
    }
    writeln!(out)?;
    writeln!(out, "## Figures")?;
    writeln!(out)?;
    writeln!(
        out,
        "| gateways | N | held | gateway RSS before → with N idle | per idle connection | p50 | p90 | p99 | max | delivered / published | Publish call p50 / p99 | CPU (share of one core): gateways, events, redis, bench |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let before: u64 = row.rss_before.iter().sum();
        let idle: u64 = row.rss_idle.iter().sum();
        let split = if row.rss_idle.len() > 1 {
            format!(
                " ({})",
                row.rss_before
                    .iter()
                    .zip(&row.rss_idle)
                    .map(|(b, i)| format!("{} → {}", mib(*b), mib(*i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        let mut calls = row.published.call_us.clone();
        calls.sort_unstable();
        writeln!(
            out,
            "| {} | {} | {} | {} → {}{} | {:.1} KiB | {} | {} | {} | {} | {} / {}{} | {} / {} | {:.0} %, {:.0} %, {}, {:.0} % |",
            row.gateways,
            row.n,
            row.held,
            mib(before),
            mib(idle),
            split,
            row.per_connection() / 1024.0,
            fmt_us(quantile(&row.latencies, 0.5)),
            fmt_us(quantile(&row.latencies, 0.9)),
            fmt_us(row.p99()),
            fmt_us(row.latencies.last().copied()),
            row.delivered,
            row.published.ok,
            if row.published.failed + row.published.skipped > 0 {
                format!(
                    " ({} failed, {} skipped; first: {})",
                    row.published.failed,
                    row.published.skipped,
                    row.published.first_error.as_deref().unwrap_or("–")
                )
            } else {
                String::new()
            },
            fmt_us(quantile(&calls, 0.5)),
            fmt_us(quantile(&calls, 0.99)),
            row.cpu.gateways * 100.0,
            row.cpu.events * 100.0,
            row.cpu
                .redis
                .map_or_else(|| "–".to_owned(), |r| format!("{:.0} %", r * 100.0)),
            row.cpu.bench * 100.0,
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Latency: receive time at the client − the start of the `events.Publish` call, measured \
         events only ({} s); `delivered` counts warm-up events too. RSS: `VmRSS` of the gateway \
         process(es) after {WARMUP_CONNECTIONS} warm-up connections were opened and closed, then \
         with N identified idle connections (each step adds to the previous one, whose publishing \
         run's re-send buffers it includes).",
        args.duration
    )?;
    for row in rows.iter().filter(|r| r.dropped > 0) {
        writeln!(
            out,
            "- {} gateway(s), N {}: {} connections ended while held (first: {})",
            row.gateways,
            row.n,
            row.dropped,
            row.first_drop.as_deref().unwrap_or("?")
        )?;
    }
    writeln!(out)?;
    writeln!(out, "## Targets (issue 9)")?;
    writeln!(out)?;
    let big: Vec<&Row> = rows.iter().filter(|r| r.n >= TARGET_CONNECTIONS).collect();
    if big.is_empty() {
        writeln!(
            out,
            "- 10 000 connections held: not measured (largest N below it)"
        )?;
    }
    for row in &big {
        writeln!(
            out,
            "- 10 000 connections held ({} gateway(s)): {} of {} — {}",
            row.gateways,
            row.held,
            row.n,
            verdict(row.held >= TARGET_CONNECTIONS)
        )?;
    }
    for row in rows {
        writeln!(
            out,
            "- ≤ 32 KiB per idle connection ({} gateway(s), N {}): {:.1} KiB — {}",
            row.gateways,
            row.n,
            row.per_connection() / 1024.0,
            verdict(row.per_connection() <= TARGET_BYTES_PER_CONNECTION)
        )?;
    }
    for row in rows {
        writeln!(
            out,
            "- p99 < 50 ms ({} gateway(s), N {}): {} — {}",
            row.gateways,
            row.n,
            fmt_us(row.p99()),
            verdict(row.p99().is_some_and(|p| p < TARGET_P99_US))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_counters_are_summed() {
        let text = "# HELP x\npolyproto_outbox_events_total{component=\"session\",outcome=\"delivered\"} 12\n\
                    polyproto_outbox_events_total{component=\"session\",outcome=\"dropped\"} 1\nother 5\n";
        assert!((outbox_total(text) - 13.0).abs() < f64::EPSILON);
    }

    #[test]
    fn the_defaults_parse() {
        let args = Args::try_parse_from(["p2-ws-bench"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.connections, vec![1000, 10_000]);
        assert_eq!(args.gateways, vec![1, 2]);
        assert_eq!(args.rate, 1000);
    }
}
