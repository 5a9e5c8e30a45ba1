//! `polyproto.session.v1.Session`: destructures each request, verifies its caller assertion
//! and parses its fields into domain types (INVALID_ARGUMENT on failure), calls the handler
//! methods of [`SessionGrpc`] and maps [`SessionError`] to a status in its one place.
//!
//! Login, RequestIdCert and DeleteSession run in a spawned task ([`to_completion`]): tonic
//! drops a handler's future when its caller goes away, and these must not stop between their
//! steps.

use std::future::Future;

use p2_model::{FederationId, SessionId};
use p2_proto::session::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;

fn parse_session_id(field: &str, value: &str) -> Result<SessionId, SessionError> {
    SessionId::parse(value).map_err(|e| SessionError::InvalidArgument(format!("{field}: {e}")))
}

/// Runs `operation` in a task of its own and waits for it: if this future is dropped (the
/// caller disconnected), the operation still runs to its end.
pub async fn to_completion<T: Send + 'static>(
    operation: impl Future<Output = Result<T, SessionError>> + Send + 'static,
) -> Result<T, SessionError> {
    // The task keeps the request's client address, so identity's throttle sees it.
    let client = p2_runtime::internal::client_address();
    tokio::spawn(p2_runtime::internal::with_client_address(client, operation).in_current_span())
        .await
        .map_err(|e| {
            SessionError::Internal(anyhow::Error::new(e).context("operation task failed"))
        })?
}

impl SessionGrpc {
    fn caller(
        &self,
        assertion: Option<p2_proto::common::v1::CallerAssertion>,
    ) -> Result<Caller, SessionError> {
        Caller::verify(assertion, self.assertion_key())
    }
}

