//! Session tokens.
//!
//! A token is [`TOKEN_BYTES`] (256 bits) from the operating system's CSPRNG, handed to the client
//! as [`TOKEN_TEXT_LEN`] lowercase hex characters (uppercase is accepted back, it names the same
//! bytes). The server keeps only [`TokenHash`]: the SHA-256 of the 32 raw bytes, as lowercase hex.
//! A database dump therefore holds nothing that authenticates, and a token is found by its hash
//! with one indexed lookup; the hash read back is compared in constant time.

use std::fmt;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Random bytes in a token (256 bits).
pub const TOKEN_BYTES: usize = 32;
/// Length of a token as the client sees it: hex of [`TOKEN_BYTES`].
pub const TOKEN_TEXT_LEN: usize = 2 * TOKEN_BYTES;
/// Length of a [`TokenHash`] as stored: hex of a SHA-256 digest.
pub const TOKEN_HASH_LEN: usize = 64;

/// A freshly issued token: the secret text for the client and the hash for storage. Its
/// `Debug` output never shows the secret.
pub struct SessionToken {
    text: String,
    hash: TokenHash,
}

impl SessionToken {
    /// Draws a new token from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self {
            text: hex::encode(bytes),
            hash: TokenHash::of_bytes(&bytes),
        }
    }

    /// The token text handed to the client (64 lowercase hex characters).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What storage keeps instead of the token.
    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    /// The token text, consuming the token.
    pub fn into_string(self) -> String {
        self.text
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionToken")
            .field("text", &"<redacted>")
            .field("hash", &self.hash)
            .finish()
    }
}

/// SHA-256 of a token's raw bytes as lowercase hex, held on the stack (the `Authenticate` hot
/// path allocates nothing for it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; TOKEN_HASH_LEN]);

impl TokenHash {
    /// The hash of the token a client presented; `None` when the text cannot be a token we
    /// issued (not exactly [`TOKEN_TEXT_LEN`] hex characters).
    pub fn of_token(text: &str) -> Option<Self> {
        if text.len() != TOKEN_TEXT_LEN {
            return None;
        }
        let mut bytes = [0_u8; TOKEN_BYTES];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self::of_bytes(&bytes))
    }

    fn of_bytes(bytes: &[u8; TOKEN_BYTES]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut text = [0_u8; TOKEN_HASH_LEN];
        // Cannot fail: the buffer is exactly twice the digest length.
        let _ = hex::encode_to_slice(digest, &mut text);
        Self(text)
    }

    /// The hash as stored: 64 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex, so this never takes the fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `stored` is this hash, compared in constant time.
    pub fn matches(&self, stored: &str) -> bool {
        stored.len() == TOKEN_HASH_LEN && bool::from(self.0.ct_eq(stored.as_bytes()))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenHash").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_carry_256_random_bits_as_64_lowercase_hex_characters() {
        let tokens: HashSet<String> = (0..1000)
            .map(|_| SessionToken::generate().into_string())
            .collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert_eq!(token.len(), TOKEN_TEXT_LEN);
            assert!(
                token
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            );
            assert_eq!(hex::decode(token).unwrap().len() * 8, 256);
        }
        // Every bit position takes both values across 1000 draws (a stuck bit would show).
        let mut ones = [0_usize; TOKEN_BYTES * 8];
        for token in &tokens {
            for (i, byte) in hex::decode(token).unwrap().iter().enumerate() {
                for bit in 0..8 {
                    ones[i * 8 + bit] += usize::from((byte >> bit) & 1);
                }
            }
        }
        assert!(ones.iter().all(|&n| n > 0 && n < 1000), "{ones:?}");
    }

    #[test]
    fn the_stored_hash_is_sha256_of_the_raw_bytes_and_not_the_token() {
        let token = SessionToken::generate();
        let raw = hex::decode(token.as_str()).unwrap();
        let expected = hex::encode(Sha256::digest(&raw));
        assert_eq!(token.hash().as_str(), expected);
        assert_ne!(token.hash().as_str(), token.as_str());
        assert_eq!(TokenHash::of_token(token.as_str()), Some(*token.hash()));
        // Uppercase hex names the same bytes.
        let upper = token.as_str().to_ascii_uppercase();
        assert_eq!(TokenHash::of_token(&upper), Some(*token.hash()));
    }

    #[test]
    fn text_that_cannot_be_a_token_has_no_hash() {
        let good = SessionToken::generate().into_string();
        for bad in [
            String::new(),
            "abc".to_owned(),
            good[..63].to_owned(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            "é".repeat(32),
            " ".repeat(64),
        ] {
            assert_eq!(TokenHash::of_token(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hashes_match_only_their_own_stored_text() {
        let token = SessionToken::generate();
        let other = SessionToken::generate();
        assert!(token.hash().matches(token.hash().as_str()));
        assert!(!token.hash().matches(other.hash().as_str()));
        assert!(!token.hash().matches(""));
        assert!(!token.hash().matches(&token.hash().as_str()[..63]));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = SessionToken::generate();
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.as_str()), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
