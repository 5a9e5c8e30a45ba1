//! Sessions and their tokens: authenticating a bearer token (and minting the caller assertion
//! for it), password + ID-CSR login, a new ID-Cert for an asserted actor (POST /idcert), and
//! deleting a session.
//!
//! Login, new ID-Certs and deletion touch two stores (identity's certs, this service's tokens)
//! with no transaction spanning both. Each runs as one RPC whose steps are ordered so that every
//! failure leaves nothing usable behind or can simply be retried, and [`crate::grpc`] runs them
//! in a task of their own, so a caller that disconnects cannot stop one halfway (CONVENTIONS 18).
//!
//! The gateway events of these operations are queued with this service's own write (the
//! session row stored or deleted), in its transaction ([`crate::events`]); the revocation's op
//! 4 is queued by identity with the revocation.

use anyhow::Context as _;
use p2_model::{FederationId, SessionId};
use p2_proto::common::v1::CallerAssertion;
use p2_proto::identity::v1 as identity;
use tonic::Code;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;
use crate::events;
use crate::storage::SessionRow;
use crate::token::{SessionToken, TokenHash};

/// The longest an actor ID-Cert may be valid (spec 6.1), and so a token.
pub const MAX_CERT_VALIDITY_SECS: u64 = 60 * 86_400;

/// What a successful login or new ID-Cert hands the client.
#[derive(Debug)]
pub struct LoginOutcome {
    /// The session's new ID-Cert, PEM.
    pub id_cert_pem: String,
    /// The session's bearer token.
    pub token: SessionToken,
    /// The session ID (the CSR's `uniqueIdentifier`).
    pub session_id: SessionId,
}

/// A resolved bearer token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The session.
    pub session: SessionRow,
    /// The caller assertion minted for it.
    pub assertion: Vec<u8>,
    /// UNIX milliseconds after which the assertion is refused.
    pub expires_ms: u64,
}

impl SessionGrpc {
    /// The session a bearer token belongs to, with a fresh caller assertion for it.
    /// [`SessionError::UnknownToken`] for malformed tokens, tokens never issued, and tokens of
    /// deleted or renewed sessions. Reads storage every time (no cache that could outlive a
    /// deletion): one primary-key lookup, then one HMAC for the assertion.
    pub async fn authenticate_token(&self, token: &str) -> Result<Authenticated, SessionError> {
        let hash = TokenHash::of_token(token).ok_or(SessionError::UnknownToken)?;
        let session = self
            .sessions()
            .find_by_token(&hash)
            .await?
            .ok_or(SessionError::UnknownToken)?;
        // A token lives no longer than its session's ID-Cert; renewing the cert extends it.
        let now = p2_runtime::unix_now();
        if session.expires_at <= now {
            return Err(SessionError::UnknownToken);
        }
        // A foreign session's cert is trusted only inside its cache window (spec 6.4.1):
        // past it, its home server is asked again, and a revocation ends the session here.
        if let Ok(fid) = FederationId::parse(&session.fid)
            && self.is_foreign(&fid)
        {
            self.check_foreign_session(&fid, &session.session_id, now)
                .await?;
        }
        let expires_ms =
            p2_runtime::internal::unix_now_ms().saturating_add(self.assertion_ttl_ms());
        let assertion = self
            .assertion_key()
            .mint(&session.fid, &session.session_id, expires_ms);
        Ok(Authenticated {
            session,
            assertion,
            expires_ms,
        })
    }

    /// An assertion for (fid, session_id) on this service's own authority: for the calls it
    /// makes to identity about a session it is creating or undoing (login compensation).
    fn assert_self(&self, fid: &FederationId, session_id: &SessionId) -> CallerAssertion {
        let expires_ms =
            p2_runtime::internal::unix_now_ms().saturating_add(self.assertion_ttl_ms());
        CallerAssertion {
            token: self
                .assertion_key()
                .mint(fid.as_str(), session_id.as_str(), expires_ms),
        }
    }

