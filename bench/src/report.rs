//! The printed report: machine facts, settings, the wrk table, the token check, logins under
//! load, the login flood, gateway memory under distinct reads, and the targets with PASS/MISS.

use std::time::Duration;

use crate::flood::{Answers, FloodPlan, FloodStats, LEGIT_PAUSE};
use crate::memory::{CACHE_TTL, MemoryCheck, SLACK_BYTES};
use crate::setup::LoginStats;
use crate::token_check::{TokenCheck, percentile};
use crate::wrk::{WrkSettings, WrkStats};

/// Public cert reads: at least this share of the baseline's requests/s (issue 3).
pub const CERT_READ_TARGET: f64 = 0.50;
/// Token check: p50 of `session.Authenticate` below this (issue 3).
pub const TOKEN_CHECK_TARGET: Duration = Duration::from_micros(200);
/// Cert reads while logins run: at least this share of the figure without (issue 3).
pub const WITH_LOGINS_TARGET: f64 = 0.80;
/// Cert reads during a login flood: at least this share of the figure without.
pub const WITH_FLOOD_TARGET: f64 = 0.80;

/// The result of one measurement.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    /// It ran.
    Measured(T),
    /// It was not run, for this reason (not an error of the bench).
    Skipped(String),
    /// It could not be measured, for this reason.
    Failed(String),
}

impl<T> Outcome<T> {
    fn measured(&self) -> Option<&T> {
        match self {
            Self::Measured(value) => Some(value),
            _ => None,
        }
    }
}

/// What a table row is compared against.
#[derive(Debug, Clone)]
enum RowTarget {
    /// At least [`CERT_READ_TARGET`] of the baseline.
    CertRead,
    /// No target; the note says why the row is there.
    Info(String),
}

/// One gateway route measured with wrk.
#[derive(Debug, Clone)]
pub struct WrkRow {
    label: String,
    outcome: Outcome<WrkStats>,
    target: RowTarget,
}

impl WrkRow {
    /// A public cert read, held to [`CERT_READ_TARGET`].
    pub fn cert_read(label: &str, outcome: Outcome<WrkStats>) -> Self {
        Self {
            label: label.to_owned(),
            outcome,
            target: RowTarget::CertRead,
        }
    }

    /// A row printed for information.
    pub fn info(label: &str, outcome: Outcome<WrkStats>, note: &str) -> Self {
        Self {
            label: label.to_owned(),
            outcome,
            target: RowTarget::Info(note.to_owned()),
        }
    }
}

