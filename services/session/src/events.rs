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

use p2_model::{FederationId, SessionId};
use p2_outbox::Message;
use p2_outbox::message::actor_audience;

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