    /// Issues a new token for the session (fid, session_id) valid for the longest an actor
    /// cert may live (60 days, spec 6.1); see [`Self::issue_token_until`].
    pub async fn issue_token(
        &self,
        fid: &FederationId,
        session_id: &SessionId,
    ) -> Result<SessionToken, SessionError> {
        let until = p2_runtime::unix_now().saturating_add(MAX_CERT_VALIDITY_SECS);
        self.issue_token_until(fid, session_id, until).await
    }

    /// Issues a new token for the session (fid, session_id) that expires at UNIX time
    /// `expires_at` (the `notAfter` of the session's ID-Cert), replacing the session's previous
    /// token if it had one (renewal: the old token dies at once). Queues `OpenSession`.
    pub async fn issue_token_until(
        &self,
        fid: &FederationId,
        session_id: &SessionId,
        expires_at: u64,
    ) -> Result<SessionToken, SessionError> {
        self.store_token(fid, session_id, expires_at, Vec::new())
            .await
    }

    /// [`Self::issue_token_until`], queueing `events` with the session in one transaction.
    async fn store_token(
        &self,
        fid: &FederationId,
        session_id: &SessionId,
        expires_at: u64,
        events: Vec<p2_outbox::Message>,
    ) -> Result<SessionToken, SessionError> {
        let token = SessionToken::generate();
        self.sessions()
            .put_with_events(
                fid.as_str(),
                session_id.as_str(),
                token.hash(),
                p2_runtime::unix_now(),
                expires_at,
                events,
            )
            .await?;
        tracing::info!(fid = %fid, session_id = %session_id, expires_at, "issued a session token");
        Ok(token)
    }

