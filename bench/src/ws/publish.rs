//! The publisher: `events.Publish` called straight on an events replica with the session
//! service's component credential (publishers are identity and session; API.md "Internal
//! boundary"), at a fixed rate, open loop (a call is started on every tick whether or not the
//! earlier ones have answered), each event to one session — event `k` to connection
//! `k mod N`, so they spread over every held connection. The event is core op 3 whose data
//! carries `bench_k` (its number) and `bench_t` (the publish time, µs on the process clock the
//! clients read too), so latency = receive time at the client − the time the Publish call
//! started: the call itself, the Redis append and wake-up, the events replica's stream, the
//! gateway, the socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2_proto::events::v1 as pb;
use p2_proto::events::v1::events_client::EventsClient;
use p2_runtime::grpc::TracedChannel;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clients::now_us;
use crate::sessions::Session;

/// Most Publish calls in flight; a tick finding none free is counted as skipped.
const MAX_IN_FLIGHT: usize = 2000;

/// What a publishing run did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Calls started (warm-up included).
    pub started: u64,
    /// Calls answered OK.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Ticks skipped because too many calls were in flight.
    pub skipped: u64,
    /// Publish call latencies of the measured events, µs.
    pub call_us: Vec<u64>,
    /// Wall time of the measured part.
    pub elapsed: Duration,
}

/// A client of one events replica.
pub fn client(
    url: &str,
    key: &p2_runtime::internal::InternalKey,
) -> anyhow::Result<EventsClient<TracedChannel>> {
    let credential = key.credential(p2_runtime::internal::Component::Session);
    Ok(EventsClient::new(p2_runtime::grpc::channel(
        url,
        &credential,
    )?))
}

/// Publishes `rate` events per second for `warmup + duration`, event `first + k` to
/// `sessions[k % len]`; returns once every call has answered. Events numbered below
/// `first + warmup_events` are the warm-up's.
pub async fn run(
    events: EventsClient<TracedChannel>,
    sessions: Arc<[Session]>,
    first: u64,
    rate: u32,
    warmup: Duration,
    duration: Duration,
) -> Published {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let warmup_events = (warmup.as_secs_f64() * f64::from(rate)).round() as u64;
    let total = warmup_events + (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let calls = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut published = Published::default();
    let mut measured_start = Instant::now();
    for k in 0..total {
        interval.tick().await;
        if k == warmup_events {
            measured_start = Instant::now();
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            published.skipped += 1;
            continue;
        };
        published.started += 1;
        let number = first + k;
        let session = &sessions[usize::try_from(number).unwrap_or(0) % sessions.len()];
        let target = pb::SessionRef {
            fid: session.fid.clone(),
            session_id: session.session_id.clone(),
        };
        let mut events = events.clone();
        let (ok, failed, first_error, calls) = (
            ok.clone(),
            failed.clone(),
            first_error.clone(),
            calls.clone(),
        );
        let measured = k >= warmup_events;
        tokio::spawn(async move {
            let _permit = permit;
            let sent = now_us();
            let data = format!(r#"{{"bench_k":"{number}","bench_t":"{sent}"}}"#);
            let result = events
                .publish(pb::PublishRequest {
                    audience: Some(pb::Audience {
                        target: Some(pb::audience::Target::Session(target)),
                    }),
                    event: Some(pb::Event {
                        namespace: "core".into(),
                        op: 3,
                        data_json: data,
                        position: 0,
                    }),
                    idempotency_key: format!("ws-bench-{number}-{sent}"),
                })
                .await;
            match result {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        let took = now_us().saturating_sub(sent);
                        calls
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(took);
                    }
                }
                Err(status) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                }
            }
        });
    }
    published.elapsed = measured_start.elapsed();
    // Every call answered (or failed: each has the channel's call timeout).
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    published.ok = ok.load(Ordering::Relaxed);
    published.failed = failed.load(Ordering::Relaxed);
    published.first_error = first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    published.call_us = std::mem::take(
        &mut *calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    published
}

/// The `q` quantile (0..=1) of sorted `values` (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&values, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
