//! ID-Certs (spec 6.1): issuing and verifying home server root certificates
//! and actor certificates.
//!
//! The SDK 0.21 verifies a certificate by parsing it into its own model,
//! re-encoding that model and checking the signature over the re-encoding. A
//! certificate therefore verifies there only if it is already in exactly the
//! form the SDK writes, which is the layout produced and enforced here:
//!
//! - X.509 v3, strict DER, serial a positive INTEGER, Ed25519 signature
//!   algorithm without parameters (TBS and outer), Ed25519 SPKI;
//! - validity as UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280);
//! - no issuer/subject unique-ID fields;
//! - extensions exactly `[basicConstraints, keyUsage]`, both critical: root
//!   `cA TRUE, pathLen 0` and `keyCertSign`; actor `cA` omitted (an empty
//!   SEQUENCE) and `digitalSignature`;
//! - names as described in [`crate::pdn`].

use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::{Decode, Encode};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use x509_cert::Certificate;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::csr::IdCsr;
use crate::error::{ModelError, Result, encoding};
use crate::fid::{FederationId, validate_domain};
use crate::keys::{
    SIGNATURE_LEN, check_ed25519_algorithm, ed25519_algorithm, key_from_spki, pem_decode,
    pem_encode, spki_of, verify_bytes,
};
use crate::pdn;
use crate::session_id::SessionId;

/// The longest validity an actor ID-Cert may have (spec 6.1: 60 days).
pub const MAX_ACTOR_CERT_VALIDITY_SECS: u64 = 60 * 24 * 3600;

/// 2050-01-01T00:00:00Z: from here on RFC 5280 requires GeneralizedTime.
const GENERALIZED_TIME_FROM: u64 = 2_524_608_000;

/// OID of the basicConstraints extension, 2.5.29.19.
pub(crate) const OID_BASIC_CONSTRAINTS: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("2.5.29.19");
/// OID of the keyUsage extension, 2.5.29.15.
pub(crate) const OID_KEY_USAGE: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("2.5.29.15");

/// A parsed X.509 ID-Cert, kept together with its exact DER bytes.
///
/// Parsing checks only that the bytes are a certificate in strict DER; the
/// polyproto rules are checked by [`verify_root_cert`] and [`verify_actor_cert`].
#[derive(Clone, Debug)]
pub struct IdCert {
    der: Vec<u8>,
    cert: Certificate,
}

/// Which kind of ID-Cert a layout check is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Root,
    Actor,
}

