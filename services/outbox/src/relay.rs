//! The relay: delivers a publisher's outbox rows to the events service, in order, one relay
//! per database at a time (see the crate documentation for the guarantees).

use std::time::Duration;

use p2_proto::events::v1::events_client::EventsClient;
use p2_runtime::grpc::TracedChannel;
use p2_runtime::internal::unix_now_ms;
use p2_runtime::storage::Database;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::queue::{self, HeadRow};
use crate::{Message, Outbox};

/// How a relay paces itself. The defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// How often the relay looks for rows nobody woke it for (written by another replica or
    /// process), and how often a replica without the lease tries to take it.
    pub poll_interval: Duration,
    /// Delay after the first failed attempt of a row; doubled per further failure.
    pub min_backoff: Duration,
    /// The longest delay between two attempts of a row.
    pub max_backoff: Duration,
    /// How long the relay lease lasts without renewal: another replica takes over this long
    /// after a holder vanished.
    pub lease: Duration,
    /// Rows read per query.
    pub batch: u32,
    /// Deadline of one call to the events service.
    pub call_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            lease: Duration::from_secs(15),
            batch: 100,
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// The delay before attempt `attempts + 1` of a row that failed `attempts` (≥ 1) times:
/// `min · 2^(attempts-1)`, plus up to a quarter of that as jitter, at most `max`.
pub fn backoff(attempts: u64, min: Duration, max: Duration) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    let base = min.saturating_mul(1u32 << exponent).min(max);
    let jitter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
    let jitter = Duration::from_millis(if jitter_ms == 0 {
        0
    } else {
        rand::random::<u64>() % (jitter_ms + 1)
    });
    base.saturating_add(jitter).min(max)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What one pass over the outbox ended with.
enum Next {
    /// Nothing (more) to send.
    Idle,
    /// The head row is due at this UNIX millisecond.
    DueAt(u64),
    /// Another replica's relay holds the lease.
    NotLeader,
    /// Shutdown.
    Stopped,
}

/// The delivery task of one publisher's outbox.
pub struct Relay {
    db: Database,
    outbox: Outbox,
    client: EventsClient<TracedChannel>,
    options: RelayOptions,
    /// This relay's name in the lease row (random: a restarted process is a new holder).
    holder: String,
    /// UNIX milliseconds until which this relay holds the lease (0: it does not).
    lease_until: u64,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("component", &self.outbox.component())
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay of `outbox`'s rows in `db` to the events service behind `client` (a channel
    /// carrying the publisher's own component credential), with the default pacing.
    pub fn new(db: Database, outbox: Outbox, client: EventsClient<TracedChannel>) -> Self {
        Self {
            db,
            outbox,
            client,
            options: RelayOptions::default(),
            holder: hex::encode(rand::random::<[u8; 8]>()),
            lease_until: 0,
        }
    }

