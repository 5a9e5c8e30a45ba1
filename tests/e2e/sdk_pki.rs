//! Interop of `p2-model`'s PKI with the reference client SDK (`polyproto`
//! 0.21): our certificates, CSRs and cache signatures are checked by the SDK's
//! own code, and the SDK's are checked by ours.
//!
//! The Ed25519 wrappers ([`SdkSig`], [`SdkPub`], [`SdkPriv`]) and the
//! `sdk_*` helpers are `pub` so that other test modules can reuse them.

use der::asn1::BitString;
use der::pem::LineEnding;
use ed25519_dalek::Signer;
use p2_model::{SigningKey, VerifyingKey};
use polyproto::api::cacheable_cert::CacheableIdCert;
use polyproto::certs::PublicKeyInfo;
use polyproto::certs::capabilities::ActorCapabilities;
use polyproto::certs::idcert::traits::IdCertBehaviors;
use polyproto::certs::idcert::{IdCertActor, IdCertHs};
use polyproto::certs::idcsr::{IdCsr, IdCsrActor, IdCsrBehaviors, IdCsrInnerActor};
use polyproto::errors::{CertificateConversionError, InvalidInput, PublicKeyError};
use polyproto::key::{PrivateKey, PublicKey};
use polyproto::signature::Signature;
use polyproto::types::{ActorDN, DomainName, FederationId, LocalName, SessionId};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SignatureBitStringEncoding};
use x509_cert::name::RelativeDistinguishedName;

/// OID of Ed25519 (RFC 8410).
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// An Ed25519 signature, as the SDK's [`Signature`] trait wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkSig(pub ed25519_dalek::Signature);

impl std::fmt::Display for SdkSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl SignatureBitStringEncoding for SdkSig {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0.to_bytes())
    }
}

impl Signature for SdkSig {
    type Signature = ed25519_dalek::Signature;

    fn as_signature(&self) -> &Self::Signature {
        &self.0
    }

    fn algorithm_identifier() -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: ED25519,
            parameters: None,
        }
    }

    fn from_bytes(signature: &[u8]) -> Result<Self, InvalidInput> {
        let bytes: [u8; 64] = signature.try_into().map_err(|_| InvalidInput::Length {
            min_length: 64,
            max_length: 64,
            actual_length: signature.len().to_string(),
        })?;
        Ok(Self(ed25519_dalek::Signature::from_bytes(&bytes)))
    }

    fn as_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
}

/// An Ed25519 public key, as the SDK's [`PublicKey`] trait wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkPub(pub VerifyingKey);

impl PublicKey<SdkSig> for SdkPub {
    fn verify_signature(&self, signature: &SdkSig, data: &[u8]) -> Result<(), PublicKeyError> {
        self.0
            .verify_strict(data, &signature.0)
            .map_err(|_| PublicKeyError::BadSignature)
    }

    fn public_key_info(&self) -> Result<PublicKeyInfo, PublicKeyError> {
        Ok(PublicKeyInfo {
            algorithm: SdkSig::algorithm_identifier(),
            public_key_bitstring: BitString::from_bytes(self.0.as_bytes())
                .map_err(|_| PublicKeyError::BadPublicKeyInfo)?,
        })
    }

    fn try_from_public_key_info(info: PublicKeyInfo) -> Result<Self, CertificateConversionError> {
        let bad = |why: &str| {
            CertificateConversionError::InvalidInput(InvalidInput::Malformed(why.to_owned()))
        };
        if info.algorithm != SdkSig::algorithm_identifier() {
            return Err(bad("not an Ed25519 key"));
        }
        let bytes: [u8; 32] = info
            .public_key_bitstring
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("an Ed25519 key is 32 bytes"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| bad("not an Ed25519 point"))
    }
}

/// An Ed25519 private key, as the SDK's [`PrivateKey`] trait wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkPriv(pub SigningKey);

impl PrivateKey<SdkSig> for SdkPriv {
    type PublicKey = SdkPub;

    fn pubkey(&self) -> SdkPub {
        SdkPub(self.0.verifying_key())
    }

    fn sign(&self, data: &[u8]) -> SdkSig {
        SdkSig(self.0.sign(data))
    }
}

/// The SDK's verification of a home server (root) ID-Cert at UNIX time `at`.
pub fn sdk_verify_home_server_pem(pem: &str, at: u64) -> Result<(), String> {
    IdCertHs::<SdkSig, SdkPub>::from_pem_unchecked(pem)
        .map_err(|e| format!("the SDK cannot parse the home server cert: {e}"))?
        .full_verify_home_server(at)
        .map_err(|e| format!("the SDK rejects the home server cert: {e}"))
}

