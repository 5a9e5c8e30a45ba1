//! The Redis [`EventStore`] of production, shared by every replica of the events service:
//! one Redis Stream per session log, the open-session sets as sorted sets, every multi-key
//! change one Lua script (atomic per session log, reading Redis's own clock with `TIME`), and
//! wake-ups over Redis Pub/Sub so a subscriber on any replica hears of appends and closes made
//! through any other.
//!
//! Layout (`<p>` is the prefix, [`DEFAULT_PREFIX`] in production; `<s>` a session,
//! `<fid length>:<fid>:<session id>`, unambiguous whatever the session ID holds):
//! - `<p>log:<s>`: STREAM, the log; entry ID `<position>-0`, fields `n`, `op`, `d`; trimmed to
//!   `max_events_per_session` by every `XADD` (exact `MAXLEN`, so the bound is exact).
//! - `<p>pos:<s>`: STRING, the last position assigned (`INCR`).
//! - `<p>cur:<s>`: STRING, the polling cursor.
//! - `<p>rec:<s>`: HASH, the delivery record's connection (`conn`) and the last delivery
//!   dropped from it (`trim`, `<sequence>:<position>`); `<p>recl:<s>`: LIST of the recorded
//!   deliveries, `<sequence>:<position>`, at most `max_events_per_session`.
//! - `<p>closed:<s>`: STRING, the closed mark (`PX` closed TTL).
//! - `<p>actor:<fid>`: ZSET, session ID → last refresh (UNIX ms): the actor's open sessions.
//! - `<p>actors`: ZSET, FID → newest refresh of its sessions: the server-wide audience.
//! - `<p>idem`: ZSET, idempotency key → expiry (UNIX ms), the completed publications;
//!   `<p>idem:<key>`: SET of the sessions one publication reached so far (gone when it
//!   completes; expires with the key otherwise), so a retry skips them.
//! - Pub/Sub channel `<p>wake`: the message is `<s>`, published by the append and close scripts.
//! - Pub/Sub channel `<p>inval`: a batch of the gateways' invalidations
//!   ([`crate::invalidations::encode`]), published by [`EventStore::broadcast`].
//!
//! A session's data keys expire when its membership does (`PEXPIREAT` last refresh + TTL;
//! appends only reach members), the sorted sets with their newest entry, the closed mark and
//! the counter it keeps after a close with the mark: nothing outlives what it accounts for.
//!
//! Scripts that drop evicted sessions build those sessions' key names from the prefix: fine
//! on a single Redis (and its replicas), which is what [`p2_runtime::kv`] connects to; Redis
//! Cluster would need the keys hash-tagged into one slot. Needs Redis ≥ 6.2 (exclusive stream
//! ranges, `ZADD … NX` with `ZRANGE … WITHSCORES`).
//!
//! The Pub/Sub listener ([`RedisEventStore::connect`] spawns it): one connection per store
//! (per process), subscribed to `<p>wake` and `<p>inval`; it wakes the local subscribers of the
//! named session and relays invalidations to this process's feeds ([`crate::invalidations`]).
//! It pings every [`PING_INTERVAL`]; when the connection fails or a ping goes unanswered it
//! reconnects with a backoff ([`RECONNECT_BACKOFF_MIN`] doubling to [`RECONNECT_BACKOFF_MAX`])
//! and, once subscribed again, wakes every local subscriber, which re-reads its log: nothing
//! published meanwhile stays unread. The command connection is a `ConnectionManager`, which
//! reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{BoxFuture, EventStore, Limits, millis};
use crate::invalidations::{Batch, Hub};
use crate::model::{
    Audience, Delivered, Event, LogRead, NewEvent, PollOutcome, ResumeState, SessionKey,
};
use crate::wake::Wakeups;

/// Prefix of every key and channel this service uses.
pub const DEFAULT_PREFIX: &str = "p2:events:";
/// How many sessions one append script writes at most: bounds the time one script blocks
/// Redis during a large fan-out (a server-wide event), while saving round trips.
pub const FANOUT_CHUNK: usize = 128;
/// How many actors one `ZSCAN` step of a server-wide fan-out asks for.
pub const SCAN_COUNT: usize = 256;
/// How often the Pub/Sub listener checks that its connection answers.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping of the Pub/Sub connection may take before it counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before the Pub/Sub listener reconnects.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts of the Pub/Sub listener.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The component name under which failed Redis operations are counted.
const COMPONENT: &str = "events";

