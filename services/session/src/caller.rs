//! [`Caller`]: the session a request acts for, proven by a caller assertion that this service
//! minted ([`crate::SessionGrpc::authenticate_token`]) and verifies locally.

use p2_model::{FederationId, SessionId};
use p2_proto::common::v1 as common;
use p2_runtime::internal::AssertionKey;

use crate::error::SessionError;

/// An authenticated caller: an actor's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The actor (normalised).
    pub fid: FederationId,
    /// The session.
    pub session_id: SessionId,
    /// The verified assertion itself, forwarded to the services this one calls for the caller.
    pub proof: Vec<u8>,
}

impl Caller {
    /// Verifies the wire assertion with `key`; UNAUTHENTICATED when it is missing, forged or
    /// expired.
    pub fn verify(
        assertion: Option<common::CallerAssertion>,
        key: &AssertionKey,
    ) -> Result<Self, SessionError> {
        let proof = assertion.map(|a| a.token).unwrap_or_default();
        let verified = key.verify(&proof, p2_runtime::internal::unix_now_ms())?;
        // Minted from validated rows only: a parse failure means a foreign or broken minter.
        let fid = FederationId::parse(&verified.fid)
            .map_err(|_| p2_runtime::internal::AssertionError::Invalid)?;
        let session_id = SessionId::parse(&verified.session_id)
            .map_err(|_| p2_runtime::internal::AssertionError::Invalid)?;
        Ok(Self {
            fid,
            session_id,
            proof,
        })
    }

    /// The assertion in wire form, to pass on.
    pub fn assertion(&self) -> common::CallerAssertion {
        common::CallerAssertion {
            token: self.proof.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_this_service_minted_verify_and_others_do_not() {
        let key = p2_runtime::internal::InternalKey::generate().assertion_key();
        let token = key.mint("Alice@Example.COM", "laptop", u64::MAX);
        let caller = Caller::verify(Some(common::CallerAssertion { token }), &key).unwrap();
        assert_eq!(caller.fid.as_str(), "alice@example.com");
        assert_eq!(caller.session_id.as_str(), "laptop");
        assert!(matches!(
            Caller::verify(None, &key),
            Err(SessionError::Assertion(_))
        ));
        let expired = key.mint("alice@example.com", "laptop", 1);
        assert!(matches!(
            Caller::verify(Some(common::CallerAssertion { token: expired }), &key),
            Err(SessionError::Assertion(_))
        ));
        let other = p2_runtime::internal::InternalKey::generate()
            .assertion_key()
            .mint("alice@example.com", "laptop", u64::MAX);
        assert!(matches!(
            Caller::verify(Some(common::CallerAssertion { token: other }), &key),
            Err(SessionError::Assertion(_))
        ));
    }
}
