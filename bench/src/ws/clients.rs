//! The client side: identified WebSocket connections held open (tokio-tungstenite, one task
//! each, all on the bench's one Tokio runtime), each answering its heartbeats and timing the
//! bench events it receives.
//!
//! A connection: TCP connect, WebSocket handshake, Hello (op 1: the heartbeat interval),
//! Identify (op 2 with its session's token), Identify ACK (op 12). From then on it sends a
//! heartbeat (op 0, `{from: "0", to: <last s>}`: it has received every message) every
//! interval — the first at an offset spread over the interval by the connection's index, so
//! 10 000 connections do not beat at once — and at once on a heartbeat request (op 11). A
//! bench event (op 3 whose `d` carries `bench_k` and `bench_t`) is timed: receive time minus
//! the publish time in it. Client buffers are small (4 KiB read buffer, no write buffering),
//! so 10 000 connections stay modest in the bench process too.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// How long a connection may take from connect to Identify ACK.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Microseconds since the process's epoch (the publisher and the clients share it).
pub fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What every connection reports into.
#[derive(Debug, Default)]
pub struct Shared {
    /// Identified connections open now.
    pub open: AtomicUsize,
    /// Connections that ended while they were meant to be held.
    pub dropped: AtomicUsize,
    /// The first such end's reason.
    pub first_drop: Mutex<Option<String>>,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Heartbeat requests (op 11) received.
    pub heartbeat_requests: AtomicU64,
    /// Bench events received (any `bench_k`).
    pub received: AtomicU64,
    /// Other events received (op 3/4/6 without a bench mark: the outbox's own).
    pub foreign_events: AtomicU64,
    /// Measured bench events: (`bench_k`, latency in µs).
    pub samples: Mutex<Vec<(u64, u64)>>,
    /// Only events with `bench_k` at or above this are sampled (the warm-up's are not).
    pub sample_from: AtomicU64,
}

impl Shared {
    fn note_drop(&self, why: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.first_drop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }

    /// Takes the samples gathered so far.
    pub fn take_samples(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Held connections; [`Clients::close_all`] ends them.
pub struct Clients {
    /// What they report into.
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What opening a batch of connections found.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// Connections identified.
    pub ok: usize,
    /// Connections that failed before their Identify ACK.
    pub failed: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

impl Clients {
    /// No connections yet.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared::default()),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    /// Connections held (open or not).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Opens one connection per `(url, token)`, `concurrency` handshakes at a time, and waits
    /// until each is identified or failed. `index_base` is the first one's index (heartbeat
    /// spread).
    pub async fn open(
        &mut self,
        targets: Vec<(String, String)>,
        concurrency: usize,
        spread_over: usize,
    ) -> Opened {
        let started = Instant::now();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut ready = Vec::with_capacity(targets.len());
        for (url, token) in targets {
            let index = self.tasks.len();
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (tx, rx) = oneshot::channel();
            let shared = self.shared.clone();
            let stop = self.stop.clone();
            self.tasks.push(tokio::spawn(async move {
                let offset = spread_offset(index, spread_over.max(1));
                hold(url, token, offset, shared, stop, tx, permit).await;
            }));
            ready.push(rx);
        }
        let mut opened = Opened::default();
        for rx in ready {
            match rx.await {
                Ok(Ok(())) => opened.ok += 1,
                Ok(Err(error)) => {
                    opened.failed += 1;
                    opened.first_error.get_or_insert(error);
                }
                Err(_) => {
                    opened.failed += 1;
                    opened
                        .first_error
                        .get_or_insert_with(|| "the connection task ended".to_owned());
                }
            }
        }
        opened.elapsed = started.elapsed();
        opened
    }

    /// Closes every connection (close frame) and waits for their tasks, at most `limit`.
    pub async fn close_all(self, limit: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(limit, futures::future::join_all(self.tasks)).await;
    }
}

/// Fraction `index / spread_over` of one heartbeat interval, as a fraction in [0, 1).
fn spread_offset(index: usize, spread_over: usize) -> f64 {
    (index % spread_over) as f64 / spread_over as f64
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).context("a message that is not JSON");
            }
            Some(Ok(Message::Close(frame))) => bail!("closed during the handshake: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("{error}"),
            None => bail!("the connection ended during the handshake"),
        }
    }
}