/// The SDK's verification of an actor ID-Cert at `at` with the home server's key.
pub fn sdk_verify_actor_pem(pem: &str, at: u64, server_key: &VerifyingKey) -> Result<(), String> {
    IdCertActor::<SdkSig, SdkPub>::try_from_pem(pem, at, &SdkPub(*server_key))
        .map(|_| ())
        .map_err(|e| format!("the SDK rejects the actor cert: {e}"))
}

/// Parses a CacheableIdCert JSON body as the SDK does and checks its
/// `cacheSignature` with the SDK's `CacheableIdCert::verify`.
pub fn sdk_verify_cacheable(
    json: &str,
    server_key: &VerifyingKey,
) -> Result<CacheableIdCert, String> {
    let cacheable: CacheableIdCert = serde_json::from_str(json)
        .map_err(|e| format!("the SDK cannot parse the CacheableIdCert: {e}"))?;
    cacheable
        .verify::<SdkSig, SdkPub>(&SdkPub(*server_key))
        .map_err(|e| format!("the SDK rejects the cacheSignature: {e}"))?;
    Ok(cacheable)
}

/// An actor ID-CSR built by the SDK itself (PEM, LF), with its fresh key.
///
/// Panics (failing the calling test) if the SDK refuses `fid` or `session_id`.
#[allow(
    clippy::expect_used,
    reason = "a test helper: a panic is the test's failure"
)]
pub fn sdk_build_csr(fid: &str, session_id: &str) -> (String, SdkPriv) {
    let key = SdkPriv(p2_model::generate_signing_key());
    let federation_id = FederationId::new(fid).expect("the SDK accepts the FID");
    let actor = ActorDN {
        local_name: federation_id.local_name().clone(),
        domain_name: federation_id.domain_name().clone(),
        federation_id,
        session_id: SessionId::new_validated(session_id).expect("the SDK accepts the session ID"),
        additional_fields: RelativeDistinguishedName::default(),
    };
    let csr =
        IdCsrActor::new(actor, &key, ActorCapabilities::default()).expect("the SDK builds a CSR");
    (
        csr.to_pem(LineEnding::LF).expect("the SDK encodes its CSR"),
        key,
    )
}

