//! The per-connection bookkeeping of the gateway, each piece bounded and clock-driven by the
//! caller (pure, so it is tested without sockets): the sequence counter, the buffer of sent
//! messages for re-sends, the heartbeat clock, and the rate limiter.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

/// The connection's sequence numbers (spec 3.2.1.3): 0 for the first server message, then
/// one more for every message.
#[derive(Debug, Default)]
pub struct Sequencer {
    next: u64,
    exhausted: bool,
}

impl Sequencer {
    /// A counter whose next number is `next` (tests start near the end).
    pub fn starting_at(next: u64) -> Self {
        Self {
            next,
            exhausted: false,
        }
    }

    /// The number of the next message; `None` once every u64 was used (the spec then wants a
    /// fresh, non-resumed connection: 4010).
    pub fn take(&mut self) -> Option<u64> {
        if self.exhausted {
            return None;
        }
        let number = self.next;
        match self.next.checked_add(1) {
            Some(next) => self.next = next,
            None => self.exhausted = true,
        }
        Some(number)
    }

    /// The highest number handed out, if any.
    pub fn last(&self) -> Option<u64> {
        if self.exhausted {
            Some(u64::MAX)
        } else {
            self.next.checked_sub(1)
        }
    }
}

/// The server messages sent last, by sequence number, for re-sending what a heartbeat lists
/// in `except` (spec 3.2.6). Bounded by a message count and by bytes; the oldest go first.
/// Heartbeat ACKs are never stored (spec 3.2.3.8: they must not appear in an ACK).
#[derive(Debug)]
pub struct SentBuffer {
    messages: VecDeque<(u64, Utf8Bytes)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl SentBuffer {
    /// A buffer of at most `max_messages` messages and `max_bytes` bytes of text.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Remembers message `sequence` (numbers must increase); evicts the oldest past the bounds.
    /// A message larger than the whole byte budget is not kept.
    pub fn push(&mut self, sequence: u64, text: Utf8Bytes) {
        let len = text.as_str().len();
        if self.max_messages == 0 || len > self.max_bytes {
            return;
        }
        self.messages.push_back((sequence, text));
        self.bytes += len;
        while self.messages.len() > self.max_messages || self.bytes > self.max_bytes {
            match self.messages.pop_front() {
                Some((_, old)) => self.bytes -= old.as_str().len(),
                None => break,
            }
        }
    }

    /// Message `sequence`, if still held.
    pub fn get(&self, sequence: u64) -> Option<&Utf8Bytes> {
        let index = self
            .messages
            .binary_search_by_key(&sequence, |(s, _)| *s)
            .ok()?;
        self.messages.get(index).map(|(_, text)| text)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// What the heartbeat clock asks for when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// Send a heartbeat request (op 11).
    RequestHeartbeat,
    /// The requested heartbeat did not come either: close (4009).
    TimedOut,
}

/// When a heartbeat is due (spec 3.2.2): the client heartbeats every `interval`; one that is
/// `grace` late gets a heartbeat request, and one that then stays silent for another `grace`
/// is timed out. The grace covers the time the heartbeat takes to arrive.
#[derive(Debug)]
pub struct HeartbeatClock {
    interval: Duration,
    grace: Duration,
    last: Instant,
    requested: Option<Instant>,
}

impl HeartbeatClock {
    /// A clock whose first heartbeat is due `interval` after `now` (the Hello).
    pub fn new(interval: Duration, grace: Duration, now: Instant) -> Self {
        Self {
            interval,
            grace,
            last: now,
            requested: None,
        }
    }

    /// When [`HeartbeatClock::overdue`] must be asked next.
    pub fn deadline(&self) -> Instant {
        match self.requested {
            Some(at) => at + self.grace,
            None => self.last + self.interval + self.grace,
        }
    }

    /// A heartbeat arrived at `now`: the next is due an interval later.
    pub fn beat(&mut self, now: Instant) {
        self.last = now;
        self.requested = None;
    }

    /// What to do at `now`, when the deadline may have passed: nothing (`None`), a heartbeat
    /// request (then the clock waits `grace` for it), or a timeout.
    pub fn overdue(&mut self, now: Instant) -> Option<Overdue> {
        if now < self.deadline() {
            return None;
        }
        if self.requested.is_some() {
            return Some(Overdue::TimedOut);
        }
        self.requested = Some(now);
        Some(Overdue::RequestHeartbeat)
    }
}

/// A token bucket over the messages one connection sends: `burst` at once, refilled at
/// `burst` per `window`. `burst` 0 means no limit.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` messages refilled over `window`.
    pub fn new(burst: u32, window: Duration, now: Instant) -> Self {
        let burst = f64::from(burst);
        let seconds = window.as_secs_f64().max(0.001);
        Self {
            burst,
            per_second: burst / seconds,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one message's token at `now`; `false` when the connection is over its rate.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.burst == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_at_zero_and_end_at_u64_max() {
        let mut sequencer = Sequencer::default();
        assert_eq!(sequencer.last(), None);
        assert_eq!(sequencer.take(), Some(0));
        assert_eq!(sequencer.take(), Some(1));
        assert_eq!(sequencer.last(), Some(1));
        let mut end = Sequencer::starting_at(u64::MAX - 1);
        assert_eq!(end.take(), Some(u64::MAX - 1));
        assert_eq!(end.take(), Some(u64::MAX));
        assert_eq!(end.last(), Some(u64::MAX));
        assert_eq!(end.take(), None);
        assert_eq!(end.take(), None);
        assert_eq!(end.last(), Some(u64::MAX));
    }

    #[test]
    fn the_sent_buffer_keeps_the_newest_messages_within_its_bounds() {
        let mut buffer = SentBuffer::new(3, 1000);
        for s in 0..5u64 {
            buffer.push(s, Utf8Bytes::from(format!("m{s}")));
        }
        assert_eq!(buffer.len(), 3);
        assert!(buffer.get(1).is_none());
        assert_eq!(buffer.get(2).map(Utf8Bytes::as_str), Some("m2"));
        assert_eq!(buffer.get(4).map(Utf8Bytes::as_str), Some("m4"));
        assert!(buffer.get(5).is_none());
        // By bytes: 10-byte messages in a 25-byte budget keep two.
        let mut small = SentBuffer::new(100, 25);
        for s in 0..4u64 {
            small.push(s, Utf8Bytes::from(format!("{s:010}")));
        }
        assert_eq!(small.len(), 2);
        assert_eq!(small.bytes(), 20);
        assert!(small.get(1).is_none() && small.get(3).is_some());
        // Larger than the whole budget: not kept, nothing evicted for it.
        small.push(9, Utf8Bytes::from("x".repeat(26)));
        assert_eq!(small.len(), 2);
        assert!(small.get(9).is_none());
        let mut off = SentBuffer::new(0, 25);
        off.push(0, Utf8Bytes::from("a"));
        assert!(off.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_heartbeat_is_requested_then_timed_out() {
        let interval = Duration::from_secs(45);
        let grace = Duration::from_secs(10);
        let start = Instant::now();
        let mut clock = HeartbeatClock::new(interval, grace, start);
        assert_eq!(clock.deadline(), start + Duration::from_secs(55));
        tokio::time::advance(Duration::from_secs(54)).await;
        assert_eq!(clock.overdue(Instant::now()), None);
        // On time (within the grace): the next is due an interval after it.
        clock.beat(Instant::now());
        assert_eq!(clock.deadline(), start + Duration::from_secs(109));
        tokio::time::sleep_until(clock.deadline()).await;
        assert_eq!(
            clock.overdue(Instant::now()),
            Some(Overdue::RequestHeartbeat)
        );
        assert_eq!(clock.deadline(), start + Duration::from_secs(119));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.overdue(Instant::now()), None);
        tokio::time::sleep_until(clock.deadline()).await;
        assert_eq!(clock.overdue(Instant::now()), Some(Overdue::TimedOut));
        // A heartbeat after a request clears it.
        let mut answered = HeartbeatClock::new(interval, grace, Instant::now());
        tokio::time::sleep_until(answered.deadline()).await;
        assert_eq!(
            answered.overdue(Instant::now()),
            Some(Overdue::RequestHeartbeat)
        );
        answered.beat(Instant::now());
        tokio::time::advance(Duration::from_secs(54)).await;
        assert_eq!(answered.overdue(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_allows_a_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(60, Duration::from_secs(10), Instant::now());
        for _ in 0..60 {
            assert!(bucket.take(Instant::now()));
        }
        assert!(!bucket.take(Instant::now()));
        // 6 messages per second come back.
        tokio::time::advance(Duration::from_millis(500)).await;
        for _ in 0..3 {
            assert!(bucket.take(Instant::now()));
        }
        assert!(!bucket.take(Instant::now()));
        // Never more than the burst, however long the pause.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..60 {
            assert!(bucket.take(Instant::now()));
        }
        assert!(!bucket.take(Instant::now()));
        let mut unlimited = TokenBucket::new(0, Duration::from_secs(1), Instant::now());
        for _ in 0..10_000 {
            assert!(unlimited.take(Instant::now()));
        }
    }
}
