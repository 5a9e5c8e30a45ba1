//! Session IDs (spec 6.1.1.3): the `uniqueIdentifier` of an actor ID-Cert.

use std::fmt;
use std::str::FromStr;

use crate::error::{ModelError, Result};

/// The longest session ID accepted, in characters (spec 6.1.1.3).
pub const MAX_SESSION_ID_LEN: usize = 32;

/// A session ID: 1 to 32 printable ASCII characters (`0x20..=0x7E`), a subset
/// of the ASN.1 `IA5String` the spec allows that leaves out control characters.
/// Compared exactly (case-sensitive), as the spec does not normalise it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// Validates a session ID.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(ModelError::InvalidSessionId("it must not be empty.".into()));
        }
        if let Some(bad) = s.chars().find(|c| !matches!(c, ' '..='~')) {
            let what = if bad.is_ascii() {
                "a control character"
            } else {
                "not ASCII"
            };
            return Err(ModelError::InvalidSessionId(format!(
                "the character {bad:?} is {what}; use printable ASCII (IA5String) only."
            )));
        }
        if s.len() > MAX_SESSION_ID_LEN {
            return Err(ModelError::InvalidSessionId(format!(
                "it must be 1 to {MAX_SESSION_ID_LEN} characters long, not {}.",
                s.len()
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The session ID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SessionId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = ModelError;

    fn try_from(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SessionId {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn session_ids_of_1_to_32_printable_characters_are_accepted() {
        assert_eq!(SessionId::parse("a").unwrap().as_str(), "a");
        assert!(SessionId::parse(&"x".repeat(32)).is_ok());
        assert!(SessionId::parse("Laptop #2 (work)").is_ok());
        assert_eq!(SessionId::try_from("abc").unwrap().to_string(), "abc");
        assert_eq!(
            "abc".parse::<SessionId>().unwrap(),
            SessionId::parse("abc").unwrap()
        );
    }

    #[test]
    fn session_ids_that_break_a_rule_are_rejected() {
        for bad in [
            "",
            &"x".repeat(33),
            "tab\there",
            "nul\0",
            "del\x7f",
            "é",
            "日本",
        ] {
            assert!(
                matches!(SessionId::parse(bad), Err(ModelError::InvalidSessionId(_))),
                "{bad:?} was accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_session_ids_round_trip_unchanged(s in "[ -~]{1,32}") {
            let id = SessionId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            let shown = id.to_string();
            prop_assert_eq!(SessionId::parse(&shown).unwrap(), id);
        }

        #[test]
        fn too_long_session_ids_are_rejected(s in "[ -~]{33,64}") {
            prop_assert!(SessionId::parse(&s).is_err());
        }

        #[test]
        fn arbitrary_text_never_panics_and_is_accepted_only_when_valid(s in "\\PC{0,40}|[\\x00-\\x1f]{1,3}") {
            let valid = (1..=32).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b));
            prop_assert_eq!(SessionId::parse(&s).is_ok(), valid);
        }
    }
}
