//! polyproto Distinguished Names (spec 6.1.1.1): building and reading the
//! issuer and subject names of ID-Certs and ID-CSRs.
//!
//! Layout, in DER order (what the SDK 0.21 writes and, since it re-encodes the
//! names it parsed before checking a signature, the only layout it verifies):
//! - home server: one single-valued RDN per domain label, top-level domain
//!   first, each `dc` an `IA5String` (`example.com` is `dc=com`, `dc=example`);
//! - actor: the same `dc` RDNs, then `UID` (`UTF8String`, the full FID), then
//!   `CN` (`UTF8String`, the local name), then `uniqueIdentifier`
//!   (`IA5String`, the session ID), each in its own RDN.
//!
//! Certificates are read strictly (exactly that layout); CSRs leniently (any
//! order, any of the usual string types, extra attributes ignored), because
//! the certificate we issue for a CSR is written in our own layout.

use der::asn1::{Any, Ia5StringRef, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Tag, Tagged};
use spki::ObjectIdentifier;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use crate::error::{ModelError, Result, encoding};
use crate::fid::{FederationId, validate_domain, validate_label, validate_local_name};
use crate::session_id::SessionId;

/// OID of `domainComponent` (`dc`), 0.9.2342.19200300.100.1.25.
pub const OID_DOMAIN_COMPONENT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25");
/// OID of `commonName` (`CN`), 2.5.4.3: an actor's local name.
pub const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// OID of `uid` (`UID`), 0.9.2342.19200300.100.1.1: an actor's federation ID.
pub const OID_UID: ObjectIdentifier = ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1");
/// OID of `uniqueIdentifier`, 0.9.2342.19200300.100.1.44 (spec 6.1.1.1 and the
/// SDK; not X.500's `x500UniqueIdentifier` 2.5.4.45): the session ID.
pub const OID_UNIQUE_IDENTIFIER: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.44");

pub(crate) fn single(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName> {
    let mut set = SetOfVec::new();
    set.insert(AttributeTypeAndValue { oid, value })
        .map_err(encoding)?;
    Ok(RelativeDistinguishedName(set))
}

pub(crate) fn ia5(s: &str) -> Result<Any> {
    Any::new(Tag::Ia5String, s.as_bytes()).map_err(encoding)
}

pub(crate) fn utf8(s: &str) -> Result<Any> {
    Any::new(Tag::Utf8String, s.as_bytes()).map_err(encoding)
}

/// The `dc` RDNs of a (validated, lowercase) domain, top-level domain first.
fn domain_rdns(domain: &str) -> Result<Vec<RelativeDistinguishedName>> {
    domain
        .rsplit('.')
        .map(|label| single(OID_DOMAIN_COMPONENT, ia5(label)?))
        .collect()
}

/// The name of a home server: its `dc` components only.
pub(crate) fn home_server_name(domain: &str) -> Result<Name> {
    let domain = validate_domain(domain)?;
    Ok(RdnSequence(domain_rdns(&domain)?))
}

/// The subject name of an actor certificate or CSR.
pub(crate) fn actor_name(fid: &FederationId, session_id: &SessionId) -> Result<Name> {
    let mut rdns = domain_rdns(fid.domain())?;
    rdns.push(single(OID_UID, utf8(fid.as_str())?)?);
    rdns.push(single(OID_COMMON_NAME, utf8(fid.local_name())?)?);
    rdns.push(single(OID_UNIQUE_IDENTIFIER, ia5(session_id.as_str())?)?);
    Ok(RdnSequence(rdns))
}

/// Joins `dc` values given in DER order (top-level domain first) into a domain.
fn join_labels(labels_tld_first: &[String]) -> String {
    let mut labels: Vec<&str> = labels_tld_first.iter().map(String::as_str).collect();
    labels.reverse();
    labels.join(".")
}

/// The only attribute of a single-valued RDN, if it is one.
fn only_attribute(rdn: &RelativeDistinguishedName) -> Option<&AttributeTypeAndValue> {
    match rdn.0.as_slice() {
        [attribute] => Some(attribute),
        _ => None,
    }
}

/// Reads a value that must carry exactly `tag` (strict certificate reading).
fn strict_string(value: &Any, tag: Tag, what: &str) -> Result<String> {
    if value.tag() != tag {
        return Err(ModelError::CertRule(format!(
            "{what} must be encoded as {tag}."
        )));
    }
    any_string(value).ok_or_else(|| ModelError::CertRule(format!("{what} is not a valid {tag}.")))
}

/// Reads a UTF8String, PrintableString or IA5String value.
fn any_string(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::PrintableString => PrintableStringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::Ia5String => Ia5StringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        _ => None,
    }
}

fn cert_rule(why: &str) -> ModelError {
    ModelError::CertRule(why.to_owned())
}