    /// The same relay, paced by `options`.
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs the relay in a task of its own until `stop` is cancelled.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    /// Delivers until `stop` is cancelled, then gives up the lease. A call in flight at that
    /// moment is abandoned: its row stays and is sent again (at least once).
    pub async fn run(mut self, stop: CancellationToken) {
        let component = self.outbox.component();
        tracing::debug!(component, holder = %self.holder, "event outbox relay started");
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.outbox.woken() => {}
                () = tokio::time::sleep(delay) => {}
            }
            delay = match self.pass(&stop).await {
                Ok(Next::Stopped) => break,
                Ok(Next::Idle | Next::NotLeader) => self.options.poll_interval,
                // Woken every poll interval meanwhile, which also renews the lease.
                Ok(Next::DueAt(at)) => Duration::from_millis(at.saturating_sub(unix_now_ms()))
                    .min(self.options.poll_interval),
                Err(error) => {
                    tracing::warn!(
                        component,
                        error = format!("{error:#}"),
                        "event outbox relay: storage failed; retrying"
                    );
                    self.options.poll_interval
                }
            };
        }
        if self.lease_until > 0
            && let Err(error) = queue::release_lease(&self.db, &self.holder).await
        {
            tracing::warn!(
                component,
                error = format!("{error:#}"),
                "event outbox relay: could not release its lease"
            );
        }
        tracing::debug!(component, "event outbox relay stopped");
    }

    /// Takes or renews the lease when less than half of it is left. Whether it holds it.
    async fn lease(&mut self) -> anyhow::Result<bool> {
        let now = unix_now_ms();
        let lease = millis(self.options.lease);
        if self.lease_until > now.saturating_add(lease / 2) {
            return Ok(true);
        }
        let until = now.saturating_add(lease);
        if queue::acquire_lease(&self.db, &self.holder, now, until).await? {
            if self.lease_until == 0 {
                tracing::debug!(component = self.outbox.component(), holder = %self.holder, "event outbox relay took the lease");
            }
            self.lease_until = until;
            Ok(true)
        } else {
            self.lease_until = 0;
            Ok(false)
        }
    }

    /// Sends rows from the head of the outbox until it is empty, its head is not due, the
    /// lease is gone or `stop` is cancelled.
    async fn pass(&mut self, stop: &CancellationToken) -> anyhow::Result<Next> {
        // A look first: an empty outbox needs no lease (no write per poll while idle).
        if queue::head(&self.db, 1).await?.is_empty() {
            return Ok(Next::Idle);
        }
        loop {
            if !self.lease().await? {
                return Ok(Next::NotLeader);
            }
            // Read under the lease: what an earlier holder delivered is gone by now.
            let rows = queue::head(&self.db, self.options.batch).await?;
            if rows.is_empty() {
                return Ok(Next::Idle);
            }
            for row in rows {
                if stop.is_cancelled() {
                    return Ok(Next::Stopped);
                }
                if row.next_attempt_at > unix_now_ms() {
                    return Ok(Next::DueAt(row.next_attempt_at));
                }
                if !self.lease().await? {
                    return Ok(Next::NotLeader);
                }
                match self.deliver(&row, stop).await? {
                    Some(next) => return Ok(next),
                    None => continue,
                }
            }
        }
    }

    /// Sends one row; `None` when it is done with (delivered or rejected), else why the pass
    /// ends.
    async fn deliver(
        &mut self,
        row: &HeadRow,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Next>> {
        let component = self.outbox.component();
        let message = match Message::decode(&row.rpc, &row.request) {
            Ok(message) => message,
            Err(error) => {
                // A row of another version, or damaged: it can never be sent, and keeping it
                // would hold back every event behind it.
                tracing::error!(component, key = %row.idempotency_key, rpc = %row.rpc, error = format!("{error:#}"), "event outbox: dropped a row that cannot be decoded");
                self.outbox.stats().count_rejected(component);
                queue::delete(&self.db, &row.idempotency_key).await?;
                return Ok(None);
            }
        };
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(Some(Next::Stopped)),
            result = self.send(message) => result,
        };
        match result {
            // Counted first: once the row is gone, its count is in.
            Ok(()) => {
                self.outbox.stats().count_delivered(component);
                queue::delete(&self.db, &row.idempotency_key).await?;
                tracing::debug!(component, key = %row.idempotency_key, rpc = %row.rpc, "event outbox: delivered");
                Ok(None)
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                tracing::error!(component, key = %row.idempotency_key, rpc = %row.rpc, message = status.message(), "event outbox: the events service refused a row for good; dropped it");
                self.outbox.stats().count_rejected(component);
                queue::delete(&self.db, &row.idempotency_key).await?;
                Ok(None)
            }
            Err(status) => {
                let attempts = row.attempts.saturating_add(1);
                let delay = backoff(attempts, self.options.min_backoff, self.options.max_backoff);
                let next_attempt_at = unix_now_ms().saturating_add(millis(delay));
                queue::reschedule(&self.db, &row.idempotency_key, attempts, next_attempt_at)
                    .await?;
                // Loud for the first failures and then now and again; a long outage of the
                // events service would otherwise log every 30 s per row at the head.
                if attempts <= 3 || attempts.is_multiple_of(50) {
                    tracing::warn!(component, key = %row.idempotency_key, rpc = %row.rpc, attempts, code = ?status.code(), message = status.message(), retry_in_ms = millis(delay), "event outbox: delivery failed; will retry");
                } else {
                    tracing::debug!(component, key = %row.idempotency_key, attempts, code = ?status.code(), "event outbox: delivery failed; will retry");
                }
                Ok(Some(Next::DueAt(next_attempt_at)))
            }
        }
    }

    /// One call to the events service, with the relay's own deadline.
    async fn send(&mut self, message: Message) -> Result<(), tonic::Status> {
        let timeout = self.options.call_timeout;
        match message {
            Message::Publish(request) => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                self.client.publish(request).await.map(drop)
            }
            Message::OpenSession(request) => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                self.client.open_session(request).await.map(drop)
            }
            Message::CloseSession(request) => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                self.client.close_session(request).await.map(drop)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_floor_to_the_cap_with_bounded_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        for _ in 0..100 {
            let first = backoff(1, min, max);
            assert!(first >= min && first <= min + min / 4, "{first:?}");
            let third = backoff(3, min, max);
            assert!(
                third >= Duration::from_millis(400) && third <= Duration::from_millis(500),
                "{third:?}"
            );
            assert_eq!(backoff(20, min, max), max);
            assert_eq!(backoff(u64::MAX, min, max), max);
        }
    }
}
