//! The home server's key generations, in memory. Generation 1 is created on first start;
//! each rotation adds one, and older generations stay retrievable by time. Replicas share
//! generations through storage ([`Keyring::refresh`]).
//!
//! Cache signatures are computed once per (signing generation, serial, cache window,
//! revocation time) and memoised: a cache window is an aligned slice of at most
//! [`CACHE_WINDOW_SECS`], so every request inside one window reuses one signature.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use p2_model::{IdCert, SigningKey};

use crate::cipher::KeyCipher;
use crate::error::IdentityError;
use crate::store::{ServerKeyRow, Store};

/// Length of a cache window, in seconds (API.md: at most 12 hours).
pub const CACHE_WINDOW_SECS: u64 = 12 * 3600;
/// A root cert with less validity left than this is replaced at start, so that every actor
/// cert (at most 60 days) fits inside the root's validity.
pub const MIN_ROOT_REMAINING_SECS: u64 = p2_model::MAX_ACTOR_CERT_VALIDITY_SECS;
const MEMO_PRUNE_AT: usize = 50_000;

/// One key pair of the home server with its root ID-Cert.
pub struct Generation {
    /// 1, 2, ...
    pub generation: i64,
    /// UNIX time from which it is the current generation.
    pub active_from: u64,
    /// The root ID-Cert.
    pub cert: IdCert,
    /// The root ID-Cert, PEM.
    pub cert_pem: String,
    /// The public key, SPKI PEM.
    pub public_key_pem: String,
    signing_key: SigningKey,
}

impl Generation {
    /// The private key (in memory only; stored encrypted).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("generation", &self.generation)
            .field("active_from", &self.active_from)
            .field("serial", &self.cert.serial())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemoKey {
    generation: i64,
    serial: String,
    window_start: u64,
    invalidated_at: Option<u64>,
}

/// A cache window with its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheAttestation {
    /// Start of the window.
    pub not_valid_before: u64,
    /// End of the window.
    pub not_valid_after: u64,
    /// Hex Ed25519 signature over the cache payload.
    pub signature: String,
}

/// The key generations plus what is needed to create new ones.
pub struct Keyring {
    store: Store,
    cipher: KeyCipher,
    domain: String,
    root_validity_secs: u64,
    generations: RwLock<Arc<Vec<Arc<Generation>>>>,
    memo: Mutex<HashMap<MemoKey, CacheAttestation>>,
}