    /// Password + ID-CSR login (polyproto-auth): identity checks the password and issues the
    /// session's ID-Cert in one call, then the session gets a fresh token. If the token cannot
    /// be stored, the cert is revoked again: no cert without a token.
    pub async fn password_login(
        &self,
        local_name: &str,
        password: &str,
        csr: Vec<u8>,
    ) -> Result<LoginOutcome, SessionError> {
        let issued = self
            .identity()
            .issue_login_cert(identity::IssueLoginCertRequest {
                actor: local_name.to_owned(),
                password: password.to_owned(),
                csr,
            })
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated => SessionError::WrongPassword(status.message().to_owned()),
                Code::InvalidArgument => SessionError::InvalidArgument(status.message().to_owned()),
                Code::AlreadyExists => SessionError::SessionIdInUse(status.message().to_owned()),
                // A disabled actor, a full session quota, a busy password queue: identity's
                // answer (and its retry hint) is passed on as it is.
                Code::PermissionDenied | Code::FailedPrecondition | Code::ResourceExhausted => {
                    SessionError::Refused(status)
                }
                Code::Unavailable if p2_runtime::error::retry_after_of(&status).is_some() => {
                    SessionError::Refused(status)
                }
                _ => SessionError::from_identity(status, "issuing a login's ID-Cert"),
            })?
            .into_inner();
        self.finish_issuance(issued, "logged in").await
    }

    /// A new ID-Cert for `caller`'s actor (POST /idcert): identity checks the sensitive-action
    /// solution and signs the CSR for the asserted actor (renewing the caller's own session
    /// when the CSR carries its session ID); then that session gets a fresh token.
    pub async fn request_id_cert(
        &self,
        caller: &Caller,
        csr: Vec<u8>,
        sensitive_solution: String,
    ) -> Result<LoginOutcome, SessionError> {
        if self.is_foreign(&caller.fid) {
            return Err(SessionError::NotForThisSession(format!(
                "{} is an actor of another home server: new ID-Certs come from its home server",
                caller.fid
            )));
        }
        self.require_live(caller).await?;
        let issued = self
            .identity()
            .sign_csr(identity::SignCsrRequest {
                caller: Some(caller.assertion()),
                csr,
                sensitive_solution,
            })
            .await
            .map_err(|status| match status.code() {
                Code::InvalidArgument
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::Unauthenticated => SessionError::Refused(status),
                Code::Unavailable if p2_runtime::error::retry_after_of(&status).is_some() => {
                    SessionError::Refused(status)
                }
                _ => SessionError::from_identity(status, "signing an ID-CSR"),
            })?
            .into_inner();
        self.finish_issuance(issued, "issued a new ID-Cert").await
    }

    /// An assertion outlives its session's deletion by up to its TTL: operations that change
    /// sessions or certs first check that the caller's session still exists.
    pub(crate) async fn require_live(&self, caller: &Caller) -> Result<(), SessionError> {
        match self
            .sessions()
            .get(caller.fid.as_str(), caller.session_id.as_str())
            .await?
        {
            Some(row) if row.expires_at > p2_runtime::unix_now() => Ok(()),
            _ => Err(SessionError::UnknownToken),
        }
    }

    /// Gives the session of a just-issued cert its token; revokes the cert if that fails.
    async fn finish_issuance(
        &self,
        issued: identity::IssuedCert,
        what: &'static str,
    ) -> Result<LoginOutcome, SessionError> {
        let fid = FederationId::parse(&issued.fid).context("identity returned an invalid FID")?;
        let session_id = SessionId::parse(&issued.session_id)
            .context("identity returned an invalid session ID")?;
        let Some(cert) = issued.cert else {
            self.compensate_issuance(&fid, &session_id).await;
            return Err(SessionError::Internal(anyhow::anyhow!(
                "identity's answer carries no certificate"
            )));
        };
        // The token expires with the cert. A cert identity cannot have made is a broken
        // contract: undo it rather than hand out a token without a known end.
        let not_after = match p2_model::IdCert::from_pem(&cert.id_cert_pem) {
            Ok(parsed) => parsed.not_after(),
            Err(error) => {
                self.compensate_issuance(&fid, &session_id).await;
                return Err(SessionError::Internal(
                    anyhow::Error::new(error).context("identity issued an unparsable ID-Cert"),
                ));
            }
        };
        // A stale row of the same session (its cert expired, was revoked or renewed) is
        // replaced, so its old token dies in the same statement. A session that did not exist
        // (no cert of it was replaced: a login, or POST /idcert for another session ID) is
        // announced to the actor's other sessions (op 3) in the same transaction. A renewal is
        // no new session; identity announced the revocation of its old cert (op 4).
        let events = match &issued.replaced {
            None => vec![events::new_session(&fid, &session_id, &cert.id_cert_pem)],
            Some(_) => Vec::new(),
        };
        match self.store_token(&fid, &session_id, not_after, events).await {
            Ok(token) => {
                tracing::info!(fid = %fid, session_id = %session_id, serial = %issued.serial, renewal = issued.replaced.is_some(), "{what}");
                Ok(LoginOutcome {
                    id_cert_pem: cert.id_cert_pem,
                    token,
                    session_id,
                })
            }
            Err(error) => {
                self.compensate_issuance(&fid, &session_id).await;
                Err(error)
            }
        }
    }

    /// Undoes a cert issued for a session that got no token: the cert is revoked, and a row
    /// left from before (a renewal's old token, whose cert the renewal revoked) is deleted, so
    /// the failure leaves no usable half. A failure here is logged (the cert then expires).
    async fn compensate_issuance(&self, fid: &FederationId, session_id: &SessionId) {
        let revoked = self
            .identity()
            .revoke_actor_id_cert(identity::RevokeActorIdCertRequest {
                caller: Some(self.assert_self(fid, session_id)),
                session_id: session_id.to_string(),
            })
            .await;
        if let Err(error) = self
            .sessions()
            .delete(fid.as_str(), session_id.as_str())
            .await
        {
            tracing::error!(fid = %fid, session_id = %session_id, error = format!("{error:#}"), "could not delete the session of an undone ID-Cert");
        }
        match revoked {
            Ok(_) => {
                tracing::warn!(fid = %fid, session_id = %session_id, "an ID-Cert was issued but its token could not be stored; the cert was revoked");
            }
            Err(status) => {
                tracing::error!(fid = %fid, session_id = %session_id, code = ?status.code(), message = status.message(), "an ID-Cert was issued but its token could not be stored, and revoking the cert failed too");
            }
        }
    }

    /// Deletes the session `target` of `caller`'s actor (the caller's own when `None`).
    /// Another session than the caller's own needs the sensitive-action solution, which
    /// identity checks.
    ///
    /// The cert is revoked first, then the token deleted: if identity is unreachable nothing
    /// has changed, and if the token deletion fails after the revocation, the caller still
    /// holds a working token and a retry finishes the job (revoking again finds nothing, which
    /// is fine while the token exists). A session is known when it has a token or a valid
    /// ID-Cert; when it has neither, [`SessionError::SessionNotFound`].
    pub async fn end_session(
        &self,
        caller: &Caller,
        target: Option<SessionId>,
        sensitive_solution: Option<String>,
    ) -> Result<(), SessionError> {
        self.require_live(caller).await?;
        let target = target.unwrap_or_else(|| caller.session_id.clone());
        if self.is_foreign(&caller.fid) {
            // A foreign session may end itself here (its cert is its home server's business);
            // the actor's other sessions here it cannot prove to own without a home server.
            if target != caller.session_id {
                return Err(SessionError::NotForThisSession(format!(
                    "{} is an actor of another home server: a foreign session can delete only \
                     itself here",
                    caller.fid
                )));
            }
            self.sessions()
                .delete(caller.fid.as_str(), target.as_str())
                .await?;
            tracing::info!(fid = %caller.fid, session_id = %target, "deleted a foreign session");
            return Ok(());
        }
        if target != caller.session_id {
            let solution = sensitive_solution
                .filter(|s| !s.is_empty())
                .ok_or(SessionError::SensitiveActionRequired)?;
            self.identity()
                .verify_sensitive_solution(identity::VerifySensitiveSolutionRequest {
                    caller: Some(caller.assertion()),
                    solution,
                })
                .await
                .map_err(|status| match status.code() {
                    Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted => {
                        SessionError::Refused(status)
                    }
                    Code::Unavailable if p2_runtime::error::retry_after_of(&status).is_some() => {
                        SessionError::Refused(status)
                    }
                    _ => SessionError::from_identity(status, "checking a sensitive solution"),
                })?;
        }
        let revoked = match self
            .identity()
            .revoke_actor_id_cert(identity::RevokeActorIdCertRequest {
                caller: Some(caller.assertion()),
                session_id: target.to_string(),
            })
            .await
        {
            Ok(response) => Some(response.into_inner()),
            // No valid cert (it expired, or an earlier attempt revoked it).
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                return Err(SessionError::from_identity(
                    status,
                    "revoking the ID-Cert of a session being deleted",
                ));
            }
        };
        let had_token = self
            .sessions()
            .delete(caller.fid.as_str(), target.as_str())
            .await?;
        match revoked {
            // Identity queued op 4 with the revocation, the deletion queued CloseSession.
            Some(response) => {
                tracing::info!(fid = %caller.fid, session_id = %target, serial = %response.serial, "deleted a session and revoked its ID-Cert");
                Ok(())
            }
            None if had_token => {
                tracing::info!(fid = %caller.fid, session_id = %target, "deleted a session without a valid ID-Cert");
                Ok(())
            }
            None => Err(SessionError::SessionNotFound {
                fid: caller.fid.to_string(),
                session_id: target.to_string(),
            }),
        }
    }
}
