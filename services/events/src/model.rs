//! The events domain, pure: which session a log belongs to, what an event is, who receives a
//! publication, what a connection delivered, and where a resume continues. Every value here
//! was checked at the edge ([`crate::grpc`]), so the stores and the feed never see bad input.

use crate::error::EventsError;

/// Longest `data_json` of an event, in bytes: 64 KiB, the largest frame the gateway accepts
/// from a client (`--max-body-bytes`), so an event always fits a frame. A core event carries
/// at most a PEM certificate and a few numbers (about 3 KiB). With the per-session bound
/// (`--max-events-per-session`) this bounds one session's log at `max events × 64 KiB`.
pub const MAX_DATA_JSON_BYTES: usize = 64 * 1024;
/// Longest idempotency key, in bytes (an outbox row ID is far shorter).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Longest connection ID the gateway may record, in bytes.
pub const MAX_CONNECTION_ID_BYTES: usize = 128;
/// Most deliveries one RecordDelivered call may carry.
pub const MAX_DELIVERED_PER_RECORD: usize = 1000;
/// Default number of events one Poll returns.
pub const DEFAULT_POLL_LIMIT: u32 = 100;
/// Most events one Poll may return.
pub const MAX_POLL_LIMIT: u32 = 1000;

/// One session's identity: the actor's normalised FID and the session ID. Two sessions are the
/// same exactly when both parts are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    fid: String,
    session_id: String,
    /// `<byte length of fid>:<fid>:<session id>`: unambiguous whatever the session ID holds
    /// (the length fixes where the FID ends). Names the session in Redis keys and wake-ups.
    encoded: String,
}

impl SessionKey {
    /// A session from a FID and a session ID given in a request: the FID is parsed and
    /// normalised (spec 5), the session ID checked (spec 6.1.1.3).
    pub fn parse(fid: &str, session_id: &str) -> Result<Self, EventsError> {
        Ok(Self::trusted(
            &parse_fid(fid)?,
            &parse_session_id(session_id)?,
        ))
    }

    /// A session named by a verified caller assertion (minted by the session service from the
    /// FID and session ID it stored): taken as it is.
    pub fn trusted(fid: &str, session_id: &str) -> Self {
        Self {
            fid: fid.to_owned(),
            session_id: session_id.to_owned(),
            encoded: format!("{}:{fid}:{session_id}", fid.len()),
        }
    }

    /// The actor's FID.
    pub fn fid(&self) -> &str {
        &self.fid
    }

    /// The session ID.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The unambiguous one-string form (`<fid length>:<fid>:<session id>`).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {:?}", self.fid, self.session_id)
    }
}

/// A normalised FID, or why the text is none.
pub fn parse_fid(fid: &str) -> Result<String, EventsError> {
    if fid.is_empty() {
        return Err(EventsError::InvalidArgument(
            "fid must not be empty: give the actor's federation ID (local@domain)".into(),
        ));
    }
    p2_model::FederationId::parse(fid)
        .map(|fid| fid.as_str().to_owned())
        .map_err(|e| EventsError::InvalidArgument(format!("fid {fid:?}: {e}")))
}

/// A valid session ID, or why the text is none.
pub fn parse_session_id(session_id: &str) -> Result<String, EventsError> {
    p2_model::SessionId::parse(session_id)
        .map(|sid| sid.as_str().to_owned())
        .map_err(|e| EventsError::InvalidArgument(format!("session_id {session_id:?}: {e}")))
}

/// An event to publish (its position is assigned per receiving session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Namespace (spec 8.2), `core` for core events.
    pub namespace: String,
    /// Opcode (spec 3.2.1: uint16).
    pub op: u16,
    /// The event's `d`, as JSON text (checked to parse).
    pub data_json: String,
}

impl NewEvent {
    /// Checks the namespace (spec 8.2: 2–64 of `[a-z0-9_-]`), the opcode (≤ 65535) and that
    /// `data_json` is JSON of at most [`MAX_DATA_JSON_BYTES`].
    pub fn parse(namespace: &str, op: u32, data_json: &str) -> Result<Self, EventsError> {
        check_namespace(namespace)?;
        let op = u16::try_from(op).map_err(|_| {
            EventsError::InvalidArgument(format!("op {op} is not a uint16 (0 to 65535)"))
        })?;
        if data_json.len() > MAX_DATA_JSON_BYTES {
            return Err(EventsError::InvalidArgument(format!(
                "data_json is {} bytes; an event's data may be at most {MAX_DATA_JSON_BYTES}",
                data_json.len()
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(data_json).is_err() {
            return Err(EventsError::InvalidArgument(
                "data_json is not JSON text (use null for an event without data)".into(),
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            op,
            data_json: data_json.to_owned(),
        })
    }
}

/// Checks a namespace against spec 8.2: 2 to 64 lowercase letters, digits, `-` and `_`.
pub fn check_namespace(namespace: &str) -> Result<(), EventsError> {
    let ok = (2..=64).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EventsError::InvalidArgument(format!(
            "namespace {namespace:?} must be 2 to 64 characters of [a-z0-9_-] (spec 8.2)"
        )))
    }
}

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes.
pub fn check_idempotency_key(key: &str) -> Result<(), EventsError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(EventsError::InvalidArgument(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes (e.g. the outbox \
             row's ID)"
        )));
    }
    Ok(())
}

/// One event of a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the session's log: 1, 2, 3, … never reused.
    pub position: u64,
    /// Namespace.
    pub namespace: String,
    /// Opcode.
    pub op: u16,
    /// `d` as JSON text.
    pub data_json: String,
}

