//! Gateway events this service causes, built here and queued in the event outbox of the
//! identity database in the transaction of the change that causes them ([`p2_outbox`]: the
//! relay delivers them to the events service; nothing here waits for it).
//!
//! - Op 4, "actor certificate invalidation" (spec 3.2.3.5), whenever a valid actor cert is
//!   revoked early: a deleted session, a renewal (the old cert), `polyproto admin
//!   revoke-sessions|disable`, an undone login. Audience: every session of the actor except the
//!   one whose cert was invalidated — that session ends (session closes it) or, for a renewal,
//!   is the one that asked and holds the new cert already. ([`certificate_invalidated`])
//! - Op 6, "server certificate change" (spec 3.2.3.7), whenever a key generation after the
//!   first is stored (RotateServerKey, `polyproto admin rotate-key`, the replacement of a root
//!   about to expire at start). Audience: every session of the server.
//!   ([`server_certificate_changed`])

use p2_model::FederationId;
use p2_outbox::Message;
use p2_outbox::message::{actor_audience, server_audience};

use crate::keyring::Keyring;
use crate::store::CertRow;

/// Opcode of the actor certificate invalidation event.
pub const CERTIFICATE_INVALIDATED_OP: u32 = 4;
/// Opcode of the server certificate change event.
pub const SERVER_CERTIFICATE_CHANGED_OP: u32 = 6;

/// What the op 4 `signature` signs: the spec's "string concatenation of the `invalidSince`
/// timestamp and the `serial` number, in that order", both decimal, no separator.
pub fn invalidation_signature_payload(invalid_since: u64, serial: &str) -> String {
    format!("{invalid_since}{serial}")
}

/// Op 4 for `row`, a cert of `fid` revoked at `invalid_since` (its `invalidated_at`), as of
/// `now`. `d` holds the spec's `serial`, `invalidSince` (decimal strings) and `signature`, plus
/// the revoked cert as the gateway renders a CacheableIdCert (`idCertPem`, `id_cert`,
/// `cacheNotValidBefore`, `cacheNotValidAfter`, `cacheSignature`, `invalidated`,
/// `invalidatedAt`; API.md "Wire dialect"), keys in JCS order.
///
/// `signature`: the spec asks for a signature by the revoked cert's own key, which only the
/// actor holds; the server cannot make one. This is the home server's signature (Ed25519, hex)
/// with its *current* key, over [`invalidation_signature_payload`], verifiable against
/// `GET /.p2/core/v1/key/server`. The revocation itself is attested by `cacheSignature`, which
/// covers `invalidatedAt`.
pub fn certificate_invalidated(
    keyring: &Keyring,
    fid: &FederationId,
    row: &CertRow,
    invalid_since: u64,
    now: u64,
) -> anyhow::Result<Message> {
    let issuer = keyring
        .by_number(row.generation)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let current = keyring.current().map_err(|e| anyhow::anyhow!("{e}"))?;
    let to_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    let attestation = keyring.attest(
        &issuer,
        &row.serial,
        to_u64(row.not_before),
        to_u64(row.not_after),
        Some(invalid_since),
        now,
    );
    let signature = p2_model::sign_hex(
        current.signing_key(),
        invalidation_signature_payload(invalid_since, &row.serial).as_bytes(),
    );
    let invalid_since = invalid_since.to_string();
    // serde_json's map keeps keys sorted: the JCS order, like the gateway's own rendering.
    let data = serde_json::json!({
        "cacheNotValidAfter": attestation.not_valid_after.to_string(),
        "cacheNotValidBefore": attestation.not_valid_before.to_string(),
        "cacheSignature": attestation.signature,
        "idCertPem": row.cert_pem,
        "id_cert": row.cert_pem,
        "invalidSince": invalid_since,
        "invalidated": true,
        "invalidatedAt": invalid_since,
        "serial": row.serial,
        "signature": signature,
    });
    Ok(Message::core_event(
        actor_audience(fid.as_str(), Some(&row.session_id)),
        CERTIFICATE_INVALIDATED_OP,
        data.to_string(),
    ))
}

/// Op 6 for a new root cert `cert_pem` that is current from `old_invalid_since` on (when the
/// previous root stopped being current): `d = {"cert": PEM, "oldInvalidSince": "<UNIX s>"}`.
/// `oldInvalidSince` is a decimal string, as API.md "Wire dialect" types every u64 of the
/// spec and the SDK (0.21, `ServerCertificateChange`) requires.
pub fn server_certificate_changed(cert_pem: &str, old_invalid_since: u64) -> Message {
    Message::core_event(
        server_audience(),
        SERVER_CERTIFICATE_CHANGED_OP,
        serde_json::json!({
            "cert": cert_pem,
            "oldInvalidSince": old_invalid_since.to_string(),
        })
        .to_string(),
    )
}
