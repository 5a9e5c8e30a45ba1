//! Running `wrk` and reading its report.
//!
//! wrk prints (with `--latency`):
//!
//! ```text
//! Running 10s test @ http://127.0.0.1:40000/x
//!   2 threads and 32 connections
//!   Thread Stats   Avg      Stdev     Max   +/- Stdev
//!     Latency   635.91us    0.89ms  12.92ms   93.69%
//!     Req/Sec    26.20k     8.07k   32.00k    86.54%
//!   Latency Distribution
//!      50%  250.00us
//!      75%  491.00us
//!      90%  700.00us
//!      99%    5.00ms
//!   524288 requests in 10.00s, 417.76MB read
//!   Socket errors: connect 0, read 0, write 0, timeout 0
//!   Non-2xx or 3xx responses: 123
//! Requests/sec:  52428.80
//! Transfer/sec:     41.78MB
//! ```
//!
//! Times carry a unit (`us`, `ms`, `s`, `m`, `h`); the two optional lines only appear when the
//! count is not zero.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// How wrk is run.
#[derive(Debug, Clone)]
pub struct WrkSettings {
    /// The wrk executable.
    pub program: String,
    /// `-t`: load-generator threads.
    pub threads: u32,
    /// `-c`: open connections (spread over the threads).
    pub connections: u32,
    /// `-d`: length of one measurement.
    pub duration: Duration,
    /// Length of the discarded run before each measurement (zero: none).
    pub warmup: Duration,
}

impl WrkSettings {
    /// The command line of one run, as printed in the report.
    pub fn command_line(&self, duration: Duration, url: &str, bearer: bool) -> String {
        let header = if bearer {
            " -H 'Authorization: Bearer …'"
        } else {
            ""
        };
        format!(
            "{} -t{} -c{} -d{}s --latency{header} {url}",
            self.program,
            self.threads,
            self.connections,
            duration.as_secs()
        )
    }
}

/// Socket errors wrk counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    /// Failed connects.
    pub connect: u64,
    /// Failed reads.
    pub read: u64,
    /// Failed writes.
    pub write: u64,
    /// Requests that timed out.
    pub timeout: u64,
}

impl SocketErrors {
    /// Whether any count is non-zero.
    pub fn any(&self) -> bool {
        self.connect + self.read + self.write + self.timeout > 0
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkStats {
    /// `Requests/sec`.
    pub requests_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Completed requests.
    pub requests: u64,
    /// Responses with a status outside 2xx and 3xx.
    pub non_success: u64,
    /// Socket errors.
    pub socket_errors: SocketErrors,
}

/// Runs wrk once against `url` (blocking: call it from `spawn_blocking`). A warm-up run of
/// `settings.warmup` precedes the measured run and is discarded. Fails when wrk cannot run,
/// exits unsuccessfully, prints a report that cannot be read, completes no request, or
/// receives any non-2xx/3xx response (unless `allow_non_success`: then they are only counted).
pub fn measure(
    settings: &WrkSettings,
    url: &str,
    headers: &[String],
    allow_non_success: bool,
) -> anyhow::Result<WrkStats> {
    if !settings.warmup.is_zero() {
        run(settings, settings.warmup, url, headers).context("warm-up run")?;
    }
    let stats = run(settings, settings.duration, url, headers)?;
    if stats.requests == 0 || stats.requests_per_sec <= 0.0 {
        bail!("wrk completed no request against {url}");
    }
    if stats.non_success > 0 && !allow_non_success {
        bail!(
            "{} of {} responses from {url} were not 2xx/3xx",
            stats.non_success,
            stats.requests
        );
    }
    Ok(stats)
}

fn run(
    settings: &WrkSettings,
    duration: Duration,
    url: &str,
    headers: &[String],
) -> anyhow::Result<WrkStats> {
    let mut command = Command::new(&settings.program);
    command
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency");
    for header in headers {
        command.arg("-H").arg(header);
    }
    command.arg(url);
    let output = command.output().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "`{}` not found: install wrk (`apt-get install wrk`) or run scripts/bench.sh",
                settings.program
            )
        } else {
            anyhow::Error::new(error).context(format!("cannot run `{}`", settings.program))
        }
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        );
    }
    parse(&stdout).with_context(|| format!("cannot read wrk's report:\n{stdout}"))
}

/// The version line of `wrk -v` (which exits with status 1 by design), if wrk runs at all.
pub fn version(program: &str) -> Option<String> {
    let output = Command::new(program).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()
        .map(|line| {
            line.split("Copyright")
                .next()
                .unwrap_or(line)
                .trim()
                .to_owned()
        })
        .filter(|line| line.starts_with("wrk"))
}

