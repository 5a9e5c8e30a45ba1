//! The gateway's wire format (spec 3.2.1, in API.md's "Wire dialect"): what clients send,
//! parsed and validated into [`ClientMessage`]; what the server sends, written as JSON text;
//! the close codes (spec 3.2.5); minified number lists (spec 3.2.3.8).
//!
//! Pure: no I/O, no clock. Numbers the spec types as u64 are read as JSON numbers or decimal
//! strings and written as decimal strings; the server never writes `s: null` (it leaves `s`
//! out).

use serde_json::{Map, Value};

/// The namespace of the core events.
pub const CORE: &str = "core";

/// Opcodes of the `core` namespace (spec 3.2.1.2), plus the SDK's Identify ACK.
pub mod op {
    /// Heartbeat (client → server).
    pub const HEARTBEAT: u16 = 0;
    /// Hello (server → client).
    pub const HELLO: u16 = 1;
    /// Identify (client → server).
    pub const IDENTIFY: u16 = 2;
    /// New session (server → client).
    pub const NEW_SESSION: u16 = 3;
    /// Actor certificate invalidation (both ways).
    pub const ACTOR_CERT_INVALIDATION: u16 = 4;
    /// Resume (client → server).
    pub const RESUME: u16 = 5;
    /// Server certificate change (server → client).
    pub const SERVER_CERT_CHANGE: u16 = 6;
    /// Heartbeat ACK (server → client).
    pub const HEARTBEAT_ACK: u16 = 7;
    /// Service channel (client → server).
    pub const SERVICE_CHANNEL: u16 = 8;
    /// Service channel ACK (server → client).
    pub const SERVICE_CHANNEL_ACK: u16 = 9;
    /// Resumed (server → client).
    pub const RESUMED: u16 = 10;
    /// Heartbeat request (server → client).
    pub const HEARTBEAT_REQUEST: u16 = 11;
    /// Identify ACK (server → client): the "ready event" of spec 3.2.4, as the reference SDK
    /// (0.20+, PURR-2026-0018) defines it: `d: {"token": ...}`.
    pub const IDENTIFY_ACK: u16 = 12;
}

/// The close codes of spec 3.2.5 that this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 4000: an unknown error — here also: the server shuts down, the event feed broke, the
    /// client was too slow to read. Eligible for Resume.
    UnknownError,
    /// 4001: an opcode the server does not handle. Eligible for Resume.
    UnknownOpcode,
    /// 4002: unparseable JSON or a payload of the wrong shape. Eligible for Resume.
    InvalidPayload,
    /// 4003: a message other than Heartbeat, Identify or Resume before identifying, no
    /// Identify in time, or the session was invalidated. Not resumable.
    NotAuthenticated,
    /// 4004: the token of an Identify or Resume is not a valid session token.
    InvalidAuthentication,
    /// 4005: a second Identify (or Resume) on an identified connection.
    AlreadyAuthenticated,
    /// 4007: a heartbeat listing sequence numbers that are out of order or never sent.
    /// Eligible for Resume.
    InvalidSequence,
    /// 4008: the client sent messages too quickly.
    RateLimited,
    /// 4009: no heartbeat in time, even after a heartbeat request. Eligible for Resume.
    Timeout,
    /// 4010: the session cannot resume (nothing recorded, events no longer retained, or the
    /// connection's sequence numbers ran out).
    Unresumeable,
}

impl CloseCode {
    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::UnknownError => 4000,
            CloseCode::UnknownOpcode => 4001,
            CloseCode::InvalidPayload => 4002,
            CloseCode::NotAuthenticated => 4003,
            CloseCode::InvalidAuthentication => 4004,
            CloseCode::AlreadyAuthenticated => 4005,
            CloseCode::InvalidSequence => 4007,
            CloseCode::RateLimited => 4008,
            CloseCode::Timeout => 4009,
            CloseCode::Unresumeable => 4010,
        }
    }
}

/// Why a connection is closed: the code and a short reason (a close frame's reason must fit in
/// 123 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: CloseCode,
    /// What happened, for humans.
    pub reason: &'static str,
}