/// KEYS: actor ZSET, actors ZSET, closed, pos, log, cur, rec, recl. ARGV: session ID, FID,
/// max sessions per actor, max actors, membership TTL ms, mode (`open`: clear a closed mark,
/// add or refresh; `touch`: add or refresh unless closed; `ensure`: add unless closed, never
/// refresh), key prefix. Returns 1 when the session is a member now, 0 when it is closed
/// recently (nothing changed). Expired and evicted members are dropped with their data.
const JOIN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[5])
local p = ARGV[7]
local function drop(fid, sid)
  local s = string.len(fid) .. ':' .. fid .. ':' .. sid
  redis.call('DEL', p .. 'pos:' .. s, p .. 'log:' .. s, p .. 'cur:' .. s, p .. 'rec:' .. s,
    p .. 'recl:' .. s)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  if ARGV[6] ~= 'open' then
    return 0
  end
  redis.call('DEL', KEYS[3])
  local last = redis.call('GET', KEYS[4])
  if last then
    redis.call('SET', KEYS[6], last)
  end
end
local horizon = now - ttl
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon)) do
  drop(ARGV[2], sid)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
if ARGV[6] == 'ensure' then
  redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local dropped = 0
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess)) do
    if dropped < excess and sid ~= ARGV[1] then
      redis.call('ZREM', KEYS[1], sid)
      drop(ARGV[2], sid)
      dropped = dropped + 1
    end
  end
end
local mine = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(newest[2]) + ttl)
redis.call('ZADD', KEYS[2], 'GT', tonumber(newest[2]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local dropped = 0
  for _, fid in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess)) do
    if dropped < excess and fid ~= ARGV[2] then
      local actor = p .. 'actor:' .. fid
      for _, sid in ipairs(redis.call('ZRANGE', actor, 0, -1)) do
        drop(fid, sid)
      end
      redis.call('DEL', actor)
      redis.call('ZREM', KEYS[2], fid)
      dropped = dropped + 1
    end
  end
end
local newest_actor = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], tonumber(newest_actor[2]) + ttl)
for i = 4, 8 do
  redis.call('PEXPIREAT', KEYS[i], mine + ttl)
end
return 1
";

/// KEYS: the publication's done SET, the idem ZSET, then per session: closed, pos, log, actor
/// ZSET. ARGV: max events, membership TTL ms, namespace, op, data, wake channel, done TTL ms,
/// idempotency key, then per session: its session ID and its encoded name. Appends to every
/// session that is a live member, not closed, and not reached by this publication before —
/// nothing once the publication completed (a concurrent repeat that passed the repeat check
/// before that); returns how many.
const APPEND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local completed = redis.call('ZSCORE', KEYS[2], ARGV[8])
if completed and tonumber(completed) > now then
  return 0
end
local appended = 0
for i = 0, (#KEYS - 2) / 4 - 1 do
  local closed, pos, log, actor = KEYS[3 + 4 * i], KEYS[4 + 4 * i], KEYS[5 + 4 * i], KEYS[6 + 4 * i]
  local sid, member = ARGV[9 + 2 * i], ARGV[10 + 2 * i]
  local score = tonumber(redis.call('ZSCORE', actor, sid))
  if score and score > now - ttl and redis.call('EXISTS', closed) == 0
      and redis.call('SADD', KEYS[1], member) == 1 then
    local position = redis.call('INCR', pos)
    if position == 1 and redis.call('EXISTS', log) == 1 then
      -- The counter was lost but not the log (eviction by a maxmemory policy): continue it.
      local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
      if top[1] then
        position = tonumber(string.match(top[1][1], '^(%d+)')) + 1
        redis.call('SET', pos, string.format('%d', position))
      end
    end
    redis.call('XADD', log, 'MAXLEN', ARGV[1], string.format('%d-0', position),
      'n', ARGV[3], 'op', ARGV[4], 'd', ARGV[5])
    redis.call('PEXPIREAT', pos, score + ttl)
    redis.call('PEXPIREAT', log, score + ttl)
    redis.call('PUBLISH', ARGV[6], member)
    appended = appended + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return appended
";

/// KEYS: actor ZSET. ARGV: membership TTL ms. Returns the live members' session IDs.
const MEMBERS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now - tonumber(ARGV[1])), '+inf')
";