/// Everything the run found.
pub struct Report {
    settings: WrkSettings,
    wrk_version: String,
    log_filter: String,
    logins_per_sec: u32,
    load_before: Option<String>,
    load_after: Option<String>,
    /// Size and content type of the baseline's body (that of `idcert/server`).
    pub baseline_body: Option<(usize, String)>,
    /// The bare handler.
    pub baseline: Outcome<WrkStats>,
    /// The gateway routes, in table order.
    pub rows: Vec<WrkRow>,
    /// `session.Authenticate` latency.
    pub token_check: Outcome<TokenCheck>,
    /// `idcert/server` while logins run.
    pub with_logins: Outcome<WrkStats>,
    /// What the login load did.
    pub logins: Option<LoginStats>,
    /// `idcert/server` during the login flood.
    pub with_flood: Outcome<WrkStats>,
    /// How the flood was made up (set before it runs).
    pub flood_plan: Option<FloodPlan>,
    /// What the flood did.
    pub flood: Option<FloodStats>,
    /// Gateway memory under distinct public reads.
    pub memory: Outcome<MemoryCheck>,
    /// Distinct reads the memory measurement makes (for its heading when it failed).
    pub distinct_reads: u64,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn load_average() -> Option<String> {
    read_trimmed("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `nproc`, CPU model and count, memory and kernel, from the OS.
fn machine_facts() -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism()
        .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown (no `model name` in /proc/cpuinfo)".to_owned());
    let logical = cpuinfo
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|k| k.trim() == "processor")
        })
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".to_owned());
    vec![
        ("nproc".to_owned(), nproc),
        (
            "CPU".to_owned(),
            format!("{model} ({logical} logical CPUs in /proc/cpuinfo)"),
        ),
        ("memory".to_owned(), memory),
        ("kernel".to_owned(), format!("Linux {kernel}")),
    ]
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn signed_mib(bytes: i128) -> String {
    format!("{:+.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `401 n, 429 n, 503 n, other n` (and the first other answer).
fn answer_counts(answers: &Answers) -> String {
    let mut line = format!(
        "401 {}, 429 {}, 503 {}, other {}",
        answers.unauthorized, answers.throttled, answers.busy, answers.other
    );
    if let Some(first) = &answers.first_other {
        line.push_str(&format!(" (first other: {first})"));
    }
    line
}

fn percent(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

impl Report {
    /// An empty report for these settings.
    pub fn new(
        settings: &WrkSettings,
        wrk_version: String,
        log_filter: String,
        logins_per_sec: u32,
    ) -> Self {
        Self {
            settings: settings.clone(),
            wrk_version,
            log_filter,
            logins_per_sec,
            load_before: load_average(),
            load_after: None,
            baseline_body: None,
            baseline: Outcome::Failed("not run".to_owned()),
            rows: Vec::new(),
            token_check: Outcome::Failed("not run".to_owned()),
            with_logins: Outcome::Failed("not run".to_owned()),
            logins: None,
            with_flood: Outcome::Failed("not run".to_owned()),
            flood_plan: None,
            flood: None,
            memory: Outcome::Failed("not run".to_owned()),
            distinct_reads: 0,
        }
    }

    /// Records the end of the run.
    pub fn finish(&mut self) {
        self.load_after = load_average();
    }

    fn baseline_rps(&self) -> Option<f64> {
        self.baseline.measured().map(|s| s.requests_per_sec)
    }

    fn server_row(&self) -> Option<&WrkStats> {
        self.rows
            .iter()
            .find(|row| row.label == "GET idcert/server")
            .and_then(|row| row.outcome.measured())
    }

    /// Every measurement that failed, as `(what, why)`.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        if let Outcome::Failed(why) = &self.baseline {
            failures.push(("bare baseline".to_owned(), why.clone()));
        }
        for row in &self.rows {
            if let Outcome::Failed(why) = &row.outcome {
                failures.push((row.label.clone(), why.clone()));
            }
        }
        if let Outcome::Failed(why) = &self.token_check {
            failures.push(("token check".to_owned(), why.clone()));
        }
        if let Outcome::Failed(why) = &self.with_logins {
            failures.push(("idcert/server with logins".to_owned(), why.clone()));
        }
        if let Outcome::Failed(why) = &self.with_flood {
            failures.push((
                "idcert/server during the login flood".to_owned(),
                why.clone(),
            ));
        }
        if let Outcome::Failed(why) = &self.memory {
            failures.push(("gateway memory".to_owned(), why.clone()));
        }
        failures
    }

    fn skipped(&self) -> Vec<(String, String)> {
        self.rows
            .iter()
            .filter_map(|row| match &row.outcome {
                Outcome::Skipped(why) => Some((row.label.clone(), why.clone())),
                _ => None,
            })
            .collect()
    }

    /// Prints the report to stdout.
    pub fn print(&self) {
        let s = &self.settings;
        println!();
        println!("polyproto home server: load benchmark (p2-bench)");
        println!();
        println!("Machine");
        for (key, value) in machine_facts() {
            println!("  {key:<12} {value}");
        }
        println!(
            "  {:<12} {} at start, {} at end (other processes on the machine skew the figures)",
            "load avg",
            self.load_before.as_deref().unwrap_or("?"),
            self.load_after.as_deref().unwrap_or("?")
        );
        println!();
        println!("Settings");
        println!("  {:<12} {}", "wrk", self.wrk_version);
        println!(
            "  {:<12} {}",
            "each run",
            s.command_line(s.duration, "URL", false)
        );
        println!(
            "  {:<12} {}",
            "warm-up",
            if s.warmup.is_zero() {
                "none".to_owned()
            } else {
                format!(
                    "a discarded {} s run of the same command before each measured run",
                    s.warmup.as_secs()
                )
            }
        );
        println!(
            "  {:<12} all four gRPC services + gateway in this process (as `polyproto up`), embedded storage (SQLite in a temp dir), {} build, log filter {:?}",
            "stack",
            if cfg!(debug_assertions) {
                "DEBUG (figures meaningless; use --release)"
            } else {
                "release"
            },
            self.log_filter
        );
        let body = self
            .baseline_body
            .as_ref()
            .map_or_else(|| "?".to_owned(), |(len, ct)| format!("{len} bytes, {ct}"));
        println!(
            "  {:<12} bare axum handler in the same process and runtime, fixed body of the idcert/server response ({body})",
            "baseline"
        );
        println!(
            "  {:<12} wrk and the server share the machine's CPUs; loopback TCP, HTTP/1.1 keep-alive",
            "note"
        );
        println!(
            "  {:<12} the gateway's per-address rate limits count every request; reads and Bearer routes are set out of reach (u64::MAX: each load generator here is one loopback address), password routes keep 600 per minute per address (production default: 60)",
            "rate limits"
        );

        println!();
        println!("Throughput and latency (wrk)");
        let baseline_rps = self.baseline_rps();
        println!(
            "  {:<44} {:>10} {:>11} {:>11} {:>12}  target",
            "route", "req/s", "p50", "p99", "vs baseline"
        );
        self.print_row(
            "bare axum baseline",
            &self.baseline,
            baseline_rps,
            "reference",
        );
        for row in &self.rows {
            let target = match &row.target {
                RowTarget::CertRead => match (row.outcome.measured(), baseline_rps) {
                    (Some(stats), Some(base)) => format!(
                        ">= {:.0} % of baseline  {}",
                        CERT_READ_TARGET * 100.0,
                        verdict(stats.requests_per_sec / base >= CERT_READ_TARGET)
                    ),
                    _ => format!(">= {:.0} % of baseline", CERT_READ_TARGET * 100.0),
                },
                RowTarget::Info(note) => note.clone(),
            };
            self.print_row(&row.label, &row.outcome, baseline_rps, &target);
        }
        let label = format!("GET idcert/server + {} logins/s", self.logins_per_sec);
        self.print_row(&label, &self.with_logins, baseline_rps, "see below");
        self.print_row(
            "GET idcert/server + login flood",
            &self.with_flood,
            baseline_rps,
            "see below",
        );
        for (label, stats) in self
            .rows
            .iter()
            .filter_map(|row| row.outcome.measured().map(|s| (row.label.as_str(), s)))
            .chain(self.baseline.measured().map(|s| ("bare axum baseline", s)))
            .chain(
                self.with_logins
                    .measured()
                    .map(|s| ("idcert/server + logins", s)),
            )
            .chain(
                self.with_flood
                    .measured()
                    .map(|s| ("idcert/server + login flood", s)),
            )
        {
            if stats.socket_errors.any() {
                let e = stats.socket_errors;
                println!(
                    "  note: {label}: wrk socket errors connect {}, read {}, write {}, timeout {}",
                    e.connect, e.read, e.write, e.timeout
                );
            }
        }

        println!();
        println!("Token check: what a Bearer route adds (sequential calls)");
        match &self.token_check {
            Outcome::Measured(check) => {
                let g = &check.gateway;
                println!(
                    "  gateway check  {} calls: p50 {}, p99 {}, mean {}   target p50 < {}  {}   (p2_gateway::auth::authenticate as every Bearer route runs it, `up` token cache)",
                    g.calls,
                    ms(g.p50),
                    ms(g.p99),
                    ms(g.mean),
                    ms(TOKEN_CHECK_TARGET),
                    verdict(g.p50 < TOKEN_CHECK_TARGET)
                );
                let a = &check.authenticate;
                println!(
                    "  Authenticate   {} calls: p50 {}, p99 {}, mean {}   (a token cache miss: the gRPC call)",
                    a.calls,
                    ms(a.p50),
                    ms(a.p99),
                    ms(a.mean),
                );
                let v = &check.assertion;
                println!(
                    "  assertion      {} checks: p50 {}, p99 {}, mean {}   (a service verifying a caller assertion locally: one HMAC, no round trip)",
                    v.calls,
                    ms(v.p50),
                    ms(v.p99),
                    ms(v.mean),
                );
                let f = &check.floor;
                println!(
                    "  gRPC floor     {} calls: p50 {}, p99 {}, mean {}   (grpc.health.v1.Health/Check, same server and channel: no token lookup)",
                    f.calls,
                    ms(f.p50),
                    ms(f.p99),
                    ms(f.mean)
                );
            }
            Outcome::Skipped(why) => println!("  skipped: {why}"),
            Outcome::Failed(why) => println!("  FAILED: {why}"),
        }

        println!();
        println!(
            "Logins under load: GET idcert/server while {} logins/s run (Argon2id server-side)",
            self.logins_per_sec
        );
        let without = self.server_row();
        match without {
            Some(stats) => println!("  without logins  {:>10.0} req/s", stats.requests_per_sec),
            None => println!("  without logins  not measured"),
        }
        match (&self.with_logins, without) {
            (Outcome::Measured(with), Some(without)) => {
                let ratio = with.requests_per_sec / without.requests_per_sec;
                println!(
                    "  with logins     {:>10.0} req/s  = {} of without   target >= {:.0} %  {}",
                    with.requests_per_sec,
                    percent(ratio),
                    WITH_LOGINS_TARGET * 100.0,
                    verdict(ratio >= WITH_LOGINS_TARGET)
                );
            }
            (Outcome::Measured(with), None) => {
                println!(
                    "  with logins     {:>10.0} req/s  (no figure without to compare)",
                    with.requests_per_sec
                );
            }
            (Outcome::Skipped(why), _) => println!("  with logins     skipped: {why}"),
            (Outcome::Failed(why), _) => println!("  with logins     FAILED: {why}"),
        }
        if let Some(logins) = &self.logins {
            let mut latencies = logins.latencies.clone();
            latencies.sort_unstable();
            println!(
                "  logins          {} started in {:.1} s ({:.2}/s), {} ok, {} failed; login latency p50 {}, p99 {}",
                logins.started,
                logins.elapsed.as_secs_f64(),
                logins.rate(),
                logins.latencies.len(),
                logins.failed,
                ms(percentile(&latencies, 0.50)),
                ms(percentile(&latencies, 0.99))
            );
        }

        self.print_flood();
        self.print_memory();

        println!();
        println!("Targets (figures, not assertions: a MISS does not fail the run)");
        for line in self.target_lines() {
            println!("  {line}");
        }

        let skipped = self.skipped();
        let failures = self.failures();
        println!();
        for (what, why) in &skipped {
            println!("SKIPPED {what}: {why}");
        }
        for (what, why) in &failures {
            println!("FAILED {what}: {why}");
        }
        if failures.is_empty() {
            println!(
                "Every measurement ran{}.",
                if skipped.is_empty() {
                    ""
                } else {
                    " (except the skipped ones above)"
                }
            );
        } else {
            println!("{} measurement(s) failed: exit status 1.", failures.len());
        }
    }

    fn print_flood(&self) {
        println!();
        match &self.flood_plan {
            Some(plan) => println!(
                "Login flood: GET idcert/server while {} tasks loop logins with wrong passwords ({}; {} accounts, {} client addresses 127.0.1.x) and {} users log in rightly (own accounts, address {}, every {} ms)",
                plan.tasks,
                if plan.rate == 0 {
                    "no pause".to_owned()
                } else {
                    format!("{} logins/s in all", plan.rate)
                },
                plan.accounts.len(),
                plan.addresses,
                plan.legit_accounts.len(),
                crate::flood::LEGIT_ADDRESS,
                LEGIT_PAUSE.as_millis()
            ),
            None => {
                println!("Login flood: GET idcert/server while logins with wrong passwords run")
            }
        }
        let without = self.server_row();
        match without {
            Some(stats) => println!("  without flood   {:>10.0} req/s", stats.requests_per_sec),
            None => println!("  without flood   not measured"),
        }
        match (&self.with_flood, without) {
            (Outcome::Measured(with), Some(without)) => {
                let ratio = with.requests_per_sec / without.requests_per_sec;
                println!(
                    "  with flood      {:>10.0} req/s  = {} of without   target >= {:.0} %  {}",
                    with.requests_per_sec,
                    percent(ratio),
                    WITH_FLOOD_TARGET * 100.0,
                    verdict(ratio >= WITH_FLOOD_TARGET)
                );
            }
            (Outcome::Measured(with), None) => println!(
                "  with flood      {:>10.0} req/s  (no figure without to compare)",
                with.requests_per_sec
            ),
            (Outcome::Skipped(why), _) => println!("  with flood      skipped: {why}"),
            (Outcome::Failed(why), _) => println!("  with flood      FAILED: {why}"),
        }
        if let Some(flood) = &self.flood {
            println!(
                "  flood           {} requests in {:.1} s ({:.0}/s): {}",
                flood.flood.sent,
                flood.elapsed.as_secs_f64(),
                flood.flood_rate(),
                answer_counts(&flood.flood)
            );
            let legit = &flood.legit;
            let mut latencies = legit.created_latencies.clone();
            latencies.sort_unstable();
            let latency = if latencies.is_empty() {
                "no login succeeded".to_owned()
            } else {
                format!(
                    "login latency p50 {}, p99 {}",
                    ms(percentile(&latencies, 0.50)),
                    ms(percentile(&latencies, 0.99))
                )
            };
            println!(
                "  legitimate      {} logins: {} ok (201), {}; {latency}",
                legit.sent,
                legit.created,
                answer_counts(legit)
            );
        }
    }

    fn print_memory(&self) {
        println!();
        match &self.memory {
            Outcome::Measured(m) => {
                println!(
                    "Gateway memory: {} distinct public reads (GET idcert/actor/{{fid}}?timestamp=<distinct>, each a new cache key), {} at a time",
                    m.reads, m.concurrency
                );
                println!(
                    "  gateway      a second gateway the bench serves (p2_gateway::serve, the stack's options, cache budget {}, TTL {} s) in front of the stack's services: the stack does not expose its gateway's cache",
                    mib(m.budget),
                    CACHE_TTL.as_secs()
                );
                println!(
                    "  reads        {} in {:.1} s ({:.0}/s), all 200 with the cert; {} of bodies offered to the cache",
                    m.reads,
                    m.elapsed.as_secs_f64(),
                    m.reads as f64 / m.elapsed.as_secs_f64().max(1e-9),
                    mib(m.body_bytes)
                );
                println!(
                    "  VmRSS        before {}, after {}: growth {}   target <= budget + {} = {}  {}   (whole process, /proc/self/status)",
                    mib(m.rss_before),
                    mib(m.rss_after),
                    signed_mib(m.growth()),
                    mib(SLACK_BYTES),
                    mib(m.allowed()),
                    verdict(m.pass())
                );
                println!(
                    "  cache        weighs {} in {} entries after the reads (AppState::cache_weighted_bytes; budget {})",
                    mib(m.weighed),
                    m.entries,
                    mib(m.budget)
                );
            }
            Outcome::Skipped(why) => {
                println!(
                    "Gateway memory: {} distinct public reads",
                    self.distinct_reads
                );
                println!("  skipped: {why}");
            }
            Outcome::Failed(why) => {
                println!(
                    "Gateway memory: {} distinct public reads",
                    self.distinct_reads
                );
                println!("  FAILED: {why}");
            }
        }
    }

    fn print_row(
        &self,
        label: &str,
        outcome: &Outcome<WrkStats>,
        baseline: Option<f64>,
        target: &str,
    ) {
        match outcome {
            Outcome::Measured(stats) => {
                let ratio = baseline
                    .map_or_else(|| "n/a".to_owned(), |b| percent(stats.requests_per_sec / b));
                println!(
                    "  {:<44} {:>10.0} {:>11} {:>11} {:>12}  {}",
                    label,
                    stats.requests_per_sec,
                    ms(stats.p50),
                    ms(stats.p99),
                    ratio,
                    target
                );
            }
            Outcome::Skipped(why) => println!("  {label:<44} skipped: {why}"),
            Outcome::Failed(why) => println!("  {label:<44} FAILED: {why}"),
        }
    }

    fn target_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let baseline = self.baseline_rps();
        for row in &self.rows {
            if !matches!(row.target, RowTarget::CertRead) {
                continue;
            }
            let goal = format!(
                "{} >= {:.0} % of baseline req/s",
                row.label,
                CERT_READ_TARGET * 100.0
            );
            lines.push(match (row.outcome.measured(), baseline) {
                (Some(stats), Some(base)) => {
                    let ratio = stats.requests_per_sec / base;
                    format!(
                        "{}  {goal}: {}",
                        verdict(ratio >= CERT_READ_TARGET),
                        percent(ratio)
                    )
                }
                _ => format!("n/a   {goal}: not measured"),
            });
        }
        let goal = format!("token check p50 < {}", ms(TOKEN_CHECK_TARGET));
        lines.push(match self.token_check.measured() {
            Some(check) => format!(
                "{}  {goal}: {} (cache miss: {})",
                verdict(check.gateway.p50 < TOKEN_CHECK_TARGET),
                ms(check.gateway.p50),
                ms(check.authenticate.p50)
            ),
            None => format!("n/a   {goal}: not measured"),
        });
        let goal = format!(
            "idcert/server with {} logins/s >= {:.0} % of without",
            self.logins_per_sec,
            WITH_LOGINS_TARGET * 100.0
        );
        lines.push(match (self.with_logins.measured(), self.server_row()) {
            (Some(with), Some(without)) => {
                let ratio = with.requests_per_sec / without.requests_per_sec;
                format!(
                    "{}  {goal}: {}",
                    verdict(ratio >= WITH_LOGINS_TARGET),
                    percent(ratio)
                )
            }
            _ => format!("n/a   {goal}: not measured"),
        });
        let goal = format!(
            "idcert/server during a login flood ({} tasks, wrong passwords) >= {:.0} % of without",
            self.flood_plan.as_ref().map_or(0, |p| p.tasks),
            WITH_FLOOD_TARGET * 100.0
        );
        lines.push(match (self.with_flood.measured(), self.server_row()) {
            (Some(with), Some(without)) => {
                let ratio = with.requests_per_sec / without.requests_per_sec;
                format!(
                    "{}  {goal}: {}",
                    verdict(ratio >= WITH_FLOOD_TARGET),
                    percent(ratio)
                )
            }
            _ => format!("n/a   {goal}: not measured"),
        });
        lines.push(match self.memory.measured() {
            Some(m) => format!(
                "{}  gateway RSS growth over {} distinct reads <= cache budget {} + {}: {} (cache weighs {})",
                verdict(m.pass()),
                m.reads,
                mib(m.budget),
                mib(SLACK_BYTES),
                signed_mib(m.growth()),
                mib(m.weighed)
            ),
            None => format!(
                "n/a   gateway RSS growth over {} distinct reads <= cache budget + {}: not measured",
                self.distinct_reads,
                mib(SLACK_BYTES)
            ),
        });
        lines
    }
}
