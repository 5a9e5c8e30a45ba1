//! Gateway events this service causes. They are never sent from a request: they are queued in
//! the event outbox of the session database, in the transaction of the change that causes
//! them, and the outbox relay delivers them to the events service ([`p2_outbox`]), so a login or
//! deletion never waits for the events service and no event is lost while it is away.
//!
//! - A session row stored (login, new ID-Cert, renewal): `OpenSession`, queued by
//!   [`crate::storage::SessionStore::put_with_events`] itself; for a **new** session also op 3
//!   ([`new_session`]), after it.
//! - A session row deleted (DELETE session, `polyproto admin revoke-sessions|disable`, an
//!   undone login): `CloseSession`, queued by [`crate::storage::SessionStore::delete`], which
//!   ends the session's event stream (the gateway closes its socket with 4003).
//! - Op 4 (certificate invalidation) belongs to the revocation, which identity owns: identity
//!   queues it in its own outbox in the transaction that revokes the cert (deletion, renewal,
//!   admin revocation alike), so it is not lost when this service fails after the revocation.
//!   For a foreign session ended because its home server revoked its cert, this service
//!   queues op 4 to the actor's other sessions here with the deletion
//!   ([`foreign_cert_invalidated`]).

use p2_model::{FederationId, SessionId};
use p2_outbox::Message;
use p2_outbox::message::actor_audience;

/// Opcode of the "actor certificate invalidation" event (spec 3.2.3.5).
pub const CERTIFICATE_INVALIDATED_OP: u32 = 4;

/// Opcode of the "new session" event (spec 3.2.3.4).
pub const NEW_SESSION_OP: u32 = 3;

/// Gateway op 3, "new session" (spec 3.2.3.4), for a session that did not exist before (a
/// login, or POST /idcert for another session ID; not a renewal): to every other session of the
/// actor, `d = {"cert": <the new session's ID-Cert, PEM>}`, so that they can spot a session
/// they did not start (spec 4.4).
pub fn new_session(fid: &FederationId, session_id: &SessionId, cert_pem: &str) -> Message {
    Message::core_event(
        actor_audience(fid.as_str(), Some(session_id.as_str())),
        NEW_SESSION_OP,
        serde_json::json!({ "cert": cert_pem }).to_string(),
    )
}

/// Gateway op 4 for a foreign session this server ended because its home server revoked its
/// cert: to the actor's other sessions here, `d` = the revoked cert's CacheableIdCert object
/// exactly as the home server served it (its `cacheSignature` covers `invalidatedAt`: what the
/// SDK's `ActorCertificateInvalidation` reads) plus the spec's `serial` and `invalidSince`. The
/// spec's `signature` is left out: only the actor (or, in this server's own op 4, the home
/// server) could make one; this server is neither.
pub fn foreign_cert_invalidated(
    fid: &FederationId,
    session_id: &str,
    served: &serde_json::Value,
    serial: &str,
    invalid_since: u64,
) -> Message {
    let mut data = served.clone();
    if let Some(object) = data.as_object_mut() {
        object.insert("serial".into(), serial.into());
        object.insert("invalidSince".into(), invalid_since.to_string().into());
    }
    Message::core_event(
        actor_audience(fid.as_str(), Some(session_id)),
        CERTIFICATE_INVALIDATED_OP,
        data.to_string(),
    )
}