impl Event {
    /// `event` at `position`.
    pub fn at(position: u64, event: &NewEvent) -> Self {
        Self {
            position,
            namespace: event.namespace.clone(),
            op: event.op,
            data_json: event.data_json.clone(),
        }
    }
}

/// Who receives a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One session (opened implicitly unless it was closed recently).
    Session(SessionKey),
    /// Every open session of an actor, but `except` when set.
    Actor {
        /// The actor's normalised FID.
        fid: String,
        /// A session ID that does not receive it (the new session of a "new session" event).
        except: Option<String>,
    },
    /// Every open session of the server.
    Server,
}

/// One delivery a gateway connection made: the connection sequence number (spec 3.2.1.3) an
/// event went out with, and its log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The connection sequence number.
    pub sequence: u64,
    /// The log position.
    pub position: u64,
}

impl Delivered {
    /// The stored form, `<sequence>:<position>`.
    pub fn encode(self) -> String {
        format!("{}:{}", self.sequence, self.position)
    }

    /// The stored form back.
    pub fn decode(text: &str) -> Option<Self> {
        let (sequence, position) = text.split_once(':')?;
        Some(Self {
            sequence: sequence.parse().ok()?,
            position: position.parse().ok()?,
        })
    }
}

/// Checks a RecordDelivered batch: a connection ID of 1 to [`MAX_CONNECTION_ID_BYTES`] bytes,
/// at most [`MAX_DELIVERED_PER_RECORD`] deliveries, positions from 1, sequence numbers strictly
/// increasing (the order they were sent in).
pub fn check_delivered(connection_id: &str, delivered: &[Delivered]) -> Result<(), EventsError> {
    if connection_id.is_empty() || connection_id.len() > MAX_CONNECTION_ID_BYTES {
        return Err(EventsError::InvalidArgument(format!(
            "connection_id must be 1 to {MAX_CONNECTION_ID_BYTES} bytes"
        )));
    }
    if delivered.len() > MAX_DELIVERED_PER_RECORD {
        return Err(EventsError::InvalidArgument(format!(
            "at most {MAX_DELIVERED_PER_RECORD} deliveries per call, not {}: record more often",
            delivered.len()
        )));
    }
    if delivered.iter().any(|d| d.position == 0) {
        return Err(EventsError::InvalidArgument(
            "log positions start at 1; 0 is no event".into(),
        ));
    }
    if delivered
        .windows(2)
        .any(|pair| pair[0].sequence >= pair[1].sequence)
    {
        return Err(EventsError::InvalidArgument(
            "delivered must be in the order sent: sequence numbers strictly increasing".into(),
        ));
    }
    Ok(())
}

/// The limit of a Poll: 0 is [`DEFAULT_POLL_LIMIT`], 1 to [`MAX_POLL_LIMIT`] as given.
pub fn poll_limit(limit: u32) -> Result<usize, EventsError> {
    match limit {
        0 => Ok(DEFAULT_POLL_LIMIT as usize),
        1..=MAX_POLL_LIMIT => Ok(limit as usize),
        _ => Err(EventsError::InvalidArgument(format!(
            "limit must be 1 to {MAX_POLL_LIMIT} (0: the default of {DEFAULT_POLL_LIMIT}), not \
             {limit}"
        ))),
    }
}

/// What a read of a session's log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The session was closed (recently: the mark lasts [`crate::store::Limits::closed_ttl`]).
    pub closed: bool,
    /// The last position assigned (0: none yet).
    pub last_position: u64,
    /// The oldest position still in the log, if any.
    pub oldest_retained: Option<u64>,
    /// Events after the requested position, oldest first, at most the requested number.
    pub events: Vec<Event>,
}

/// What a Poll returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Older pending events were skipped (the limit, or the log's bound).
    pub truncated: bool,
}

