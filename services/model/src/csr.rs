//! ID-CSRs (spec 6.1): PKCS#10 requests for actor ID-Certs.
//!
//! The SDK 0.21 sends keyUsage and basicConstraints as raw PKCS#10 attributes
//! (attribute types 2.5.29.15 and 2.5.29.19, one value each: the extension's
//! DER value), not inside an `extensionRequest`. Both forms are accepted.

use der::asn1::{Any, BitString, SetOfVec};
use der::{Decode, Encode, Header, Reader, SliceReader};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use spki::ObjectIdentifier;
use x509_cert::attr::Attribute;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::request::{CertReq, CertReqInfo, Version};

use crate::cert::{OID_BASIC_CONSTRAINTS, OID_KEY_USAGE};
use crate::error::{ModelError, Result, encoding};
use crate::fid::{FederationId, validate_domain, validate_local_name};
use crate::keys::{
    check_ed25519_algorithm, ed25519_algorithm, key_from_spki, pem_decode, pem_encode, spki_of,
    verify_bytes,
};
use crate::pdn;
use crate::session_id::SessionId;

/// OID of the PKCS#9 `extensionRequest` attribute, 1.2.840.113549.1.9.14.
pub const OID_EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// A validated actor ID-CSR: what [`IdCsr::parse`] accepted, ready for
/// [`crate::issue_actor_cert`].
#[derive(Clone, Debug)]
pub struct IdCsr {
    der: Vec<u8>,
    fid: FederationId,
    session_id: SessionId,
    public_key: VerifyingKey,
}

fn rule(why: impl Into<String>) -> ModelError {
    ModelError::CsrRule(why.into())
}

