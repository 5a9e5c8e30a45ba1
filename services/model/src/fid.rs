//! Federation IDs (spec section 5): `local@domain`, case-insensitive.
//!
//! The spec's regex is `\b([a-z0-9._%+-]+)@([a-z0-9-]+(\.[a-z0-9-]+)*)$`. We
//! match it on the whole string (the SDK's unanchored `\b` would also accept
//! any string with a valid suffix), after ASCII-lowercasing, and add DNS
//! limits on the domain. No port: a FID names an actor, not an endpoint.

use std::fmt;
use std::str::FromStr;

use crate::error::{ModelError, Result};

/// The longest local name accepted, in characters (the SDK's limit).
pub const MAX_LOCAL_NAME_LEN: usize = 160;
/// The longest domain name accepted, in characters (DNS).
pub const MAX_DOMAIN_LEN: usize = 253;
/// The longest domain label accepted, in characters (DNS).
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;

/// Validates a local name (the part of a FID before `@`) and returns it lowercased.
///
/// Allowed: 1 to [`MAX_LOCAL_NAME_LEN`] characters of `a-z`, `0-9`, `.`, `_`,
/// `%`, `+` and `-` (upper-case ASCII letters are accepted and lowercased).
pub fn validate_local_name(s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(ModelError::InvalidLocalName("it must not be empty.".into()));
    }
    if s.chars().count() > MAX_LOCAL_NAME_LEN {
        return Err(ModelError::InvalidLocalName(format!(
            "it must be at most {MAX_LOCAL_NAME_LEN} characters long."
        )));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(bad) = lower.chars().find(|c| !is_local_name_char(*c)) {
        return Err(ModelError::InvalidLocalName(format!(
            "the character {bad:?} is not allowed; use only a-z, 0-9, '.', '_', '%', '+' and '-'."
        )));
    }
    Ok(lower)
}

fn is_local_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

/// Validates a DNS domain name and returns it lowercased.
///
/// Labels of 1 to 63 characters of `a-z`, `0-9` and `-` (not at either end of
/// a label), separated by single dots, at most 253 characters in all.
/// Single-label names such as `localhost` are allowed; ports, trailing dots and
/// IDNA (non-ASCII) forms are not.
pub fn validate_domain(s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(ModelError::InvalidDomain("it must not be empty.".into()));
    }
    if s.len() > MAX_DOMAIN_LEN {
        return Err(ModelError::InvalidDomain(format!(
            "it must be at most {MAX_DOMAIN_LEN} characters long."
        )));
    }
    let lower = s.to_ascii_lowercase();
    if lower.contains(':') {
        return Err(ModelError::InvalidDomain(
            "it must not contain a port or a scheme.".into(),
        ));
    }
    for label in lower.split('.') {
        validate_label(label)?;
    }
    Ok(lower)
}

/// Validates one lowercase DNS label.
pub(crate) fn validate_label(label: &str) -> Result<()> {
    if label.is_empty() {
        return Err(ModelError::InvalidDomain(
            "it must not start or end with a dot, or contain two dots in a row.".into(),
        ));
    }
    if label.len() > MAX_DOMAIN_LABEL_LEN {
        return Err(ModelError::InvalidDomain(format!(
            "each label (the parts between dots) must be at most {MAX_DOMAIN_LABEL_LEN} characters long."
        )));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ModelError::InvalidDomain(format!(
            "the character {bad:?} is not allowed; use only a-z, 0-9, '-' and '.'."
        )));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(ModelError::InvalidDomain(
            "a label must not start or end with '-'.".into(),
        ));
    }
    Ok(())
}

/// A federation ID: an actor's globally unique `local@domain`, stored
/// normalised (ASCII-lowercase), so equality is the spec's case-insensitive one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FederationId {
    /// `local@domain`, lowercase.
    full: String,
    /// Byte index of the `@` in `full`.
    at: usize,
}