impl IdCert {
    /// Parses a `CERTIFICATE` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_der(&pem_decode(pem, &["CERTIFICATE"])?)
    }

    /// Parses DER bytes; they must be in canonical (strict) DER form.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = Certificate::from_der(der)
            .map_err(|e| ModelError::MalformedDer(format!("not an X.509 certificate: {e}.")))?;
        if cert.to_der().map_err(encoding)? != der {
            return Err(ModelError::MalformedDer(
                "the certificate is not in strict (canonical) DER form.".into(),
            ));
        }
        Ok(Self {
            der: der.to_vec(),
            cert,
        })
    }

    /// `-----BEGIN CERTIFICATE-----` PEM, LF line endings, trailing newline.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.der)
    }

    /// The certificate's DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The parsed X.509 structure.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The serial number in decimal, exactly as the SDK's `SerialNumber`
    /// prints it (the big-endian magnitude without leading zeros); this is
    /// the serial that cache signatures sign.
    pub fn serial(&self) -> String {
        decimal(self.serial_magnitude())
    }

    /// The serial number, if it fits in a `u64`.
    pub fn serial_u64(&self) -> Option<u64> {
        let bytes = self.serial_magnitude();
        if bytes.len() > 8 {
            return None;
        }
        Some(bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
    }

    fn serial_magnitude(&self) -> &[u8] {
        let bytes = self.cert.tbs_certificate.serial_number.as_bytes();
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[start..]
    }

    /// notBefore, in UNIX seconds.
    pub fn not_before(&self) -> u64 {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_unix_duration()
            .as_secs()
    }

    /// notAfter, in UNIX seconds.
    pub fn not_after(&self) -> u64 {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs()
    }

    /// The subject's Ed25519 public key.
    pub fn public_key(&self) -> Result<VerifyingKey> {
        key_from_spki(&self.cert.tbs_certificate.subject_public_key_info)
    }

    /// The issuer's domain, from the issuer's `dc` components (`example.com`).
    pub fn issuer_domain(&self) -> Result<String> {
        pdn::strict_home_server_domain(&self.cert.tbs_certificate.issuer, "issuer")
    }

    /// An actor certificate's federation ID, from `UID`, checked against `CN`
    /// and the `dc` components.
    pub fn subject_fid(&self) -> Result<FederationId> {
        Ok(pdn::strict_actor_name(&self.cert.tbs_certificate.subject)?.fid)
    }

    /// An actor certificate's session ID, from `uniqueIdentifier`.
    pub fn session_id(&self) -> Result<SessionId> {
        Ok(pdn::strict_actor_name(&self.cert.tbs_certificate.subject)?.session_id)
    }

    /// Whether the basicConstraints extension sets the CA flag.
    pub fn is_ca(&self) -> bool {
        self.extension(OID_BASIC_CONSTRAINTS)
            .and_then(|ext| BasicConstraints::from_der(ext.extn_value.as_bytes()).ok())
            .is_some_and(|bc| bc.ca)
    }

    /// Verifies the certificate's signature with `key` (Ed25519, strict).
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<()> {
        check_ed25519_algorithm(&self.cert.signature_algorithm)?;
        let signature = self.cert.signature.as_bytes().ok_or_else(|| {
            ModelError::MalformedSignature("the signature BIT STRING has unused bits.".into())
        })?;
        // The whole certificate round-tripped through the encoder at parse
        // time, so this re-encoding is byte-for-byte the signed TBS.
        let tbs = self.cert.tbs_certificate.to_der().map_err(encoding)?;
        verify_bytes(key, &tbs, signature)
    }

    fn extension(&self, oid: spki::ObjectIdentifier) -> Option<&Extension> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == oid)
    }

    /// Checks validity at `at`: notBefore <= at <= notAfter (as the SDK).
    pub fn check_valid_at(&self, at: u64) -> Result<()> {
        if at < self.not_before() {
            return Err(ModelError::NotYetValid);
        }
        if at > self.not_after() {
            return Err(ModelError::Expired);
        }
        Ok(())
    }

    /// Checks every layout rule of a root (home server) or actor certificate.
    fn check_layout(&self, kind: Kind) -> Result<()> {
        let rule = |why: &str| ModelError::CertRule(why.to_owned());
        let tbs = &self.cert.tbs_certificate;
        if tbs.version != Version::V3 {
            return Err(rule("it must be an X.509 version 3 certificate."));
        }
        check_ed25519_algorithm(&tbs.signature)?;
        if self.cert.signature_algorithm != tbs.signature {
            return Err(rule("its two signature algorithm fields differ."));
        }
        if self.cert.signature.as_bytes().map(<[u8]>::len) != Some(SIGNATURE_LEN) {
            return Err(rule("its signature must be a 64-byte Ed25519 signature."));
        }
        let serial = tbs.serial_number.as_bytes();
        if serial.first().is_some_and(|b| b & 0x80 != 0) || self.serial_magnitude().is_empty() {
            return Err(rule("its serial number must be a positive integer."));
        }
        if tbs.issuer_unique_id.is_some() || tbs.subject_unique_id.is_some() {
            return Err(rule(
                "it must not use the X.509 issuerUniqueID or subjectUniqueID fields.",
            ));
        }
        if self.not_before() > self.not_after() {
            return Err(rule("its notBefore lies after its notAfter."));
        }
        self.public_key()?;
        let (ca, usage) = self.capabilities()?;
        let issuer_domain = self.issuer_domain()?;
        match kind {
            Kind::Root => {
                if !ca.ca || ca.path_len_constraint != Some(0) {
                    return Err(rule(
                        "a home server certificate must set the CA flag with path length 0.",
                    ));
                }
                if !usage.0.contains(KeyUsages::KeyCertSign) {
                    return Err(rule(
                        "a home server certificate must have keyUsage keyCertSign.",
                    ));
                }
                if tbs.subject != tbs.issuer {
                    return Err(rule(
                        "a home server certificate's subject must equal its issuer (dc components only).",
                    ));
                }
            }
            Kind::Actor => {
                if ca.ca || ca.path_len_constraint.is_some() {
                    return Err(rule(
                        "an actor certificate must not set the CA flag or a path length.",
                    ));
                }
                check_actor_key_usage(usage).map_err(|why| ModelError::CertRule(why.into()))?;
                let subject = pdn::strict_actor_name(&tbs.subject)?;
                if subject.domain != issuer_domain {
                    return Err(rule(
                        "the subject's dc components must equal the issuer's, in the same order.",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads the two extensions, which must be exactly `[basicConstraints,
    /// keyUsage]`, both critical and in DER form.
    fn capabilities(&self) -> Result<(BasicConstraints, KeyUsage)> {
        let rule = |why: &str| ModelError::CertRule(why.to_owned());
        let shape = "it must have exactly the extensions basicConstraints and keyUsage, in this order, both critical.";
        let Some([bc, ku]) = self.cert.tbs_certificate.extensions.as_deref() else {
            return Err(rule(shape));
        };
        if bc.extn_id != OID_BASIC_CONSTRAINTS || ku.extn_id != OID_KEY_USAGE {
            return Err(rule(shape));
        }
        if !bc.critical || !ku.critical {
            return Err(rule(
                "its basicConstraints and keyUsage extensions must be critical.",
            ));
        }
        let constraints = BasicConstraints::from_der(bc.extn_value.as_bytes())
            .map_err(|_| rule("its basicConstraints extension is malformed."))?;
        let usage = KeyUsage::from_der(ku.extn_value.as_bytes())
            .map_err(|_| rule("its keyUsage extension is malformed."))?;
        if constraints.to_der().ok().as_deref() != Some(bc.extn_value.as_bytes())
            || usage.to_der().ok().as_deref() != Some(ku.extn_value.as_bytes())
        {
            return Err(rule(
                "its basicConstraints and keyUsage must be in strict DER form.",
            ));
        }
        Ok((constraints, usage))
    }
}

/// The keyUsage rule for actors (spec 6.1.1.2): digitalSignature or
/// contentCommitment (not both, as the SDK requires), never keyCertSign.
pub(crate) fn check_actor_key_usage(usage: KeyUsage) -> std::result::Result<(), &'static str> {
    let signs = usage.0.contains(KeyUsages::DigitalSignature);
    let commits = usage.0.contains(KeyUsages::NonRepudiation);
    if usage.0.contains(KeyUsages::KeyCertSign) || usage.0.contains(KeyUsages::CRLSign) {
        return Err("an actor's keyUsage must not include keyCertSign or cRLSign.");
    }
    if signs == commits {
        return Err(
            "an actor's keyUsage must include exactly one of digitalSignature and contentCommitment.",
        );
    }
    Ok(())
}

/// Decimal digits of a big-endian unsigned magnitude.
fn decimal(magnitude: &[u8]) -> String {
    let mut number = magnitude.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for byte in &mut number {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 10) as u8;
            remainder = value % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    if digits.is_empty() {
        return "0".to_owned();
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

/// Encodes a UNIX time as RFC 5280 wants: UTCTime through 2049, else GeneralizedTime.
fn x509_time(secs: u64) -> Result<Time> {
    let duration = Duration::from_secs(secs);
    let out_of_range = |_| {
        ModelError::Validity(format!(
            "the time {secs} cannot be encoded in a certificate."
        ))
    };
    if secs < GENERALIZED_TIME_FROM {
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(duration).map_err(out_of_range)?,
        ))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(duration).map_err(out_of_range)?,
        ))
    }
}

fn serial_number(serial: u64) -> Result<SerialNumber> {
    if serial == 0 {
        return Err(ModelError::InvalidSerial("it must be positive.".into()));
    }
    SerialNumber::new(&serial.to_be_bytes()).map_err(encoding)
}

fn validity(not_before: u64, not_after: u64) -> Result<Validity> {
    if not_before >= not_after {
        return Err(ModelError::Validity(
            "notBefore must lie before notAfter.".into(),
        ));
    }
    Ok(Validity {
        not_before: x509_time(not_before)?,
        not_after: x509_time(not_after)?,
    })
}

fn extension(oid: spki::ObjectIdentifier, value: &impl Encode) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical: true,
        extn_value: OctetString::new(value.to_der().map_err(encoding)?).map_err(encoding)?,
    })
}