impl Keyring {
    /// Loads every generation; creates the first one (or a fresh one when the current root is
    /// about to expire).
    pub async fn open(
        store: Store,
        cipher: KeyCipher,
        domain: String,
        root_validity_secs: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            root_validity_secs > MIN_ROOT_REMAINING_SECS,
            "the root certificate validity must be longer than 60 days"
        );
        let keyring = Self {
            store,
            cipher,
            domain,
            root_validity_secs,
            generations: RwLock::new(Arc::new(Vec::new())),
            memo: Mutex::new(HashMap::new()),
        };
        keyring.reload().await?;
        let now = p2_runtime::unix_now();
        let needs_new = match keyring.latest() {
            None => true,
            Some(current) => {
                let domain = current.cert.issuer_domain().map_err(anyhow::Error::new)?;
                anyhow::ensure!(
                    domain == keyring.domain,
                    "the identity database holds keys for domain {domain:?}, but the server is \
                     configured for {:?}; use the matching --domain or another database",
                    keyring.domain
                );
                current.cert.not_after() < now.saturating_add(MIN_ROOT_REMAINING_SECS)
            }
        };
        if needs_new {
            keyring.rotate(now).await?;
        }
        Ok(keyring)
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Generation>>> {
        match self.generations.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn latest(&self) -> Option<Arc<Generation>> {
        self.snapshot().last().cloned()
    }

    /// The current generation.
    pub fn current(&self) -> Result<Arc<Generation>, IdentityError> {
        self.latest()
            .ok_or_else(|| IdentityError::Internal(anyhow::anyhow!("no server key loaded")))
    }

    /// Every generation, oldest first.
    pub fn all(&self) -> Arc<Vec<Arc<Generation>>> {
        self.snapshot()
    }

    /// The generation that was current at `timestamp`.
    pub fn at(&self, timestamp: u64) -> Result<Arc<Generation>, IdentityError> {
        let generations = self.snapshot();
        let first = generations.first().map(|g| g.active_from).unwrap_or(0);
        generations
            .iter()
            .rev()
            .find(|g| g.active_from <= timestamp)
            .cloned()
            .ok_or(IdentityError::NoServerKeyAt { timestamp, first })
    }

    /// Generation number `generation`.
    pub fn by_number(&self, generation: i64) -> Result<Arc<Generation>, IdentityError> {
        self.snapshot()
            .iter()
            .find(|g| g.generation == generation)
            .cloned()
            .ok_or_else(|| {
                IdentityError::Internal(anyhow::anyhow!("unknown key generation {generation}"))
            })
    }

    /// The generation current at `timestamp`, or the current one.
    pub fn at_or_current(&self, timestamp: Option<u64>) -> Result<Arc<Generation>, IdentityError> {
        match timestamp {
            Some(t) => self.at(t),
            None => self.current(),
        }
    }

    /// Reloads generations from storage when another replica added one.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let stored = self.store.latest_generation().await?;
        let local = self.latest().map(|g| g.generation);
        if stored != local {
            self.reload().await?;
        }
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let rows = self.store.server_keys().await?;
        let known = self.snapshot();
        let mut generations = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(existing) = known.iter().find(|g| g.generation == row.generation) {
                generations.push(existing.clone());
                continue;
            }
            generations.push(Arc::new(self.decode(row)?));
        }
        let mut guard = match self.generations.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(generations);
        Ok(())
    }

    fn decode(&self, row: ServerKeyRow) -> anyhow::Result<Generation> {
        let cert = IdCert::from_pem(&row.cert_pem).with_context(|| {
            format!(
                "stored root cert of generation {} is unreadable",
                row.generation
            )
        })?;
        let seed = self.cipher.decrypt(
            &row.private_key_enc,
            &key_context(row.generation, &row.serial),
        )?;
        anyhow::ensure!(
            seed.len() == 32,
            "stored private key of generation {} has a wrong length",
            row.generation
        );
        // Copied into a buffer that is wiped on drop; the SigningKey wipes itself too.
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&seed);
        let signing_key = SigningKey::from_bytes(&bytes);
        let public = cert.public_key().map_err(anyhow::Error::new)?;
        anyhow::ensure!(
            signing_key.verifying_key() == public,
            "stored private key of generation {} does not match its certificate",
            row.generation
        );
        Ok(Generation {
            generation: row.generation,
            active_from: u64::try_from(row.active_from).unwrap_or(0),
            cert,
            cert_pem: row.cert_pem,
            public_key_pem: row.public_key_pem,
            signing_key,
        })
    }

    /// Creates a new generation (key pair and root ID-Cert) that is current from `now`. The
    /// previous ones stay retrievable by time. Queues gateway op 6 with it (not for the first
    /// generation: there was no server cert to change).
    pub async fn rotate(&self, now: u64) -> anyhow::Result<Arc<Generation>> {
        // Two replicas may race for the same generation number: the loser reloads and tries
        // the next number, so a rotation always creates a key of its own.
        for _ in 0..5 {
            let next = self.store.latest_generation().await?.unwrap_or(0) + 1;
            let key = p2_model::generate_signing_key();
            let serial = p2_model::random_serial();
            let not_after = now.saturating_add(self.root_validity_secs);
            let cert = p2_model::issue_root_cert(&key, &self.domain, serial, now, not_after)
                .map_err(anyhow::Error::new)
                .context("issuing the root certificate")?;
            let row = ServerKeyRow {
                generation: next,
                serial: cert.serial(),
                active_from: i64::try_from(now)?,
                not_before: i64::try_from(cert.not_before())?,
                not_after: i64::try_from(cert.not_after())?,
                cert_pem: cert.to_pem(),
                public_key_pem: p2_model::public_key_pem(&key.verifying_key()),
                private_key_enc: self
                    .cipher
                    .encrypt(key.as_bytes(), &key_context(next, &cert.serial()))?,
            };
            // Every generation after the first changes the server's cert: op 6, queued with
            // the key, the old root current until `now`.
            let events = if next > 1 {
                vec![crate::events::server_certificate_changed(
                    &row.cert_pem,
                    now,
                )]
            } else {
                Vec::new()
            };
            if self.store.insert_server_key(&row, events).await? {
                self.reload().await?;
                tracing::info!(generation = next, serial = %row.serial, domain = %self.domain, "new server key generation");
                return self.current().map_err(|e| anyhow::anyhow!("{e}"));
            }
            self.reload().await?;
        }
        anyhow::bail!("could not create a new server key generation after 5 attempts")
    }

    /// The cache window containing `now`, clipped to `[not_before, not_after]`, with the
    /// signature of `generation` over it. Memoised per window.
    pub fn attest(
        &self,
        generation: &Generation,
        serial: &str,
        not_before: u64,
        not_after: u64,
        invalidated_at: Option<u64>,
        now: u64,
    ) -> CacheAttestation {
        let (start, end) = cache_window(now, not_before, not_after);
        let key = MemoKey {
            generation: generation.generation,
            serial: serial.to_owned(),
            window_start: start,
            invalidated_at,
        };
        let mut memo = match self.memo.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(found) = memo.get(&key) {
            return found.clone();
        }
        if memo.len() >= MEMO_PRUNE_AT {
            memo.retain(|_, a| a.not_valid_after >= now);
        }
        let attestation = CacheAttestation {
            not_valid_before: start,
            not_valid_after: end,
            signature: p2_model::sign_cache(
                &generation.signing_key,
                serial,
                start,
                end,
                invalidated_at,
            ),
        };
        memo.insert(key, attestation.clone());
        attestation
    }
}

