//! `p2-bench`: the load benchmark of the polyproto home server (issues 3 and 4, "Performance").
//!
//! Starts the whole stack in this process (four gRPC services and the gateway, embedded
//! storage in a temporary directory) next to a bare axum handler that answers a fixed body of
//! the size of `GET /.p2/core/v1/idcert/server` (the baseline), sets up an actor with a session
//! and discoverable services, then drives the routes with `wrk` and prints a table of
//! requests/s, p50, p99 and the ratio to the baseline, the token-check latency
//! (`session.Authenticate` over loopback gRPC), cert reads while logins run and during a flood
//! of wrong-password logins, and the process's resident memory around distinct public reads
//! that each make a new cache key. Figures are printed next to their targets, not asserted:
//! the exit status is non-zero only when a measurement itself failed. See `bench/README.md`;
//! run it through `scripts/bench.sh`.

mod federation;
mod flood;
mod memory;
mod report;
mod setup;
mod token_check;
mod wrk;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use polyproto_server::stack::{self, StackConfig};

use crate::flood::{FloodPlan, LoginFlood};
use crate::report::{Outcome, Report, WrkRow};
use crate::setup::{BASELINE_PATH, Gateway, LoginLoad};
use crate::wrk::{WrkSettings, WrkStats};

/// Domain of the benchmarked home server.
const DOMAIN: &str = "bench.test";
/// Password of the benchmark actors.
const PASSWORD: &str = "bench password 4 load";
/// The actor whose certs and services are read.
const ACTOR: &str = "bench";
/// The actor that logs in repeatedly during the logins-under-load measurement.
const LOGIN_ACTOR: &str = "loadbench";
/// Prefix of the accounts the login flood guesses at (`flood0`, `flood1`, ...).
const FLOOD_ACTOR_PREFIX: &str = "flood";
/// Password requests per client address and minute the bench's gateway allows.
const BENCH_PASSWORD_LIMIT_PER_MINUTE: u64 = 600;
/// Prefix of the accounts of the flood's legitimate users (`legit0`, ...).
const LEGIT_ACTOR_PREFIX: &str = "legit";

/// Load benchmark of the polyproto home server (needs `wrk` on PATH; see scripts/bench.sh).
#[derive(Debug, Parser)]
#[command(name = "p2-bench", version, about)]
struct Args {
    /// Seconds of each measured wrk run.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Seconds of the discarded wrk run before each measured one (0: none).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// wrk connections (-c).
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: u32,
    /// wrk threads (-t).
    #[arg(long, short = 't', default_value_t = 2)]
    threads: u32,
    /// Measured sequential session.Authenticate calls of the token check.
    #[arg(long, default_value_t = 5000)]
    auth_calls: u32,
    /// Logins per second during the logins-under-load measurement.
    #[arg(long, default_value_t = 8)]
    logins_per_sec: u32,
    /// Discoverable services of the benchmark actor.
    #[arg(long, default_value_t = 50)]
    services: u32,
    /// Distinct public reads (each a new cache key) of the gateway memory measurement.
    #[arg(long, default_value_t = 10_000)]
    distinct_reads: u64,
    /// Distinct reads in flight at a time.
    #[arg(long, default_value_t = 16)]
    read_concurrency: usize,
    /// Public read cache budget of the memory measurement's gateway, in bytes.
    #[arg(long, default_value_t = memory::DEFAULT_BUDGET_BYTES)]
    memory_cache_max_bytes: u64,
    /// Attacking tasks of the login flood (each loops wrong-password logins).
    #[arg(long, default_value_t = 32)]
    flood_tasks: u32,
    /// Wrong-password logins per second the whole flood sends (0: as fast as it can; the
    /// flood's client then competes with the server and wrk for the same cores).
    #[arg(long, default_value_t = 1000)]
    flood_rate: u32,
    /// Accounts the login flood guesses at.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    flood_accounts: u32,
    /// Client addresses of the login flood (127.0.1.1 onwards).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    flood_addresses: u8,
    /// Legitimate users logging in rightly during the flood (each its own account).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=16))]
    legit_users: u32,
    /// The wrk executable.
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Log filter of the in-process stack (default: that of `polyproto up`).
    #[arg(long, env = "P2_LOG", default_value = p2_runtime::config::DEFAULT_LOG_FILTER)]
    log: String,
}

fn main() -> ExitCode {
    // `p2-bench federation [flags]`: the federation benchmark (issue 10).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "federation")
    {
        return federation::main(std::env::args_os().skip(1));
    }
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
            report.print();
            if report.failures().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("==> {message}");
}

