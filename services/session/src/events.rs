//! Gateway events this service causes, published through the events service
//! (`polyproto.events.v1.Events/Publish`; services never touch the event streams themselves).
//!
//! The events service does not implement `Publish` yet, so these are the marked call sites the
//! events work fills in; until then they only log. When filling them in, keep them
//! best-effort: the session change has already happened and must not be undone because an
//! event could not be queued (log and carry on).

use p2_model::{FederationId, SessionId};
use p2_proto::identity::v1::RevokeActorIdCertResponse;

/// CALL SITE for gateway op 4, "actor certificate invalidation" (spec 3.2.3.5), after a
/// session was deleted and its ID-Cert revoked.
///
/// To publish: `events.Publish { fid, except_session_id: Some(session_id), event: { namespace:
/// "core", op: 4, data_json } }` where `data_json` holds the spec's `serial` and `invalidSince`
/// (decimal strings, API.md "Wire dialect") plus the flattened CacheableIdCert fields of
/// `revoked.cert`, so every other session of the actor learns of the revocation.
pub async fn publish_certificate_invalidated(
    fid: &FederationId,
    session_id: &SessionId,
    revoked: &RevokeActorIdCertResponse,
) {
    tracing::debug!(
        fid = %fid,
        session_id = %session_id,
        serial = %revoked.serial,
        invalidated_at = revoked.invalidated_at,
        "gateway op 4 (certificate invalidation) not published: the events service does not publish yet"
    );
}

/// CALL SITE for gateway op 3, "new session" (spec 3.2.3.4), after a login issued a new
/// session's ID-Cert.
///
/// To publish: `events.Publish { fid, except_session_id: Some(session_id), event: { namespace:
/// "core", op: 3, data_json: {"cert": cert_pem} } }`, so the actor's other sessions can spot a
/// session they did not start (spec 4.4).
pub async fn publish_new_session(fid: &FederationId, session_id: &SessionId, cert_pem: &str) {
    tracing::debug!(
        fid = %fid,
        session_id = %session_id,
        cert_len = cert_pem.len(),
        "gateway op 3 (new session) not published: the events service does not publish yet"
    );
}
