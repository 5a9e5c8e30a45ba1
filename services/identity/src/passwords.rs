//! Password hashing with Argon2id, off the async workers: every hash or verification runs on
//! the blocking pool behind a semaphore sized to the CPU count, so a burst of logins queues
//! instead of starving request handling.
//!
//! A login for an actor that does not exist verifies against a dummy hash, so the answer
//! takes the same time whether the actor exists or not.

use std::sync::Arc;

use anyhow::Context as _;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest accepted password (bounds hashing work).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Runs Argon2id with bounded parallelism.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    // OWASP's first recommended Argon2id setting: m = 19 MiB, t = 2, p = 1.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT)
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password failed: {e}"))
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

impl PasswordHasher {
    /// A hasher allowing half as many concurrent hashes as there are CPUs (at least one), so
    /// a burst of logins cannot take every core from request handling.
    pub async fn new() -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let permits = (cpus / 2).max(1);
        let dummy = tokio::task::spawn_blocking(|| hash_blocking("polyproto dummy password"))
            .await
            .context("hashing task failed")??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(permits)),
            dummy_hash: Arc::new(dummy),
        })
    }

    /// Hashes `password` into a PHC string.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .context("hashing task failed")?
    }

    /// Checks `password` against `hash`; with `None` (unknown actor) checks against a dummy
    /// hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash))
            .await
            .context("verification task failed")?;
        Ok(ok && known)
    }
}

/// Why a password is not accepted at registration (a client error message).
pub fn check_policy(password: &str, local_name: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password must have at most {MAX_PASSWORD_LEN} bytes"
        ));
    }
    if password.eq_ignore_ascii_case(local_name) {
        return Err("the password must not be the actor's name".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let hasher = PasswordHasher::new().await.unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_actors_never_verify_even_with_the_dummy_password() {
        let hasher = PasswordHasher::new().await.unwrap();
        assert!(
            !hasher
                .verify("polyproto dummy password".into(), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(
            check_policy("short", "alice")
                .unwrap_err()
                .contains("at least")
        );
        assert!(check_policy("alicealice", "alicealice").is_err());
        assert!(check_policy(&"x".repeat(2000), "alice").is_err());
        assert!(check_policy("long enough", "alice").is_ok());
    }
}