/// KEYS: idem ZSET. ARGV: key. Returns 1 when the key's publication completed and the key is
/// still remembered.
const REPEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expires and tonumber(expires) > now then
  return 1
end
return 0
";

/// KEYS: idem ZSET, the publication's done SET. ARGV: key, TTL ms, capacity. Marks the
/// publication complete: prunes expired keys, adds this one, drops the oldest beyond the
/// capacity, forgets which sessions it reached.
const COMPLETE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  redis.call('ZPOPMIN', KEYS[1], excess)
end
redis.call('PEXPIREAT', KEYS[1], now + ttl)
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: actor ZSET, actors ZSET, closed, pos, log, cur, rec, recl. ARGV: session ID, FID,
/// closed TTL ms, wake channel, encoded session.
const CLOSE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7], KEYS[8])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// KEYS: closed, pos, log, cur. ARGV: limit, membership TTL ms. Returns {truncated, entries
/// newest first}.
const POLL_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, {}}
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor = tonumber(redis.call('GET', KEYS[4]) or '0')
if cursor > last then
  cursor = last
end
local limit = tonumber(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[3], '+', '(' .. string.format('%d', cursor) .. '-0',
  'COUNT', limit + 1)
local truncated = 0
if #newest > limit then
  table.remove(newest)
  truncated = 1
end
if truncated == 0 and last > cursor then
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  local oldest = last + 1
  if first[1] then
    oldest = tonumber(string.match(first[1][1], '^(%d+)'))
  end
  if oldest > cursor + 1 then
    truncated = 1
  end
end
if #newest > 0 then
  redis.call('SET', KEYS[4], string.match(newest[1][1], '^(%d+)'), 'PX', ARGV[2])
end
return {truncated, newest}
";

/// KEYS: closed, rec HASH, recl LIST, cur, pos. ARGV: connection ID, max deliveries,
/// membership TTL ms, highest position of the batch, then the deliveries
/// (`<sequence>:<position>`). Replaces the record of another connection, appends, trims to
/// the bound (remembering the last delivery dropped), moves the cursor up.
const RECORD_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('HGET', KEYS[2], 'conn') ~= ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[2], 'conn', ARGV[1])
end
if #ARGV > 4 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 5))
  local excess = redis.call('LLEN', KEYS[3]) - tonumber(ARGV[2])
  if excess > 0 then
    redis.call('HSET', KEYS[2], 'trim', redis.call('LINDEX', KEYS[3], excess - 1))
    redis.call('LTRIM', KEYS[3], excess, -1)
  end
  local highest = tonumber(ARGV[4])
  local last = tonumber(redis.call('GET', KEYS[5]) or '0')
  if highest > last then
    highest = last
  end
  if highest > tonumber(redis.call('GET', KEYS[4]) or '0') then
    redis.call('SET', KEYS[4], string.format('%d', highest))
  end
end
for i = 2, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
";

/// The keys of one session.
struct SessionKeys {
    closed: String,
    pos: String,
    log: String,
    cur: String,
    rec: String,
    recl: String,
    actor: String,
}

