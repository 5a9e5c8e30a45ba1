//! Federation (spec 4.1.1, 6.4, 6.4.1): key trials, and the verification of the cacheable
//! ID-Certs a foreign home server serves — its root cert and its actors' certs with their
//! `cacheSignature`s. Pure: the session service fetches, this module decides.
//!
//! A key trial is a random string of [`KEY_TRIAL_LEN`] characters of `[a-zA-Z0-9]` (each class
//! present, like a challenge string). The actor signs its UTF-8 bytes, exactly as they were
//! handed out, with the private key of the ID-Cert it names by serial; the signature travels
//! as hex (the SDK's `KeyTrial::into_response`).
//!
//! Out-of-date rules (spec 6.4.1): a cache entry is used only inside
//! `[cacheNotValidBefore, cacheNotValidAfter)`, and never for longer than
//! [`MAX_CACHE_TRUST_SECS`] after it was verified, whatever window the home server signed.

use crate::cert::{IdCert, verify_actor_cert, verify_root_cert};
use crate::error::{ModelError, Result};
use crate::fid::FederationId;
use crate::keys::verify_hex;

/// Length of a key trial string (spec 4.3 recommends at least 64 for public servers).
pub const KEY_TRIAL_LEN: usize = crate::challenge::CHALLENGE_LEN;

/// The longest a verified foreign cert is trusted without asking its home server again
/// (spec 6.4 recommends 1 to 12 hours), even when its cache window is longer.
pub const MAX_CACHE_TRUST_SECS: u64 = 12 * 3600;

/// A fresh key trial string.
pub fn generate_key_trial() -> String {
    crate::challenge::generate_challenge()
}

/// The cache fields of a cacheable ID-Cert as its home server served them (spec 6.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFields<'a> {
    /// The certificate, PEM.
    pub id_cert_pem: &'a str,
    /// `cacheNotValidBefore`, UNIX seconds.
    pub not_valid_before: u64,
    /// `cacheNotValidAfter`, UNIX seconds.
    pub not_valid_after: u64,
    /// `cacheSignature`, hex.
    pub signature: &'a str,
    /// `invalidatedAt`, when present.
    pub invalidated_at: Option<u64>,
}

/// A cert whose home server's cache fields verified: what it is, and until when it may be
/// used without asking its home server again.
#[derive(Debug, Clone)]
pub struct VerifiedCert {
    /// The certificate.
    pub cert: IdCert,
    /// UNIX seconds from which the entry must not be used any more: the earlier of
    /// `cacheNotValidAfter`, the cert's `notAfter` and verification time + the caller's
    /// trust bound (at most [`MAX_CACHE_TRUST_SECS`]).
    pub trusted_until: u64,
    /// When the home server revoked it, if it did (then it is never good for a sign-in).
    pub invalidated_at: Option<u64>,
}

fn check_window(
    fields: &CacheFields<'_>,
    cert: &IdCert,
    now: u64,
    max_trust_secs: u64,
) -> Result<u64> {
    if fields.not_valid_before > now {
        return Err(ModelError::CertRule(format!(
            "its cache window starts in the future (cacheNotValidBefore {} > now {now}).",
            fields.not_valid_before
        )));
    }
    if fields.not_valid_after <= now {
        return Err(ModelError::CertRule(format!(
            "its cache window is over (cacheNotValidAfter {} <= now {now}): the home server \
             served an out-of-date entry.",
            fields.not_valid_after
        )));
    }
    Ok(fields
        .not_valid_after
        .min(cert.not_after())
        .min(now.saturating_add(max_trust_secs.min(MAX_CACHE_TRUST_SECS))))
}

fn check_cache_signature(fields: &CacheFields<'_>, cert: &IdCert, server: &IdCert) -> Result<()> {
    crate::cache::verify_cache_signature(
        &server.public_key()?,
        &cert.serial(),
        fields.not_valid_before,
        fields.not_valid_after,
        fields.invalidated_at,
        fields.signature,
    )
    .map_err(|_| {
        ModelError::CertRule(
            "its cacheSignature does not verify with the home server's key.".to_owned(),
        )
    })
}