/// What [`reencrypt_private_keys`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reencrypted {
    /// Generations whose private key is now encrypted with the new key.
    pub changed: usize,
    /// Generations that already were (a repeated or resumed run).
    pub already: usize,
}

/// Re-encrypts every stored server private key from `old` to `new`, in one transaction: all
/// or none. A key that already opens with `new` is left alone, so running it again is safe; a
/// key that opens with neither stops the command before anything is written. Running identity
/// replicas keep the keys they decrypted at start-up, but one that creates a key generation
/// would still encrypt it with its old key: stop them first, restart them with `new`.
pub async fn reencrypt_private_keys(
    store: &Store,
    old: &KeyCipher,
    new: &KeyCipher,
) -> anyhow::Result<Reencrypted> {
    let rows = store.server_keys().await?;
    let mut updates = Vec::with_capacity(rows.len());
    let mut already = 0;
    for row in &rows {
        let context = key_context(row.generation, &row.serial);
        if new.decrypt(&row.private_key_enc, &context).is_ok() {
            already += 1;
            continue;
        }
        let seed = old
            .decrypt(&row.private_key_enc, &context)
            .with_context(|| {
                format!(
                    "the private key of generation {} opens with neither the current nor the new \
                 key encryption key",
                    row.generation
                )
            })?;
        updates.push((
            row.generation,
            row.private_key_enc.clone(),
            new.encrypt(&seed, &context)?,
        ));
    }
    store.replace_private_keys(&updates).await?;
    Ok(Reencrypted {
        changed: updates.len(),
        already,
    })
}

fn key_context(generation: i64, serial: &str) -> String {
    format!("polyproto server key {generation} {serial}")
}

/// The aligned window of at most [`CACHE_WINDOW_SECS`] that contains `now` (clamped into the
/// certificate's validity), clipped to `[not_before, not_after]`.
pub fn cache_window(now: u64, not_before: u64, not_after: u64) -> (u64, u64) {
    if not_after <= not_before {
        return (not_before, not_before);
    }
    // A window must not start at not_after itself (it would be empty).
    let t = now.clamp(not_before, not_after - 1);
    let start = t - t % CACHE_WINDOW_SECS;
    let end = start.saturating_add(CACHE_WINDOW_SECS);
    (start.max(not_before), end.min(not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_windows_are_aligned_bounded_and_inside_validity() {
        let nb = 1_000_000;
        let na = nb + 10 * CACHE_WINDOW_SECS + 123;
        for now in [
            0,
            nb,
            nb + 1,
            nb + 5 * CACHE_WINDOW_SECS,
            na - 1,
            na,
            na + 99_999,
        ] {
            let (start, end) = cache_window(now, nb, na);
            assert!(
                start >= nb && end <= na && start < end,
                "{now}: {start}..{end}"
            );
            assert!(end - start <= CACHE_WINDOW_SECS);
            let clamped = now.clamp(nb, na - 1);
            assert!(
                start <= clamped && clamped < end,
                "{now} not in {start}..{end}"
            );
        }
        // Two instants in the same aligned slice share a window.
        let a = cache_window(nb + 3 * CACHE_WINDOW_SECS + 10, nb, na);
        let b = cache_window(nb + 3 * CACHE_WINDOW_SECS + 500, nb, na);
        assert_eq!(a, b);
    }
}