/// Parses an actor ID-CSR with the SDK and runs every check the SDK has for
/// one: signature (over the SDK's re-encoding), actor DN, actor capabilities.
pub fn sdk_check_csr_pem(pem: &str) -> Result<IdCsrInnerActor<SdkSig, SdkPub>, String> {
    let csr = IdCsr::<SdkSig, SdkPub>::from_pem_unchecked(pem)
        .map_err(|e| format!("the SDK cannot parse the CSR: {e}"))?;
    if csr.signature_algorithm != SdkSig::algorithm_identifier() {
        return Err("the CSR's signature algorithm is not Ed25519".into());
    }
    let signed = csr
        .signature_data()
        .map_err(|e| format!("the SDK cannot re-encode the CSR: {e}"))?;
    csr.inner_csr
        .subject_public_key
        .verify_signature(&csr.signature, &signed)
        .map_err(|e| format!("the SDK rejects the CSR signature: {e}"))?;
    let inner = IdCsrInnerActor::try_from(csr.inner_csr)
        .map_err(|e| format!("the CSR is not an actor CSR for the SDK: {e}"))?;
    inner
        .capabilities
        .validate_for_actor()
        .map_err(|e| format!("the SDK rejects the CSR capabilities: {e}"))?;
    let dn = &inner.subject;
    ActorDN::new_validated(
        dn.federation_id.clone(),
        dn.local_name.clone(),
        dn.domain_name.clone(),
        dn.session_id.clone(),
        Some(dn.additional_fields.clone()),
    )
    .map_err(|e| format!("the SDK rejects the CSR subject: {e}"))?;
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use der::{Decode, Encode};
    use polyproto::certs::capabilities::HomeServerCapabilities;
    use polyproto::certs::idcerttbs::{IdCertTbsActor, IdCertTbsHs};
    use polyproto::types::{HomeServerDN, X509SerialNumber};
    use x509_cert::Certificate;
    use x509_cert::time::{Time, Validity};

    use super::*;

    const DAY: u64 = 86_400;
    /// 2023-11-14T22:13:20Z.
    const T0: u64 = 1_700_000_000;

    struct Server {
        key: SigningKey,
        root: p2_model::IdCert,
    }

    fn server(domain: &str) -> Server {
        let key = p2_model::generate_signing_key();
        let root =
            p2_model::issue_root_cert(&key, domain, p2_model::random_serial(), T0, T0 + 365 * DAY)
                .unwrap();
        Server { key, root }
    }

    fn issue_for_sdk_csr(server: &Server, fid: &str, session: &str) -> p2_model::IdCert {
        let (pem, _) = sdk_build_csr(fid, session);
        let csr = p2_model::IdCsr::parse(pem.as_bytes()).unwrap();
        p2_model::issue_actor_cert(
            &server.root,
            &server.key,
            &csr,
            p2_model::random_serial(),
            T0 + DAY,
            T0 + 61 * DAY,
        )
        .unwrap()
    }

    #[test]
    fn root_cert_from_issue_root_cert_passes_the_sdks_home_server_verification() {
        for domain in ["example.com", "localhost", "a.b.example.org"] {
            let s = server(domain);
            sdk_verify_home_server_pem(&s.root.to_pem(), T0 + DAY).unwrap();
            assert!(sdk_verify_home_server_pem(&s.root.to_pem(), T0 + 366 * DAY).is_err());
        }
        // Validity reaching past 2049 switches to GeneralizedTime; the SDK keeps it.
        let key = p2_model::generate_signing_key();
        let root = p2_model::issue_root_cert(&key, "example.com", 9, T0, 2_600_000_000).unwrap();
        sdk_verify_home_server_pem(&root.to_pem(), 2_550_000_000).unwrap();
    }

    #[test]
    fn actor_cert_for_an_sdk_csr_passes_the_sdks_actor_verification() {
        let s = server("example.com");
        let cert = issue_for_sdk_csr(&s, "alice@example.com", "laptop-1");
        let server_key = s.key.verifying_key();
        sdk_verify_actor_pem(&cert.to_pem(), T0 + 2 * DAY, &server_key).unwrap();
        assert!(sdk_verify_actor_pem(&cert.to_pem(), T0 + 62 * DAY, &server_key).is_err());
        let stranger = p2_model::generate_signing_key().verifying_key();
        assert!(sdk_verify_actor_pem(&cert.to_pem(), T0 + 2 * DAY, &stranger).is_err());
        p2_model::verify_actor_cert(&cert, &s.root, T0 + 2 * DAY).unwrap();
    }

    #[test]
    fn the_sdk_reencodes_our_certificates_byte_for_byte() {
        let s = server("sub.example.com");
        let actor = issue_for_sdk_csr(&s, "bob.smith@sub.example.com", "Phone #2 (work)");
        let parsed = IdCertActor::<SdkSig, SdkPub>::from_pem_unchecked(&actor.to_pem()).unwrap();
        assert_eq!(
            Certificate::try_from(parsed).unwrap().to_der().unwrap(),
            actor.der()
        );
        let parsed = IdCertHs::<SdkSig, SdkPub>::from_pem_unchecked(&s.root.to_pem()).unwrap();
        assert_eq!(
            Certificate::try_from(parsed).unwrap().to_der().unwrap(),
            s.root.der()
        );
    }

    #[test]
    fn the_sdk_prints_our_serial_exactly_as_we_do() {
        let s = server("example.com");
        let cert = issue_for_sdk_csr(&s, "alice@example.com", "s");
        let parsed = IdCertActor::<SdkSig, SdkPub>::from_pem_unchecked(&cert.to_pem()).unwrap();
        assert_eq!(parsed.id_cert_tbs.serial_number.to_string(), cert.serial());
    }

    #[test]
    fn csr_built_by_the_sdk_is_accepted_by_id_csr_parse() {
        let (pem, key) = sdk_build_csr("alice@example.com", "sdk-session");
        let csr = p2_model::IdCsr::parse(pem.as_bytes()).unwrap();
        assert_eq!(csr.fid().as_str(), "alice@example.com");
        assert_eq!(csr.session_id().as_str(), "sdk-session");
        assert_eq!(csr.public_key(), &key.0.verifying_key());
        csr.check_for("example.com", Some("alice")).unwrap();
        let der = der::pem::decode_vec(pem.as_bytes()).unwrap().1;
        p2_model::IdCsr::parse(&der).unwrap();
    }

    #[test]
    fn csr_from_build_csr_is_accepted_by_the_sdk() {
        let key = p2_model::generate_signing_key();
        let fid = p2_model::FederationId::parse("carol@example.net").unwrap();
        let sid = p2_model::SessionId::parse("desktop").unwrap();
        let pem = p2_model::build_csr(&key, &fid, &sid).unwrap();
        let inner = sdk_check_csr_pem(&pem).unwrap();
        assert_eq!(inner.subject.federation_id.to_string(), "carol@example.net");
        assert_eq!(inner.subject.session_id.to_string(), "desktop");
        assert_eq!(inner.subject_public_key, SdkPub(key.verifying_key()));
        // And it is byte-for-byte what the SDK writes for the same input.
        let sdk_pem = {
            let actor = ActorDN {
                federation_id: FederationId::new("carol@example.net").unwrap(),
                local_name: LocalName::new("carol").unwrap(),
                domain_name: DomainName::new("example.net").unwrap(),
                session_id: SessionId::new_validated("desktop").unwrap(),
                additional_fields: RelativeDistinguishedName::default(),
            };
            IdCsrActor::new(actor, &SdkPriv(key.clone()), ActorCapabilities::default())
                .unwrap()
                .to_pem(LineEnding::LF)
                .unwrap()
        };
        assert_eq!(pem, sdk_pem);
    }

    #[test]
    fn cache_signature_from_sign_cache_verifies_with_the_sdk() {
        let s = server("example.com");
        let cert = issue_for_sdk_csr(&s, "alice@example.com", "s");
        let server_key = s.key.verifying_key();
        let (nb, na) = (T0 + 2 * DAY, T0 + 2 * DAY + 12 * 3600);
        for invalidated_at in [None, Some(T0 + 3 * DAY)] {
            let signature = p2_model::sign_cache(&s.key, &cert.serial(), nb, na, invalidated_at);
            let mut body = serde_json::json!({
                "cacheNotValidAfter": na.to_string(),
                "cacheNotValidBefore": nb.to_string(),
                "cacheSignature": signature,
                "idCertPem": cert.to_pem(),
                "invalidated": invalidated_at.is_some(),
            });
            if let Some(at) = invalidated_at {
                body["invalidatedAt"] = serde_json::Value::String(at.to_string());
            }
            let cacheable = sdk_verify_cacheable(&body.to_string(), &server_key).unwrap();
            assert_eq!(cacheable.invalidated_at, invalidated_at);
            cacheable
                .try_to_actor_idcert::<SdkSig, SdkPub>(T0 + 2 * DAY, &SdkPub(server_key))
                .unwrap();

            body["cacheNotValidAfter"] = serde_json::Value::String((na + 1).to_string());
            assert!(sdk_verify_cacheable(&body.to_string(), &server_key).is_err());
        }
    }

    #[test]
    fn certs_issued_by_the_sdk_pass_our_verification() {
        let hs_key = SdkPriv(p2_model::generate_signing_key());
        let validity = Validity {
            not_before: Time::UtcTime(
                der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(T0)).unwrap(),
            ),
            not_after: Time::UtcTime(
                der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(
                    T0 + 90 * DAY,
                ))
                .unwrap(),
            ),
        };
        let hs_dn =
            HomeServerDN::new_validated(DomainName::new("example.org").unwrap(), None).unwrap();
        let serial = X509SerialNumber::from_bytes_be(&4242u64.to_be_bytes()).unwrap();
        let hs_tbs = IdCertTbsHs::<SdkSig, SdkPub> {
            serial_number: serial.clone(),
            signature_algorithm: SdkSig::algorithm_identifier(),
            issuer: hs_dn.clone(),
            validity,
            subject: hs_dn.clone(),
            subject_public_key: hs_key.pubkey(),
            capabilities: HomeServerCapabilities::default(),
            signature_scheme: std::marker::PhantomData,
        };
        let hs = IdCertHs::try_from_tbs(&hs_tbs, &hs_key, serial.clone(), hs_dn.clone(), validity)
            .unwrap();
        let root = p2_model::IdCert::from_der(&hs.try_to_der().unwrap()).unwrap();
        p2_model::verify_root_cert(&root, "example.org", Some(T0 + DAY)).unwrap();
        assert_eq!(root.serial(), "4242");

        let (csr_pem, _) = sdk_build_csr("dave@example.org", "tablet");
        let inner = sdk_check_csr_pem(&csr_pem).unwrap();
        let actor_tbs = IdCertTbsActor::<SdkSig, SdkPub> {
            serial_number: serial.clone(),
            signature_algorithm: SdkSig::algorithm_identifier(),
            issuer: hs_dn.clone(),
            validity,
            subject: inner.subject,
            subject_public_key: inner.subject_public_key,
            capabilities: ActorCapabilities::default(),
            signature_scheme: std::marker::PhantomData,
        };
        let actor =
            IdCertActor::try_from_tbs(&actor_tbs, &hs_key, serial, hs_dn, validity).unwrap();
        let actor = p2_model::IdCert::from_der(&actor.try_to_der().unwrap()).unwrap();
        p2_model::verify_actor_cert(&actor, &root, T0 + DAY).unwrap();
        assert_eq!(actor.subject_fid().unwrap().as_str(), "dave@example.org");
        assert_eq!(
            Certificate::from_der(actor.der())
                .unwrap()
                .to_der()
                .unwrap(),
            actor.der()
        );
    }
}