/// One wrk measurement, off the async workers (they serve the stack meanwhile).
async fn measure_wrk(
    settings: &WrkSettings,
    url: String,
    headers: Vec<String>,
    allow_non_success: bool,
) -> Outcome<WrkStats> {
    let settings = settings.clone();
    match tokio::task::spawn_blocking(move || {
        wrk::measure(&settings, &url, &headers, allow_non_success)
    })
    .await
    {
        Ok(Ok(stats)) => Outcome::Measured(stats),
        Ok(Err(error)) => Outcome::Failed(format!("{error:#}")),
        Err(error) => Outcome::Failed(format!("the wrk task failed: {error}")),
    }
}

/// Checks that `path` answers 200 (so wrk measures successes), then measures it.
async fn measure_route(
    settings: &WrkSettings,
    gateway: &Gateway,
    path: &str,
    token: Option<&str>,
) -> Outcome<WrkStats> {
    if let Err(error) = gateway.get_ok(path, token).await {
        return Outcome::Failed(format!("{error:#}"));
    }
    let headers = token
        .map(|t| vec![format!("Authorization: Bearer {t}")])
        .unwrap_or_default();
    // Creating challenges without solving them fills the challenge store, whose bound answers
    // 429 by design: on that context row those answers are counted, not failures.
    let allow_non_success = path.ends_with("/challenge");
    measure_wrk(settings, gateway.url(path), headers, allow_non_success).await
}

