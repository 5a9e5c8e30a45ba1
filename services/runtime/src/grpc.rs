//! Serving a tonic service: on a pre-bound listener, behind the internal boundary
//! ([`crate::internal::ServerAuth`]), with the gRPC health protocol, one span per call joined to
//! the caller's trace, and graceful shutdown. And the client side: channels that carry the
//! caller's component credential and trace context.

use std::convert::Infallible;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::internal::{ComponentCredential, ServerAuth};
use crate::telemetry::{TraceContextInterceptor, set_parent_from_headers};

/// Adds the calling component's credential and the trace context to every outgoing call.
#[derive(Clone, Debug)]
pub struct OutboundInterceptor {
    credential: ComponentCredential,
}

impl tonic::service::Interceptor for OutboundInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = TraceContextInterceptor.call(request)?;
        self.credential.apply(request.metadata_mut());
        // Relay the HTTP client's address when the call is made for one.
        if let Some(address) = crate::internal::client_address()
            && let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(address.to_string())
        {
            request
                .metadata_mut()
                .insert(crate::internal::CLIENT_ADDRESS_HEADER, value);
        }
        Ok(request)
    }
}

/// A gRPC client channel that carries the caller's component credential and trace context.
pub type TracedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, OutboundInterceptor>;

/// Deadline of every internal gRPC call made through [`channel`]: the time from sending a
/// request to receiving its response headers (a streaming response's body is not bounded by
/// it). A call past it fails with `CANCELLED`/`DEADLINE_EXCEEDED`-like transport errors, so no
/// caller waits forever on a stuck dependency. 10 s is far above any call's normal latency
/// (Argon2id logins included) and below the gateway's 30 s request timeout.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a lazily connecting channel to `url` (e.g. `http://identity:50051`, or a
/// comma-separated list) whose calls carry `credential` and the trace context, balanced over
/// every address the URLs resolve to ([`crate::balance`]). Lazy, so a component starts even
/// while a dependency is still starting; calls fail with `UNAVAILABLE` until it answers.
pub fn channel(url: &str, credential: &ComponentCredential) -> anyhow::Result<TracedChannel> {
    let channel = crate::balance::channel(url, |endpoint| {
        endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        OutboundInterceptor {
            credential: credential.clone(),
        },
    ))
}

pub(crate) fn call_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        otel.kind = "server",
        otel.name = %request.uri().path(),
        rpc.system = "grpc",
    );
    set_parent_from_headers(&span, request.headers());
    span
}

/// A readiness probe: whether what the service needs (its database, its Redis) answers.
pub type Probe = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// How often a service's [`Probe`] runs.
pub const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `service` behind `auth` (plus `grpc.health.v1.Health`, which needs no credential)
/// on `listener` until `shutdown` is cancelled. On shutdown the service is first reported
/// NOT_SERVING, keeps serving for `grace`, then the listener stops accepting and in-flight
/// calls drain (for at most [`crate::shutdown::DRAIN_TIMEOUT`] after shutdown began, plus
/// the grace). With a `probe`, health follows it every [`PROBE_INTERVAL`]: NOT_SERVING while
/// the database or Redis does not answer, SERVING again on its own when they return. Every
/// call is counted and timed ([`crate::metrics::GrpcMetricsLayer`]).
pub async fn serve<S>(
    service: S,
    auth: ServerAuth,
    grace: std::time::Duration,
    probe: Option<Probe>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    if let Some(probe) = probe {
        tokio::spawn(watch::<S>(probe, reporter.clone(), shutdown.clone()));
    }
    let addr = listener.local_addr()?;
    tracing::info!(service = S::NAME, %addr, "gRPC service listening");
    let drain_deadline = shutdown.clone();
    let signal = async move {
        shutdown.cancelled().await;
        reporter.set_not_serving::<S>().await;
        // The overall status ("") too: what `polyproto healthcheck HOST:PORT` asks.
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Still serving while whoever watches health moves away; then stop accepting.
        tokio::time::sleep(grace).await;
    };
    let server = Server::builder()
        .max_connection_age(crate::balance::MAX_CONNECTION_AGE)
        .trace_fn(call_span)
        // Every call counted and timed, health and refused ones included.
        .layer(crate::metrics::GrpcMetricsLayer::new(S::NAME))
        .add_service(health)
        .add_service(auth.wrap(service))
        .serve_with_incoming_shutdown(
            // Without NODELAY, small responses wait for delayed ACKs (~40 ms p99 under load).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    // In-flight calls drain, but not forever: DRAIN_TIMEOUT after shutdown began, stop anyway.
    tokio::select! {
        result = server => result?,
        () = async {
            drain_deadline.cancelled().await;
            tokio::time::sleep(grace + crate::shutdown::DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!(service = S::NAME, "in-flight calls did not drain in time; stopping");
        }
    }
    Ok(())
}

/// Runs `probe` every [`PROBE_INTERVAL`] until shutdown and reports its outcome as the health
/// of `S` and of the whole server.
async fn watch<S: NamedService>(
    probe: Probe,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
        let ok = probe().await;
        // Shutdown owns the status from its start.
        if shutdown.is_cancelled() {
            return;
        }
        if ok == serving {
            continue;
        }
        serving = ok;
        let status = if ok {
            tracing::info!(service = S::NAME, "dependencies answer again: serving");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::warn!(
                service = S::NAME,
                "a dependency does not answer: not serving"
            );
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status(S::NAME, status).await;
        reporter.set_service_status("", status).await;
    }
}
