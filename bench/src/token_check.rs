//! The cost a Bearer route adds: `session.Authenticate` over loopback gRPC, called in a tight
//! sequential loop from one tonic client, exactly as the gateway calls it per request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use p2_proto::session::v1::AuthenticateRequest;
use p2_proto::session::v1::session_client::SessionClient;

/// Calls made (and discarded) before measuring, to open the connection and warm caches.
const WARMUP_CALLS: u32 = 200;

/// Latencies of the measured calls.
#[derive(Debug)]
pub struct TokenCheck {
    /// Measured calls.
    pub calls: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean.
    pub mean: Duration,
}

/// Calls `Authenticate(token)` `calls` times against the session service at `addr`; every
/// call must resolve the token to `fid`.
pub async fn measure(addr: SocketAddr, token: &str, fid: &str, calls: u32) -> anyhow::Result<TokenCheck> {
    if calls == 0 {
        bail!("--auth-calls must be at least 1");
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the session service at {addr}"))?;
    let mut client = SessionClient::new(channel);
    let mut latencies = Vec::with_capacity(calls as usize);
    for i in 0..WARMUP_CALLS + calls {
        let request = AuthenticateRequest {
            token: token.to_owned(),
        };
        let start = Instant::now();
        let response = client
            .authenticate(request)
            .await
            .context("session.Authenticate failed")?;
        let elapsed = start.elapsed();
        let caller = response
            .into_inner()
            .caller
            .context("session.Authenticate answered without a caller")?;
        if !caller.fid.eq_ignore_ascii_case(fid) {
            bail!("session.Authenticate resolved the token to {}, expected {fid}", caller.fid);
        }
        if i >= WARMUP_CALLS {
            latencies.push(elapsed);
        }
    }
    latencies.sort_unstable();
    let total: Duration = latencies.iter().sum();
    Ok(TokenCheck {
        calls: latencies.len(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        mean: total / u32::try_from(latencies.len()).unwrap_or(u32::MAX),
    })
}

/// The nearest-rank percentile `p` (0..=1) of sorted `values`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
