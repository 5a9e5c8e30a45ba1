//! Ed25519 keys and signatures, SPKI and PEM encoding.

use der::asn1::BitString;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::error::{ModelError, Result};

/// OID of Ed25519 (RFC 8410), 1.3.101.112: both the key algorithm and the
/// signature algorithm, always without parameters.
pub const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Length of an Ed25519 signature in bytes.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// A fresh Ed25519 key from the operating system's CSPRNG.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// The Ed25519 algorithm identifier (no parameters), as keys and signatures carry it.
pub(crate) fn ed25519_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: OID_ED25519,
        parameters: None,
    }
}

/// A readable name for the algorithms people most often send instead of Ed25519.
pub(crate) fn describe_algorithm(oid: &ObjectIdentifier) -> String {
    let name = match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.113549.1.1.11" => "RSA with SHA-256",
        "1.2.840.10045.2.1" => "elliptic-curve (ECDSA) keys",
        "1.2.840.10045.4.3.2" => "ECDSA with SHA-256",
        "1.2.840.10045.4.3.3" => "ECDSA with SHA-384",
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519",
        _ => return format!("algorithm {oid} is not Ed25519"),
    };
    format!("{name} ({oid}) is not Ed25519")
}

/// Checks that an algorithm identifier is exactly Ed25519 without parameters.
pub(crate) fn check_ed25519_algorithm(algorithm: &AlgorithmIdentifierOwned) -> Result<()> {
    if algorithm.oid != OID_ED25519 {
        return Err(ModelError::UnsupportedAlgorithm(describe_algorithm(
            &algorithm.oid,
        )));
    }
    if algorithm.parameters.is_some() {
        return Err(ModelError::UnsupportedAlgorithm(
            "the Ed25519 algorithm identifier must not carry parameters".into(),
        ));
    }
    Ok(())
}

/// The SubjectPublicKeyInfo of an Ed25519 key.
pub(crate) fn spki_of(key: &VerifyingKey) -> Result<SubjectPublicKeyInfoOwned> {
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(key.as_bytes())
            .map_err(crate::error::encoding)?,
    })
}

/// The Ed25519 key in a SubjectPublicKeyInfo; rejects other algorithms,
/// malformed points and weak (small-order) keys.
pub(crate) fn key_from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<VerifyingKey> {
    check_ed25519_algorithm(&spki.algorithm)?;
    let bytes: [u8; 32] = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ModelError::InvalidKey("an Ed25519 public key must be exactly 32 bytes.".into())
        })?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ModelError::InvalidKey("the bytes are not an Ed25519 curve point.".into()))?;
    if key.is_weak() {
        return Err(ModelError::InvalidKey(
            "the key is a weak (small-order) Ed25519 key.".into(),
        ));
    }
    Ok(key)
}

/// `-----BEGIN PUBLIC KEY-----` (SPKI) PEM of an Ed25519 key, LF line endings.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    // The SPKI of an Ed25519 key is a fixed 12-byte prefix and the 32 key bytes
    // (RFC 8410 section 4), so it is written directly rather than through a
    // fallible encoder.
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem_encode("PUBLIC KEY", &der)
}

/// Parses an SPKI `PUBLIC KEY` PEM holding an Ed25519 key.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey> {
    use der::Decode;
    let der = pem_decode(pem, &["PUBLIC KEY"])?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&der)
        .map_err(|e| ModelError::MalformedDer(format!("not a SubjectPublicKeyInfo: {e}.")))?;
    key_from_spki(&spki)
}

/// Signs `message` and returns the 64-byte signature as lowercase hex.
pub fn sign_hex(key: &SigningKey, message: &[u8]) -> String {
    hex::encode(key.sign(message).to_bytes())
}

/// Decodes a hex signature (either case) into its 64 bytes.
pub(crate) fn signature_from_hex(signature_hex: &str) -> Result<Signature> {
    let bytes = hex::decode(signature_hex.trim())
        .map_err(|_| ModelError::MalformedSignature("it is not hexadecimal.".into()))?;
    signature_from_bytes(&bytes)
}

/// An Ed25519 signature from its 64 raw bytes.
pub(crate) fn signature_from_bytes(bytes: &[u8]) -> Result<Signature> {
    let bytes: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| {
        ModelError::MalformedSignature(format!(
            "an Ed25519 signature is {SIGNATURE_LEN} bytes, not {}.",
            bytes.len()
        ))
    })?;
    Ok(Signature::from_bytes(&bytes))
}

/// Verifies a hex-encoded Ed25519 signature strictly (RFC 8032 with the
/// small-order and non-canonical checks of `verify_strict`).
pub fn verify_hex(key: &VerifyingKey, message: &[u8], signature_hex: &str) -> Result<()> {
    let signature = signature_from_hex(signature_hex)?;
    key.verify_strict(message, &signature)
        .map_err(|_| ModelError::BadSignature)
}

