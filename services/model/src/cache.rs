//! Cache signatures (spec 6.4.1) of cacheable ID-Cert responses.
//!
//! The spec concatenates serial and timestamps without separators, which is
//! ambiguous ("1" + "23" = "12" + "3"); the SDK 0.21 (`CacheableIdCert::verify`)
//! joins them with single spaces, and so do we.

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::Result;
use crate::keys::{sign_hex, verify_hex};

/// The exact string a `cacheSignature` signs: `"serial notBefore notAfter"`,
/// plus `" invalidatedAt"` when present (single spaces, decimal).
pub fn cache_signature_payload(
    serial: &str,
    cache_not_valid_before: u64,
    cache_not_valid_after: u64,
    invalidated_at: Option<u64>,
) -> String {
    let mut payload = format!("{serial} {cache_not_valid_before} {cache_not_valid_after}");
    if let Some(invalidated_at) = invalidated_at {
        payload.push(' ');
        payload.push_str(&invalidated_at.to_string());
    }
    payload
}

/// Signs a cache entry with the home server's key; returns the hex signature.
pub fn sign_cache(
    key: &SigningKey,
    serial: &str,
    nb: u64,
    na: u64,
    invalidated_at: Option<u64>,
) -> String {
    sign_hex(
        key,
        cache_signature_payload(serial, nb, na, invalidated_at).as_bytes(),
    )
}

/// Verifies a hex `cacheSignature` with the home server's public key.
pub fn verify_cache_signature(
    key: &VerifyingKey,
    serial: &str,
    nb: u64,
    na: u64,
    invalidated_at: Option<u64>,
    signature_hex: &str,
) -> Result<()> {
    verify_hex(
        key,
        cache_signature_payload(serial, nb, na, invalidated_at).as_bytes(),
        signature_hex,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ModelError;
    use crate::keys::generate_signing_key;

    #[test]
    fn payload_joins_fields_with_single_spaces() {
        assert_eq!(cache_signature_payload("123", 10, 20, None), "123 10 20");
        assert_eq!(
            cache_signature_payload("123", 10, 20, Some(15)),
            "123 10 20 15"
        );
    }

    #[test]
    fn cache_signature_verifies_and_fails_when_any_field_changes() {
        let key = generate_signing_key();
        let public = key.verifying_key();
        for invalidated in [None, Some(1_700_000_500)] {
            let sig = sign_cache(&key, "4242", 1_700_000_000, 1_700_043_200, invalidated);
            verify_cache_signature(
                &public,
                "4242",
                1_700_000_000,
                1_700_043_200,
                invalidated,
                &sig,
            )
            .unwrap();
            let bad = [
                verify_cache_signature(
                    &public,
                    "4243",
                    1_700_000_000,
                    1_700_043_200,
                    invalidated,
                    &sig,
                ),
                verify_cache_signature(
                    &public,
                    "4242",
                    1_700_000_001,
                    1_700_043_200,
                    invalidated,
                    &sig,
                ),
                verify_cache_signature(
                    &public,
                    "4242",
                    1_700_000_000,
                    1_700_043_201,
                    invalidated,
                    &sig,
                ),
                verify_cache_signature(
                    &public,
                    "4242",
                    1_700_000_000,
                    1_700_043_200,
                    match invalidated {
                        None => Some(1),
                        Some(at) => Some(at + 1),
                    },
                    &sig,
                ),
            ];
            for result in bad {
                assert_eq!(result, Err(ModelError::BadSignature));
            }
        }
        let sig = sign_cache(&key, "1", 2, 3, Some(4));
        assert_eq!(
            verify_cache_signature(&public, "1", 2, 3, None, &sig),
            Err(ModelError::BadSignature)
        );
        let other = generate_signing_key().verifying_key();
        assert_eq!(
            verify_cache_signature(&other, "1", 2, 3, Some(4), &sig),
            Err(ModelError::BadSignature)
        );
    }
}
