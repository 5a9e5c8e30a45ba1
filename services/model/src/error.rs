//! The one error type of the polyproto domain.
//!
//! Every `Display` string is a sentence a client can act on: services show it
//! verbatim in a 400 response, so it names what was wrong with the input and
//! never an internal detail.

/// Why a polyproto value or certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A federation ID (`local@domain`) is malformed; the text says how.
    #[error("Invalid federation ID: {0}")]
    InvalidFederationId(String),
    /// The local name (the part before `@`) is malformed; the text says how.
    #[error("Invalid local name: {0}")]
    InvalidLocalName(String),
    /// A domain name is malformed; the text says how.
    #[error("Invalid domain name: {0}")]
    InvalidDomain(String),
    /// A session ID is not 1 to 32 printable ASCII characters; the text says how.
    #[error("Invalid session ID: {0}")]
    InvalidSessionId(String),
    /// Text that should be PEM is not; the text says how.
    #[error("Malformed PEM: {0}")]
    MalformedPem(String),
    /// Bytes that should be a DER structure are not; the text says how.
    #[error("Malformed DER: {0}")]
    MalformedDer(String),
    /// A key or signature uses an algorithm other than Ed25519.
    #[error("Unsupported algorithm: {0}. polyproto ID-Certs here use Ed25519 only.")]
    UnsupportedAlgorithm(String),
    /// A public key is not a usable Ed25519 key; the text says how.
    #[error("Invalid public key: {0}")]
    InvalidKey(String),
    /// A signature is not 64 hex-encoded bytes; the text says how.
    #[error("Malformed signature: {0}")]
    MalformedSignature(String),
    /// A signature does not verify with the key it should have been made with.
    #[error("The signature does not verify.")]
    BadSignature,
    /// An ID-CSR breaks a polyproto rule; the text names the rule.
    #[error("The ID-CSR was rejected: {0}")]
    CsrRule(String),
    /// An ID-Cert breaks a polyproto rule; the text names the rule.
    #[error("The ID-Cert was rejected: {0}")]
    CertRule(String),
    /// The certificate's notAfter lies before the time it was checked at.
    #[error("The certificate has expired.")]
    Expired,
    /// The certificate's notBefore lies after the time it was checked at.
    #[error("The certificate is not valid yet.")]
    NotYetValid,
    /// The value belongs to another domain than the one expected.
    #[error("Wrong domain: expected {expected}, got {actual}.")]
    WrongDomain {
        /// The domain this server or check expected.
        expected: String,
        /// The domain the value names.
        actual: String,
    },
    /// The value belongs to another actor than the one expected.
    #[error("Wrong actor: expected {expected}, got {actual}.")]
    WrongActor {
        /// The actor (local name or federation ID) expected.
        expected: String,
        /// The actor the value names.
        actual: String,
    },
    /// A requested validity period is not allowed; the text says why.
    #[error("Invalid validity period: {0}")]
    Validity(String),
    /// A certificate serial number is not allowed; the text says why.
    #[error("Invalid serial number: {0}")]
    InvalidSerial(String),
    /// Encoding a value we built ourselves failed. Not the caller's fault:
    /// services should map it to an internal error.
    #[error("A certificate structure could not be encoded.")]
    Encoding(String),
}

impl ModelError {
    /// Whether this error is our own fault (a 500) rather than the input's (a 400).
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Encoding(_))
    }
}

/// `Result` with [`ModelError`] as the default error.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<der::Error> for ModelError {
    fn from(error: der::Error) -> Self {
        Self::MalformedDer(describe_der_error(&error))
    }
}

/// A client-facing sentence for a DER decoding error.
pub(crate) fn describe_der_error(error: &der::Error) -> String {
    format!("{error}.")
}

/// Maps an encoding failure of a structure we built to [`ModelError::Encoding`].
pub(crate) fn encoding(error: der::Error) -> ModelError {
    ModelError::Encoding(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_encoding_failures_are_internal() {
        assert!(ModelError::Encoding("x".into()).is_internal());
        assert!(!ModelError::BadSignature.is_internal());
        assert!(!ModelError::Expired.is_internal());
    }

    #[test]
    fn messages_are_sentences_without_debug_noise() {
        let e = ModelError::WrongDomain {
            expected: "a.example".into(),
            actual: "b.example".into(),
        };
        assert_eq!(
            e.to_string(),
            "Wrong domain: expected a.example, got b.example."
        );
        assert_eq!(
            ModelError::BadSignature.to_string(),
            "The signature does not verify."
        );
    }
}