/// Verifies the root cert a home server serves for `domain` at `now`, trusting it for at
/// most `max_trust_secs`: a root ID-Cert for
/// exactly that domain (its `dc` components), self-signed, valid now, not revoked, with a
/// current cache window whose `cacheSignature` its own key made.
pub fn verify_foreign_root(
    fields: &CacheFields<'_>,
    domain: &str,
    now: u64,
    max_trust_secs: u64,
) -> Result<VerifiedCert> {
    let cert = IdCert::from_pem(fields.id_cert_pem)?;
    verify_root_cert(&cert, domain, Some(now))?;
    if fields.invalidated_at.is_some() {
        return Err(ModelError::CertRule(
            "the home server's certificate is marked invalidated.".to_owned(),
        ));
    }
    let trusted_until = check_window(fields, &cert, now, max_trust_secs)?;
    check_cache_signature(fields, &cert, &cert)?;
    Ok(VerifiedCert {
        cert,
        trusted_until,
        invalidated_at: None,
    })
}

/// Verifies an actor cert served by `fid`'s home server: an actor ID-Cert of `fid`, issued and
/// signed by `issuer` (the root that was current when it was issued), valid at `now`, with a
/// current cache window whose `cacheSignature` the home server's current key (`server`) made.
/// A revoked cert verifies (its revocation is signed too) and carries `invalidated_at`.
pub fn verify_foreign_actor(
    fields: &CacheFields<'_>,
    fid: &FederationId,
    issuer: &IdCert,
    server: &IdCert,
    now: u64,
    max_trust_secs: u64,
) -> Result<VerifiedCert> {
    let cert = IdCert::from_pem(fields.id_cert_pem)?;
    verify_actor_cert(&cert, issuer, now)?;
    let subject = cert.subject_fid()?;
    if &subject != fid {
        return Err(ModelError::WrongActor {
            expected: fid.to_string(),
            actual: subject.to_string(),
        });
    }
    let trusted_until = check_window(fields, &cert, now, max_trust_secs)?;
    check_cache_signature(fields, &cert, server)?;
    Ok(VerifiedCert {
        cert,
        trusted_until,
        invalidated_at: fields.invalidated_at,
    })
}

