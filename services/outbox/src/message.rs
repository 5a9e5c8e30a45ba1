//! One queued RPC to the events service and its stored form: the RPC's name and its request,
//! prost-encoded, as hex.

use anyhow::Context as _;
use p2_proto::events::v1 as pb;
use prost::Message as _;

/// The namespace of core events (spec 3.2.1.1).
pub const CORE_NAMESPACE: &str = "core";

/// One RPC to the events service, as queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `Events/Publish`. Its `idempotency_key` is set when queued (the row's key).
    Publish(pb::PublishRequest),
    /// `Events/OpenSession`.
    OpenSession(pb::OpenSessionRequest),
    /// `Events/CloseSession`.
    CloseSession(pb::CloseSessionRequest),
}

/// Stored names of the RPCs (column `rpc`).
const PUBLISH: &str = "publish";
const OPEN_SESSION: &str = "open_session";
const CLOSE_SESSION: &str = "close_session";

fn session_ref(fid: &str, session_id: &str) -> pb::SessionRef {
    pb::SessionRef {
        fid: fid.to_owned(),
        session_id: session_id.to_owned(),
    }
}

/// Every open session of the actor `fid` but `except_session_id`.
pub fn actor_audience(fid: &str, except_session_id: Option<&str>) -> pb::Audience {
    pb::Audience {
        target: Some(pb::audience::Target::Actor(pb::ActorAudience {
            fid: fid.to_owned(),
            except_session_id: except_session_id.map(str::to_owned),
        })),
    }
}

/// Every open session of the server.
pub fn server_audience() -> pb::Audience {
    pb::Audience {
        target: Some(pb::audience::Target::Server(pb::ServerAudience {})),
    }
}

impl Message {
    /// Publishes the core event `op` with `d` = `data_json` (JSON text) to `audience`.
    pub fn core_event(audience: pb::Audience, op: u32, data_json: String) -> Self {
        Self::Publish(pb::PublishRequest {
            audience: Some(audience),
            event: Some(pb::Event {
                namespace: CORE_NAMESPACE.to_owned(),
                op,
                data_json,
                position: 0,
            }),
            idempotency_key: String::new(),
        })
    }

    /// The session (`fid`, `session_id`) exists from now on.
    pub fn open_session(fid: &str, session_id: &str) -> Self {
        Self::OpenSession(pb::OpenSessionRequest {
            session: Some(session_ref(fid, session_id)),
        })
    }

    /// The session (`fid`, `session_id`) has ended.
    pub fn close_session(fid: &str, session_id: &str) -> Self {
        Self::CloseSession(pb::CloseSessionRequest {
            session: Some(session_ref(fid, session_id)),
        })
    }

    /// The stored name of the RPC.
    pub fn rpc(&self) -> &'static str {
        match self {
            Self::Publish(_) => PUBLISH,
            Self::OpenSession(_) => OPEN_SESSION,
            Self::CloseSession(_) => CLOSE_SESSION,
        }
    }

    /// The same message, a `Publish` carrying `key` as its idempotency key.
    pub(crate) fn keyed(self, key: &str) -> Self {
        match self {
            Self::Publish(mut request) => {
                request.idempotency_key = key.to_owned();
                Self::Publish(request)
            }
            other => other,
        }
    }

    /// The request, prost-encoded, as lowercase hex.
    pub(crate) fn encode_hex(&self) -> String {
        hex::encode(match self {
            Self::Publish(request) => request.encode_to_vec(),
            Self::OpenSession(request) => request.encode_to_vec(),
            Self::CloseSession(request) => request.encode_to_vec(),
        })
    }

    /// Decodes a stored row: the RPC's name and its hex-encoded request.
    pub fn decode(rpc: &str, request_hex: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(request_hex).context("the stored request is not hex")?;
        let bytes = bytes.as_slice();
        Ok(match rpc {
            PUBLISH => {
                Self::Publish(pb::PublishRequest::decode(bytes).context("decoding Publish")?)
            }
            OPEN_SESSION => Self::OpenSession(
                pb::OpenSessionRequest::decode(bytes).context("decoding OpenSession")?,
            ),
            CLOSE_SESSION => Self::CloseSession(
                pb::CloseSessionRequest::decode(bytes).context("decoding CloseSession")?,
            ),
            other => anyhow::bail!("unknown outbox RPC {other:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_their_stored_form() {
        let messages = [
            Message::core_event(
                actor_audience("alice@example.com", Some("s1")),
                3,
                r#"{"cert":"PEM"}"#.into(),
            )
            .keyed("k1"),
            Message::core_event(server_audience(), 6, "{}".into()),
            Message::open_session("alice@example.com", "s1"),
            Message::close_session("alice@example.com", "s1"),
        ];
        for message in messages {
            let decoded = Message::decode(message.rpc(), &message.encode_hex()).unwrap();
            assert_eq!(decoded, message);
        }
        let Message::Publish(keyed) =
            Message::core_event(server_audience(), 6, "{}".into()).keyed("abc")
        else {
            panic!("not a publish");
        };
        assert_eq!(keyed.idempotency_key, "abc");
    }

    #[test]
    fn unknown_or_broken_rows_do_not_decode() {
        assert!(Message::decode("subscribe", "").is_err());
        assert!(Message::decode(PUBLISH, "zz").is_err());
        assert!(Message::decode(OPEN_SESSION, "ffff").is_err());
    }
}