/// The stored delivery record of a session's last connection, and the log's state, read at
/// one instant: what [`resume_point`] decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// The session was closed recently.
    pub closed: bool,
    /// The recorded connection, if any.
    pub connection_id: Option<String>,
    /// The highest sequence number of deliveries dropped from the record (it keeps as many as
    /// the log holds), if any were.
    pub trimmed_through: Option<u64>,
    /// The deliveries still recorded, in order.
    pub delivered: Vec<Delivered>,
    /// The oldest position still in the log, if any.
    pub oldest_retained: Option<u64>,
    /// The last position assigned.
    pub last_position: u64,
}

/// Where a resume continues: replay the events after `after_position`, if `resumable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// False: nothing recorded, another connection asked for, or missed events not retained.
    pub resumable: bool,
    /// Replay after this position.
    pub after_position: u64,
}

impl Resume {
    const NOT: Self = Self {
        resumable: false,
        after_position: 0,
    };
}

/// Where a resume of `connection_id` (`None`: the recorded one) after the client's last
/// received `sequence` continues (ResumeFromRequest):
///
/// - not resumable when the session was closed, nothing is recorded (or another connection
///   was recorded since), or deliveries after `sequence` were dropped from the bounded record;
/// - else after the smallest position delivered with a sequence number above `sequence`,
///   minus one, or — nothing delivered after it — after the highest recorded position;
/// - not resumable when events after that position are no longer in the log.
pub fn resume_point(state: &ResumeState, connection_id: Option<&str>, sequence: u64) -> Resume {
    let Some(recorded) = &state.connection_id else {
        return Resume::NOT;
    };
    if state.closed
        || state.delivered.is_empty()
        || connection_id.is_some_and(|asked| asked != recorded)
        || state
            .trimmed_through
            .is_some_and(|trimmed| trimmed > sequence)
    {
        return Resume::NOT;
    }
    let missed = state
        .delivered
        .iter()
        .filter(|d| d.sequence > sequence)
        .map(|d| d.position)
        .min();
    let after = match missed {
        Some(position) => position - 1,
        None => state
            .delivered
            .iter()
            .map(|d| d.position)
            .max()
            .unwrap_or(0),
    };
    let retained = after >= state.last_position
        || state
            .oldest_retained
            .is_some_and(|oldest| oldest <= after.saturating_add(1));
    if !retained {
        return Resume::NOT;
    }
    Resume {
        resumable: true,
        after_position: after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_normalised_and_unambiguous() {
        let a = SessionKey::parse("Alice@P2.Test", "laptop 1").unwrap();
        assert_eq!(a.fid(), "alice@p2.test");
        assert_eq!(a.encoded(), "13:alice@p2.test:laptop 1");
        // A session ID holding what looks like a FID boundary still encodes apart.
        let tricky = SessionKey::trusted("a@b", "c:d");
        let other = SessionKey::trusted("a@b:c", "d");
        assert_ne!(tricky.encoded(), other.encoded());
        assert!(SessionKey::parse("", "s").is_err());
        assert!(SessionKey::parse("alice", "s").is_err());
        assert!(SessionKey::parse("alice@p2.test", "").is_err());
        assert!(SessionKey::parse("alice@p2.test", &"x".repeat(33)).is_err());
        assert!(SessionKey::parse("alice@p2.test", "tab\there").is_err());
    }

    #[test]
    fn events_are_checked_at_the_edge() {
        assert!(NewEvent::parse("core", 3, r#"{"cert":"x"}"#).is_ok());
        assert!(NewEvent::parse("my-ext_2", 65535, "null").is_ok());
        for bad_namespace in ["", "c", "Core", "co re", "core!", &"a".repeat(65)] {
            assert!(
                NewEvent::parse(bad_namespace, 1, "{}").is_err(),
                "{bad_namespace}"
            );
        }
        assert!(NewEvent::parse(&"a".repeat(64), 1, "{}").is_ok());
        assert!(NewEvent::parse("core", 65536, "{}").is_err());
        assert!(NewEvent::parse("core", u32::MAX, "{}").is_err());
        for bad_json in ["", "{", "{'a':1}", "nul", "{} {}"] {
            assert!(NewEvent::parse("core", 1, bad_json).is_err(), "{bad_json}");
        }
        let big = format!("\"{}\"", "x".repeat(MAX_DATA_JSON_BYTES));
        assert!(NewEvent::parse("core", 1, &big).is_err());
    }

    #[test]
    fn limits_and_batches_are_checked() {
        assert_eq!(poll_limit(0).unwrap(), 100);
        assert_eq!(poll_limit(1).unwrap(), 1);
        assert_eq!(poll_limit(1000).unwrap(), 1000);
        assert!(poll_limit(1001).is_err());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key(&"k".repeat(129)).is_err());
        assert!(check_idempotency_key("outbox-17").is_ok());
        let d = |sequence, position| Delivered { sequence, position };
        assert!(check_delivered("c", &[d(1, 1), d(2, 5)]).is_ok());
        assert!(check_delivered("c", &[]).is_ok());
        assert!(check_delivered("", &[d(1, 1)]).is_err());
        assert!(check_delivered("c", &[d(2, 1), d(2, 2)]).is_err());
        assert!(check_delivered("c", &[d(1, 0)]).is_err());
        let many: Vec<_> = (1..=1001).map(|i| d(i, i)).collect();
        assert!(check_delivered("c", &many).is_err());
        assert_eq!(Delivered::decode(&d(7, 9).encode()), Some(d(7, 9)));
        assert_eq!(
            Delivered::decode("18446744073709551615:1"),
            Some(d(u64::MAX, 1))
        );
        assert_eq!(Delivered::decode("x:1"), None);
    }

    fn state(delivered: &[(u64, u64)], oldest: u64, last: u64) -> ResumeState {
        ResumeState {
            closed: false,
            connection_id: Some("c1".into()),
            trimmed_through: None,
            delivered: delivered
                .iter()
                .map(|&(sequence, position)| Delivered { sequence, position })
                .collect(),
            oldest_retained: Some(oldest),
            last_position: last,
        }
    }

    #[test]
    fn resume_continues_before_the_first_missed_delivery() {
        // Sequence 0 was Hello; events at positions 4, 5, 6 went out as 1, 2, 3.
        let s = state(&[(1, 4), (2, 5), (3, 6)], 1, 8);
        let at = |seq| resume_point(&s, None, seq);
        assert_eq!(at(0).after_position, 3);
        assert_eq!(at(1).after_position, 4);
        assert_eq!(at(2).after_position, 5);
        // Nothing delivered after 3: continue after the highest recorded position.
        assert_eq!(at(3).after_position, 6);
        assert_eq!(at(u64::MAX).after_position, 6);
        assert!(at(0).resumable);
        // The named connection is the recorded one; another is not.
        assert!(resume_point(&s, Some("c1"), 1).resumable);
        assert!(!resume_point(&s, Some("c2"), 1).resumable);
    }

    #[test]
    fn a_resumed_connections_record_resumes_neither_twice_nor_short() {
        // A resumed connection: Hello 0, Resumed 1 replaying positions 6 and 7 (recorded by
        // the gateway as the last under 0 and the first under 1), then position 9 live as 2.
        let live = state(&[(0, 7), (1, 6), (2, 9)], 1, 9);
        let at = |seq| resume_point(&live, None, seq).after_position;
        assert_eq!(at(0), 5, "the Resumed was not seen: replay it all");
        assert_eq!(at(1), 8, "the Resumed was seen: continue behind it");
        assert_eq!(at(2), 9);
        // Nothing live after the Resumed yet.
        let replayed = state(&[(0, 7), (1, 6)], 1, 7);
        assert_eq!(resume_point(&replayed, None, 0).after_position, 5);
        assert_eq!(resume_point(&replayed, None, 1).after_position, 7);
        assert_eq!(resume_point(&replayed, None, 5).after_position, 7);
    }

    #[test]
    fn resume_is_refused_when_nothing_is_recorded_or_retained() {
        assert!(!resume_point(&ResumeState::default(), None, 0).resumable);
        let mut empty = state(&[], 1, 3);
        assert!(!resume_point(&empty, None, 0).resumable);
        empty.closed = true;
        assert!(!resume_point(&empty, None, 0).resumable);
        // Positions 1–9 were trimmed; the client missed 5 onwards.
        let s = state(&[(1, 4), (2, 5)], 10, 20);
        assert!(!resume_point(&s, None, 1).resumable);
        // It had seen everything up to the oldest retained: resumable.
        let s = state(&[(1, 8), (2, 9)], 10, 20);
        assert_eq!(
            resume_point(&s, None, 2),
            Resume {
                resumable: true,
                after_position: 9
            }
        );
        // Nothing new since: resumable whatever was trimmed.
        let s = state(&[(1, 20)], 15, 20);
        assert!(resume_point(&s, None, 1).resumable);
        // Deliveries after the client's sequence were dropped from the bounded record.
        let mut s = state(&[(5, 5), (6, 6)], 1, 6);
        s.trimmed_through = Some(4);
        assert!(resume_point(&s, None, 4).resumable);
        assert!(!resume_point(&s, None, 3).resumable);
    }
}
