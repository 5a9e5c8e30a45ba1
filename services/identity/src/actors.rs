//! Actors and their ID-Certs, the operations behind the RPCs: registration, the sensitive-action
//! check, login certs (password and CSR in one request), CSR signing for an asserted actor,
//! revocation and key rotation (admin rights checked here, where they are stored).
//!
//! Every operation that acts for an actor takes the actor as a verified [`FederationId`] (from a
//! caller assertion, or from the password it was proven with): nothing here trusts a flag.

use p2_model::{FederationId, IdCsr};

use crate::keyring::Generation;
use crate::store::{ActorRow, CertRow, IssueRefusal};
use crate::throttle::Guess;
use crate::{IdentityError, IdentityState, Registration, passwords};

/// A cert that was just issued.
#[derive(Debug)]
pub struct IssuedCert {
    /// The actor.
    pub fid: FederationId,
    /// The new cert.
    pub cert: CertRow,
    /// The cert it replaced (a renewal), now revoked.
    pub replaced: Option<CertRow>,
}

/// The most certs one answer of [`IdentityState::certs_of`] (`GET idcert/actor/{fid}`) holds,
/// newest first: an actor's history grows with every renewal, an answer must not.
pub const MAX_CERTS_PER_ANSWER: u64 = 100;

/// Which certs of an actor [`IdentityState::certs_of`] selects.
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    /// Certs valid at this UNIX time.
    pub valid_at: Option<u64>,
    /// Certs of this session.
    pub session_id: Option<p2_model::SessionId>,
    /// Certs issued (validity starting) at or after this UNIX time.
    pub issued_from: Option<u64>,
    /// Certs issued (validity starting) at or before this UNIX time.
    pub issued_until: Option<u64>,
}

