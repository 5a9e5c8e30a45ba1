//! Sessions and their tokens: authenticating a bearer token, password + ID-CSR login, issuing a
//! token for a session whose ID-Cert identity just issued, and deleting a session.

use anyhow::Context as _;
use p2_model::{FederationId, SessionId};
use p2_proto::identity::v1 as identity;
use tonic::Code;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;
use crate::events;
use crate::storage::SessionRow;
use crate::token::{SessionToken, TokenHash};

/// What a successful login hands the client.
#[derive(Debug)]
pub struct LoginOutcome {
    /// The session's new ID-Cert, PEM.
    pub id_cert_pem: String,
    /// The session's bearer token.
    pub token: SessionToken,
    /// The session ID (the CSR's `uniqueIdentifier`).
    pub session_id: SessionId,
}

impl SessionGrpc {
    /// The session a bearer token belongs to. [`SessionError::UnknownToken`] for malformed
    /// tokens, tokens never issued, and tokens of deleted or renewed sessions. Reads storage
    /// every time (no cache that could outlive a deletion): one primary-key lookup, and no
    /// allocation beyond the row itself (rows are written only by this service, from
    /// validated FIDs and session IDs, so they are not parsed again on this hot path).
    pub async fn authenticate_token(&self, token: &str) -> Result<SessionRow, SessionError> {
        let hash = TokenHash::of_token(token).ok_or(SessionError::UnknownToken)?;
        self.sessions()
            .find_by_token(&hash)
            .await?
            .ok_or(SessionError::UnknownToken)
    }

    /// Issues a new token for the session (fid, session_id), replacing the session's previous
    /// token if it had one (renewal: the old token dies at once).
    pub async fn issue_token(
        &self,
        fid: &FederationId,
        session_id: &SessionId,
        admin: bool,
    ) -> Result<SessionToken, SessionError> {
        let token = SessionToken::generate();
        self.sessions()
            .put(
                fid.as_str(),
                session_id.as_str(),
                admin,
                token.hash(),
                p2_runtime::unix_now(),
            )
            .await?;
        tracing::info!(fid = %fid, session_id = %session_id, admin, "issued a session token");
        Ok(token)
    }

    /// Password + ID-CSR login (polyproto-auth): identity checks the password and issues the
    /// session's ID-Cert, then the session gets a fresh token. Nothing usable is left behind
    /// when a step fails: if the token cannot be stored after the cert was issued, the cert is
    /// revoked again.
    pub async fn password_login(
        &self,
        local_name: &str,
        password: &str,
        csr: Vec<u8>,
    ) -> Result<LoginOutcome, SessionError> {
        let mut identity = self.identity();
        let actor = identity
            .verify_password(identity::VerifyPasswordRequest {
                actor: local_name.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated => SessionError::WrongPassword(status.message().to_owned()),
                Code::InvalidArgument => SessionError::InvalidArgument(status.message().to_owned()),
                _ => SessionError::from_identity(status, "checking a login password"),
            })?
            .into_inner();
        let fid = FederationId::parse(&actor.fid).context("identity returned an invalid FID")?;

        let signed = identity
            .sign_csr(identity::SignCsrRequest {
                fid: fid.to_string(),
                csr,
                renew: false,
            })
            .await
            .map_err(|status| match status.code() {
                Code::InvalidArgument => SessionError::InvalidArgument(status.message().to_owned()),
                Code::AlreadyExists => SessionError::SessionIdInUse(status.message().to_owned()),
                _ => SessionError::from_identity(status, "signing a login's ID-CSR"),
            })?
            .into_inner();
        let session_id = SessionId::parse(&signed.session_id)
            .context("identity returned an invalid session ID")?;
        let Some(cert) = signed.cert else {
            self.compensate_login(&fid, &session_id).await;
            return Err(SessionError::Internal(anyhow::anyhow!(
                "identity's SignCsr answer carries no certificate"
            )));
        };

        // A stale row of the same session (its cert expired or was revoked) is replaced.
        match self.issue_token(&fid, &session_id, actor.admin).await {
            Ok(token) => {
                tracing::info!(fid = %fid, session_id = %session_id, serial = %signed.serial, "logged in");
                events::publish_new_session(&fid, &session_id, &cert.id_cert_pem).await;
                Ok(LoginOutcome {
                    id_cert_pem: cert.id_cert_pem,
                    token,
                    session_id,
                })
            }
            Err(error) => {
                self.compensate_login(&fid, &session_id).await;
                Err(error)
            }
        }
    }

    /// Revokes the ID-Cert a failed login just had issued, so the failure leaves no usable
    /// half: no token and no valid cert. A failure here is logged (the cert then simply
    /// expires); the login's own error is what the client sees.
    async fn compensate_login(&self, fid: &FederationId, session_id: &SessionId) {
        let revoked = self
            .identity()
            .revoke_actor_id_cert(identity::RevokeActorIdCertRequest {
                fid: fid.to_string(),
                session_id: session_id.to_string(),
            })
            .await;
        match revoked {
            Ok(_) => {
                tracing::warn!(fid = %fid, session_id = %session_id, "login failed after its ID-Cert was issued; the cert was revoked");
            }
            Err(status) => {
                tracing::error!(fid = %fid, session_id = %session_id, code = ?status.code(), message = status.message(), "login failed after its ID-Cert was issued, and revoking the cert failed too");
            }
        }
    }

    /// Deletes the session `target` of `caller`'s actor (the caller's own when `None`): its
    /// token dies at once, then its ID-Cert is revoked through identity. Another session than
    /// the caller's own needs `sensitive_verified` (spec 4.2).
    ///
    /// A session is known when it has a token or a valid ID-Cert; when it has neither,
    /// [`SessionError::SessionNotFound`]. If identity is unreachable after the token was
    /// deleted, the error says so and a retry (with the same target) finishes the revocation.
    pub async fn end_session(
        &self,
        caller: &Caller,
        target: Option<SessionId>,
        sensitive_verified: bool,
    ) -> Result<(), SessionError> {
        let target = target.unwrap_or_else(|| caller.session_id.clone());
        if target != caller.session_id && !sensitive_verified {
            return Err(SessionError::SensitiveActionRequired);
        }
        // Token first: from here on the session cannot act, whatever happens next.
        let had_token = self
            .sessions()
            .delete(caller.fid.as_str(), target.as_str())
            .await?;
        let revoked = self
            .identity()
            .revoke_actor_id_cert(identity::RevokeActorIdCertRequest {
                fid: caller.fid.to_string(),
                session_id: target.to_string(),
            })
            .await;
        match revoked {
            Ok(response) => {
                let response = response.into_inner();
                tracing::info!(fid = %caller.fid, session_id = %target, serial = %response.serial, "deleted a session and revoked its ID-Cert");
                events::publish_certificate_invalidated(&caller.fid, &target, &response).await;
                Ok(())
            }
            // No valid cert (it expired, or an earlier attempt revoked it).
            Err(status) if status.code() == Code::NotFound => {
                if had_token {
                    tracing::info!(fid = %caller.fid, session_id = %target, "deleted a session without a valid ID-Cert");
                    Ok(())
                } else {
                    Err(SessionError::SessionNotFound {
                        fid: caller.fid.to_string(),
                        session_id: target.to_string(),
                    })
                }
            }
            Err(status) => Err(SessionError::from_identity(
                status,
                "revoking the ID-Cert of a deleted session",
            )),
        }
    }
}