impl IdCsr {
    /// Parses and validates a `CERTIFICATE REQUEST` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_der(&pem_decode(
            pem,
            &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
        )?)
    }

    /// Accepts PEM text or raw DER bytes (detects which).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let trimmed = bytes.trim_ascii_start();
        if trimmed.starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ModelError::MalformedPem("the PEM text is not valid UTF-8.".into()))?;
            Self::from_pem(text)
        } else {
            Self::from_der(bytes)
        }
    }

    /// Parses and validates DER bytes of a PKCS#10 request:
    ///
    /// - Ed25519 only, for the key and the signature;
    /// - the self-signature verifies with the contained key;
    /// - the subject has `dc` components, `UID`, `CN` and `uniqueIdentifier`,
    ///   with `UID == CN@domain` and a valid session ID;
    /// - keyUsage is requested (as an attribute or, marked critical, in an
    ///   `extensionRequest`) with digitalSignature and without keyCertSign;
    /// - basicConstraints, if requested, does not set the CA flag;
    /// - no unknown critical extension is requested.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let request = CertReq::from_der(der).map_err(|e| {
            ModelError::MalformedDer(format!("not a PKCS#10 certificate signing request: {e}."))
        })?;
        check_ed25519_algorithm(&request.algorithm)?;
        let public_key = key_from_spki(&request.info.public_key)?;
        let signature = request.signature.as_bytes().ok_or_else(|| {
            ModelError::MalformedSignature("the signature BIT STRING has unused bits.".into())
        })?;
        verify_bytes(&public_key, signed_info(der)?, signature).map_err(|e| match e {
            ModelError::BadSignature => rule(
                "its signature does not verify with the public key it contains; sign it with the session's private key.",
            ),
            other => other,
        })?;
        let subject = pdn::lenient_actor_name(&request.info.subject)?;
        check_capabilities(&request.info)?;
        Ok(Self {
            der: der.to_vec(),
            fid: subject.fid,
            session_id: subject.session_id,
            public_key,
        })
    }

    /// The federation ID the CSR asks a certificate for (normalised).
    pub fn fid(&self) -> &FederationId {
        &self.fid
    }

    /// The session ID (`uniqueIdentifier`) the CSR asks for.
    pub fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    /// The public key to certify.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.public_key
    }

    /// The CSR's DER bytes, as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CSR as `CERTIFICATE REQUEST` PEM.
    pub fn to_pem(&self) -> String {
        pem_encode("CERTIFICATE REQUEST", &self.der)
    }

    /// Checks the CSR is for `domain` (and, if given, for `local_name`):
    /// [`ModelError::WrongDomain`] / [`ModelError::WrongActor`].
    pub fn check_for(&self, domain: &str, local_name: Option<&str>) -> Result<()> {
        let expected = validate_domain(domain)?;
        if self.fid.domain() != expected {
            return Err(ModelError::WrongDomain {
                expected,
                actual: self.fid.domain().to_owned(),
            });
        }
        if let Some(local_name) = local_name {
            let expected = validate_local_name(local_name)?;
            if self.fid.local_name() != expected {
                return Err(ModelError::WrongActor {
                    expected,
                    actual: self.fid.local_name().to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// The exact bytes of the CertificationRequestInfo, as signed (no re-encoding).
fn signed_info(der: &[u8]) -> Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    Header::decode(&mut reader)?;
    Ok(reader.tlv_bytes()?)
}

fn single_value<'a>(attribute: &'a Attribute, what: &str) -> Result<&'a Any> {
    match attribute.values.as_slice() {
        [value] => Ok(value),
        _ => Err(rule(format!(
            "its {what} attribute must have exactly one value."
        ))),
    }
}

fn decode_any<T: for<'a> Decode<'a>>(value: &Any, what: &str) -> Result<T> {
    value
        .to_der()
        .ok()
        .and_then(|der| T::from_der(&der).ok())
        .ok_or_else(|| rule(format!("its {what} is malformed.")))
}

fn check_key_usage(usage: KeyUsage) -> Result<()> {
    if usage.0.contains(KeyUsages::KeyCertSign) || usage.0.contains(KeyUsages::CRLSign) {
        return Err(rule(
            "it requests keyUsage keyCertSign or cRLSign, which actor certificates cannot have.",
        ));
    }
    if !usage.0.contains(KeyUsages::DigitalSignature) {
        return Err(rule("its keyUsage must include digitalSignature."));
    }
    Ok(())
}

fn check_basic_constraints(constraints: BasicConstraints) -> Result<()> {
    if constraints.ca || constraints.path_len_constraint.is_some() {
        return Err(rule(
            "it requests the CA flag; actor certificates cannot be CAs.",
        ));
    }
    Ok(())
}

/// Checks the requested capabilities in both forms the spec and the SDK use.
fn check_capabilities(info: &CertReqInfo) -> Result<()> {
    let mut has_key_usage = false;
    for attribute in info.attributes.iter() {
        match attribute.oid {
            OID_KEY_USAGE => {
                check_key_usage(decode_any(
                    single_value(attribute, "keyUsage")?,
                    "keyUsage",
                )?)?;
                has_key_usage = true;
            }
            OID_BASIC_CONSTRAINTS => check_basic_constraints(decode_any(
                single_value(attribute, "basicConstraints")?,
                "basicConstraints",
            )?)?,
            OID_EXTENSION_REQUEST => {
                let extensions: Extensions = decode_any(
                    single_value(attribute, "extensionRequest")?,
                    "extensionRequest",
                )?;
                for extension in &extensions {
                    let value = extension.extn_value.as_bytes();
                    match extension.extn_id {
                        OID_KEY_USAGE => {
                            if !extension.critical {
                                return Err(rule(
                                    "its keyUsage extension must be marked critical.",
                                ));
                            }
                            let usage = KeyUsage::from_der(value)
                                .map_err(|_| rule("its keyUsage extension is malformed."))?;
                            check_key_usage(usage)?;
                            has_key_usage = true;
                        }
                        OID_BASIC_CONSTRAINTS => {
                            if !extension.critical {
                                return Err(rule(
                                    "its basicConstraints extension must be marked critical.",
                                ));
                            }
                            check_basic_constraints(BasicConstraints::from_der(value).map_err(
                                |_| rule("its basicConstraints extension is malformed."),
                            )?)?;
                        }
                        oid if extension.critical => {
                            return Err(rule(format!(
                                "it requests the unknown critical extension {oid}."
                            )));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !has_key_usage {
        return Err(rule(
            "it must request keyUsage digitalSignature (as a PKCS#10 attribute or in an extensionRequest).",
        ));
    }
    Ok(())
}

/// The CertificationRequestInfo the SDK 0.21 writes for an actor: the actor
/// subject, the key, and keyUsage digitalSignature plus basicConstraints
/// `cA FALSE` as raw attributes.
pub(crate) fn sdk_style_info(
    key: &VerifyingKey,
    fid: &FederationId,
    session_id: &SessionId,
) -> Result<CertReqInfo> {
    let mut attributes = SetOfVec::new();
    let usage = KeyUsage(KeyUsages::DigitalSignature.into());
    let constraints = BasicConstraints {
        ca: false,
        path_len_constraint: None,
    };
    for (oid, value) in [
        (OID_KEY_USAGE, usage.to_der().map_err(encoding)?),
        (
            OID_BASIC_CONSTRAINTS,
            constraints.to_der().map_err(encoding)?,
        ),
    ] {
        let mut values = SetOfVec::new();
        values
            .insert(Any::from_der(&value).map_err(encoding)?)
            .map_err(encoding)?;
        attributes
            .insert(Attribute { oid, values })
            .map_err(encoding)?;
    }
    Ok(CertReqInfo {
        version: Version::V1,
        subject: pdn::actor_name(fid, session_id)?,
        public_key: spki_of(key)?,
        attributes,
    })
}

/// Signs a CertificationRequestInfo with Ed25519 and returns the request's DER.
pub(crate) fn sign_info(key: &SigningKey, info: CertReqInfo) -> Result<Vec<u8>> {
    let signature = key.sign(&info.to_der().map_err(encoding)?);
    let request = CertReq {
        info,
        algorithm: ed25519_algorithm(),
        signature: BitString::from_bytes(&signature.to_bytes()).map_err(encoding)?,
    };
    request.to_der().map_err(encoding)
}

/// Builds an ID-CSR exactly as the SDK 0.21 does (keyUsage digitalSignature
/// and basicConstraints `cA FALSE` as raw PKCS#10 attributes, SDK subject
/// layout), signed by `key`, as `CERTIFICATE REQUEST` PEM.
pub fn build_csr(key: &SigningKey, fid: &FederationId, session_id: &SessionId) -> Result<String> {
    let info = sdk_style_info(&key.verifying_key(), fid, session_id)?;
    Ok(pem_encode("CERTIFICATE REQUEST", &sign_info(key, info)?))
}

#[cfg(test)]
mod tests {
    use der::Tag;
    use x509_cert::ext::Extension;
    use x509_cert::name::RdnSequence;

    use super::*;
    use crate::keys::generate_signing_key;
    use crate::pdn::{
        OID_COMMON_NAME, OID_DOMAIN_COMPONENT, OID_UID, OID_UNIQUE_IDENTIFIER, ia5, single, utf8,
    };

    fn alice() -> FederationId {
        FederationId::parse("alice@example.com").unwrap()
    }

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    /// A CSR in the SDK's form, changed by `edit` before it is signed.
    fn csr_with(edit: impl FnOnce(&mut CertReqInfo)) -> Result<IdCsr> {
        let key = generate_signing_key();
        let mut info = sdk_style_info(&key.verifying_key(), &alice(), &sid("s1")).unwrap();
        edit(&mut info);
        IdCsr::from_der(&sign_info(&key, info).unwrap())
    }

    fn subject(parts: &[(ObjectIdentifier, Any)]) -> RdnSequence {
        RdnSequence(
            parts
                .iter()
                .map(|(oid, v)| single(*oid, v.clone()).unwrap())
                .collect(),
        )
    }

    fn dcs() -> Vec<(ObjectIdentifier, Any)> {
        vec![
            (OID_DOMAIN_COMPONENT, ia5("com").unwrap()),
            (OID_DOMAIN_COMPONENT, ia5("example").unwrap()),
        ]
    }

    fn attribute(oid: ObjectIdentifier, value: &impl Encode) -> Attribute {
        let mut values = SetOfVec::new();
        values
            .insert(Any::from_der(&value.to_der().unwrap()).unwrap())
            .unwrap();
        Attribute { oid, values }
    }

    fn extension_request(extensions: Vec<Extension>) -> Attribute {
        attribute(OID_EXTENSION_REQUEST, &extensions)
    }

    fn extension(oid: ObjectIdentifier, critical: bool, value: &impl Encode) -> Extension {
        Extension {
            extn_id: oid,
            critical,
            extn_value: der::asn1::OctetString::new(value.to_der().unwrap()).unwrap(),
        }
    }

    fn digital_signature() -> KeyUsage {
        KeyUsage(KeyUsages::DigitalSignature.into())
    }

    fn assert_csr_rule(result: Result<IdCsr>, needle: &str) {
        match result {
            Err(ModelError::CsrRule(why)) => {
                assert!(why.contains(needle), "{why:?} does not mention {needle:?}")
            }
            other => panic!("expected a CsrRule about {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn csr_built_like_the_sdk_is_accepted_as_pem_and_der() {
        let key = generate_signing_key();
        let pem = build_csr(&key, &alice(), &sid("laptop")).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        let from_pem = IdCsr::parse(pem.as_bytes()).unwrap();
        assert_eq!(from_pem.fid(), &alice());
        assert_eq!(from_pem.session_id(), &sid("laptop"));
        assert_eq!(from_pem.public_key(), &key.verifying_key());
        let from_der = IdCsr::parse(from_pem.der()).unwrap();
        assert_eq!(from_der.der(), from_pem.der());
        assert_eq!(from_der.to_pem(), pem);
        let crlf = format!("\n  {}", pem.replace('\n', "\r\n"));
        assert!(IdCsr::parse(crlf.as_bytes()).is_ok());
    }

    #[test]
    fn csr_carries_key_usage_and_basic_constraints_as_raw_attributes() {
        let key = generate_signing_key();
        let pem = build_csr(&key, &alice(), &sid("s")).unwrap();
        let request = CertReq::from_der(IdCsr::from_pem(&pem).unwrap().der()).unwrap();
        let oids: Vec<ObjectIdentifier> = request.info.attributes.iter().map(|a| a.oid).collect();
        assert_eq!(oids, [OID_BASIC_CONSTRAINTS, OID_KEY_USAGE]);
    }

    #[test]
    fn csr_with_a_tampered_signature_is_rejected() {
        let key = generate_signing_key();
        let pem = build_csr(&key, &alice(), &sid("s")).unwrap();
        let mut der = IdCsr::from_pem(&pem).unwrap().der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert_csr_rule(IdCsr::from_der(&der), "signature");
    }

    #[test]
    fn csr_signed_by_another_key_is_rejected() {
        let info =
            sdk_style_info(&generate_signing_key().verifying_key(), &alice(), &sid("s")).unwrap();
        let der = sign_info(&generate_signing_key(), info).unwrap();
        assert_csr_rule(IdCsr::from_der(&der), "signature");
    }

    #[test]
    fn csr_with_a_p256_key_is_rejected_as_unsupported() {
        let key = generate_signing_key();
        let mut info = sdk_style_info(&key.verifying_key(), &alice(), &sid("s")).unwrap();
        info.public_key = spki::SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                parameters: Some(Any::from(ObjectIdentifier::new_unwrap(
                    "1.2.840.10045.3.1.7",
                ))),
            },
            subject_public_key: BitString::from_bytes(&[4u8; 65]).unwrap(),
        };
        let request = CertReq {
            info,
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
                parameters: None,
            },
            signature: BitString::from_bytes(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])
                .unwrap(),
        };
        let err = IdCsr::from_der(&request.to_der().unwrap()).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedAlgorithm(ref why) if why.contains("ECDSA")),
            "{err}"
        );
    }

    #[test]
    fn csr_with_an_rsa_key_is_rejected_as_unsupported() {
        let key = generate_signing_key();
        let mut info = sdk_style_info(&key.verifying_key(), &alice(), &sid("s")).unwrap();
        info.public_key.algorithm = spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
            parameters: Some(Any::null()),
        };
        let err = IdCsr::from_der(&sign_info(&key, info).unwrap()).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedAlgorithm(ref why) if why.contains("RSA")),
            "{err}"
        );
    }

    #[test]
    fn csr_whose_uid_and_cn_differ_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let mut parts = dcs();
                parts.push((OID_UID, utf8("bob@example.com").unwrap()));
                parts.push((OID_COMMON_NAME, utf8("alice").unwrap()));
                parts.push((OID_UNIQUE_IDENTIFIER, ia5("s").unwrap()));
                info.subject = subject(&parts);
            }),
            "must equal CN@domain",
        );
    }

    #[test]
    fn csr_whose_uid_domain_differs_from_the_dc_components_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let mut parts = dcs();
                parts.push((OID_UID, utf8("alice@other.org").unwrap()));
                parts.push((OID_COMMON_NAME, utf8("alice").unwrap()));
                parts.push((OID_UNIQUE_IDENTIFIER, ia5("s").unwrap()));
                info.subject = subject(&parts);
            }),
            "must equal CN@domain",
        );
    }

    #[test]
    fn csr_without_unique_identifier_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                info.subject.0.pop();
            }),
            "uniqueIdentifier",
        );
    }

    #[test]
    fn csr_without_cn_or_dc_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                info.subject.0.remove(3);
            }),
            "CN",
        );
        assert_csr_rule(
            csr_with(|info| {
                info.subject.0.drain(..2);
            }),
            "dc",
        );
    }

    #[test]
    fn csr_with_a_33_character_session_id_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let last = info.subject.0.len() - 1;
                info.subject.0[last] =
                    single(OID_UNIQUE_IDENTIFIER, ia5(&"a".repeat(33)).unwrap()).unwrap();
            }),
            "session ID",
        );
    }

    #[test]
    fn csr_with_a_non_ia5_session_id_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let last = info.subject.0.len() - 1;
                info.subject.0[last] = single(OID_UNIQUE_IDENTIFIER, utf8("sé").unwrap()).unwrap();
            }),
            "session ID",
        );
        assert_csr_rule(
            csr_with(|info| {
                let last = info.subject.0.len() - 1;
                let raw = Any::new(Tag::Ia5String, [b's', 0xE9]).unwrap();
                info.subject.0[last] = single(OID_UNIQUE_IDENTIFIER, raw).unwrap();
            }),
            "uniqueIdentifier",
        );
    }

    #[test]
    fn csr_with_the_ca_flag_as_an_attribute_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let ca = BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                };
                let mut attributes = SetOfVec::new();
                attributes
                    .insert(attribute(OID_KEY_USAGE, &digital_signature()))
                    .unwrap();
                attributes
                    .insert(attribute(OID_BASIC_CONSTRAINTS, &ca))
                    .unwrap();
                info.attributes = attributes;
            }),
            "CA",
        );
    }

    #[test]
    fn csr_with_the_ca_flag_in_an_extension_request_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let ca = BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                };
                let mut attributes = SetOfVec::new();
                attributes
                    .insert(extension_request(vec![
                        extension(OID_BASIC_CONSTRAINTS, true, &ca),
                        extension(OID_KEY_USAGE, true, &digital_signature()),
                    ]))
                    .unwrap();
                info.attributes = attributes;
            }),
            "CA",
        );
    }

    #[test]
    fn csr_with_critical_extensions_in_an_extension_request_is_accepted() {
        let csr = csr_with(|info| {
            let mut attributes = SetOfVec::new();
            attributes
                .insert(extension_request(vec![
                    extension(
                        OID_BASIC_CONSTRAINTS,
                        true,
                        &BasicConstraints {
                            ca: false,
                            path_len_constraint: None,
                        },
                    ),
                    extension(OID_KEY_USAGE, true, &digital_signature()),
                    // An unknown extension that is not critical may be ignored.
                    extension(
                        ObjectIdentifier::new_unwrap("1.2.3.4"),
                        false,
                        &der::asn1::Null,
                    ),
                ]))
                .unwrap();
            info.attributes = attributes;
        })
        .unwrap();
        assert_eq!(csr.fid(), &alice());
    }

    #[test]
    fn csr_with_a_non_critical_key_usage_extension_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let mut attributes = SetOfVec::new();
                attributes
                    .insert(extension_request(vec![extension(
                        OID_KEY_USAGE,
                        false,
                        &digital_signature(),
                    )]))
                    .unwrap();
                info.attributes = attributes;
            }),
            "critical",
        );
    }

    #[test]
    fn csr_with_an_unknown_critical_extension_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                info.attributes
                    .insert(extension_request(vec![extension(
                        ObjectIdentifier::new_unwrap("1.2.3.4"),
                        true,
                        &der::asn1::Null,
                    )]))
                    .unwrap();
            }),
            "unknown critical extension 1.2.3.4",
        );
    }

    #[test]
    fn csr_asking_for_key_cert_sign_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let usage = KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign);
                let mut attributes = SetOfVec::new();
                attributes.insert(attribute(OID_KEY_USAGE, &usage)).unwrap();
                info.attributes = attributes;
            }),
            "keyCertSign",
        );
    }

    #[test]
    fn csr_without_digital_signature_or_key_usage_is_rejected() {
        assert_csr_rule(
            csr_with(|info| {
                let usage = KeyUsage(KeyUsages::KeyEncipherment.into());
                let mut attributes = SetOfVec::new();
                attributes.insert(attribute(OID_KEY_USAGE, &usage)).unwrap();
                info.attributes = attributes;
            }),
            "digitalSignature",
        );
        assert_csr_rule(
            csr_with(|info| {
                info.attributes = SetOfVec::new();
            }),
            "keyUsage",
        );
    }

    #[test]
    fn csr_for_another_domain_or_actor_fails_the_check() {
        let csr = csr_with(|_| {}).unwrap();
        csr.check_for("Example.com", Some("Alice")).unwrap();
        csr.check_for("example.com", None).unwrap();
        assert_eq!(
            csr.check_for("other.org", None).unwrap_err(),
            ModelError::WrongDomain {
                expected: "other.org".into(),
                actual: "example.com".into()
            }
        );
        assert_eq!(
            csr.check_for("example.com", Some("bob")).unwrap_err(),
            ModelError::WrongActor {
                expected: "bob".into(),
                actual: "alice".into()
            }
        );
    }

    #[test]
    fn garbage_is_rejected_as_malformed() {
        assert!(matches!(
            IdCsr::parse(b"\x30\x03\x02\x01"),
            Err(ModelError::MalformedDer(_))
        ));
        assert!(matches!(
            IdCsr::parse(b"-----BEGIN CERTIFICATE REQUEST-----\nxx"),
            Err(ModelError::MalformedPem(_))
        ));
        let cert_label = build_csr(&generate_signing_key(), &alice(), &sid("s"))
            .unwrap()
            .replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(matches!(
            IdCsr::parse(cert_label.as_bytes()),
            Err(ModelError::MalformedPem(_))
        ));
    }
}