/// The extensions of a certificate, in the order the SDK writes them.
fn extensions(kind: Kind) -> Result<Vec<Extension>> {
    let (constraints, usage) = match kind {
        Kind::Root => (
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            },
            KeyUsage(KeyUsages::KeyCertSign.into()),
        ),
        Kind::Actor => (
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            KeyUsage(KeyUsages::DigitalSignature.into()),
        ),
    };
    Ok(vec![
        extension(OID_BASIC_CONSTRAINTS, &constraints)?,
        extension(OID_KEY_USAGE, &usage)?,
    ])
}

/// Signs a TBS certificate and parses the result back.
fn sign(tbs: TbsCertificate, key: &SigningKey) -> Result<IdCert> {
    let tbs_der = tbs.to_der().map_err(encoding)?;
    let signature = key.sign(&tbs_der);
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519_algorithm(),
        signature: BitString::from_bytes(&signature.to_bytes()).map_err(encoding)?,
    };
    IdCert::from_der(&cert.to_der().map_err(encoding)?)
}

/// Issues a self-signed home server root ID-Cert for `domain`.
pub fn issue_root_cert(
    key: &SigningKey,
    domain: &str,
    serial: u64,
    not_before: u64,
    not_after: u64,
) -> Result<IdCert> {
    let name = pdn::home_server_name(domain)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: serial_number(serial)?,
        signature: ed25519_algorithm(),
        issuer: name.clone(),
        validity: validity(not_before, not_after)?,
        subject: name,
        subject_public_key_info: spki_of(&key.verifying_key())?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(Kind::Root)?),
    };
    sign(tbs, key)
}