#[tonic::async_trait]
impl pb::session_server::Session for SessionGrpc {
    // The hot path of every Bearer route: no span fields, no logging on success.
    #[tracing::instrument(skip_all)]
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let pb::AuthenticateRequest { token } = request.into_inner();
        let resolved = self.authenticate_token(&token).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            caller: Some(p2_proto::common::v1::Caller {
                fid: resolved.session.fid,
                session_id: resolved.session.session_id,
            }),
            assertion: Some(p2_proto::common::v1::CallerAssertion {
                token: resolved.assertion,
            }),
            assertion_expires_ms: resolved.expires_ms,
        }))
    }

    #[tracing::instrument(skip_all, fields(local_name = %request.get_ref().local_name))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let pb::LoginRequest {
            local_name,
            password,
            csr,
        } = request.into_inner();
        // Checked before the password, so a missing CSR costs no password hash.
        if csr.is_empty() {
            return Err(SessionError::InvalidArgument(
                "csr is required: the PEM ID-CSR of the new session's key".into(),
            )
            .into());
        }
        let handlers = self.clone();
        let outcome =
            to_completion(
                async move { handlers.password_login(&local_name, &password, csr).await },
            )
            .await?;
        Ok(Response::new(pb::LoginResponse {
            id_cert_pem: outcome.id_cert_pem,
            token: outcome.token.into_string(),
            session_id: outcome.session_id.to_string(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn request_id_cert(
        &self,
        request: Request<pb::RequestIdCertRequest>,
    ) -> Result<Response<pb::RequestIdCertResponse>, Status> {
        let pb::RequestIdCertRequest {
            caller,
            csr,
            sensitive_solution,
        } = request.into_inner();
        let caller = self.caller(caller)?;
        if csr.is_empty() {
            return Err(SessionError::InvalidArgument(
                "csr is required: the PEM ID-CSR of the session's key".into(),
            )
            .into());
        }
        let handlers = self.clone();
        let outcome = to_completion(async move {
            handlers
                .request_id_cert(&caller, csr, sensitive_solution)
                .await
        })
        .await?;
        Ok(Response::new(pb::RequestIdCertResponse {
            id_cert_pem: outcome.id_cert_pem,
            token: outcome.token.into_string(),
            session_id: outcome.session_id.to_string(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let pb::DeleteSessionRequest {
            caller,
            session_id,
            sensitive_solution,
        } = request.into_inner();
        let caller = self.caller(caller)?;
        let target = session_id
            .as_deref()
            .map(|id| parse_session_id("session_id", id))
            .transpose()?;
        let handlers = self.clone();
        to_completion(async move {
            handlers
                .end_session(&caller, target, sensitive_solution)
                .await
        })
        .await?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn create_challenge(
        &self,
        request: Request<pb::CreateChallengeRequest>,
    ) -> Result<Response<pb::CreateChallengeResponse>, Status> {
        let pb::CreateChallengeRequest { caller } = request.into_inner();
        let caller = self.caller(caller)?;
        let issued = self.issue_challenge(&caller).await?;
        Ok(Response::new(pb::CreateChallengeResponse {
            challenge: issued.challenge,
            expires: issued.expires,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_challenge_solution(
        &self,
        request: Request<pb::VerifyChallengeSolutionRequest>,
    ) -> Result<Response<pb::VerifyChallengeSolutionResponse>, Status> {
        let pb::VerifyChallengeSolutionRequest {
            caller,
            challenge,
            signature,
        } = request.into_inner();
        let caller = self.caller(caller)?;
        self.check_challenge_solution(&caller, &challenge, &signature)
            .await?;
        Ok(Response::new(pb::VerifyChallengeSolutionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn create_key_trial(
        &self,
        _request: Request<pb::CreateKeyTrialRequest>,
    ) -> Result<Response<pb::CreateKeyTrialResponse>, Status> {
        let issued = self.issue_key_trial().await?;
        Ok(Response::new(pb::CreateKeyTrialResponse {
            trial: issued.trial,
            expires: issued.expires,
        }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn complete_key_trial(
        &self,
        request: Request<pb::CompleteKeyTrialRequest>,
    ) -> Result<Response<pb::CompleteKeyTrialResponse>, Status> {
        let pb::CompleteKeyTrialRequest {
            fid,
            serial_number,
            signature,
            id_cert_pem,
            trial,
        } = request.into_inner();
        let fid = FederationId::parse(&fid)
            .map_err(|e| SessionError::InvalidArgument(format!("fid: {e}")))?;
        let serial = serial_number.trim().parse::<u64>().map_err(|_| {
            SessionError::InvalidArgument(
                "serialNumber must be the decimal serial number of the actor's ID-Cert".into(),
            )
        })?;
        if signature.is_empty() {
            return Err(SessionError::InvalidArgument(
                "signature is required: the hex signature of the key trial".into(),
            )
            .into());
        }
        let answer = crate::federation::KeyTrialAnswer {
            fid,
            serial,
            signature,
            id_cert_pem,
            trial: Some(trial).filter(|t| !t.is_empty()),
        };
        let handlers = self.clone();
        // Fetches, then one transaction: run to the end even if the caller goes away.
        let signed_in =
            to_completion(async move { handlers.sign_in_foreign(answer).await }).await?;
        Ok(Response::new(pb::CompleteKeyTrialResponse {
            token: signed_in.token.into_string(),
            session_id: signed_in.session_id.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn list_key_trials(
        &self,
        request: Request<pb::ListKeyTrialsRequest>,
    ) -> Result<Response<pb::ListKeyTrialsResponse>, Status> {
        let pb::ListKeyTrialsRequest {
            fid,
            limit,
            id,
            not_before,
            not_after,
        } = request.into_inner();
        let fid = FederationId::parse(&fid)
            .map_err(|e| SessionError::InvalidArgument(format!("fid: {e}")))?;
        let trials = self
            .completed_key_trials(&fid, limit, id.as_deref(), not_before, not_after)
            .await?;
        Ok(Response::new(pb::ListKeyTrialsResponse {
            trials: trials
                .into_iter()
                .map(|t| pb::KeyTrialRecord {
                    trial: t.trial,
                    signature: t.signature,
                    serial_number: t.serial,
                    completed_at: t.completed_at,
                    expires: t.expires,
                    fid: t.fid,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_foreign_id_cert(
        &self,
        request: Request<pb::UpdateForeignIdCertRequest>,
    ) -> Result<Response<pb::UpdateForeignIdCertResponse>, Status> {
        let pb::UpdateForeignIdCertRequest {
            caller,
            id_cert_pem,
        } = request.into_inner();
        let caller = self.caller(caller)?;
        self.require_live(&caller).await?;
        let handlers = self.clone();
        to_completion(async move {
            handlers
                .announce_foreign_id_cert(&caller, &id_cert_pem)
                .await
        })
        .await?;
        Ok(Response::new(pb::UpdateForeignIdCertResponse {}))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn get_foreign_actor_id_certs(
        &self,
        request: Request<pb::GetForeignActorIdCertsRequest>,
    ) -> Result<Response<pb::GetForeignActorIdCertsResponse>, Status> {
        let pb::GetForeignActorIdCertsRequest {
            fid,
            timestamp,
            session_id,
            not_before,
            not_after,
        } = request.into_inner();
        let fid = FederationId::parse(&fid)
            .map_err(|e| SessionError::InvalidArgument(format!("fid: {e}")))?;
        let session_id = session_id
            .as_deref()
            .map(|id| parse_session_id("session_id", id))
            .transpose()?;
        let query = crate::federation::ForeignCertQuery {
            timestamp,
            session_id,
            not_before,
            not_after,
        };
        let (certs, fresh_until) = self.cached_foreign_certs(&fid, &query).await?;
        Ok(Response::new(pb::GetForeignActorIdCertsResponse {
            certs_json: certs.iter().map(ToString::to_string).collect(),
            fresh_until,
        }))
    }
}