/// Parses a wrk time such as `250.00us`, `1.20ms`, `2.00s`, `1.50m` or `1.00h`.
pub fn parse_time(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("time without a unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("not a number: {number:?} in {text:?}"))?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("unknown time unit {unit:?} in {text:?}"),
    };
    if !value.is_finite() || value < 0.0 {
        bail!("not a duration: {text:?}");
    }
    Ok(Duration::from_secs_f64(value * seconds_per_unit))
}

fn parse_count(text: &str) -> anyhow::Result<u64> {
    text.trim()
        .trim_end_matches(',')
        .parse()
        .with_context(|| format!("not a count: {text:?}"))
}

/// Reads wrk's `--latency` report.
pub fn parse(report: &str) -> anyhow::Result<WrkStats> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut non_success = 0;
    let mut socket_errors = SocketErrors::default();
    let mut in_distribution = false;

    for line in report.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((percent, value)) = line.split_once('%') {
                match percent.trim() {
                    "50" | "50.000" => p50 = Some(parse_time(value)?),
                    "99" | "99.000" => p99 = Some(parse_time(value)?),
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            let value = value.trim();
            requests_per_sec = Some(
                value
                    .parse::<f64>()
                    .with_context(|| format!("Requests/sec is not a number: {value:?}"))?,
            );
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_success = parse_count(value)?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            for part in value.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                    bail!("cannot read the socket errors {value:?}");
                };
                let count = parse_count(count)?;
                match kind {
                    "connect" => socket_errors.connect = count,
                    "read" => socket_errors.read = count,
                    "write" => socket_errors.write = count,
                    "timeout" => socket_errors.timeout = count,
                    _ => {}
                }
            }
        } else if let Some((count, rest)) = line.split_once(" requests in ")
            && rest.contains("read")
        {
            requests = Some(parse_count(count)?);
        }
    }

    Ok(WrkStats {
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p50: p50.context("no 50% line in the latency distribution (was --latency given?)")?,
        p99: p99.context("no 99% line in the latency distribution (was --latency given?)")?,
        requests: requests.context("no `N requests in T, B read` line")?,
        non_success,
        socket_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:40000/x
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec    26.20k     8.07k   32.00k    86.54%
  Latency Distribution
     50%  250.00us
     75%  491.00us
     90%  700.00us
     99%    5.00ms
  524288 requests in 10.00s, 417.76MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 123
Requests/sec:  52428.80
Transfer/sec:     41.78MB
";

    #[test]
    fn reads_a_full_report() {
        let stats = parse(REPORT).unwrap();
        assert!((stats.requests_per_sec - 52_428.80).abs() < 1e-6);
        assert_eq!(stats.p50, Duration::from_micros(250));
        assert_eq!(stats.p99, Duration::from_millis(5));
        assert_eq!(stats.requests, 524_288);
        assert_eq!(stats.non_success, 123);
        assert_eq!(
            stats.socket_errors,
            SocketErrors {
                connect: 0,
                read: 2,
                write: 0,
                timeout: 7
            }
        );
    }

    #[test]
    fn optional_lines_default_to_zero_and_seconds_parse() {
        let report = "Running 1s test @ http://x/
  Latency Distribution
     50%    1.50s
     75%    1.60s
     90%    1.70s
     99%    2.00m
  12 requests in 1.00s, 1.00KB read
Requests/sec:      12.00
Transfer/sec:      1.00KB
";
        let stats = parse(report).unwrap();
        assert_eq!(stats.p50, Duration::from_millis(1500));
        assert_eq!(stats.p99, Duration::from_secs(120));
        assert_eq!(stats.non_success, 0);
        assert!(!stats.socket_errors.any());
    }

    #[test]
    fn a_report_without_the_distribution_is_an_error() {
        let report = "  10 requests in 1.00s, 1.00KB read\nRequests/sec: 10.00\n";
        assert!(parse(report).unwrap_err().to_string().contains("50%"));
    }

    #[test]
    fn times_need_known_units() {
        assert_eq!(parse_time("12.5ms").unwrap(), Duration::from_micros(12_500));
        assert_eq!(parse_time(" 3us").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_time("1.00h").unwrap(), Duration::from_secs(3600));
        assert!(parse_time("12").is_err());
        assert!(parse_time("12xs").is_err());
        assert!(parse_time("ms").is_err());
    }
}