impl Close {
    /// `code` with `reason`.
    pub const fn new(code: CloseCode, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// A minified number list (spec 3.2.3.8): the closed range `[from, to]` without `except`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinifiedNumberList {
    /// Lowest sequence number received.
    pub from: u64,
    /// Highest sequence number received.
    pub to: u64,
    /// Sequence numbers inside the range that were not received: sorted, without repeats.
    pub except: Vec<u64>,
}

impl MinifiedNumberList {
    /// Checks the list against what the connection sent: `from ≤ to`, every `except` entry
    /// inside `[from, to]`, and nothing above `last_sent`, the highest sequence number sent so
    /// far (spec 3.2.5, 4007 otherwise).
    pub fn validate(&self, last_sent: u64) -> Result<(), Close> {
        if self.from > self.to {
            return Err(Close::new(
                CloseCode::InvalidSequence,
                "heartbeat: `from` is above `to`",
            ));
        }
        if self.to > last_sent {
            return Err(Close::new(
                CloseCode::InvalidSequence,
                "heartbeat: a sequence number the server never sent",
            ));
        }
        if self
            .except
            .iter()
            .any(|&missed| missed < self.from || missed > self.to)
        {
            return Err(Close::new(
                CloseCode::InvalidSequence,
                "heartbeat: an `except` entry outside [from, to]",
            ));
        }
        Ok(())
    }
}

/// What a service channel request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAction {
    /// Start receiving the service's namespace.
    Subscribe,
    /// Stop receiving it.
    Unsubscribe,
}

impl ChannelAction {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ChannelAction::Subscribe => "subscribe",
            ChannelAction::Unsubscribe => "unsubscribe",
        }
    }
}

/// A client message, parsed and its shape checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// op 0.
    Heartbeat(MinifiedNumberList),
    /// op 2.
    Identify {
        /// The session token.
        token: String,
    },
    /// op 4 from a client: accepted and ignored (revocation is `DELETE /session`; the server
    /// itself tells the other sessions).
    ActorCertInvalidation,
    /// op 5.
    Resume {
        /// The last sequence number the client received on its previous connection.
        sequence: u64,
        /// The session token.
        token: String,
    },
    /// op 8.
    ServiceChannel {
        /// Subscribe or unsubscribe.
        action: ChannelAction,
        /// The service (namespace), as sent.
        service: String,
    },
}

impl ClientMessage {
    /// Whether a connection that has not identified may send this (spec 3.2: heartbeats may
    /// precede the Identify; anything else but Identify and Resume is 4003).
    pub fn allowed_before_identify(&self) -> bool {
        matches!(
            self,
            ClientMessage::Heartbeat(_)
                | ClientMessage::Identify { .. }
                | ClientMessage::Resume { .. }
        )
    }
}

const NOT_JSON: Close = Close::new(CloseCode::InvalidPayload, "not a JSON object");
const BAD_OP: Close = Close::new(
    CloseCode::InvalidPayload,
    "`op` must be an integer or a decimal string",
);

/// A u64 given as a JSON number or a decimal string.
fn u64_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn field<'a>(d: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    d.get(name).filter(|v| !v.is_null())
}

fn string_field(d: &Map<String, Value>, name: &str, close: Close) -> Result<String, Close> {
    match field(d, name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(close),
    }
}