/// Connect, Hello, Identify, Identify ACK. Returns the socket, the heartbeat interval and the
/// last sequence number received.
async fn identify(url: &str, token: &str) -> anyhow::Result<(Ws, Duration, u64)> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("WebSocket handshake")?;
    let hello = next_json(&mut ws).await?;
    if hello["op"] != "1" {
        bail!("expected Hello (op 1), got {hello}");
    }
    let interval_ms = hello["d"]["heartbeat_interval"]
        .as_u64()
        .with_context(|| format!("Hello without heartbeat_interval: {hello}"))?;
    ws.send(Message::text(
        json!({"n": "core", "op": "2", "d": {"token": token}}).to_string(),
    ))
    .await
    .context("sending Identify")?;
    loop {
        let message = next_json(&mut ws).await?;
        if message["op"] == "12" {
            let s = sequence(&message).unwrap_or(1);
            return Ok((ws, Duration::from_millis(interval_ms), s));
        }
    }
}

fn sequence(message: &Value) -> Option<u64> {
    match &message["s"] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn heartbeat(last: u64) -> Message {
    Message::text(
        json!({"n": "core", "op": "0", "d": {"from": "0", "to": last.to_string(), "except": []}})
            .to_string(),
    )
}

async fn hold(
    url: String,
    token: String,
    offset: f64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let identified = tokio::time::timeout(IDENTIFY_TIMEOUT, identify(&url, &token)).await;
    drop(permit);
    let (mut ws, interval, mut last) = match identified {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            let _ = ready.send(Err(format!("{error:#}")));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err(format!("not identified within {IDENTIFY_TIMEOUT:?}")));
            return;
        }
    };
    drop(token);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    // Beat a little early (the server's grace then never matters), first at a spread offset.
    let period = interval.mul_f64(0.9);
    let mut next_beat = Instant::now() + period.mul_f64(offset.max(0.05));
    let why = loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = ws.close(None).await;
                shared.open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            () = tokio::time::sleep_until(next_beat) => {
                if let Err(error) = ws.send(heartbeat(last)).await {
                    break format!("sending a heartbeat: {error}");
                }
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                next_beat = Instant::now() + period;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let received = now_us();
                    let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                        break format!("a message that is not JSON: {}", text.as_str());
                    };
                    if let Some(s) = sequence(&message) {
                        last = last.max(s);
                    }
                    match message["op"].as_str() {
                        Some("11") => {
                            shared.heartbeat_requests.fetch_add(1, Ordering::Relaxed);
                            if let Err(error) = ws.send(heartbeat(last)).await {
                                break format!("sending a heartbeat: {error}");
                            }
                            shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                            next_beat = Instant::now() + period;
                        }
                        Some("3" | "4" | "6") => on_event(&shared, &message["d"], received),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => break format!("closed by the gateway: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => break format!("connection failed: {error}"),
                None => break "the connection ended".to_owned(),
            },
        }
    };
    shared.open.fetch_sub(1, Ordering::Relaxed);
    if !stop.is_cancelled() {
        shared.note_drop(why);
    }
}

fn on_event(shared: &Shared, d: &Value, received: u64) {
    let (Some(k), Some(t)) = (
        d["bench_k"].as_str().and_then(|k| k.parse::<u64>().ok()),
        d["bench_t"].as_str().and_then(|t| t.parse::<u64>().ok()),
    ) else {
        shared.foreign_events.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.received.fetch_add(1, Ordering::Relaxed);
    if k >= shared.sample_from.load(Ordering::Relaxed) {
        shared
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((k, received.saturating_sub(t)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_over_the_interval() {
        assert!((spread_offset(0, 4) - 0.0).abs() < f64::EPSILON);
        assert!((spread_offset(2, 4) - 0.5).abs() < f64::EPSILON);
        assert!((spread_offset(5, 4) - 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn bench_events_are_timed_and_others_counted() {
        let shared = Shared::default();
        shared.sample_from.store(10, Ordering::Relaxed);
        on_event(&shared, &json!({"bench_k": "12", "bench_t": "1000"}), 3500);
        on_event(&shared, &json!({"bench_k": "3", "bench_t": "1000"}), 3500);
        on_event(&shared, &json!({"cert": "PEM"}), 3500);
        assert_eq!(shared.received.load(Ordering::Relaxed), 2);
        assert_eq!(shared.foreign_events.load(Ordering::Relaxed), 1);
        assert_eq!(shared.take_samples(), vec![(12, 2500)]);
    }
}
