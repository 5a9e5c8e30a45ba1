//! The polyproto domain: federation IDs, session IDs, pDNs, ID-CSRs,
//! ID-Certs, cache signatures and challenges. Pure: no I/O, no async, no
//! wire types. Ed25519 only.
//!
//! Certificates are built and checked in exactly the layout the reference
//! client SDK (`polyproto` 0.21) writes, because the SDK re-encodes a parsed
//! certificate before checking its signature: X.509 v3 in strict DER;
//! extensions exactly `[basicConstraints, keyUsage]`, both critical (root:
//! `cA TRUE, pathLen 0`, `keyCertSign`; actor: `cA` omitted,
//! `digitalSignature`); issuer `dc` components only; actor subject `dc…`
//! (top-level domain first, IA5String), `UID`, `CN` (UTF8String),
//! `uniqueIdentifier` (IA5String, OID 0.9.2342.19200300.100.1.44); validity
//! UTCTime through 2049. [`pdn`] holds the OIDs and the name rules.
//!
//! # Layout
//!
//! - `error`: [`ModelError`], the one error type; its messages are shown to clients.
//! - `fid`: [`FederationId`], [`validate_local_name`], [`validate_domain`] (spec 5).
//! - `session_id`: [`SessionId`] (spec 6.1.1.3).
//! - `pdn`: polyproto distinguished names: the OIDs and the name layouts.
//! - `keys`: Ed25519 keys, hex signatures, `PUBLIC KEY` PEM.
//! - `cert`: [`IdCert`]; issuing and verifying root and actor ID-Certs (spec 6.1).
//! - `csr`: [`IdCsr`], validation of ID-CSRs; [`build_csr`] in the SDK's layout.
//! - `cache`: `cacheSignature` payload, signing and verification (spec 6.4.1).
//! - `challenge`: challenge strings (spec 4.3).
//! - `federation`: key trials and the verification of a foreign home server's cacheable
//!   ID-Certs (spec 4.1.1, 6.4.1).

mod cache;
mod cert;
mod challenge;
mod csr;
mod error;
mod federation;
mod fid;
mod keys;
pub mod pdn;
mod session_id;

pub use cache::{cache_signature_payload, sign_cache, verify_cache_signature};
pub use cert::{
    IdCert, MAX_ACTOR_CERT_VALIDITY_SECS, issue_actor_cert, issue_root_cert, random_serial,
    verify_actor_cert, verify_root_cert,
};
pub use challenge::{CHALLENGE_LEN, generate_challenge};
pub use csr::{IdCsr, OID_EXTENSION_REQUEST, build_csr};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{ModelError, Result};
pub use federation::{
    CacheFields, KEY_TRIAL_LEN, MAX_CACHE_TRUST_SECS, VerifiedCert, generate_key_trial,
    verify_foreign_actor, verify_foreign_root, verify_key_trial,
};
pub use fid::{
    FederationId, MAX_DOMAIN_LEN, MAX_LOCAL_NAME_LEN, validate_domain, validate_local_name,
};
pub use keys::{
    OID_ED25519, generate_signing_key, public_key_from_pem, public_key_pem, sign_hex, verify_hex,
};
pub use session_id::{MAX_SESSION_ID_LEN, SessionId};