/// Parses one client message (its text or binary frame's bytes): JSON object with `op`
/// (number or decimal string), `n` (absent or `core`; another namespace's opcodes are unknown
/// here: 4001) and `d`. Errors carry the close code: 4002 for JSON or shape errors, 4001 for
/// opcodes a client does not send to this server.
pub fn parse_client_message(bytes: &[u8]) -> Result<ClientMessage, Close> {
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(NOT_JSON);
    };
    let op = message.get("op").ok_or(BAD_OP)?;
    let op = u64_of(op).ok_or(BAD_OP)?;
    match message.get("n") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) if n == CORE => {}
        Some(Value::String(_)) => {
            return Err(Close::new(
                CloseCode::UnknownOpcode,
                "no opcodes of that namespace are handled here",
            ));
        }
        Some(_) => {
            return Err(Close::new(
                CloseCode::InvalidPayload,
                "`n` must be a string",
            ));
        }
    }
    let known = [
        op::HEARTBEAT,
        op::IDENTIFY,
        op::ACTOR_CERT_INVALIDATION,
        op::RESUME,
        op::SERVICE_CHANNEL,
    ];
    let Some(op) = u16::try_from(op).ok().filter(|op| known.contains(op)) else {
        return Err(Close::new(CloseCode::UnknownOpcode, "unknown opcode"));
    };
    let empty = Map::new();
    let d = match message.get("d") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => &empty,
        Some(_) => {
            return Err(Close::new(
                CloseCode::InvalidPayload,
                "`d` must be an object",
            ));
        }
    };
    match op {
        op::HEARTBEAT => parse_heartbeat(d).map(ClientMessage::Heartbeat),
        op::IDENTIFY => Ok(ClientMessage::Identify {
            token: string_field(
                d,
                "token",
                Close::new(CloseCode::InvalidPayload, "identify: `d.token` is missing"),
            )?,
        }),
        op::ACTOR_CERT_INVALIDATION => Ok(ClientMessage::ActorCertInvalidation),
        op::RESUME => {
            let sequence = field(d, "s").and_then(u64_of).ok_or(Close::new(
                CloseCode::InvalidPayload,
                "resume: `d.s` must be a sequence number",
            ))?;
            let token = string_field(
                d,
                "token",
                Close::new(CloseCode::InvalidPayload, "resume: `d.token` is missing"),
            )?;
            Ok(ClientMessage::Resume { sequence, token })
        }
        op::SERVICE_CHANNEL => {
            let action = match field(d, "action") {
                Some(Value::String(a)) if a == "subscribe" => ChannelAction::Subscribe,
                Some(Value::String(a)) if a == "unsubscribe" => ChannelAction::Unsubscribe,
                _ => {
                    return Err(Close::new(
                        CloseCode::InvalidPayload,
                        "service channel: `action` must be subscribe or unsubscribe",
                    ));
                }
            };
            let service = string_field(
                d,
                "service",
                Close::new(
                    CloseCode::InvalidPayload,
                    "service channel: `service` is missing",
                ),
            )?;
            Ok(ClientMessage::ServiceChannel { action, service })
        }
        _ => Err(Close::new(CloseCode::UnknownOpcode, "unknown opcode")),
    }
}

/// The `d` of a heartbeat: `from` and `to` required, `except` optional; each a u64 as a
/// string (spec) or a number.
fn parse_heartbeat(d: &Map<String, Value>) -> Result<MinifiedNumberList, Close> {
    const SHAPE: Close = Close::new(
        CloseCode::InvalidPayload,
        "heartbeat: `d` must be {from, to, except?} of sequence numbers",
    );
    let from = field(d, "from").and_then(u64_of).ok_or(SHAPE)?;
    let to = field(d, "to").and_then(u64_of).ok_or(SHAPE)?;
    let mut except = match field(d, "except") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| u64_of(item).ok_or(SHAPE))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(SHAPE),
    };
    except.sort_unstable();
    except.dedup();
    Ok(MinifiedNumberList { from, to, except })
}

