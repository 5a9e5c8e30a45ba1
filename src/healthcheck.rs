//! `polyproto healthcheck [TARGET]`: exits 0 when the component at TARGET is ready, 1 (with one
//! `error:` line) otherwise — for compose health checks and the image's `HEALTHCHECK`, which
//! have no curl or grpcurl.
//!
//! TARGET is `http://HOST:PORT/PATH` (the gateway's `/readyz`: 2xx means ready) or `HOST:PORT`
//! / `grpc://HOST:PORT` (a gRPC service: the health protocol's overall status must be SERVING,
//! which a service reports only once its storage is open and migrated, and stops reporting at
//! shutdown). Everything is bounded by [`TIMEOUT`].

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Default target when none is given and `P2_HEALTHCHECK` is unset: the gateway's readiness.
pub const DEFAULT_TARGET: &str = "http://127.0.0.1:8080/readyz";

/// Checks `target`; `Ok(())` when it is ready.
pub async fn check(target: &str) -> anyhow::Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        match target.strip_prefix("http://") {
            Some(rest) => http(rest).await,
            None => grpc(target.strip_prefix("grpc://").unwrap_or(target)).await,
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("{target} did not answer within {TIMEOUT:?}"))?
}

/// A plain HTTP/1.1 GET (loopback checks need no TLS and no client library).
async fn http(rest: &str) -> anyhow::Result<()> {
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("{authority} did not answer HTTP"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        bail!("http://{authority}{path} answered {status}: not ready")
    }
}

async fn grpc(authority: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("invalid target {authority:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .with_context(|| format!("{authority} did not answer the health check"))?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        bail!("{authority} is not serving (health status {status})")
    }
}