/// Checks a key trial response: `signature_hex` is the signature of `trial`'s UTF-8 bytes by
/// the key of `cert`.
pub fn verify_key_trial(cert: &IdCert, trial: &str, signature_hex: &str) -> Result<()> {
    verify_hex(&cert.public_key()?, trial.as_bytes(), signature_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sign_cache;
    use crate::keys::{generate_signing_key, sign_hex};
    use crate::session_id::SessionId;

    const NOW: u64 = 1_750_000_000;

    struct Home {
        key: crate::SigningKey,
        root: IdCert,
    }

    fn home(domain: &str) -> Home {
        let key = generate_signing_key();
        let root =
            crate::issue_root_cert(&key, domain, 1, NOW - 86_400, NOW + 86_400 * 365).unwrap();
        Home { key, root }
    }

    fn actor(home: &Home, fid: &FederationId, serial: u64) -> (IdCert, crate::SigningKey) {
        let key = generate_signing_key();
        let csr = crate::build_csr(&key, fid, &SessionId::parse("laptop").unwrap()).unwrap();
        let csr = crate::IdCsr::from_pem(&csr).unwrap();
        let cert =
            crate::issue_actor_cert(&home.root, &home.key, &csr, serial, NOW - 60, NOW + 3600)
                .unwrap();
        (cert, key)
    }

    fn fields<'a>(
        pem: &'a str,
        signature: &'a str,
        window: (u64, u64),
        invalidated_at: Option<u64>,
    ) -> CacheFields<'a> {
        CacheFields {
            id_cert_pem: pem,
            not_valid_before: window.0,
            not_valid_after: window.1,
            signature,
            invalidated_at,
        }
    }

    #[test]
    fn a_served_root_verifies_for_its_domain_only() {
        let a = home("a.test");
        let pem = a.root.to_pem();
        let window = (NOW - 10, NOW + 600);
        let sig = sign_cache(&a.key, &a.root.serial(), window.0, window.1, None);
        let verified = verify_foreign_root(
            &fields(&pem, &sig, window, None),
            "a.test",
            NOW,
            MAX_CACHE_TRUST_SECS,
        )
        .unwrap();
        assert_eq!(verified.trusted_until, NOW + 600);
        assert!(
            verify_foreign_root(
                &fields(&pem, &sig, window, None),
                "b.test",
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
        // Out of date, not yet valid, or signed by another key.
        assert!(
            verify_foreign_root(
                &fields(&pem, &sig, window, None),
                "a.test",
                NOW + 600,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
        assert!(
            verify_foreign_root(
                &fields(&pem, &sig, window, None),
                "a.test",
                NOW - 11,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
        let other = sign_cache(
            &generate_signing_key(),
            &a.root.serial(),
            window.0,
            window.1,
            None,
        );
        assert!(
            verify_foreign_root(
                &fields(&pem, &other, window, None),
                "a.test",
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
    }

    #[test]
    fn trust_never_outlasts_twelve_hours() {
        let a = home("a.test");
        let pem = a.root.to_pem();
        let window = (NOW - 10, NOW + 86_400);
        let sig = sign_cache(&a.key, &a.root.serial(), window.0, window.1, None);
        let verified = verify_foreign_root(
            &fields(&pem, &sig, window, None),
            "a.test",
            NOW,
            MAX_CACHE_TRUST_SECS,
        )
        .unwrap();
        assert_eq!(verified.trusted_until, NOW + MAX_CACHE_TRUST_SECS);
    }

    #[test]
    fn an_actor_cert_verifies_against_its_home_server_and_key_trials_with_its_key() {
        let a = home("a.test");
        let fid = FederationId::parse("alice@a.test").unwrap();
        let (cert, key) = actor(&a, &fid, 42);
        let pem = cert.to_pem();
        let window = (NOW - 10, NOW + 600);
        let sig = sign_cache(&a.key, "42", window.0, window.1, None);
        let verified = verify_foreign_actor(
            &fields(&pem, &sig, window, None),
            &fid,
            &a.root,
            &a.root,
            NOW,
            MAX_CACHE_TRUST_SECS,
        )
        .unwrap();
        assert_eq!(verified.invalidated_at, None);
        let trial = generate_key_trial();
        verify_key_trial(&verified.cert, &trial, &sign_hex(&key, trial.as_bytes())).unwrap();
        assert!(verify_key_trial(&verified.cert, &trial, &sign_hex(&key, b"other")).is_err());
        // Another actor's FID, an impostor's root, a forged cache signature.
        let bob = FederationId::parse("bob@a.test").unwrap();
        assert!(
            verify_foreign_actor(
                &fields(&pem, &sig, window, None),
                &bob,
                &a.root,
                &a.root,
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
        let impostor = home("a.test");
        assert!(
            verify_foreign_actor(
                &fields(&pem, &sig, window, None),
                &fid,
                &impostor.root,
                &impostor.root,
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
        let forged = sign_cache(&impostor.key, "42", window.0, window.1, None);
        assert!(
            verify_foreign_actor(
                &fields(&pem, &forged, window, None),
                &fid,
                &a.root,
                &a.root,
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
    }

    #[test]
    fn a_revocation_is_covered_by_the_cache_signature() {
        let a = home("a.test");
        let fid = FederationId::parse("alice@a.test").unwrap();
        let (cert, _) = actor(&a, &fid, 7);
        let pem = cert.to_pem();
        let window = (NOW - 10, NOW + 600);
        let sig = sign_cache(&a.key, "7", window.0, window.1, Some(NOW - 5));
        let verified = verify_foreign_actor(
            &fields(&pem, &sig, window, Some(NOW - 5)),
            &fid,
            &a.root,
            &a.root,
            NOW,
            MAX_CACHE_TRUST_SECS,
        )
        .unwrap();
        assert_eq!(verified.invalidated_at, Some(NOW - 5));
        // Dropping the revocation breaks the signature.
        assert!(
            verify_foreign_actor(
                &fields(&pem, &sig, window, None),
                &fid,
                &a.root,
                &a.root,
                NOW,
                MAX_CACHE_TRUST_SECS
            )
            .is_err()
        );
    }
}