/// The Redis event store.
pub struct RedisEventStore {
    conn: ConnectionManager,
    prefix: String,
    channel: String,
    inval_channel: String,
    limits: Limits,
    wakeups: Arc<Wakeups>,
    hub: Arc<Hub>,
    subscriptions: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("prefix", &self.prefix)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RedisEventStore {
    /// Connects to `url` (checking that it answers), keeping keys under `prefix`
    /// ([`DEFAULT_PREFIX`] in production; tests use a unique one each), and spawns the Pub/Sub
    /// listener, which runs until `stop` is cancelled.
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: Limits,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let conn = p2_runtime::kv::connect(url, COMPONENT).await?;
        let client = redis::Client::open(url).with_context(|| {
            format!(
                "cannot connect to the events Redis at {}",
                p2_runtime::redact_url(url)
            )
        })?;
        let wakeups = Wakeups::new();
        let channel = format!("{prefix}wake");
        let inval_channel = format!("{prefix}inval");
        let hub = Hub::new(false);
        let subscriptions = Arc::new(AtomicU64::new(0));
        tokio::spawn(listen(
            client,
            Listener {
                wake_channel: channel.clone(),
                inval_channel: inval_channel.clone(),
                wakeups: wakeups.clone(),
                hub: hub.clone(),
                subscriptions: subscriptions.clone(),
            },
            stop,
        ));
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            channel,
            inval_channel,
            limits,
            wakeups,
            hub,
            subscriptions,
        })
    }

    /// How many times the Pub/Sub listener subscribed so far (1 once it is up; each reconnect
    /// adds one).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    fn keys(&self, session: &SessionKey) -> SessionKeys {
        let p = &self.prefix;
        let s = session.encoded();
        SessionKeys {
            closed: format!("{p}closed:{s}"),
            pos: format!("{p}pos:{s}"),
            log: format!("{p}log:{s}"),
            cur: format!("{p}cur:{s}"),
            rec: format!("{p}rec:{s}"),
            recl: format!("{p}recl:{s}"),
            actor: self.actor_key(session.fid()),
        }
    }

    fn actor_key(&self, fid: &str) -> String {
        format!("{}actor:{fid}", self.prefix)
    }

    fn actors_key(&self) -> String {
        format!("{}actors", self.prefix)
    }

    fn idem_key(&self) -> String {
        format!("{}idem", self.prefix)
    }

    fn done_key(&self, idempotency_key: &str) -> String {
        format!("{}idem:{idempotency_key}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        operation: &'static str,
    ) -> anyhow::Result<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .instrument(p2_runtime::kv::span(operation))
            .await
            .inspect_err(|_| p2_runtime::metrics::redis_error(COMPONENT, operation))
            .with_context(|| format!("Redis {operation}"))
    }

    async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        operation: &'static str,
    ) -> anyhow::Result<T> {
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn)
            .instrument(p2_runtime::kv::span(operation))
            .await
            .inspect_err(|_| p2_runtime::metrics::redis_error(COMPONENT, operation))
            .with_context(|| format!("Redis {operation}"))
    }

    async fn join(&self, session: &SessionKey, mode: &str) -> anyhow::Result<bool> {
        let k = self.keys(session);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(JOIN_SCRIPT)
            .arg(8)
            .arg(&k.actor)
            .arg(self.actors_key())
            .arg(&k.closed)
            .arg(&k.pos)
            .arg(&k.log)
            .arg(&k.cur)
            .arg(&k.rec)
            .arg(&k.recl)
            .arg(session.session_id())
            .arg(session.fid())
            .arg(self.limits.max_sessions_per_actor)
            .arg(self.limits.max_actors)
            .arg(millis(self.limits.membership_ttl))
            .arg(mode)
            .arg(&self.prefix);
        let joined: i64 = self.run(&cmd, "events_join").await?;
        Ok(joined == 1)
    }

    /// The live member sessions of `fid`.
    async fn members(&self, fid: &str) -> anyhow::Result<Vec<SessionKey>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(MEMBERS_SCRIPT)
            .arg(1)
            .arg(self.actor_key(fid))
            .arg(millis(self.limits.membership_ttl));
        let sids: Vec<String> = self.run(&cmd, "events_members").await?;
        Ok(sids
            .iter()
            .map(|sid| SessionKey::trusted(fid, sid))
            .collect())
    }

    /// Appends `event` to every live member session of every actor, one `ZSCAN` page of
    /// actors at a time (so memory holds one page's sessions, never the whole server's).
    /// `ZSCAN` returns every actor present throughout the scan at least once; one returned
    /// twice is harmless, the publication's done set skips its sessions.
    async fn append_to_everyone(
        &self,
        idempotency_key: &str,
        event: &NewEvent,
    ) -> anyhow::Result<u32> {
        let (secs, micros): (u64, u64) = self.run(&redis::cmd("TIME"), "events_time").await?;
        let now = secs * 1000 + micros / 1000;
        let horizon = now.saturating_sub(millis(self.limits.membership_ttl));
        let mut appended = 0u32;
        let mut cursor = String::from("0");
        loop {
            let mut scan = redis::cmd("ZSCAN");
            scan.arg(self.actors_key())
                .arg(&cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, page): (String, Vec<(String, f64)>) = self.run(&scan, "events_scan").await?;
            let fids: Vec<String> = page
                .into_iter()
                // Scores are UNIX ms, exact in an f64.
                .filter(|(_, refreshed)| *refreshed > horizon as f64)
                .map(|(fid, _)| fid)
                .collect();
            if !fids.is_empty() {
                let mut pipe = redis::pipe();
                for fid in &fids {
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(self.actor_key(fid))
                        .arg(format!("({horizon}"))
                        .arg("+inf");
                }
                let per_actor: Vec<Vec<String>> = self.run_pipe(&pipe, "events_members").await?;
                let sessions: Vec<SessionKey> = fids
                    .iter()
                    .zip(per_actor)
                    .flat_map(|(fid, sids)| {
                        sids.into_iter()
                            .map(|sid| SessionKey::trusted(fid, &sid))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let reached = self.append(idempotency_key, &sessions, event).await?;
                appended = appended.saturating_add(reached);
            }
            if next == "0" {
                return Ok(appended);
            }
            cursor = next;
        }
    }

    /// Appends `event` to `sessions` (in chunks of [`FANOUT_CHUNK`]), skipping those the
    /// publication reached already (its done set), and all once it completed.
    async fn append(
        &self,
        idempotency_key: &str,
        sessions: &[SessionKey],
        event: &NewEvent,
    ) -> anyhow::Result<u32> {
        let done = self.done_key(idempotency_key);
        let mut appended = 0u32;
        for chunk in sessions.chunks(FANOUT_CHUNK) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(APPEND_SCRIPT)
                .arg(2 + 4 * chunk.len())
                .arg(&done)
                .arg(self.idem_key());
            for session in chunk {
                let k = self.keys(session);
                cmd.arg(k.closed).arg(k.pos).arg(k.log).arg(k.actor);
            }
            cmd.arg(self.limits.max_events_per_session)
                .arg(millis(self.limits.membership_ttl))
                .arg(&event.namespace)
                .arg(event.op)
                .arg(&event.data_json)
                .arg(&self.channel)
                .arg(millis(self.limits.idempotency_ttl))
                .arg(idempotency_key);
            for session in chunk {
                cmd.arg(session.session_id()).arg(session.encoded());
            }
            let n: u32 = self.run(&cmd, "events_append").await?;
            appended = appended.saturating_add(n);
        }
        Ok(appended)
    }
}