/// Verifies a home server root certificate: its layout, that it is for
/// `domain`, its self-signature and, if `at` is given, its validity then.
pub fn verify_root_cert(cert: &IdCert, domain: &str, at: Option<u64>) -> Result<()> {
    cert.check_layout(Kind::Root)?;
    let expected = validate_domain(domain)?;
    let actual = cert.issuer_domain()?;
    if actual != expected {
        return Err(ModelError::WrongDomain { expected, actual });
    }
    cert.verify_signature(&cert.public_key()?)?;
    if let Some(at) = at {
        cert.check_valid_at(at)?;
    }
    Ok(())
}

/// Issues an actor ID-Cert for a validated ID-CSR, signed with the root's key.
///
/// Errors if the CSR's domain is not the root's, if the validity is longer
/// than [`MAX_ACTOR_CERT_VALIDITY_SECS`] or not inside the root's validity,
/// or if `root_key` does not belong to `root`.
pub fn issue_actor_cert(
    root: &IdCert,
    root_key: &SigningKey,
    csr: &IdCsr,
    serial: u64,
    not_before: u64,
    not_after: u64,
) -> Result<IdCert> {
    root.check_layout(Kind::Root)?;
    if root.public_key()? != root_key.verifying_key() {
        return Err(ModelError::CertRule(
            "the signing key does not belong to the home server certificate.".into(),
        ));
    }
    let domain = root.issuer_domain()?;
    if csr.fid().domain() != domain {
        return Err(ModelError::WrongDomain {
            expected: domain,
            actual: csr.fid().domain().to_owned(),
        });
    }
    let validity = validity(not_before, not_after)?;
    if not_after - not_before > MAX_ACTOR_CERT_VALIDITY_SECS {
        return Err(ModelError::Validity(format!(
            "an actor certificate may be valid for at most {} days.",
            MAX_ACTOR_CERT_VALIDITY_SECS / 86_400
        )));
    }
    if not_before < root.not_before() || not_after > root.not_after() {
        return Err(ModelError::Validity(format!(
            "an actor certificate must lie inside the home server certificate's validity ({} to {}).",
            root.not_before(),
            root.not_after()
        )));
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: serial_number(serial)?,
        signature: ed25519_algorithm(),
        issuer: root.cert.tbs_certificate.subject.clone(),
        validity,
        subject: pdn::actor_name(csr.fid(), csr.session_id())?,
        subject_public_key_info: spki_of(csr.public_key())?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(Kind::Actor)?),
    };
    sign(tbs, root_key)
}