/// Reads strict `dc` RDNs (DER order) into their labels; each must be a
/// single-valued `dc` IA5String holding one lowercase DNS label.
fn strict_dc_labels(rdns: &[RelativeDistinguishedName], whose: &str) -> Result<Vec<String>> {
    let mut labels = Vec::with_capacity(rdns.len());
    for rdn in rdns {
        let attribute = only_attribute(rdn)
            .filter(|a| a.oid == OID_DOMAIN_COMPONENT)
            .ok_or_else(|| {
                ModelError::CertRule(format!(
                    "the {whose} name must consist of single-valued dc components only, where a dc was expected."
                ))
            })?;
        let label = strict_string(&attribute.value, Tag::Ia5String, "a dc component")?;
        validate_label(&label).map_err(|e| {
            ModelError::CertRule(format!(
                "a dc component of the {whose} name is not a DNS label: {e}"
            ))
        })?;
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(ModelError::CertRule(format!(
            "the {whose} name must have at least one dc component."
        )));
    }
    Ok(labels)
}

/// The domain of a home server name (strict: `dc` components only).
pub(crate) fn strict_home_server_domain(name: &Name, whose: &str) -> Result<String> {
    let labels = strict_dc_labels(&name.0, whose)?;
    validate_domain(&join_labels(&labels))
        .map_err(|e| ModelError::CertRule(format!("the {whose} domain is invalid: {e}")))
}

/// What an actor name holds.
#[derive(Debug)]
pub(crate) struct ActorName {
    /// The domain from the `dc` components.
    pub(crate) domain: String,
    /// The federation ID from `UID`, checked against `CN` and `dc`.
    pub(crate) fid: FederationId,
    /// The session ID from `uniqueIdentifier`.
    pub(crate) session_id: SessionId,
}

/// Reads an actor certificate's subject in exactly the SDK's layout.
pub(crate) fn strict_actor_name(name: &Name) -> Result<ActorName> {
    let rdns = &name.0;
    let Some(dc_count) = rdns.len().checked_sub(3).filter(|n| *n > 0) else {
        return Err(cert_rule(
            "an actor subject must have dc components, then UID, CN and uniqueIdentifier.",
        ));
    };
    let (dcs, rest) = rdns.split_at(dc_count);
    let labels = strict_dc_labels(dcs, "subject")?;
    let domain = validate_domain(&join_labels(&labels))
        .map_err(|e| ModelError::CertRule(format!("the subject domain is invalid: {e}")))?;
    let [uid, cn, unique_identifier] = rest else {
        return Err(cert_rule(
            "an actor subject must end with UID, CN and uniqueIdentifier.",
        ));
    };
    let expect = |rdn: &RelativeDistinguishedName, oid, tag, what: &str| -> Result<String> {
        let attribute = only_attribute(rdn).filter(|a| a.oid == oid).ok_or_else(|| {
            ModelError::CertRule(format!(
                "an actor subject must have dc components, then UID, CN and uniqueIdentifier, each alone in its RDN; {what} is missing or misplaced."
            ))
        })?;
        strict_string(&attribute.value, tag, what)
    };
    let uid = expect(uid, OID_UID, Tag::Utf8String, "UID")?;
    let cn = expect(cn, OID_COMMON_NAME, Tag::Utf8String, "CN")?;
    let session = expect(
        unique_identifier,
        OID_UNIQUE_IDENTIFIER,
        Tag::Ia5String,
        "uniqueIdentifier",
    )?;
    if uid != format!("{cn}@{domain}") {
        return Err(ModelError::CertRule(format!(
            "the UID {uid:?} must equal CN@domain ({cn}@{domain})."
        )));
    }
    let fid = FederationId::parse(&uid).map_err(|e| ModelError::CertRule(e.to_string()))?;
    if fid.as_str() != uid {
        return Err(cert_rule("the UID must be a lowercase federation ID."));
    }
    let session_id = SessionId::parse(&session).map_err(|e| {
        ModelError::CertRule(format!("the uniqueIdentifier is not a session ID: {e}"))
    })?;
    Ok(ActorName {
        domain,
        fid,
        session_id,
    })
}

