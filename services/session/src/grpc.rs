//! `polyproto.session.v1.Session`: destructures each request, verifies its caller assertion
//! and parses its fields into domain types (INVALID_ARGUMENT on failure), calls the handler
//! methods of [`SessionGrpc`] and maps [`SessionError`] to a status in its one place.
//!
//! Login, RequestIdCert and DeleteSession run in a spawned task ([`to_completion`]): tonic
//! drops a handler's future when its caller goes away, and these must not stop between their
//! steps.

use std::future::Future;

use p2_model::SessionId;
use p2_proto::session::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available on this server yet"))
}

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

    async fn create_key_trial(
        &self,
        _request: Request<pb::CreateKeyTrialRequest>,
    ) -> Result<Response<pb::CreateKeyTrialResponse>, Status> {
        Err(not_yet("key trials"))
    }

    async fn complete_key_trial(
        &self,
        _request: Request<pb::CompleteKeyTrialRequest>,
    ) -> Result<Response<pb::CompleteKeyTrialResponse>, Status> {
        Err(not_yet("key trials"))
    }

    async fn list_key_trials(
        &self,
        _request: Request<pb::ListKeyTrialsRequest>,
    ) -> Result<Response<pb::ListKeyTrialsResponse>, Status> {
        Err(not_yet("key trials"))
    }

    async fn update_foreign_id_cert(
        &self,
        request: Request<pb::UpdateForeignIdCertRequest>,
    ) -> Result<Response<pb::UpdateForeignIdCertResponse>, Status> {
        // Born behind the boundary: an unproven caller learns nothing, not even "not yet".
        self.caller(request.into_inner().caller)?;
        Err(not_yet("foreign ID-Cert updates"))
    }
}