/// Verifies an actor ID-Cert against its home server's root certificate: both
/// layouts, issuer name == root subject (same `dc` components), the root's
/// signature, validity inside the root's, and validity at `at`.
pub fn verify_actor_cert(actor: &IdCert, server: &IdCert, at: u64) -> Result<()> {
    server.check_layout(Kind::Root)?;
    actor.check_layout(Kind::Actor)?;
    let server_domain = server.issuer_domain()?;
    let actor_domain = actor.issuer_domain()?;
    if actor_domain != server_domain {
        return Err(ModelError::WrongDomain {
            expected: server_domain,
            actual: actor_domain,
        });
    }
    if actor.cert.tbs_certificate.issuer != server.cert.tbs_certificate.subject {
        return Err(ModelError::CertRule(
            "its issuer name is not the home server certificate's subject.".into(),
        ));
    }
    actor.verify_signature(&server.public_key()?)?;
    if actor.not_before() < server.not_before() || actor.not_after() > server.not_after() {
        return Err(ModelError::CertRule(
            "its validity must lie inside the home server certificate's validity.".into(),
        ));
    }
    actor.check_valid_at(at)
}

/// A random serial number: positive, non-zero and below 2^63, so its DER
/// INTEGER has at most 8 content bytes.
pub fn random_serial() -> u64 {
    use rand::RngCore;
    loop {
        let serial = rand::rngs::OsRng.next_u64() >> 1;
        if serial != 0 {
            return serial;
        }
    }
}

#[cfg(test)]
mod tests {
    use x509_cert::ext::pkix::SubjectKeyIdentifier;

    use super::*;
    use crate::csr::build_csr;
    use crate::keys::generate_signing_key;

    const DAY: u64 = 86_400;
    /// 2023-11-14T22:13:20Z.
    const T0: u64 = 1_700_000_000;

    struct Server {
        key: SigningKey,
        root: IdCert,
    }

    fn server(domain: &str) -> Server {
        let key = generate_signing_key();
        let root = issue_root_cert(&key, domain, 1, T0, T0 + 365 * DAY).unwrap();
        Server { key, root }
    }

    fn csr(fid: &str, session: &str) -> (SigningKey, IdCsr) {
        let key = generate_signing_key();
        let pem = build_csr(
            &key,
            &FederationId::parse(fid).unwrap(),
            &SessionId::parse(session).unwrap(),
        )
        .unwrap();
        (key, IdCsr::from_pem(&pem).unwrap())
    }

    fn actor(server: &Server) -> IdCert {
        let (_, csr) = csr("alice@example.com", "laptop");
        issue_actor_cert(&server.root, &server.key, &csr, 77, T0 + DAY, T0 + 31 * DAY).unwrap()
    }

