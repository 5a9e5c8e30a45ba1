//! Challenge strings (spec 4.3): issued to a session, single use, expiring, and verified
//! against the session's current ID-Cert.
//!
//! A challenge lives in the [`ChallengeStore`](crate::storage::ChallengeStore) under
//! `challenge:<challenge>` (Redis: `p2:challenge:<challenge>`), with the value `<fid>\n<session
//! id>` binding it to the session that asked (neither part can contain a line feed). Verifying
//! takes it out of the store first, so a challenge is consumed by its first use whatever the
//! outcome: a reused, expired, foreign or badly signed challenge never succeeds later.
//!
//! Bounds (CONVENTIONS 17): a session holds at most `--max-challenges-per-session`
//! ([`DEFAULT_MAX_CHALLENGES_PER_SESSION`]) unused, unexpired challenges; beyond that its
//! requests answer RESOURCE_EXHAUSTED ([`SessionError::TooManyChallenges`], HTTP 429) until
//! it uses one or one expires. Nothing pending is dropped to make room: a flooding session
//! locks out only itself, and a challenge handed out stays solvable for its whole lifetime.
//! All sessions together hold at most `--max-pending-challenges`
//! ([`DEFAULT_MAX_PENDING_CHALLENGES`]), beyond which everyone gets RESOURCE_EXHAUSTED
//! ([`SessionError::Busy`]); that bound protects the store's memory, the per-session one keeps
//! one session from reaching it alone.
//!
//! [`SessionGrpc::check_challenge_solution`] is the one check behind both the
//! `VerifyChallengeSolution` RPC and the gateway's `X-P2-Challenge-String-Solution` header.

use std::time::Duration;

use anyhow::Context as _;
use p2_model::IdCert;
use p2_proto::identity::v1 as identity;
use tonic::Code;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;

/// Logical key prefix of challenges in the challenge store.
pub const CHALLENGE_KEY_PREFIX: &str = "challenge:";
/// Default lifetime of a challenge, in seconds (5 minutes).
pub const DEFAULT_CHALLENGE_TTL_SECS: u64 = 300;
/// Default bound on the unused, unexpired challenges of one session: far more than a client
/// solving challenges one after another has pending, and small enough that
/// [`DEFAULT_MAX_PENDING_CHALLENGES`] takes over 1500 sessions to fill.
pub const DEFAULT_MAX_CHALLENGES_PER_SESSION: usize = 64;
/// Default bound on pending challenges of all sessions together (in process or in Redis).
pub const DEFAULT_MAX_PENDING_CHALLENGES: usize = crate::storage::DEFAULT_CAPACITY;
/// The longest challenge string the spec allows; longer input is rejected without a lookup.
pub const MAX_CHALLENGE_LEN: usize = 256;
/// How many fresh challenges to draw when one collides with a pending one. A collision of 64
/// random alphanumerics is astronomically unlikely; a repeat means a broken random source.
const MAX_ISSUE_ATTEMPTS: usize = 4;

/// A challenge handed to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedChallenge {
    /// The challenge string ([`p2_model::CHALLENGE_LEN`] characters of `[a-zA-Z0-9]`, each
    /// class present).
    pub challenge: String,
    /// UNIX seconds after which it is no longer accepted.
    pub expires: u64,
}

fn store_key(challenge: &str) -> String {
    let mut key = String::with_capacity(CHALLENGE_KEY_PREFIX.len() + challenge.len());
    key.push_str(CHALLENGE_KEY_PREFIX);
    key.push_str(challenge);
    key
}

/// The stored value binding a challenge to `caller`'s session.
fn binding(caller: &Caller) -> String {
    format!("{}\n{}", caller.fid, caller.session_id)
}

/// The store owner whose bound is the session's challenge cap: the binding under a
/// `challenge:` namespace, so later kinds of entries (key trials) get bounds of their own.
fn owner(binding: &str) -> String {
    let mut owner = String::with_capacity(CHALLENGE_KEY_PREFIX.len() + binding.len());
    owner.push_str(CHALLENGE_KEY_PREFIX);
    owner.push_str(binding);
    owner
}

fn is_bound_to(value: &str, caller: &Caller) -> bool {
    value.split_once('\n') == Some((caller.fid.as_str(), caller.session_id.as_str()))
}