/// Who may register, and with which rights: the wire only ever asks for [`Self::Public`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registrant {
    /// `POST /.p2/auth/v1/register`: an ordinary actor, only while registration is open.
    Public,
    /// `polyproto admin create-actor` (in process, never over gRPC): also when registration
    /// is closed, optionally an administrator.
    Operator {
        /// Make the actor an administrator.
        admin: bool,
    },
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl IdentityState {
    /// Creates an actor; returns its FID.
    pub async fn register(
        &self,
        local_name: &str,
        password: String,
        registrant: Registrant,
    ) -> Result<FederationId, IdentityError> {
        let local_name = p2_model::validate_local_name(local_name)?;
        let admin = match registrant {
            Registrant::Public if self.registration() == Registration::Closed => {
                return Err(IdentityError::RegistrationClosed);
            }
            Registrant::Public => false,
            Registrant::Operator { admin } => admin,
        };
        passwords::check_policy(&password, &local_name).map_err(IdentityError::InvalidArgument)?;
        let fid = FederationId::new(&local_name, self.domain())?;
        let hash = self.hasher().hash(password).await?;
        let now = to_i64(p2_runtime::unix_now());
        if !self
            .store()
            .insert_actor(&local_name, &hash, admin, now)
            .await?
        {
            return Err(IdentityError::NameTaken(local_name));
        }
        tracing::info!(fid = %fid, admin, "registered actor");
        Ok(fid)
    }

    /// The normalised local name of `fid`, which must be an actor FID of this domain.
    pub fn local_name_of(&self, fid: &FederationId) -> Result<String, IdentityError> {
        if fid.domain() != self.domain() {
            return Err(IdentityError::UnknownActor(fid.to_string()));
        }
        Ok(fid.local_name().to_owned())
    }

    /// The stored actor `fid`; [`IdentityError::UnknownActor`] when there is none.
    pub async fn actor(&self, fid: &FederationId) -> Result<ActorRow, IdentityError> {
        let local_name = self.local_name_of(fid)?;
        self.store()
            .actor(&local_name)
            .await?
            .ok_or_else(|| IdentityError::UnknownActor(fid.to_string()))
    }

    /// Runs `check` (a password verification) unless `guess` must wait, and records its
    /// outcome: the throttle of [`crate::throttle`].
    async fn throttled(
        &self,
        guess: &Guess,
        check: impl std::future::Future<Output = Result<bool, crate::passwords::HashError>>,
    ) -> Result<bool, IdentityError> {
        let admission = match self.throttle().admit(guess).await? {
            Ok(admission) => admission,
            Err(retry_after) => return Err(IdentityError::Throttled { retry_after }),
        };
        let ok = match check.await {
            Ok(ok) => ok,
            Err(error) => {
                // Not a guess that was judged: just end its running mark.
                self.throttle().abandon(guess, admission).await?;
                return Err(error.into());
            }
        };
        self.throttle().record(guess, admission, ok).await?;
        Ok(ok)
    }

    /// The sensitive-action check (spec 4.2) for `fid`: for password actors, the solution is
    /// the password; `client` is the client address the gateway saw, if any. Returns the actor.
    pub async fn check_sensitive_solution(
        &self,
        fid: &FederationId,
        solution: &str,
        client: Option<&str>,
    ) -> Result<ActorRow, IdentityError> {
        if solution.is_empty() {
            return Err(IdentityError::SensitiveSolutionRequired);
        }
        let actor = self.actor(fid).await?;
        if actor.disabled {
            return Err(IdentityError::Disabled);
        }
        let guess = Guess::new(&actor.local_name, client);
        let check = self
            .hasher()
            .verify(solution.to_owned(), Some(actor.password_hash.clone()));
        let ok = self.throttled(&guess, check).await?;
        if ok {
            Ok(actor)
        } else {
            tracing::info!(fid = %fid, "wrong sensitive-action solution");
            Err(IdentityError::SensitiveSolutionWrong)
        }
    }

    /// Password login: checks `password` for `actor` (a FID or a bare local name) and signs
    /// `csr` for that same actor. Unknown actors take as long as wrong passwords.
    pub async fn issue_login_cert(
        &self,
        actor: &str,
        password: String,
        csr: &[u8],
        client: Option<&str>,
    ) -> Result<IssuedCert, IdentityError> {
        // Anything that names no actor of ours takes the unknown-actor path (same timing).
        let local_name = self.local_name_or_fid(actor).ok();
        let row = match &local_name {
            Some(name) => self.store().actor(name).await?,
            None => None,
        };
        // Unknown names are throttled like known ones: the answer must not tell them apart.
        let guess = Guess::new(
            local_name.as_deref().unwrap_or(&actor.to_lowercase()),
            client,
        );
        let check = self
            .hasher()
            .verify(password, row.as_ref().map(|a| a.password_hash.clone()));
        let ok = self.throttled(&guess, check).await?;
        let row = match row {
            Some(row) if ok => row,
            _ => return Err(IdentityError::BadCredentials),
        };
        // Told only to who knows the password, so it reveals nothing to others.
        if row.disabled {
            return Err(IdentityError::Disabled);
        }
        let fid = FederationId::new(&row.local_name, self.domain())?;
        let csr = IdCsr::parse(csr)?;
        self.issue(&fid, &csr, false).await
    }

    /// Signs `csr` for `fid`, the actor proven by the caller's assertion, whose session is
    /// `session_id`; `solution` must be the actor's sensitive-action solution. A CSR for the
    /// caller's own session renews it.
    pub async fn sign_for(
        &self,
        fid: &FederationId,
        session_id: &p2_model::SessionId,
        csr: &[u8],
        solution: &str,
        client: Option<&str>,
    ) -> Result<IssuedCert, IdentityError> {
        if solution.is_empty() {
            return Err(IdentityError::SensitiveSolutionRequired);
        }
        // The CSR is checked before the (deliberately slow) password: bad input costs no hash.
        let csr = IdCsr::parse(csr)?;
        csr.check_for(self.domain(), Some(&self.local_name_of(fid)?))?;
        self.check_sensitive_solution(fid, solution, client).await?;
        let renew = csr.session_id() == session_id;
        self.issue(fid, &csr, renew).await
    }

    /// Validates `csr` for `fid` and stores a new cert (revoking the session's valid one when
    /// `renew`).
    async fn issue(
        &self,
        fid: &FederationId,
        csr: &IdCsr,
        renew: bool,
    ) -> Result<IssuedCert, IdentityError> {
        let local_name = self.local_name_of(fid)?;
        csr.check_for(self.domain(), Some(&local_name))?;
        let session_id = csr.session_id().to_string();
        let generation = self.keyring().current()?;
        let now = p2_runtime::unix_now();
        let not_after = now
            .saturating_add(self.actor_cert_validity_secs())
            .min(generation.cert.not_after());
        let issued = self
            .store()
            .issue_cert(
                &local_name,
                &session_id,
                renew,
                self.max_sessions_per_actor(),
                to_i64(now),
                || build_row(&generation, csr, &local_name, &session_id, now, not_after),
                // A renewal revokes the old cert early: op 4 to the actor's other sessions.
                |old| Ok(vec![self.invalidation_event(fid, old, now)?]),
            )
            .await?;
        let issued = match issued {
            Ok(issued) => issued,
            Err(IssueRefusal::UnknownActor) => {
                return Err(IdentityError::UnknownActor(fid.to_string()));
            }
            Err(IssueRefusal::SessionIdInUse) => {
                return Err(IdentityError::SessionIdInUse(session_id));
            }
            Err(IssueRefusal::TooManySessions) => {
                return Err(IdentityError::TooManySessions {
                    limit: self.max_sessions_per_actor(),
                });
            }
        };
        if let Some(old) = &issued.revoked {
            tracing::info!(serial = %old.serial, "renewal revoked the previous cert");
        }
        tracing::info!(fid = %fid, serial = %issued.cert.serial, session_id = %session_id, "issued actor id-cert");
        Ok(IssuedCert {
            fid: fid.clone(),
            cert: issued.cert,
            replaced: issued.revoked,
        })
    }

    /// The certs of the actor `fid` that `query` selects, revoked ones included, newest first,
    /// at most [`MAX_CERTS_PER_ANSWER`]: older ones are reached with the time filters.
    pub async fn certs_of(
        &self,
        fid: &FederationId,
        query: CertQuery,
    ) -> Result<Vec<CertRow>, IdentityError> {
        let actor = self.actor(fid).await?;
        let filter = crate::store::CertFilter {
            valid_at: query.valid_at.map(to_i64),
            session_id: query.session_id.map(|s| s.to_string()),
            not_before: query.issued_from.map(to_i64),
            not_after: query.issued_until.map(to_i64),
        };
        Ok(self
            .store()
            .certs(&actor.local_name, &filter, MAX_CERTS_PER_ANSWER)
            .await?)
    }

    /// Revokes the valid cert of `fid`'s session `session_id`, queueing gateway op 4 with the
    /// revocation.
    pub async fn revoke(
        &self,
        fid: &FederationId,
        session_id: &p2_model::SessionId,
    ) -> Result<CertRow, IdentityError> {
        let local_name = self.local_name_of(fid)?;
        let now = p2_runtime::unix_now();
        let revoked = self
            .store()
            .revoke_cert(&local_name, session_id.as_str(), to_i64(now), |row| {
                Ok(vec![self.invalidation_event(fid, row, now)?])
            })
            .await?
            .ok_or_else(|| IdentityError::NoValidCert {
                fid: fid.to_string(),
                session_id: session_id.to_string(),
            })?;
        tracing::info!(fid = %fid, serial = %revoked.serial, "revoked actor id-cert");
        Ok(revoked)
    }

    /// Revokes every valid cert of `fid` (`polyproto admin revoke-sessions|disable`), queueing
    /// gateway op 4 for each with the revocations; returns the revoked certs.
    pub async fn revoke_all(&self, fid: &FederationId) -> Result<Vec<CertRow>, IdentityError> {
        let local_name = self.local_name_of(fid)?;
        let now = p2_runtime::unix_now();
        let revoked = self
            .store()
            .revoke_all_certs(&local_name, to_i64(now), |row| {
                Ok(vec![self.invalidation_event(fid, row, now)?])
            })
            .await?;
        tracing::info!(fid = %fid, certs = revoked.len(), "revoked every actor id-cert");
        Ok(revoked)
    }

    /// Gateway op 4 for `row`, a cert of `fid` revoked at `now` ([`crate::events`]).
    fn invalidation_event(
        &self,
        fid: &FederationId,
        row: &CertRow,
        now: u64,
    ) -> anyhow::Result<p2_outbox::Message> {
        let invalid_since = row
            .invalidated_at
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(now);
        crate::events::certificate_invalidated(self.keyring(), fid, row, invalid_since, now)
    }

    /// Rotates the server key for `fid`, who must be an administrator and send the
    /// sensitive-action solution. Returns the new generation and the rotation time.
    pub async fn rotate_for(
        &self,
        fid: &FederationId,
        solution: &str,
        client: Option<&str>,
    ) -> Result<(std::sync::Arc<Generation>, u64), IdentityError> {
        // Rights first: a non-admin learns nothing about the password by trying.
        if !self.actor(fid).await?.admin {
            return Err(IdentityError::NotAdmin);
        }
        self.check_sensitive_solution(fid, solution, client).await?;
        let rotated = self.rotate_now().await?;
        tracing::info!(caller = %fid, generation = rotated.0.generation, "server key rotated");
        Ok(rotated)
    }

    /// Rotates the server key without asking anyone: only for `polyproto admin rotate-key`,
    /// in process (an operator with access to the storage).
    pub async fn rotate_now(&self) -> Result<(std::sync::Arc<Generation>, u64), IdentityError> {
        let now = p2_runtime::unix_now();
        let generation = self.keyring().rotate(now).await?;
        Ok((generation, now))
    }

    /// Like [`Self::local_name_of`], but also accepts a bare local name (password logins).
    fn local_name_or_fid(&self, actor: &str) -> Result<String, IdentityError> {
        if actor.contains('@') {
            self.local_name_of(&FederationId::parse(actor)?)
        } else {
            Ok(p2_model::validate_local_name(actor)?)
        }
    }
}

fn build_row(
    generation: &Generation,
    csr: &IdCsr,
    local_name: &str,
    session_id: &str,
    now: u64,
    not_after: u64,
) -> anyhow::Result<CertRow> {
    let cert = p2_model::issue_actor_cert(
        &generation.cert,
        generation.signing_key(),
        csr,
        p2_model::random_serial(),
        now,
        not_after,
    )
    .map_err(anyhow::Error::new)?;
    Ok(CertRow {
        serial: cert.serial(),
        local_name: local_name.to_owned(),
        session_id: session_id.to_owned(),
        generation: generation.generation,
        not_before: to_i64(cert.not_before()),
        not_after: to_i64(cert.not_after()),
        cert_pem: cert.to_pem(),
        issued_at: to_i64(now),
        invalidated_at: None,
    })
}
