//! Shared plumbing of every polyproto process: nothing here knows about identities, sessions,
//! services or events.
//!
//! Layout:
//! - [`config`]: clap blocks shared by several components (`#[clap(flatten)]`), each flag with a
//!   `P2_*` (or `OTEL_*`) environment twin.
//! - [`telemetry`]: `tracing` subscriber, optional OTLP export, W3C trace-context propagation
//!   from the gateway into every gRPC call ([`telemetry::TraceContextInterceptor`]) and out of it
//!   on the server side ([`grpc::serve`]).
//! - [`shutdown`]: the one [`CancellationToken`](tokio_util::sync::CancellationToken) a process
//!   shares, and the signal handler that cancels it.
//! - [`balance`]: internal calls spread over every replica (DNS re-resolution, URL lists).
//! - [`grpc`]: serve a tonic service on a pre-bound listener with gRPC health and trace context.
//! - [`internal`]: the internal trust boundary: component credentials, per-RPC caller
//!   allow-lists, caller assertions.
//! - [`storage`]: SQL pools chosen by URL (`sqlite:` or `postgres:`) with versioned migrations.
//! - [`kv`]: the Redis connection (challenges, key trials, event streams).
//! - [`metrics`]: Prometheus series of every process and the listener serving them
//!   (`--metrics-listen`), the HTTP and gRPC layers that record requests.
//! - [`error`]: how an unexpected error leaves a service: logged once, opaque to the client.

pub mod balance;
pub mod config;
pub mod error;
pub mod grpc;
pub mod internal;
pub mod kv;
pub mod metrics;
pub mod shutdown;
pub mod storage;
pub mod telemetry;

/// Current UNIX time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Strips the password (and any query string) from a connection URL so it can be printed.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.split('?').next().unwrap_or(url).to_owned(),
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("postgres://p2:s3cret@db:5432/identity?sslmode=disable"),
            "postgres://p2:***@db:5432/identity"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(
            redact_url("sqlite:///tmp/x.db?mode=rwc"),
            "sqlite:///tmp/x.db"
        );
        assert_eq!(redact_url("sqlite:data.db"), "sqlite:data.db");
    }
}