/// An event from a stream entry (`[id, [field, value, …]]`).
fn parse_entry(entry: &Value) -> anyhow::Result<Event> {
    let Value::Array(parts) = entry else {
        anyhow::bail!("a stream entry is not an array: {entry:?}");
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        anyhow::bail!("a stream entry has no fields: {entry:?}");
    };
    let id: String = redis::from_redis_value_ref(id).context("stream entry ID")?;
    let position = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .with_context(|| format!("stream entry ID {id:?}"))?;
    let (mut namespace, mut op, mut data_json) = (None, None, None);
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            anyhow::bail!("odd stream entry fields: {entry:?}");
        };
        let name: String = redis::from_redis_value_ref(name).context("stream field name")?;
        let value: String = redis::from_redis_value_ref(value).context("stream field")?;
        match name.as_str() {
            "n" => namespace = Some(value),
            "op" => op = Some(value.parse::<u16>().context("stream field op")?),
            "d" => data_json = Some(value),
            _ => {}
        }
    }
    match (namespace, op, data_json) {
        (Some(namespace), Some(op), Some(data_json)) => Ok(Event {
            position,
            namespace,
            op,
            data_json,
        }),
        _ => anyhow::bail!("stream entry {id} lacks a field"),
    }
}

fn parse_entries(value: &Value) -> anyhow::Result<Vec<Event>> {
    match value {
        Value::Array(entries) => entries.iter().map(parse_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => anyhow::bail!("stream entries are not an array: {other:?}"),
    }
}

fn oldest_of(first: &Value) -> anyhow::Result<Option<u64>> {
    Ok(parse_entries(first)?.first().map(|e| e.position))
}

impl EventStore for RedisEventStore {
    fn publish<'a>(
        &'a self,
        audience: &'a Audience,
        event: &'a NewEvent,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<u32>>> {
        Box::pin(async move {
            let mut repeat = redis::cmd("EVAL");
            repeat
                .arg(REPEAT_SCRIPT)
                .arg(1)
                .arg(self.idem_key())
                .arg(idempotency_key);
            let seen: i64 = self.run(&repeat, "events_repeat").await?;
            if seen == 1 {
                return Ok(None);
            }
            let appended = match audience {
                Audience::Session(session) => {
                    if self.join(session, "ensure").await? {
                        self.append(idempotency_key, std::slice::from_ref(session), event)
                            .await?
                    } else {
                        0
                    }
                }
                Audience::Actor { fid, except } => {
                    let sessions: Vec<SessionKey> = self
                        .members(fid)
                        .await?
                        .into_iter()
                        .filter(|s| except.as_deref() != Some(s.session_id()))
                        .collect();
                    self.append(idempotency_key, &sessions, event).await?
                }
                Audience::Server => self.append_to_everyone(idempotency_key, event).await?,
            };
            let mut complete = redis::cmd("EVAL");
            complete
                .arg(COMPLETE_SCRIPT)
                .arg(2)
                .arg(self.idem_key())
                .arg(self.done_key(idempotency_key))
                .arg(idempotency_key)
                .arg(millis(self.limits.idempotency_ttl))
                .arg(self.limits.max_idempotency_keys);
            let _: i64 = self.run(&complete, "events_complete").await?;
            Ok(Some(appended))
        })
    }

    fn open<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.join(session, "open").await?;
            Ok(())
        })
    }

    fn touch<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(self.join(session, "touch"))
    }

    fn close<'a>(&'a self, session: &'a SessionKey) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let k = self.keys(session);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(CLOSE_SCRIPT)
                .arg(8)
                .arg(&k.actor)
                .arg(self.actors_key())
                .arg(&k.closed)
                .arg(&k.pos)
                .arg(&k.log)
                .arg(&k.cur)
                .arg(&k.rec)
                .arg(&k.recl)
                .arg(session.session_id())
                .arg(session.fid())
                .arg(millis(self.limits.closed_ttl))
                .arg(&self.channel)
                .arg(session.encoded());
            let _: i64 = self.run(&cmd, "events_close").await?;
            Ok(())
        })
    }

    fn read<'a>(
        &'a self,
        session: &'a SessionKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<LogRead>> {
        Box::pin(async move {
            let k = self.keys(session);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .exists(&k.closed)
                .get(&k.pos)
                .cmd("XRANGE")
                .arg(&k.log)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("XRANGE")
                .arg(&k.log)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1));
            let (closed, last, first, events): (bool, Option<u64>, Value, Value) =
                self.run_pipe(&pipe, "events_read").await?;
            if closed {
                return Ok(LogRead {
                    closed: true,
                    ..LogRead::default()
                });
            }
            Ok(LogRead {
                closed: false,
                last_position: last.unwrap_or(0),
                oldest_retained: oldest_of(&first)?,
                events: parse_entries(&events)?,
            })
        })
    }

    fn poll<'a>(
        &'a self,
        session: &'a SessionKey,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<PollOutcome>> {
        Box::pin(async move {
            let k = self.keys(session);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(POLL_SCRIPT)
                .arg(4)
                .arg(&k.closed)
                .arg(&k.pos)
                .arg(&k.log)
                .arg(&k.cur)
                .arg(limit.max(1))
                .arg(millis(self.limits.membership_ttl));
            let (truncated, newest): (i64, Value) = self.run(&cmd, "events_poll").await?;
            let mut events = parse_entries(&newest)?;
            events.reverse();
            Ok(PollOutcome {
                events,
                truncated: truncated == 1,
            })
        })
    }

    fn record<'a>(
        &'a self,
        session: &'a SessionKey,
        connection_id: &'a str,
        delivered: &'a [Delivered],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let k = self.keys(session);
            let highest = delivered.iter().map(|d| d.position).max().unwrap_or(0);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RECORD_SCRIPT)
                .arg(5)
                .arg(&k.closed)
                .arg(&k.rec)
                .arg(&k.recl)
                .arg(&k.cur)
                .arg(&k.pos)
                .arg(connection_id)
                .arg(self.limits.max_events_per_session)
                .arg(millis(self.limits.membership_ttl))
                .arg(highest);
            for d in delivered {
                cmd.arg(d.encode());
            }
            let _: i64 = self.run(&cmd, "events_record").await?;
            Ok(())
        })
    }

    fn resume_state<'a>(
        &'a self,
        session: &'a SessionKey,
    ) -> BoxFuture<'a, anyhow::Result<ResumeState>> {
        Box::pin(async move {
            let k = self.keys(session);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .exists(&k.closed)
                .hget(&k.rec, "conn")
                .hget(&k.rec, "trim")
                .lrange(&k.recl, 0, -1)
                .cmd("XRANGE")
                .arg(&k.log)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .get(&k.pos);
            #[allow(clippy::type_complexity)]
            let (closed, conn, trim, list, first, last): (
                bool,
                Option<String>,
                Option<String>,
                Vec<String>,
                Value,
                Option<u64>,
            ) = self.run_pipe(&pipe, "events_resume").await?;
            if closed {
                return Ok(ResumeState {
                    closed: true,
                    ..ResumeState::default()
                });
            }
            let delivered = list
                .iter()
                .map(|text| {
                    Delivered::decode(text)
                        .with_context(|| format!("a delivery record entry {text:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ResumeState {
                closed: false,
                connection_id: conn,
                trimmed_through: trim
                    .as_deref()
                    .and_then(Delivered::decode)
                    .map(|d| d.sequence),
                delivered,
                oldest_retained: oldest_of(&first)?,
                last_position: last.unwrap_or(0),
            })
        })
    }

    fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    fn invalidations(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn broadcast<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("PUBLISH")
                .arg(&self.inval_channel)
                .arg(crate::invalidations::encode(batch))
                .query_async::<Value>(&mut conn)
                .instrument(p2_runtime::kv::span("PUBLISH"))
                .await
                .context("cannot publish invalidations to Redis")?;
            Ok(())
        })
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(p2_runtime::kv::ping(&self.conn))
    }
}

