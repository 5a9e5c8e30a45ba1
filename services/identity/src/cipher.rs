//! Encryption of the server's private keys at rest: ChaCha20-Poly1305 under a 32-byte key
//! from the environment (a Kubernetes Secret in production; a 0600 file in the data
//! directory in embedded mode). Stored form: `v1:` + hex(nonce ‖ ciphertext).

use std::path::Path;

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Encrypts and decrypts private keys. Debug output never shows the key.
#[derive(Clone)]
pub struct KeyCipher {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher(..)")
    }
}

impl KeyCipher {
    /// From 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(hex_key: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|_| anyhow::anyhow!("the key encryption key must be 64 hex characters"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!("the key encryption key must be 64 hex characters (32 bytes)")
        })?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
        })
    }

    /// From a file holding 64 hex characters.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the key encryption key file {}", path.display())
        })?;
        Self::from_hex(&text).with_context(|| format!("invalid key in {}", path.display()))
    }

    /// Reads the key file at `path`, or creates it with a fresh random key and mode 0600.
    pub fn load_or_create_file(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            return Self::from_file(path);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut key = [0_u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let text = hex::encode(key);
        write_private_file(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated a key encryption key");
        Self::from_hex(&text)
    }

    /// Encrypts `plaintext`, binding it to `context` (authenticated, not stored).
    pub fn encrypt(&self, plaintext: &[u8], context: &str) -> anyhow::Result<String> {
        let mut nonce = [0_u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(format!("{PREFIX}{}", hex::encode(out)))
    }

    /// Decrypts what [`KeyCipher::encrypt`] produced for the same `context`. The plaintext is
    /// private key material: it is wiped from memory when the returned value is dropped.
    pub fn decrypt(
        &self,
        stored: &str,
        context: &str,
    ) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
        let raw = stored
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|raw| raw.len() > NONCE_LEN)
            .context("stored private key is not in the v1 format")?;
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().context("truncated nonce")?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(zeroize::Zeroizing::new)
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt the server's private key: wrong key encryption key \
                     (P2_KEY_ENCRYPTION_KEY) for this database"
                )
            })
    }
}

/// A fresh random key encryption key, as 64 hex characters.
pub fn generate_key_hex() -> secrecy::SecretString {
    let mut key = zeroize::Zeroizing::new([0_u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    hex::encode(key.as_ref()).into()
}

/// Writes `contents` to a new file at `path` readable by its owner only (0600).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn encrypted_keys_round_trip_and_hide_the_plaintext() {
        let cipher = KeyCipher::from_hex(KEY).unwrap();
        let stored = cipher
            .encrypt(b"secret seed bytes", "server-key:1")
            .unwrap();
        assert!(!stored.contains(&hex::encode(b"secret seed bytes")));
        assert_eq!(
            cipher.decrypt(&stored, "server-key:1").unwrap().as_slice(),
            b"secret seed bytes"
        );
    }

    #[test]
    fn a_wrong_key_or_context_cannot_decrypt() {
        let cipher = KeyCipher::from_hex(KEY).unwrap();
        let stored = cipher.encrypt(b"seed", "server-key:1").unwrap();
        assert!(cipher.decrypt(&stored, "server-key:2").is_err());
        let other = KeyCipher::from_hex(&KEY.replace("00", "ff")).unwrap();
        let err = other
            .decrypt(&stored, "server-key:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("P2_KEY_ENCRYPTION_KEY"), "{err}");
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert!(KeyCipher::from_hex("abc").is_err());
        assert!(KeyCipher::from_hex(&"zz".repeat(32)).is_err());
        assert!(KeyCipher::from_hex(&"00".repeat(31)).is_err());
    }

    #[test]
    fn generated_key_files_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("kek");
        let first = KeyCipher::load_or_create_file(&path).unwrap();
        let stored = first.encrypt(b"x", "c").unwrap();
        let second = KeyCipher::load_or_create_file(&path).unwrap();
        assert_eq!(second.decrypt(&stored, "c").unwrap().as_slice(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