    /// Re-signs `cert` with `key` after `edit` changed its TBS.
    fn resigned(cert: &IdCert, key: &SigningKey, edit: impl FnOnce(&mut TbsCertificate)) -> IdCert {
        let mut tbs = cert.cert.tbs_certificate.clone();
        edit(&mut tbs);
        sign(tbs, key).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_cert_rule(result: Result<()>, needle: &str) {
        match result {
            Err(ModelError::CertRule(why)) => {
                assert!(why.contains(needle), "{why:?} does not mention {needle:?}")
            }
            other => panic!("expected a CertRule about {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn root_cert_round_trips_through_pem_and_der() {
        let s = server("Example.com");
        let pem = s.root.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!pem.contains('\r'));
        let from_pem = IdCert::from_pem(&pem).unwrap();
        assert_eq!(from_pem.der(), s.root.der());
        assert_eq!(IdCert::from_der(s.root.der()).unwrap().to_pem(), pem);
        assert_eq!(from_pem.serial(), "1");
        assert_eq!(from_pem.serial_u64(), Some(1));
        assert_eq!(from_pem.not_before(), T0);
        assert_eq!(from_pem.not_after(), T0 + 365 * DAY);
        assert_eq!(from_pem.issuer_domain().unwrap(), "example.com");
        assert_eq!(from_pem.public_key().unwrap(), s.key.verifying_key());
        assert!(from_pem.is_ca());
        assert!(from_pem.subject_fid().is_err());
        verify_root_cert(&from_pem, "example.com", Some(T0)).unwrap();
    }

    #[test]
    fn root_cert_has_exactly_the_sdk_extensions() {
        let der = server("example.com").root.der().to_vec();
        // basicConstraints, critical, cA TRUE, pathLen 0; then keyUsage, critical, keyCertSign.
        let bc = [
            0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01,
            0xff, 0x02, 0x01, 0x00,
        ];
        let ku = [
            0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x02, 0x04,
        ];
        let mut both = vec![0x30, 0x12];
        both.extend_from_slice(&bc);
        both.extend_from_slice(&[0x30, 0x0e]);
        both.extend_from_slice(&ku);
        assert!(contains(&der, &both));
        // No subject key identifier, no authority key identifier.
        assert!(!contains(&der, &[0x06, 0x03, 0x55, 0x1d, 0x0e]));
        assert!(!contains(&der, &[0x06, 0x03, 0x55, 0x1d, 0x23]));
    }

    #[test]
    fn actor_cert_has_exactly_the_sdk_extensions() {
        let der = actor(&server("example.com")).der().to_vec();
        let both = [
            0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30,
            0x00, //
            0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02,
            0x07, 0x80,
        ];
        assert!(contains(&der, &both));
    }

    #[test]
    fn validity_uses_utc_time_before_2050_and_generalized_time_after() {
        let key = generate_signing_key();
        let cert = issue_root_cert(&key, "example.com", 5, T0, GENERALIZED_TIME_FROM).unwrap();
        let validity = cert.certificate().tbs_certificate.validity;
        assert!(matches!(validity.not_before, Time::UtcTime(_)));
        assert!(matches!(validity.not_after, Time::GeneralTime(_)));
        assert_eq!(cert.not_after(), GENERALIZED_TIME_FROM);
        let cert = issue_root_cert(&key, "example.com", 5, T0, GENERALIZED_TIME_FROM - 1).unwrap();
        assert!(matches!(
            cert.certificate().tbs_certificate.validity.not_after,
            Time::UtcTime(_)
        ));
    }

    #[test]
    fn serial_prints_in_decimal_like_the_sdk() {
        let key = generate_signing_key();
        let big = u64::MAX;
        let cert = issue_root_cert(&key, "example.com", big, T0, T0 + DAY).unwrap();
        assert_eq!(cert.serial(), big.to_string());
        assert_eq!(cert.serial_u64(), Some(big));
        // A high first bit gets a leading zero byte in DER; it is not part of the number.
        assert_eq!(
            cert.certificate().tbs_certificate.serial_number.as_bytes()[0],
            0
        );
        assert_eq!(
            decimal(&[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            "18446744073709551616"
        );
        assert_eq!(decimal(&[]), "0");
        assert!(matches!(
            issue_root_cert(&key, "example.com", 0, T0, T0 + DAY),
            Err(ModelError::InvalidSerial(_))
        ));
    }

    #[test]
    fn random_serials_are_positive_and_fit_eight_der_bytes() {
        for _ in 0..1000 {
            let serial = random_serial();
            assert!(serial > 0 && serial < 1 << 63);
        }
    }

    #[test]
    fn root_cert_for_another_domain_is_rejected() {
        let s = server("example.com");
        assert_eq!(
            verify_root_cert(&s.root, "other.org", None),
            Err(ModelError::WrongDomain {
                expected: "other.org".into(),
                actual: "example.com".into()
            })
        );
    }

    #[test]
    fn root_cert_outside_its_validity_is_rejected() {
        let s = server("example.com");
        assert_eq!(
            verify_root_cert(&s.root, "example.com", Some(T0 - 1)),
            Err(ModelError::NotYetValid)
        );
        assert_eq!(
            verify_root_cert(&s.root, "example.com", Some(T0 + 365 * DAY + 1)),
            Err(ModelError::Expired)
        );
        verify_root_cert(&s.root, "example.com", Some(T0 + 365 * DAY)).unwrap();
    }

    #[test]
    fn root_cert_with_a_tampered_signature_or_tbs_is_rejected() {
        let s = server("example.com");
        let mut der = s.root.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = IdCert::from_der(&der).unwrap();
        assert_eq!(
            verify_root_cert(&tampered, "example.com", None),
            Err(ModelError::BadSignature)
        );

        // The serial's only content byte (1) sits after `02 01`.
        let mut der = s.root.der().to_vec();
        let at = der
            .windows(3)
            .position(|w| w == [0x02, 0x01, 0x01])
            .unwrap()
            + 2;
        der[at] = 0x02;
        let tampered = IdCert::from_der(&der).unwrap();
        assert_eq!(tampered.serial(), "2");
        assert_eq!(
            verify_root_cert(&tampered, "example.com", None),
            Err(ModelError::BadSignature)
        );
    }

    #[test]
    fn root_cert_without_the_ca_flag_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&s.root, &s.key, |tbs| {
            tbs.extensions = Some(extensions(Kind::Actor).unwrap())
        });
        assert_cert_rule(verify_root_cert(&cert, "example.com", None), "CA flag");
    }

    #[test]
    fn actor_cert_is_issued_and_verifies() {
        let s = server("example.com");
        let cert = actor(&s);
        verify_actor_cert(&cert, &s.root, T0 + 2 * DAY).unwrap();
        assert_eq!(cert.subject_fid().unwrap().as_str(), "alice@example.com");
        assert_eq!(cert.session_id().unwrap().as_str(), "laptop");
        assert_eq!(cert.issuer_domain().unwrap(), "example.com");
        assert_eq!(cert.serial(), "77");
        assert!(!cert.is_ca());
        assert_eq!(
            cert.certificate().tbs_certificate.issuer,
            s.root.certificate().tbs_certificate.subject
        );
        assert_eq!(
            cert.certificate().tbs_certificate.subject.to_string(),
            "UNIQUEIDENTIFIER=laptop,CN=alice,UID=alice@example.com,DC=example,DC=com"
        );
        assert!(
            cert.certificate()
                .tbs_certificate
                .issuer_unique_id
                .is_none()
        );
        assert!(
            cert.certificate()
                .tbs_certificate
                .subject_unique_id
                .is_none()
        );
    }

    #[test]
    fn actor_cert_is_rejected_after_it_expires_and_before_it_starts() {
        let s = server("example.com");
        let cert = actor(&s);
        assert_eq!(
            verify_actor_cert(&cert, &s.root, T0 + 31 * DAY + 1),
            Err(ModelError::Expired)
        );
        assert_eq!(
            verify_actor_cert(&cert, &s.root, T0),
            Err(ModelError::NotYetValid)
        );
    }

    #[test]
    fn actor_cert_with_a_tampered_signature_or_tbs_is_rejected() {
        let s = server("example.com");
        let cert = actor(&s);
        let mut der = cert.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x80;
        let tampered = IdCert::from_der(&der).unwrap();
        assert_eq!(
            verify_actor_cert(&tampered, &s.root, T0 + 2 * DAY),
            Err(ModelError::BadSignature)
        );

        let mut der = cert.der().to_vec();
        let at = der.windows(3).position(|w| w == [0x02, 0x01, 77]).unwrap() + 2;
        der[at] = 78;
        let tampered = IdCert::from_der(&der).unwrap();
        assert_eq!(
            verify_actor_cert(&tampered, &s.root, T0 + 2 * DAY),
            Err(ModelError::BadSignature)
        );
    }

    #[test]
    fn actor_cert_verified_against_another_servers_root_is_rejected() {
        let s = server("example.com");
        let cert = actor(&s);
        let impostor = server("example.com");
        assert_eq!(
            verify_actor_cert(&cert, &impostor.root, T0 + 2 * DAY),
            Err(ModelError::BadSignature)
        );
        let elsewhere = server("other.org");
        assert_eq!(
            verify_actor_cert(&cert, &elsewhere.root, T0 + 2 * DAY),
            Err(ModelError::WrongDomain {
                expected: "other.org".into(),
                actual: "example.com".into()
            })
        );
    }

    #[test]
    fn actor_and_root_cannot_swap_roles() {
        let s = server("example.com");
        let cert = actor(&s);
        assert!(matches!(
            verify_actor_cert(&s.root, &cert, T0 + 2 * DAY),
            Err(ModelError::CertRule(_))
        ));
        assert!(matches!(
            verify_actor_cert(&s.root, &s.root, T0 + 2 * DAY),
            Err(ModelError::CertRule(_))
        ));
        assert!(matches!(
            verify_root_cert(&cert, "example.com", None),
            Err(ModelError::CertRule(_))
        ));
    }

    #[test]
    fn actor_cert_for_a_csr_of_another_domain_is_refused() {
        let s = server("example.com");
        let (_, csr) = csr("alice@other.org", "s");
        assert_eq!(
            issue_actor_cert(&s.root, &s.key, &csr, 2, T0 + DAY, T0 + 2 * DAY).unwrap_err(),
            ModelError::WrongDomain {
                expected: "example.com".into(),
                actual: "other.org".into()
            }
        );
    }

    #[test]
    fn actor_cert_valid_for_more_than_60_days_is_refused() {
        let s = server("example.com");
        let (_, csr) = csr("alice@example.com", "s");
        issue_actor_cert(&s.root, &s.key, &csr, 2, T0, T0 + 60 * DAY).unwrap();
        assert!(matches!(
            issue_actor_cert(&s.root, &s.key, &csr, 2, T0, T0 + 60 * DAY + 1),
            Err(ModelError::Validity(_))
        ));
        assert!(matches!(
            issue_actor_cert(&s.root, &s.key, &csr, 2, T0 + DAY, T0 + DAY),
            Err(ModelError::Validity(_))
        ));
    }

    #[test]
    fn actor_cert_outside_the_roots_validity_is_refused() {
        let s = server("example.com");
        let (_, csr) = csr("alice@example.com", "s");
        let end = T0 + 365 * DAY;
        assert!(matches!(
            issue_actor_cert(&s.root, &s.key, &csr, 2, T0 - 1, T0 + DAY),
            Err(ModelError::Validity(_))
        ));
        assert!(matches!(
            issue_actor_cert(&s.root, &s.key, &csr, 2, end - DAY, end + 1),
            Err(ModelError::Validity(_))
        ));
        issue_actor_cert(&s.root, &s.key, &csr, 2, end - DAY, end).unwrap();
    }

    #[test]
    fn actor_cert_signed_with_a_key_not_of_the_root_is_refused() {
        let s = server("example.com");
        let (_, csr) = csr("alice@example.com", "s");
        let err =
            issue_actor_cert(&s.root, &generate_signing_key(), &csr, 2, T0, T0 + DAY).unwrap_err();
        assert!(matches!(err, ModelError::CertRule(_)), "{err}");
    }

    #[test]
    fn actor_cert_with_a_non_critical_key_usage_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            if let Some(extensions) = tbs.extensions.as_mut() {
                extensions[1].critical = false;
            }
        });
        assert_cert_rule(verify_actor_cert(&cert, &s.root, T0 + 2 * DAY), "critical");
    }

    #[test]
    fn actor_cert_with_the_ca_flag_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            if let Some(extensions) = tbs.extensions.as_mut() {
                extensions[0] = extension(
                    OID_BASIC_CONSTRAINTS,
                    &BasicConstraints {
                        ca: true,
                        path_len_constraint: None,
                    },
                )
                .unwrap();
            }
        });
        assert_cert_rule(verify_actor_cert(&cert, &s.root, T0 + 2 * DAY), "CA flag");
    }

    #[test]
    fn actor_cert_with_an_extra_extension_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            let ski = SubjectKeyIdentifier(OctetString::new([1u8; 20]).unwrap());
            let ext = Extension {
                extn_id: spki::ObjectIdentifier::new_unwrap("2.5.29.14"),
                critical: false,
                extn_value: OctetString::new(ski.to_der().unwrap()).unwrap(),
            };
            if let Some(extensions) = tbs.extensions.as_mut() {
                extensions.push(ext);
            }
        });
        assert_cert_rule(
            verify_actor_cert(&cert, &s.root, T0 + 2 * DAY),
            "exactly the extensions",
        );
    }

    #[test]
    fn actor_cert_whose_subject_dc_differs_from_the_issuer_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            let fid = FederationId::parse("alice@other.org").unwrap();
            tbs.subject = pdn::actor_name(&fid, &SessionId::parse("s").unwrap()).unwrap();
        });
        assert_cert_rule(
            verify_actor_cert(&cert, &s.root, T0 + 2 * DAY),
            "dc components",
        );
    }

    #[test]
    fn actor_cert_using_subject_unique_id_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            tbs.subject_unique_id = Some(BitString::from_bytes(b"laptop").unwrap());
        });
        assert_cert_rule(
            verify_actor_cert(&cert, &s.root, T0 + 2 * DAY),
            "subjectUniqueID",
        );
    }

    #[test]
    fn actor_cert_valid_beyond_its_root_is_rejected() {
        let s = server("example.com");
        let cert = resigned(&actor(&s), &s.key, |tbs| {
            tbs.validity.not_after = x509_time(T0 + 400 * DAY).unwrap();
        });
        assert_cert_rule(verify_actor_cert(&cert, &s.root, T0 + 2 * DAY), "inside");
    }

    #[test]
    fn non_canonical_or_trailing_der_is_rejected() {
        let s = server("example.com");
        let mut der = s.root.der().to_vec();
        der.push(0);
        assert!(matches!(
            IdCert::from_der(&der),
            Err(ModelError::MalformedDer(_))
        ));
        assert!(matches!(
            IdCert::from_pem("nope"),
            Err(ModelError::MalformedPem(_))
        ));
    }
}