/// Verifies raw signature bytes strictly.
pub(crate) fn verify_bytes(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> Result<()> {
    let signature = signature_from_bytes(signature)?;
    key.verify_strict(message, &signature)
        .map_err(|_| ModelError::BadSignature)
}

/// PEM-encodes DER bytes: RFC 7468 strict form, 64-character lines, LF
/// endings, trailing newline.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64_encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes PEM text whose label is one of `labels`; surrounding whitespace
/// and CRLF line endings are tolerated.
pub(crate) fn pem_decode(pem: &str, labels: &[&str]) -> Result<Vec<u8>> {
    let text = pem.trim().replace("\r\n", "\n");
    let (label, der) = der::pem::decode_vec(text.as_bytes())
        .map_err(|e| ModelError::MalformedPem(format!("{e}.")))?;
    if !labels.contains(&label) {
        return Err(ModelError::MalformedPem(format!(
            "expected a \"{}\" PEM block, found \"{label}\".",
            labels.first().copied().unwrap_or_default()
        )));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use der::EncodePem;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use spki::der::pem::LineEnding;

    use super::*;

    #[test]
    fn public_key_pem_matches_the_pkcs8_encoder_and_round_trips() {
        let key = generate_signing_key().verifying_key();
        let pem = public_key_pem(&key);
        assert_eq!(pem, key.to_public_key_pem(LineEnding::LF).unwrap());
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(!pem.contains('\r'));
        assert_eq!(public_key_from_pem(&pem).unwrap(), key);
        assert_eq!(
            public_key_from_pem(&pem.replace('\n', "\r\n")).unwrap(),
            key
        );
    }

    #[test]
    fn pem_encoding_matches_der_for_every_length_remainder() {
        for len in [1usize, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let ours = pem_encode("CERTIFICATE", &der);
            let theirs = der::pem::encode_string("CERTIFICATE", LineEnding::LF, &der).unwrap();
            assert_eq!(ours, theirs, "length {len}");
        }
        let spki = spki_of(&generate_signing_key().verifying_key()).unwrap();
        assert_eq!(
            pem_encode("PUBLIC KEY", &der::Encode::to_der(&spki).unwrap()),
            spki.to_pem(LineEnding::LF).unwrap()
        );
    }

    #[test]
    fn public_key_pem_with_another_label_is_rejected() {
        let pem = public_key_pem(&generate_signing_key().verifying_key())
            .replace("PUBLIC KEY", "CERTIFICATE");
        assert!(matches!(
            public_key_from_pem(&pem),
            Err(ModelError::MalformedPem(_))
        ));
        assert!(matches!(
            public_key_from_pem("not pem"),
            Err(ModelError::MalformedPem(_))
        ));
    }

    #[test]
    fn public_key_of_another_algorithm_is_rejected() {
        // A P-256 SPKI: ecPublicKey with the prime256v1 curve parameter.
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                parameters: Some(der::Any::from(ObjectIdentifier::new_unwrap(
                    "1.2.840.10045.3.1.7",
                ))),
            },
            subject_public_key: BitString::from_bytes(&[4u8; 65]).unwrap(),
        };
        let pem = spki.to_pem(LineEnding::LF).unwrap();
        assert!(matches!(
            public_key_from_pem(&pem),
            Err(ModelError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn weak_public_key_is_rejected() {
        // The identity point: small order.
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&bytes);
        let pem = pem_encode("PUBLIC KEY", &der);
        assert!(matches!(
            public_key_from_pem(&pem),
            Err(ModelError::InvalidKey(_))
        ));
    }

    #[test]
    fn hex_signature_verifies_and_rejects_changes() {
        let key = generate_signing_key();
        let sig = sign_hex(&key, b"hello");
        assert_eq!(sig.len(), 128);
        verify_hex(&key.verifying_key(), b"hello", &sig).unwrap();
        verify_hex(&key.verifying_key(), b"hello", &sig.to_uppercase()).unwrap();
        assert_eq!(
            verify_hex(&key.verifying_key(), b"hellO", &sig),
            Err(ModelError::BadSignature)
        );
        let other = generate_signing_key().verifying_key();
        assert_eq!(
            verify_hex(&other, b"hello", &sig),
            Err(ModelError::BadSignature)
        );
        assert!(matches!(
            verify_hex(&key.verifying_key(), b"hello", "zz"),
            Err(ModelError::MalformedSignature(_))
        ));
        assert!(matches!(
            verify_hex(&key.verifying_key(), b"hello", &sig[..126]),
            Err(ModelError::MalformedSignature(_))
        ));
    }
}