/// What the Pub/Sub listener serves.
struct Listener {
    wake_channel: String,
    inval_channel: String,
    wakeups: Arc<Wakeups>,
    hub: Arc<Hub>,
    subscriptions: Arc<AtomicU64>,
}

/// The Pub/Sub listener: subscribes to the wake-up and invalidation channels, wakes the named
/// sessions' subscribers and relays invalidations to this process's feeds, reconnects with a
/// backoff, and after each (re)subscription wakes everyone and lets feeds go live again (the
/// ones open when the connection was lost ended: what was published meanwhile is lost).
async fn listen(client: redis::Client, listener: Listener, stop: CancellationToken) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[&listener.wake_channel, &listener.inval_channel])
                .await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = tokio::time::timeout(p2_runtime::kv::CONNECT_TIMEOUT, attempt) => outcome,
        };
        match outcome {
            Ok(Ok(pubsub)) => {
                backoff = RECONNECT_BACKOFF_MIN;
                // Whatever was appended while no subscription was in place: re-read it.
                listener.wakeups.wake_all();
                listener.hub.source_up();
                listener.subscriptions.fetch_add(1, Ordering::Relaxed);
                let lost = pump(pubsub, &listener, &stop).await;
                listener.hub.source_down();
                if stop.is_cancelled() {
                    return;
                }
                p2_runtime::metrics::redis_error(COMPONENT, "events_pubsub");
                tracing::warn!(
                    reason = lost,
                    "events Pub/Sub connection lost; resubscribing"
                );
                continue;
            }
            Ok(Err(error)) => {
                p2_runtime::metrics::redis_error(COMPONENT, "events_pubsub");
                tracing::warn!(%error, ?backoff, "cannot subscribe to the events Pub/Sub channels");
            }
            Err(_) => {
                p2_runtime::metrics::redis_error(COMPONENT, "events_pubsub");
                tracing::warn!(
                    ?backoff,
                    "subscribing to the events Pub/Sub channels timed out"
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Wakes sessions and relays invalidations as their messages arrive until the connection is
/// lost (or `stop`); returns why it ended.
async fn pump(
    pubsub: redis::aio::PubSub,
    listener: &Listener,
    stop: &CancellationToken,
) -> &'static str {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return "stopped",
            message = stream.next() => match message {
                Some(message) => {
                    let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
                        continue;
                    };
                    if message.get_channel_name() == listener.inval_channel {
                        listener.hub.deliver(crate::invalidations::decode(payload).into());
                    } else {
                        listener.wakeups.wake(payload);
                    }
                }
                None => return "the connection closed",
            },
            _ = ping.tick() => {
                let answered = tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return "a ping went unanswered";
                }
            }
        }
    }
}
