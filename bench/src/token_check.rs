//! The cost a Bearer route adds: `session.Authenticate` over loopback gRPC (which now also
//! mints the caller assertion), called in a tight sequential loop from one tonic client,
//! exactly as the gateway calls it per request; the local verification of that assertion,
//! which is what the internal boundary costs each service per call; and the health check on
//! the same server as the floor of any gRPC round trip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use p2_proto::session::v1::AuthenticateRequest;
use p2_proto::session::v1::session_client::SessionClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The session service's name in the health protocol.
const SESSION_SERVICE: &str = "polyproto.session.v1.Session";

/// Calls made (and discarded) before measuring, to open the connection and warm caches.
const WARMUP_CALLS: u32 = 200;

/// Latencies of a series of sequential calls.
#[derive(Debug)]
pub struct Latencies {
    /// Measured calls.
    pub calls: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean.
    pub mean: Duration,
}

impl Latencies {
    fn from_unsorted(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        let total: Duration = latencies.iter().sum();
        Self {
            calls: latencies.len(),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            mean: total / u32::try_from(latencies.len().max(1)).unwrap_or(u32::MAX),
        }
    }
}

/// What the token check measured.
#[derive(Debug)]
pub struct TokenCheck {
    /// The gateway's token check exactly as every Bearer route runs it
    /// (`p2_gateway::auth::authenticate`, with `polyproto up`'s token cache).
    pub gateway: Latencies,
    /// `session.Authenticate(token)`: the gateway's check on a token cache miss.
    pub authenticate: Latencies,
    /// `AssertionKey::verify` of the assertion `Authenticate` returned, in process: the
    /// boundary's cost per internal call (no round trip).
    pub assertion: Latencies,
    /// `grpc.health.v1.Health/Check` on the same server and channel: the floor of any gRPC
    /// round trip there (transport, tonic, the per-call span), without the token lookup.
    pub floor: Latencies,
}

/// Times `calls` sequential calls of `call` after [`WARMUP_CALLS`] discarded ones.
async fn time_calls<F, Fut>(calls: u32, mut call: F) -> anyhow::Result<Latencies>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut latencies = Vec::with_capacity(calls as usize);
    for i in 0..WARMUP_CALLS + calls {
        let start = Instant::now();
        call().await?;
        let elapsed = start.elapsed();
        if i >= WARMUP_CALLS {
            latencies.push(elapsed);
        }
    }
    Ok(Latencies::from_unsorted(latencies))
}

/// Calls `Authenticate(token)` `calls` times against the session service at `addr`, through
/// the same kind of channel the gateway uses; every call must resolve the token to `fid`.
/// Then the health check, `calls` times, for the floor.
pub async fn measure(
    grpc_addrs: [SocketAddr; 4],
    internal_key: &p2_runtime::internal::InternalKey,
    token: &str,
    fid: &str,
    calls: u32,
) -> anyhow::Result<TokenCheck> {
    if calls == 0 {
        bail!("--auth-calls must be at least 1");
    }
    let addr = grpc_addrs[1];
    let channel = p2_runtime::grpc::channel(
        &format!("http://{addr}"),
        &internal_key.credential(p2_runtime::internal::Component::Gateway),
    )?;
    let session = SessionClient::new(channel.clone());
    let authenticate = time_calls(calls, || {
        let mut client = session.clone();
        let request = AuthenticateRequest {
            token: token.to_owned(),
        };
        async move {
            let caller = client
                .authenticate(request)
                .await
                .context("session.Authenticate failed")?
                .into_inner()
                .caller
                .context("session.Authenticate answered without a caller")?;
            if !caller.fid.eq_ignore_ascii_case(fid) {
                bail!(
                    "session.Authenticate resolved the token to {}, expected {fid}",
                    caller.fid
                );
            }
            Ok(())
        }
    })
    .await?;

    let gateway_config = crate::setup::gateway_config(
        grpc_addrs,
        internal_key,
        p2_gateway::GatewayOptions::default(),
        polyproto_server::stack::DEFAULT_UP_TOKEN_CACHE_MS,
    );
    let gateway_state = p2_gateway::AppState::new(&gateway_config, ([127, 0, 0, 1], 1).into())?;
    let gateway = time_calls(calls, || {
        let state = gateway_state.clone();
        async move {
            let caller = p2_gateway::auth::authenticate(&state, token)
                .await
                .map_err(|e| anyhow::anyhow!("the gateway's token check failed: {}", e.detail))?;
            if !caller.caller.fid.eq_ignore_ascii_case(fid) {
                bail!(
                    "the gateway resolved the token to {}, expected {fid}",
                    caller.caller.fid
                );
            }
            Ok(())
        }
    })
    .await?;

    let minted = session
        .clone()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
        })
        .await
        .context("session.Authenticate failed")?
        .into_inner()
        .assertion
        .context("session.Authenticate answered without an assertion")?
        .token;
    let assertion_key = internal_key.assertion_key();
    let assertion = time_calls(calls, || {
        let verified = assertion_key.verify(&minted, p2_runtime::internal::unix_now_ms());
        async move {
            let verified = verified.map_err(|e| anyhow::anyhow!("assertion refused: {e}"))?;
            if !verified.fid.eq_ignore_ascii_case(fid) {
                bail!("the assertion names {}, expected {fid}", verified.fid);
            }
            Ok(())
        }
    })
    .await?;

    let health = HealthClient::new(channel);
    let floor = time_calls(calls, || {
        let mut client = health.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: SESSION_SERVICE.to_owned(),
                })
                .await
                .context("grpc.health.v1.Health/Check failed")?;
            Ok(())
        }
    })
    .await?;
    Ok(TokenCheck {
        gateway,
        authenticate,
        assertion,
        floor,
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