/// Whether `challenge` could be one we issued: 1 to [`MAX_CHALLENGE_LEN`] ASCII alphanumerics.
/// Anything else is rejected before it reaches the store.
fn is_plausible(challenge: &str) -> bool {
    (1..=MAX_CHALLENGE_LEN).contains(&challenge.len())
        && challenge.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks `signature` (hex Ed25519) over the bytes of `challenge` with the key of `cert_pem`,
/// the current ID-Cert of `caller`'s session, at UNIX time `now`.
pub fn verify_solution(
    cert_pem: &str,
    caller: &Caller,
    challenge: &str,
    signature: &str,
    now: u64,
) -> Result<(), SessionError> {
    let cert = IdCert::from_pem(cert_pem).context("identity returned an unparsable ID-Cert")?;
    let fid = cert
        .subject_fid()
        .context("identity returned an ID-Cert without FID")?;
    let session_id = cert
        .session_id()
        .context("identity returned an ID-Cert without session ID")?;
    if fid != caller.fid || session_id != caller.session_id {
        return Err(SessionError::Internal(anyhow::anyhow!(
            "identity returned the ID-Cert of {fid}/{session_id} for {}/{}",
            caller.fid,
            caller.session_id
        )));
    }
    cert.check_valid_at(now)
        .map_err(|_| SessionError::NoValidIdCert)?;
    let key = cert
        .public_key()
        .context("identity returned an ID-Cert without a usable key")?;
    p2_model::verify_hex(&key, challenge.as_bytes(), signature).map_err(SessionError::BadSolution)
}

impl SessionGrpc {
    /// Issues a challenge bound to `caller`'s session, alive for the configured TTL.
    /// [`SessionError::TooManyChallenges`] when the session already holds
    /// [`max_challenges_per_session`](Self::max_challenges_per_session) pending ones,
    /// [`SessionError::Busy`] when the server holds its maximum for all sessions.
    pub async fn issue_challenge(&self, caller: &Caller) -> Result<IssuedChallenge, SessionError> {
        let ttl = self.challenge_ttl();
        let limit = self.max_challenges_per_session();
        let value = binding(caller);
        let owner = owner(&value);
        for _ in 0..MAX_ISSUE_ATTEMPTS {
            let challenge = p2_model::generate_challenge();
            let expires = p2_runtime::unix_now().saturating_add(ttl.as_secs());
            if self
                .challenges()
                .put_if_absent(&store_key(&challenge), &value, &owner, limit, ttl)
                .await?
            {
                tracing::debug!(fid = %caller.fid, session_id = %caller.session_id, expires, "issued a challenge");
                return Ok(IssuedChallenge { challenge, expires });
            }
        }
        Err(SessionError::Internal(anyhow::anyhow!(
            "{MAX_ISSUE_ATTEMPTS} fresh challenges in a row collided with pending ones: \
             is the random source broken?"
        )))
    }

    /// Consumes `challenge` and checks that `signature` (hex Ed25519 over the challenge's bytes)
    /// was made by the key of `caller`'s session's currently valid ID-Cert. PERMISSION_DENIED
    /// (the `Challenge*`, `NoValidIdCert`, `BadSolution` variants) for unknown, reused, expired,
    /// foreign or badly signed challenges. The challenge is used up by this call whatever it
    /// answers.
    pub async fn check_challenge_solution(
        &self,
        caller: &Caller,
        challenge: &str,
        signature: &str,
    ) -> Result<(), SessionError> {
        if !is_plausible(challenge) {
            return Err(SessionError::ChallengeUnknown);
        }
        let value = self
            .challenges()
            .take(&store_key(challenge))
            .await?
            .ok_or(SessionError::ChallengeUnknown)?;
        if !is_bound_to(&value, caller) {
            return Err(SessionError::ChallengeOfAnotherSession);
        }
        let now = p2_runtime::unix_now();
        let cert_pem = if self.is_foreign(&caller.fid) {
            // A foreign session's cert is the one it signed in with (or announced since),
            // re-verified with its home server once its trust ran out.
            self.check_foreign_session(&caller.fid, caller.session_id.as_str(), now)
                .await
                .map_err(|error| match error {
                    SessionError::UnknownToken => SessionError::NoValidIdCert,
                    other => other,
                })?
                .id_cert_pem
        } else {
            self.current_id_cert(caller, now).await?
        };
        verify_solution(&cert_pem, caller, challenge, signature, now)?;
        tracing::info!(fid = %caller.fid, session_id = %caller.session_id, "challenge solved");
        Ok(())
    }

    /// PEM of the session's ID-Cert valid at `now` and not revoked, from identity.
    async fn current_id_cert(&self, caller: &Caller, now: u64) -> Result<String, SessionError> {
        let answer = self
            .identity()
            .get_actor_id_certs(identity::GetActorIdCertsRequest {
                fid: caller.fid.to_string(),
                timestamp: Some(now),
                session_id: Some(caller.session_id.to_string()),
                not_before: None,
                not_after: None,
            })
            .await;
        let certs = match answer {
            Ok(response) => response.into_inner().certs,
            // The actor is gone (or is not ours): no cert to check against.
            Err(status) if status.code() == Code::NotFound => {
                return Err(SessionError::NoValidIdCert);
            }
            Err(status) => {
                return Err(SessionError::from_identity(
                    status,
                    "fetching the session's ID-Cert",
                ));
            }
        };
        certs
            .into_iter()
            .find(|cert| cert.invalidated_at.is_none())
            .map(|cert| cert.id_cert_pem)
            .ok_or(SessionError::NoValidIdCert)
    }

    /// The configured challenge lifetime.
    pub fn challenge_ttl(&self) -> Duration {
        self.inner.challenge_ttl
    }
}

#[cfg(test)]
mod tests {
    use p2_model::{FederationId, SessionId, SigningKey};

    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn caller(fid: &str, session_id: &str) -> Caller {
        Caller {
            fid: FederationId::parse(fid).unwrap(),
            session_id: SessionId::parse(session_id).unwrap(),
            proof: Vec::new(),
        }
    }

    /// An actor cert for `caller`, valid for a day around NOW, and the actor's key.
    fn actor_cert(caller: &Caller) -> (String, SigningKey) {
        let root_key = p2_model::generate_signing_key();
        let root = p2_model::issue_root_cert(
            &root_key,
            caller.fid.domain(),
            1,
            NOW - 86_400,
            NOW + 86_400 * 365,
        )
        .unwrap();
        let actor_key = p2_model::generate_signing_key();
        let csr = p2_model::build_csr(&actor_key, &caller.fid, &caller.session_id).unwrap();
        let csr = p2_model::IdCsr::from_pem(&csr).unwrap();
        let cert =
            p2_model::issue_actor_cert(&root, &root_key, &csr, 2, NOW - 3600, NOW + 3600).unwrap();
        (cert.to_pem(), actor_key)
    }

    #[test]
    fn bindings_name_exactly_one_session() {
        let alice = caller("alice@example.com", "laptop");
        let value = binding(&alice);
        assert!(is_bound_to(&value, &alice));
        assert!(!is_bound_to(&value, &caller("alice@example.com", "phone")));
        assert!(!is_bound_to(&value, &caller("bob@example.com", "laptop")));
        // Session IDs may contain spaces; the line feed still splits unambiguously.
        let spaced = caller("alice@example.com", "Laptop #2 (work)");
        assert!(is_bound_to(&binding(&spaced), &spaced));
        assert!(!is_bound_to("garbage", &alice));
    }

    #[test]
    fn only_alphanumeric_challenges_up_to_256_characters_reach_the_store() {
        assert!(is_plausible(&p2_model::generate_challenge()));
        assert!(is_plausible(&"a".repeat(256)));
        assert!(!is_plausible(""));
        assert!(!is_plausible(&"a".repeat(257)));
        assert!(!is_plausible("abc:def"));
        assert!(!is_plausible("abc def"));
    }

    #[test]
    fn a_signature_by_the_session_key_verifies() {
        let alice = caller("alice@example.com", "laptop");
        let (pem, key) = actor_cert(&alice);
        let challenge = p2_model::generate_challenge();
        let signature = p2_model::sign_hex(&key, challenge.as_bytes());
        verify_solution(&pem, &alice, &challenge, &signature, NOW).unwrap();
        verify_solution(&pem, &alice, &challenge, &signature.to_uppercase(), NOW).unwrap();
    }

    #[test]
    fn wrong_or_malformed_signatures_are_bad_solutions() {
        let alice = caller("alice@example.com", "laptop");
        let (pem, key) = actor_cert(&alice);
        let challenge = p2_model::generate_challenge();
        let other_key = p2_model::generate_signing_key();
        for signature in [
            p2_model::sign_hex(&other_key, challenge.as_bytes()),
            p2_model::sign_hex(&key, b"another message"),
            "zz".repeat(64),
            "00".repeat(10),
            String::new(),
        ] {
            let err = verify_solution(&pem, &alice, &challenge, &signature, NOW).unwrap_err();
            assert!(matches!(err, SessionError::BadSolution(_)), "{err:?}");
        }
    }

    #[test]
    fn an_expired_cert_is_no_valid_cert() {
        let alice = caller("alice@example.com", "laptop");
        let (pem, key) = actor_cert(&alice);
        let challenge = p2_model::generate_challenge();
        let signature = p2_model::sign_hex(&key, challenge.as_bytes());
        let err = verify_solution(&pem, &alice, &challenge, &signature, NOW + 7200).unwrap_err();
        assert!(matches!(err, SessionError::NoValidIdCert), "{err:?}");
    }

    #[test]
    fn a_cert_of_another_session_is_an_internal_error() {
        let alice = caller("alice@example.com", "laptop");
        let (pem, key) = actor_cert(&alice);
        let challenge = p2_model::generate_challenge();
        let signature = p2_model::sign_hex(&key, challenge.as_bytes());
        let phone = caller("alice@example.com", "phone");
        let err = verify_solution(&pem, &phone, &challenge, &signature, NOW).unwrap_err();
        assert!(matches!(err, SessionError::Internal(_)), "{err:?}");
    }
}
