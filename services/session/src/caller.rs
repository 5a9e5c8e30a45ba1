//! [`Caller`]: who an authenticated request comes from, parsed at the edge from the wire
//! `polyproto.common.v1.Caller` the gateway passes on.

use p2_model::{FederationId, SessionId};
use p2_proto::common::v1 as common;

use crate::error::SessionError;

/// An authenticated caller: an actor's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The actor (normalised).
    pub fid: FederationId,
    /// The session.
    pub session_id: SessionId,
    /// Whether the actor is an administrator of this home server.
    pub admin: bool,
}

impl Caller {
    /// Parses the wire caller; INVALID_ARGUMENT when it is missing or malformed (a gateway bug:
    /// it passes on what `Authenticate` returned).
    pub fn from_proto(caller: Option<common::Caller>) -> Result<Self, SessionError> {
        let caller = caller.ok_or_else(|| {
            SessionError::InvalidArgument(
                "caller is required: pass on the Caller that Authenticate returned".into(),
            )
        })?;
        Ok(Self {
            fid: FederationId::parse(&caller.fid)
                .map_err(|e| SessionError::InvalidArgument(format!("caller.fid: {e}")))?,
            session_id: SessionId::parse(&caller.session_id)
                .map_err(|e| SessionError::InvalidArgument(format!("caller.session_id: {e}")))?,
            admin: caller.admin,
        })
    }

    /// The wire form.
    pub fn to_proto(&self) -> common::Caller {
        common::Caller {
            fid: self.fid.to_string(),
            session_id: self.session_id.to_string(),
            admin: self.admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_round_trip_and_are_normalised() {
        let wire = common::Caller {
            fid: "Alice@Example.COM".into(),
            session_id: "laptop".into(),
            admin: true,
        };
        let caller = Caller::from_proto(Some(wire)).unwrap();
        assert_eq!(caller.fid.as_str(), "alice@example.com");
        assert_eq!(caller.to_proto().fid, "alice@example.com");
        assert!(caller.to_proto().admin);
    }

    #[test]
    fn missing_or_malformed_callers_are_invalid_arguments() {
        for caller in [
            None,
            Some(common::Caller {
                fid: "nobody".into(),
                session_id: "s".into(),
                admin: false,
            }),
            Some(common::Caller {
                fid: "a@example.com".into(),
                session_id: String::new(),
                admin: false,
            }),
        ] {
            assert!(matches!(
                Caller::from_proto(caller),
                Err(SessionError::InvalidArgument(_))
            ));
        }
    }
}