impl FederationId {
    /// Parses `local@domain` (case-insensitive) into its normalised form.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((local, domain)) = s.split_once('@') else {
            return Err(ModelError::InvalidFederationId(
                "it must have the form local@domain, e.g. alice@example.com.".into(),
            ));
        };
        if domain.contains('@') {
            return Err(ModelError::InvalidFederationId(
                "it must contain exactly one '@'.".into(),
            ));
        }
        Self::new(local, domain).map_err(|e| match e {
            ModelError::InvalidLocalName(why) => {
                ModelError::InvalidFederationId(format!("the local name is invalid: {why}"))
            }
            ModelError::InvalidDomain(why) => {
                ModelError::InvalidFederationId(format!("the domain is invalid: {why}"))
            }
            other => other,
        })
    }

    /// Builds a federation ID from a local name and a domain, validating both.
    pub fn new(local: &str, domain: &str) -> Result<Self> {
        let local = validate_local_name(local)?;
        let domain = validate_domain(domain)?;
        let at = local.len();
        Ok(Self {
            full: format!("{local}@{domain}"),
            at,
        })
    }

    /// The local name (before `@`).
    pub fn local_name(&self) -> &str {
        &self.full[..self.at]
    }

    /// The domain (after `@`).
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// The normalised `local@domain` text.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for FederationId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for FederationId {
    type Error = ModelError;

    fn try_from(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl AsRef<str> for FederationId {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn federation_id_is_normalised_to_lowercase() {
        let fid = FederationId::parse("Alice.Smith+tag@Sub.Example.COM").unwrap();
        assert_eq!(fid.as_str(), "alice.smith+tag@sub.example.com");
        assert_eq!(fid.to_string(), fid.as_str());
        assert_eq!(fid.local_name(), "alice.smith+tag");
        assert_eq!(fid.domain(), "sub.example.com");
        assert_eq!(fid, "alice.smith+tag@sub.example.com".parse().unwrap());
        assert_eq!(
            FederationId::new("ALICE", "localhost").unwrap().as_str(),
            "alice@localhost"
        );
    }

    #[test]
    fn federation_ids_that_break_a_rule_are_rejected() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@@example.com",
            "a@b@example.com",
            "alice@example.com:8080",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "alice@-example.com",
            "alice@exa_mple.com",
            "al ice@example.com",
            " alice@example.com",
            "alice@example.com ",
            "alïce@example.com",
            "alice@exämple.com",
            "alice!@example.com",
        ] {
            assert!(
                matches!(
                    FederationId::parse(bad),
                    Err(ModelError::InvalidFederationId(_))
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn local_name_and_domain_length_limits_hold() {
        assert!(validate_local_name(&"a".repeat(MAX_LOCAL_NAME_LEN)).is_ok());
        assert!(validate_local_name(&"a".repeat(MAX_LOCAL_NAME_LEN + 1)).is_err());
        assert!(validate_domain(&"a".repeat(63)).is_ok());
        assert!(validate_domain(&"a".repeat(64)).is_err());
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(validate_domain(&long).is_ok());
        assert!(validate_domain(&format!("{long}e")).is_err());
    }

    #[test]
    fn domain_messages_say_what_to_fix() {
        let err = validate_domain("example.com:443").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid domain name: it must not contain a port or a scheme."
        );
        let err = FederationId::parse("alice").unwrap_err();
        assert!(err.to_string().contains("local@domain"), "{err}");
    }

    fn local_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._%+-]{1,40}"
    }

    fn domain() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", 1..5)
            .prop_map(|labels| labels.join("."))
    }

    proptest! {
        #[test]
        fn valid_federation_ids_round_trip_normalised(local in local_name(), domain in domain()) {
            let text = format!("{local}@{domain}");
            let fid = FederationId::parse(&text).unwrap();
            prop_assert_eq!(fid.as_str(), text.to_ascii_lowercase());
            prop_assert_eq!(fid.local_name(), local.to_ascii_lowercase());
            prop_assert_eq!(fid.domain(), domain.to_ascii_lowercase());
            let shown = fid.to_string();
            prop_assert_eq!(FederationId::parse(&shown).unwrap(), fid.clone());
            prop_assert_eq!(FederationId::new(&local, &domain).unwrap(), fid);
        }

        #[test]
        fn arbitrary_text_never_panics_and_accepted_ids_are_normal(text in "\\PC{0,60}") {
            if let Ok(fid) = FederationId::parse(&text) {
                prop_assert_eq!(fid.as_str(), text.to_ascii_lowercase());
            }
        }

        #[test]
        fn ids_with_a_forbidden_character_are_rejected(
            local in local_name(),
            domain in domain(),
            bad in "[^a-zA-Z0-9._%+-]",
            at in 0usize..40,
        ) {
            let mut local = local;
            let at = local.char_indices().nth(at % local.len()).map_or(0, |(i, _)| i);
            local.insert_str(at, &bad);
            let text = format!("{local}@{domain}");
            prop_assert!(FederationId::parse(&text).is_err());
        }
    }
}