async fn run(args: Args) -> anyhow::Result<Report> {
    if args.threads == 0 || args.connections < args.threads {
        bail!("wrk needs --threads >= 1 and --connections >= --threads");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let settings = WrkSettings {
        program: args.wrk.clone(),
        threads: args.threads,
        connections: args.connections,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
    };
    let wrk_version = wrk::version(&args.wrk).with_context(|| {
        format!(
            "`{} -v` did not run: install wrk (`apt-get install wrk`) or use scripts/bench.sh",
            args.wrk
        )
    })?;

    let telemetry = p2_runtime::config::TelemetryConfig {
        log: args.log.clone(),
        ..Default::default()
    };
    let telemetry = p2_runtime::telemetry::init(&telemetry, "bench")?;

    let mut report = Report::new(
        &settings,
        wrk_version,
        args.log.clone(),
        args.logins_per_sec,
    );

    progress("starting the stack (embedded storage in a temporary directory)");
    let data_dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let mut config = StackConfig::embedded(([127, 0, 0, 1], 0).into(), DOMAIN, data_dir.path());
    // Every load generator here is one loopback address, far over the per-address limits of
    // a real client: keep the limiter counting (its cost is measured) but out of reach for
    // reads. Password routes keep a limit (10/s per address, above what the legitimate login
    // loads here send from their addresses), so the flood meets the layer that turns it away
    // in the gateway, as it would in production (default 60 per minute).
    config.gateway.rate_limits = p2_gateway::ratelimit::RateLimitOptions {
        public: u64::MAX,
        bearer: u64::MAX,
        password: BENCH_PASSWORD_LIMIT_PER_MINUTE,
        window_ms: 60_000,
    };
    let gateway_options = config.gateway.clone();
    let stack = stack::start(config).await?;
    let gateway = Gateway::new(stack.addr, DOMAIN)?;

    let server_path = "/.p2/core/v1/idcert/server";
    let (content_type, server_body) = gateway.get_ok(server_path, None).await?;
    let content_type = content_type.context("idcert/server answered without a content type")?;
    report.baseline_body = Some((
        server_body.len(),
        content_type.to_str().unwrap_or("?").to_owned(),
    ));
    let (baseline_addr, baseline) = setup::start_baseline(server_body, content_type).await?;

    progress("registering actors and logging in");
    gateway.register(ACTOR, PASSWORD).await?;
    let session = gateway.login(ACTOR, PASSWORD, "bench-main").await?;
    gateway.register(LOGIN_ACTOR, PASSWORD).await?;
    let actor_path = format!("/.p2/core/v1/idcert/actor/{}", session.fid);
    let flood_plan = FloodPlan {
        tasks: args.flood_tasks,
        rate: args.flood_rate,
        accounts: (0..args.flood_accounts)
            .map(|i| format!("{FLOOD_ACTOR_PREFIX}{i}"))
            .collect(),
        addresses: args.flood_addresses,
        legit_accounts: (0..args.legit_users)
            .map(|i| format!("{LEGIT_ACTOR_PREFIX}{i}"))
            .collect(),
        password: PASSWORD.to_owned(),
    };
    for account in flood_plan.accounts.iter().chain(&flood_plan.legit_accounts) {
        gateway.register(account, PASSWORD).await?;
    }
    report.flood_plan = Some(flood_plan.clone());

    progress(&format!("adding {} discoverable services", args.services));
    let discover_path = match gateway.add_services(&session, args.services).await {
        Ok(path) => Ok(path),
        Err(error) => {
            let reason = format!("{error:#}");
            progress(&format!("discovery skipped: {reason}"));
            Err(reason)
        }
    };

    progress(&format!(
        "gateway memory: {} distinct public reads, {} at a time, cache budget {} bytes",
        args.distinct_reads, args.read_concurrency, args.memory_cache_max_bytes
    ));
    report.distinct_reads = args.distinct_reads;
    report.memory = match memory::measure(
        memory::Target {
            grpc_addrs: stack.grpc_addrs,
            internal_key: &stack.internal_key,
            options: gateway_options,
            fid: &session.fid,
        },
        args.distinct_reads,
        args.read_concurrency,
        args.memory_cache_max_bytes,
    )
    .await
    {
        Ok(check) => Outcome::Measured(check),
        Err(error) => Outcome::Failed(format!("{error:#}")),
    };

    progress(&format!(
        "token check: {} sequential session.Authenticate calls",
        args.auth_calls
    ));
    report.token_check = match token_check::measure(
        stack.grpc_addrs,
        &stack.internal_key,
        &session.token,
        &session.fid,
        args.auth_calls,
    )
    .await
    {
        Ok(check) => Outcome::Measured(check),
        Err(error) => Outcome::Failed(format!("{error:#}")),
    };

    let baseline_url = format!("http://{baseline_addr}{BASELINE_PATH}");
    progress(&format!("wrk: bare baseline {baseline_url}"));
    report.baseline = measure_wrk(&settings, baseline_url, Vec::new(), false).await;

    progress(&format!("wrk: GET {actor_path}"));
    let stats = measure_route(&settings, &gateway, &actor_path, None).await;
    report
        .rows
        .push(WrkRow::cert_read("GET idcert/actor/{fid}", stats));

    let label = format!("GET services/discover/{{fid}} ({} services)", args.services);
    let stats = match &discover_path {
        Ok(path) => {
            progress(&format!("wrk: GET {path}"));
            measure_route(&settings, &gateway, path, None).await
        }
        Err(reason) => Outcome::Skipped(reason.clone()),
    };
    report
        .rows
        .push(WrkRow::info(&label, stats, "no target (issue 4)"));

    let challenge_path = "/.p2/core/v1/challenge";
    progress(&format!("wrk: GET {challenge_path} (Bearer)"));
    let stats = measure_route(&settings, &gateway, challenge_path, Some(&session.token)).await;
    report.rows.push(WrkRow::info(
        "GET challenge (Bearer)",
        stats,
        "context (429 allowed)",
    ));

    progress(&format!("wrk: GET {server_path}"));
    let server_stats = measure_route(&settings, &gateway, server_path, None).await;
    report
        .rows
        .push(WrkRow::cert_read("GET idcert/server", server_stats.clone()));

    progress(&format!(
        "wrk: GET {server_path} while {} logins/s run",
        args.logins_per_sec
    ));
    let load = LoginLoad::start(
        gateway.clone(),
        LOGIN_ACTOR.to_owned(),
        PASSWORD.to_owned(),
        args.logins_per_sec,
    );
    let under_load = measure_route(&settings, &gateway, server_path, None).await;
    let logins = load.stop().await?;
    report.with_logins = match (under_load, logins.failed) {
        (Outcome::Measured(stats), 0) => Outcome::Measured(stats),
        (Outcome::Measured(_), failed) => Outcome::Failed(format!(
            "{failed} of {} logins failed; first: {}",
            logins.started,
            logins.first_error.as_deref().unwrap_or("?")
        )),
        (other, _) => other,
    };
    report.logins = Some(logins);

    progress(&format!(
        "wrk: GET {server_path} during a login flood ({} tasks, wrong passwords)",
        args.flood_tasks
    ));
    report.with_flood = match LoginFlood::start(&gateway, flood_plan) {
        Ok(flood) => {
            let during = measure_route(&settings, &gateway, server_path, None).await;
            let stats = flood.stop().await?;
            let answered = stats.flood.unauthorized + stats.flood.throttled + stats.flood.busy;
            let outcome = match during {
                Outcome::Measured(_) if answered == 0 => Outcome::Failed(format!(
                    "no flood request was answered 401, 429 or 503 ({} sent; first other: {})",
                    stats.flood.sent,
                    stats.flood.first_other.as_deref().unwrap_or("?")
                )),
                other => other,
            };
            report.flood = Some(stats);
            outcome
        }
        Err(error) => Outcome::Failed(format!("{error:#}")),
    };

    progress("stopping");
    baseline.abort();
    if let Err(error) = stack.stop().await {
        progress(&format!("the stack did not stop cleanly: {error:#}"));
    }
    telemetry.shutdown().await;
    drop(data_dir);
    report.finish();
    Ok(report)
}
