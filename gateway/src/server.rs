//! The gateway's HTTP accept loop, in place of `axum::serve`, which has no header timeout and no
//! connection limits: one hostile client must not hold every file descriptor.
//!
//! - **Connection caps.** At most `--max-connections` connections in all and
//!   `--max-connections-per-ip` from one client address (IPv4 address, IPv6 /64, IPv4-mapped
//!   IPv6 counted as IPv4). A connection beyond either is closed at once, before anything is
//!   read from it, and logged at DEBUG. The per-address table has an entry only per address
//!   with an open connection, so it is bounded by the global cap.
//! - **Header timeout.** An HTTP/1 request header must arrive in full within
//!   `--header-timeout-ms` (hyper's `header_read_timeout`, which also runs while a keep-alive
//!   connection waits for its next request); and a connection that has not started its first
//!   request by then (e.g. a partial HTTP/2 preface) is closed too.
//! - **Idle timeout.** A connection on which no byte moved either way for `--idle-timeout-ms`
//!   is shut down gracefully (a request in flight is answered first; one whose client does
//!   not read its answer is dropped a header timeout later).
//! - **Request timeout.** `--request-timeout-ms` bounds each request from header to answer
//!   (`tower_http::timeout`, in [`crate::router`]): 503 problem+json.
//!
//! - **WebSockets.** Connections are served with upgrades: a WebSocket handshake (including
//!   its upgrade) runs in the connection's own task, never in the accept loop. Once upgraded,
//!   the HTTP connection task ends (hyper hands the socket over), and with it the idle and
//!   header timeouts — the gateway's heartbeats ([`crate::ws`]) bound an open socket instead;
//!   the socket keeps its [`ConnectionSlot`], so the caps count it until it closes. On
//!   shutdown WebSockets are closed by [`crate::ws::Hub`], not drained here.
//!
//! Every connection is served in a task of its own, so a slow client never blocks the accept
//! loop. On shutdown the listener closes at once, every connection is asked to shut down
//! gracefully (idle ones close, in-flight requests finish), and what has not finished after
//! [`p2_runtime::shutdown::DRAIN_TIMEOUT`] is dropped. TCP_NODELAY is set on every
//! connection: small responses must not wait for delayed ACKs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GatewayOptions;

/// How long the accept loop pauses after a failed `accept` (e.g. out of file descriptors), so
/// it does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The connection and time limits of [`serve`], from [`GatewayOptions`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--header-timeout-ms`.
    pub header_timeout: Duration,
    /// `--idle-timeout-ms`.
    pub idle_timeout: Duration,
    /// `--request-timeout-ms`.
    pub request_timeout: Duration,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-connections-per-ip`.
    pub max_connections_per_ip: usize,
}

impl Limits {
    /// The limits `options` set (zero durations and caps are raised to the least allowed: 1).
    pub fn from_options(options: &GatewayOptions) -> Self {
        let ms = |ms: u64| Duration::from_millis(ms.max(1));
        Self {
            header_timeout: ms(options.header_timeout_ms),
            idle_timeout: ms(options.idle_timeout_ms),
            request_timeout: ms(options.request_timeout_ms),
            max_connections: options.max_connections.max(1),
            max_connections_per_ip: options.max_connections_per_ip.max(1),
        }
    }
}

/// The address connections are counted under: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by
/// its /64 prefix, since one client routinely holds a whole /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Open connections, in all and per client address.
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A held connection slot; dropping it frees the slot.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if let Some(open) = counts.per_client.get_mut(&self.client) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    counts.per_client.remove(&self.client);
                }
            }
        }
    }
}

/// A connection's slot, shared by the connection task and every request on it (a request
/// extension). A WebSocket upgrade takes it along: the upgraded socket outlives the HTTP
/// connection task (whose future ends at the upgrade), and keeps counting against the
/// connection caps until it closes.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code, reason = "held for its Drop")] Arc<Slot>);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Total,
    PerClient,
}

fn acquire(counts: &Arc<Mutex<Counts>>, limits: &Limits, ip: IpAddr) -> Result<Slot, Refused> {
    let client = client_key(ip);
    let Ok(mut guard) = counts.lock() else {
        return Err(Refused::Total);
    };
    if guard.total >= limits.max_connections {
        return Err(Refused::Total);
    }
    let open = guard.per_client.get(&client).copied().unwrap_or(0);
    if open >= limits.max_connections_per_ip {
        return Err(Refused::PerClient);
    }
    guard.total += 1;
    guard.per_client.insert(client, open + 1);
    Ok(Slot {
        counts: counts.clone(),
        client,
    })
}

/// What a connection did, for its watchdog.
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte read or written.
    last_ms: AtomicU64,
    /// Requests started on the connection.
    requests: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection is due to be closed if nothing happens before.
    fn deadline(&self, limits: &Limits) -> Instant {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let idle = last + limits.idle_timeout;
        if self.requests.load(Ordering::Relaxed) == 0 {
            idle.min(self.start + limits.header_timeout)
        } else {
            idle
        }
    }
}

/// A TCP stream that records when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` is cancelled, then drains.
pub async fn serve<S>(
    app: S,
    listener: TcpListener,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    let counts = Arc::new(Mutex::new(Counts {
        total: 0,
        per_client: HashMap::new(),
    }));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connection tasks: the set stays bounded by the connection cap.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match acquire(&counts, &limits, peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::debug!(%peer, ?refused, "connection limit reached; closing the connection");
                drop(stream);
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            builder.clone(),
            limits.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    // Stop accepting at once; in-flight requests drain for at most DRAIN_TIMEOUT.
    drop(listener);
    let drained = tokio::time::timeout(p2_runtime::shutdown::DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not drain in time; stopping");
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    app: S,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    slot: Slot,
) where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let counted = activity.clone();
    let slot = ConnectionSlot(Arc::new(slot));
    let service = tower::ServiceExt::map_request(
        app,
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            counted.requests.fetch_add(1, Ordering::Relaxed);
            // Who is calling, for the services' per-address password throttle.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            request
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(service);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    // Set once the connection was asked to shut down: by then it must finish within the hard
    // deadline, or it is dropped.
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = match closing {
            Some(hard) => hard,
            None => activity.deadline(&limits),
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                // The server's own drain deadline bounds this one.
                closing = Some(Instant::now() + p2_runtime::shutdown::DRAIN_TIMEOUT);
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing.is_some() {
                    tracing::debug!(%peer, "connection did not finish closing; dropping it");
                    break;
                }
                // Activity may have moved the deadline since it was computed.
                if activity.deadline(&limits) <= Instant::now() {
                    tracing::debug!(%peer, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.header_timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_ip: per_client,
        }
    }

    #[test]
    fn connection_slots_are_capped_in_all_and_per_client() {
        let counts = Arc::new(Mutex::new(Counts {
            total: 0,
            per_client: HashMap::new(),
        }));
        let limits = limits(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = acquire(&counts, &limits, a).unwrap();
        let _a2 = acquire(&counts, &limits, a).unwrap();
        assert_eq!(acquire(&counts, &limits, a).err(), Some(Refused::PerClient));
        let _b1 = acquire(&counts, &limits, b).unwrap();
        assert_eq!(acquire(&counts, &limits, b).err(), Some(Refused::Total));
        drop(a1);
        let _a3 = acquire(&counts, &limits, a).unwrap();
        assert_eq!(counts.lock().unwrap().per_client.len(), 2);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(one), client_key(other));
        let next: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(client_key(one), client_key(next));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
