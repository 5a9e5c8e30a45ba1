//! Password hashing with Argon2id, off the async workers: every hash or verification runs on
//! the blocking pool behind a semaphore sized to half the CPU count, so a burst of logins
//! queues instead of starving request handling. The queue is bounded
//! ([`MAX_WAITING_HASHES`]): past it a check is refused at once with [`HashError::Busy`]
//! (UNAVAILABLE with a retry hint, 503 + `Retry-After` over HTTP) instead of waiting forever.
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

/// Most password hashes or checks waiting for a hashing slot; beyond it they are refused.
/// About a second and a half of work on one slot (Argon2id takes ~50 ms here).
pub const MAX_WAITING_HASHES: usize = 32;

/// Runs Argon2id with bounded parallelism and a bounded queue.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    permit_count: usize,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    max_waiting: usize,
    dummy_hash: Arc<String>,
}

/// Why a hash or check did not run.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The hashing queue is full: try again shortly.
    #[error("the server is busy checking passwords; try again in a moment")]
    Busy,
    /// The hashing itself failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A place in the hashing queue, given back on drop (also when the caller goes away).
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
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
            permit_count: permits,
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_waiting: MAX_WAITING_HASHES,
            dummy_hash: Arc::new(dummy),
        })
    }

    /// The same hasher with at most `max_waiting` queued checks (tests use tiny queues).
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Waits for a hashing slot, unless the queue is full.
    async fn slot(&self) -> Result<(Waiting, tokio::sync::SemaphorePermit<'_>), HashError> {
        let queued = self
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let place = Waiting(self.waiting.clone());
        // Running checks hold permits, not places: the bound is on waiting ones plus those
        // running (at most the permit count), which keeps the check a single atomic.
        if queued >= self.max_waiting + self.permit_count {
            return Err(HashError::Busy);
        }
        let permit = self.permits.acquire().await.context("hasher closed")?;
        Ok((place, permit))
    }

    /// Hashes `password` into a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let _slot = self.slot().await?;
        Ok(
            tokio::task::spawn_blocking(move || hash_blocking(&password))
                .await
                .context("hashing task failed")??,
        )
    }

    /// Checks `password` against `hash`; with `None` (unknown actor) checks against a dummy
    /// hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let _slot = self.slot().await?;
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
    // The password is also the sensitive-action solution, sent in the X-P2-Sensitive-Solution
    // header as raw UTF-8: HTTP trims a value's surrounding whitespace and forbids control
    // characters, so such a password could be set but never sent.
    if password.trim() != password {
        return Err(
            "the password must not start or end with whitespace (HTTP headers cannot carry it)"
                .to_owned(),
        );
    }
    if password.chars().any(char::is_control) {
        return Err("the password must not contain control characters".to_owned());
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_hashing_queue_refuses_at_once_instead_of_waiting() {
        let hasher = PasswordHasher::new().await.unwrap().with_max_waiting(1);
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        // Far more checks than slots plus queue: some are refused as Busy, none hang, and
        // every admitted one answers correctly.
        let checks: Vec<_> = (0..24)
            .map(|_| {
                let hasher = hasher.clone();
                let hash = hash.clone();
                tokio::spawn(async move { hasher.verify("correct horse".into(), Some(hash)).await })
            })
            .collect();
        let (mut busy, mut ok) = (0, 0);
        for check in checks {
            match check.await.unwrap() {
                Ok(true) => ok += 1,
                Err(HashError::Busy) => busy += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(busy > 0, "the queue bound was never hit");
        assert!(ok > 0, "nothing was admitted");
        // Places are given back: once idle, checks are admitted again.
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash))
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
        // What the sensitive-action header cannot carry is refused at registration...
        for unsendable in [
            " padded password",
            "padded password ",
            "tab\tinside\npassword",
        ] {
            assert!(check_policy(unsendable, "alice").is_err(), "{unsendable:?}");
        }
        // ...and what it can carry is accepted, beyond ASCII too.
        assert!(check_policy("pässwört-1234", "alice").is_ok());
        assert!(check_policy("inner spaces are fine", "alice").is_ok());
    }
}