/// Reads an ID-CSR's subject leniently: `dc`, `UID`, `CN` and
/// `uniqueIdentifier` in any order, as UTF8String, PrintableString or
/// IA5String; other attributes are ignored.
pub(crate) fn lenient_actor_name(name: &Name) -> Result<ActorName> {
    let csr_rule = |why: String| ModelError::CsrRule(why);
    let mut labels = Vec::new();
    let (mut uid, mut cn, mut session) = (None, None, None);
    for attribute in name.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let slot = match attribute.oid {
            OID_DOMAIN_COMPONENT => None,
            OID_UID => Some((&mut uid, "UID")),
            OID_COMMON_NAME => Some((&mut cn, "CN")),
            OID_UNIQUE_IDENTIFIER => Some((&mut session, "uniqueIdentifier")),
            _ => continue,
        };
        let what = slot.as_ref().map_or("dc", |(_, what)| *what);
        let text = any_string(&attribute.value).ok_or_else(|| {
            csr_rule(format!(
                "the subject's {what} must be a UTF8String, PrintableString or IA5String of valid characters."
            ))
        })?;
        match slot {
            None => labels.push(text),
            Some((slot, what)) => {
                if slot.replace(text).is_some() {
                    return Err(csr_rule(format!(
                        "the subject must have exactly one {what}."
                    )));
                }
            }
        }
    }
    let missing = |what: &str| csr_rule(format!("the subject must have a {what} attribute."));
    if labels.is_empty() {
        return Err(csr_rule(
            "the subject must have dc components naming the home server's domain.".into(),
        ));
    }
    let uid = uid.ok_or_else(|| missing("UID (federation ID)"))?;
    let cn = cn.ok_or_else(|| missing("CN (local name)"))?;
    let session = session.ok_or_else(|| missing("uniqueIdentifier (session ID)"))?;
    if labels.iter().any(|l| l.contains('.')) && labels.len() > 1 {
        return Err(csr_rule(
            "each dc component must hold one domain label.".into(),
        ));
    }
    let domain = validate_domain(&join_labels(&labels)).map_err(|e| {
        csr_rule(format!(
            "the subject's dc components do not form a domain: {e}"
        ))
    })?;
    let fid = FederationId::parse(&uid)
        .map_err(|e| csr_rule(format!("the subject's UID is not a federation ID: {e}")))?;
    let local = validate_local_name(&cn)
        .map_err(|e| csr_rule(format!("the subject's CN is not a local name: {e}")))?;
    if fid.local_name() != local || fid.domain() != domain {
        return Err(csr_rule(format!(
            "the subject's UID ({fid}) must equal CN@domain ({local}@{domain})."
        )));
    }
    let session_id = SessionId::parse(&session).map_err(|e| {
        csr_rule(format!(
            "the subject's uniqueIdentifier is not a session ID: {e}"
        ))
    })?;
    Ok(ActorName {
        domain,
        fid,
        session_id,
    })
}

#[cfg(test)]
mod tests {
    use der::Encode;

    use super::*;

    #[test]
    fn home_server_name_lists_the_top_level_domain_first_as_ia5_strings() {
        let name = home_server_name("sub.Example.com").unwrap();
        let labels: Vec<String> = name
            .0
            .iter()
            .map(|rdn| any_string(&rdn.0.as_slice()[0].value).unwrap())
            .collect();
        assert_eq!(labels, ["com", "example", "sub"]);
        assert!(
            name.0
                .iter()
                .all(|rdn| rdn.0.as_slice()[0].value.tag() == Tag::Ia5String)
        );
        assert_eq!(name.to_string(), "DC=sub,DC=example,DC=com");
        assert_eq!(
            strict_home_server_domain(&name, "issuer").unwrap(),
            "sub.example.com"
        );
    }

    #[test]
    fn actor_name_round_trips_through_the_strict_reader() {
        let fid = FederationId::parse("alice@example.com").unwrap();
        let sid = SessionId::parse("laptop-1").unwrap();
        let name = actor_name(&fid, &sid).unwrap();
        assert!(name.to_der().is_ok());
        let read = strict_actor_name(&name).unwrap();
        assert_eq!(read.fid, fid);
        assert_eq!(read.session_id, sid);
        assert_eq!(read.domain, "example.com");
    }

    #[test]
    fn strict_reader_rejects_dc_as_utf8_string() {
        let rdn = single(OID_DOMAIN_COMPONENT, utf8("com").unwrap()).unwrap();
        let err = strict_home_server_domain(&RdnSequence(vec![rdn]), "issuer").unwrap_err();
        assert!(matches!(err, ModelError::CertRule(_)), "{err}");
    }

    #[test]
    fn strict_reader_rejects_a_dotted_single_dc() {
        let rdn = single(OID_DOMAIN_COMPONENT, ia5("example.com").unwrap()).unwrap();
        assert!(strict_home_server_domain(&RdnSequence(vec![rdn]), "issuer").is_err());
    }

    #[test]
    fn lenient_reader_accepts_another_order() {
        let fid = FederationId::parse("alice@example.com").unwrap();
        let sid = SessionId::parse("s").unwrap();
        let mut name = actor_name(&fid, &sid).unwrap();
        name.0.reverse();
        // Reversed, the dc components read example.com backwards.
        assert!(lenient_actor_name(&name).is_err());
        let mut name = actor_name(&fid, &sid).unwrap();
        let cn = name.0.remove(3);
        name.0.insert(0, cn);
        let read = lenient_actor_name(&name).unwrap();
        assert_eq!(read.fid, fid);
    }
}