/// A JSON string literal of `text`.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A server message of the core namespace: `{"n":"core","op":"<op>","d":<d>,"s":"<s>"}`.
/// `d` must be JSON text.
pub fn core_message(op: u16, d: &str, sequence: u64) -> String {
    format!(r#"{{"n":"core","op":"{op}","d":{d},"s":"{sequence}"}}"#)
}

/// A gateway event of any namespace; `d` must be JSON text (checked by the caller, see
/// [`is_json`]); `s` is left out when `None`.
pub fn event_message(namespace: &str, op: u32, d: &str, sequence: Option<u64>) -> String {
    let n = json_string(namespace);
    match sequence {
        Some(s) => format!(r#"{{"n":{n},"op":"{op}","d":{d},"s":"{s}"}}"#),
        None => format!(r#"{{"n":{n},"op":"{op}","d":{d}}}"#),
    }
}

/// Whether `text` is one JSON value (an event's `data_json` must be).
pub fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// The `d` of Hello: `heartbeat_interval` in milliseconds (spec) and `heartbeatInterval` in
/// whole seconds as a string (the SDK reads that and waits that many seconds; rounded up, at
/// least 1, so it never heartbeats faster than asked).
pub fn hello_data(interval_ms: u32) -> String {
    let seconds = interval_ms.div_ceil(1000).max(1);
    format!(r#"{{"heartbeat_interval":{interval_ms},"heartbeatInterval":"{seconds}"}}"#)
}

/// The `d` of the Identify ACK: the token (the SDK's `IdentifyAck` requires it).
pub fn identify_ack_data(token: &str) -> String {
    format!(r#"{{"token":{}}}"#, json_string(token))
}

/// The `d` of a service channel ACK (spec 3.2.3.3): `error` only when it failed.
pub fn channel_ack_data(action: ChannelAction, service: &str, error: Option<&str>) -> String {
    let service = json_string(service);
    let action = action.name();
    match error {
        None => format!(r#"{{"action":"{action}","service":{service},"success":true}}"#),
        Some(error) => format!(
            r#"{{"action":"{action}","service":{service},"success":false,"error":{}}}"#,
            json_string(error)
        ),
    }
}

/// A JSON array of `items`, each already JSON text (op 7 and op 10 `d`).
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientMessage, Close> {
        parse_client_message(text.as_bytes())
    }

    fn code(text: &str) -> u16 {
        parse(text).unwrap_err().code.code()
    }

    #[test]
    fn heartbeats_are_read_with_numbers_as_strings_or_numbers() {
        let heartbeat = parse(
            r#"{"n":"core","op":"0","d":{"from":"1","to":"20","except":["13","9","12","9"]}}"#,
        )
        .unwrap();
        assert_eq!(
            heartbeat,
            ClientMessage::Heartbeat(MinifiedNumberList {
                from: 1,
                to: 20,
                except: vec![9, 12, 13],
            })
        );
        let numbers = parse(r#"{"op":0,"d":{"from":0,"to":0}}"#).unwrap();
        assert_eq!(
            numbers,
            ClientMessage::Heartbeat(MinifiedNumberList {
                from: 0,
                to: 0,
                except: vec![],
            })
        );
        // The largest u64 is a valid sequence number.
        let max =
            parse(r#"{"op":"0","d":{"from":"18446744073709551615","to":"18446744073709551615"}}"#);
        assert!(max.is_ok());
    }

    #[test]
    fn malformed_heartbeats_are_invalid_payloads() {
        for text in [
            r#"{"op":"0","d":{"to":"3"}}"#,
            r#"{"op":"0","d":{"from":"x","to":"3"}}"#,
            r#"{"op":"0","d":{"from":"-1","to":"3"}}"#,
            r#"{"op":"0","d":{"from":"1","to":"3","except":"2"}}"#,
            r#"{"op":"0","d":{"from":"1","to":"3","except":[true]}}"#,
            r#"{"op":"0","d":{"from":"1","to":"18446744073709551616"}}"#,
            r#"{"op":"0"}"#,
        ] {
            assert_eq!(code(text), 4002, "{text}");
        }
    }

    #[test]
    fn minified_number_lists_are_checked_against_what_was_sent() {
        let list = |from, to, except: &[u64]| MinifiedNumberList {
            from,
            to,
            except: except.to_vec(),
        };
        assert!(list(0, 5, &[2, 3]).validate(5).is_ok());
        assert!(list(3, 3, &[]).validate(9).is_ok());
        assert!(list(0, 0, &[0]).validate(0).is_ok());
        for (bad, last_sent) in [
            (list(5, 4, &[]), 9),
            (list(0, 6, &[]), 5),
            (list(2, 5, &[1]), 9),
            (list(2, 5, &[6]), 9),
        ] {
            assert_eq!(
                bad.validate(last_sent).unwrap_err().code,
                CloseCode::InvalidSequence,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn identify_resume_and_service_channels_are_parsed() {
        assert_eq!(
            parse(r#"{"n":"core","op":2,"d":{"token":"abc"}}"#).unwrap(),
            ClientMessage::Identify {
                token: "abc".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":"5","d":{"s":"12","token":"abc"}}"#).unwrap(),
            ClientMessage::Resume {
                sequence: 12,
                token: "abc".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":5,"d":{"s":12,"token":"abc"}}"#).unwrap(),
            ClientMessage::Resume {
                sequence: 12,
                token: "abc".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":8,"d":{"action":"unsubscribe","service":"chat"}}"#).unwrap(),
            ClientMessage::ServiceChannel {
                action: ChannelAction::Unsubscribe,
                service: "chat".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":4,"d":{"serial":"1"}}"#).unwrap(),
            ClientMessage::ActorCertInvalidation
        );
    }

    #[test]
    fn shape_errors_are_4002_and_unknown_opcodes_4001() {
        for text in [
            "not json",
            "[1,2]",
            r#"{"d":{}}"#,
            r#"{"op":"zero"}"#,
            r#"{"op":-1}"#,
            r#"{"op":1.5}"#,
            r#"{"op":2,"n":7,"d":{"token":"a"}}"#,
            r#"{"op":2,"d":"token"}"#,
            r#"{"op":2,"d":{}}"#,
            r#"{"op":2,"d":{"token":""}}"#,
            r#"{"op":5,"d":{"token":"a"}}"#,
            r#"{"op":8,"d":{"action":"join","service":"chat"}}"#,
            r#"{"op":8,"d":{"action":"subscribe"}}"#,
        ] {
            assert_eq!(code(text), 4002, "{text}");
        }
        for text in [
            r#"{"op":1,"d":{}}"#,
            r#"{"op":"7","d":[]}"#,
            r#"{"op":12,"d":{}}"#,
            r#"{"op":99,"d":{}}"#,
            r#"{"op":70000,"d":{}}"#,
            r#"{"n":"chat","op":0,"d":{"from":"0","to":"0"}}"#,
        ] {
            assert_eq!(code(text), 4001, "{text}");
        }
    }

    #[test]
    fn only_heartbeat_identify_and_resume_may_precede_identification() {
        let allowed = |text: &str| parse(text).unwrap().allowed_before_identify();
        assert!(allowed(r#"{"op":0,"d":{"from":0,"to":0}}"#));
        assert!(allowed(r#"{"op":2,"d":{"token":"t"}}"#));
        assert!(allowed(r#"{"op":5,"d":{"s":0,"token":"t"}}"#));
        assert!(!allowed(
            r#"{"op":8,"d":{"action":"subscribe","service":"x"}}"#
        ));
        assert!(!allowed(r#"{"op":4,"d":{}}"#));
    }

    #[test]
    fn server_messages_carry_op_and_s_as_decimal_strings() {
        let hello: Value =
            serde_json::from_str(&core_message(op::HELLO, &hello_data(45_000), 0)).unwrap();
        assert_eq!(hello["n"], "core");
        assert_eq!(hello["op"], "1");
        assert_eq!(hello["s"], "0");
        assert_eq!(hello["d"]["heartbeat_interval"], 45_000);
        assert_eq!(hello["d"]["heartbeatInterval"], "45");
        // Short intervals round up to a whole second for the SDK.
        let short: Value = serde_json::from_str(&hello_data(200)).unwrap();
        assert_eq!(short["heartbeatInterval"], "1");
        let event: Value =
            serde_json::from_str(&event_message("chat\"x", 3, r#"{"cert":"C"}"#, Some(7))).unwrap();
        assert_eq!(event["n"], "chat\"x");
        assert_eq!(event["op"], "3");
        assert_eq!(event["d"]["cert"], "C");
        assert_eq!(event["s"], "7");
        let polled: Value = serde_json::from_str(&event_message("core", 6, "{}", None)).unwrap();
        assert!(polled.get("s").is_none());
        let ack: Value = serde_json::from_str(&core_message(
            op::HEARTBEAT_ACK,
            &json_array(["{\"a\":1}", "{\"b\":2}"]),
            4,
        ))
        .unwrap();
        assert_eq!(ack["d"], serde_json::json!([{"a": 1}, {"b": 2}]));
        assert_eq!(json_array(std::iter::empty()), "[]");
    }

    #[test]
    fn service_channel_acks_carry_error_only_on_failure() {
        let ok: Value =
            serde_json::from_str(&channel_ack_data(ChannelAction::Subscribe, "chat", None))
                .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"action": "subscribe", "service": "chat", "success": true})
        );
        let failed: Value = serde_json::from_str(&channel_ack_data(
            ChannelAction::Unsubscribe,
            "x",
            Some("no such service"),
        ))
        .unwrap();
        assert_eq!(failed["success"], false);
        assert_eq!(failed["error"], "no such service");
    }

    #[test]
    fn every_close_code_is_the_spec_number() {
        let table = [
            (CloseCode::UnknownError, 4000),
            (CloseCode::UnknownOpcode, 4001),
            (CloseCode::InvalidPayload, 4002),
            (CloseCode::NotAuthenticated, 4003),
            (CloseCode::InvalidAuthentication, 4004),
            (CloseCode::AlreadyAuthenticated, 4005),
            (CloseCode::InvalidSequence, 4007),
            (CloseCode::RateLimited, 4008),
            (CloseCode::Timeout, 4009),
            (CloseCode::Unresumeable, 4010),
        ];
        for (code, number) in table {
            assert_eq!(code.code(), number);
        }
    }

    #[test]
    fn event_data_must_be_one_json_value() {
        assert!(is_json(r#"{"cert":"x"}"#));
        assert!(is_json("[1, 2]"));
        assert!(!is_json("{"));
        assert!(!is_json("{} {}"));
        assert!(!is_json(""));
    }
}
