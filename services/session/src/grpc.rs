//! `polyproto.session.v1.Session`: destructures each request, parses its fields into domain
//! types (INVALID_ARGUMENT on failure), calls the handler methods of [`SessionGrpc`] and maps
//! [`SessionError`] to a status in its one place.

use p2_model::{FederationId, SessionId};
use p2_proto::session::v1 as pb;
use tonic::{Request, Response, Status};

use crate::SessionGrpc;
use crate::caller::Caller;
use crate::error::SessionError;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available on this server yet"))
}

fn parse_fid(field: &str, value: &str) -> Result<FederationId, SessionError> {
    FederationId::parse(value).map_err(|e| SessionError::InvalidArgument(format!("{field}: {e}")))
}

fn parse_session_id(field: &str, value: &str) -> Result<SessionId, SessionError> {
    SessionId::parse(value).map_err(|e| SessionError::InvalidArgument(format!("{field}: {e}")))
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
        let session = self.authenticate_token(&token).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            caller: Some(p2_proto::common::v1::Caller {
                fid: session.fid,
                session_id: session.session_id,
                admin: session.admin,
            }),
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
        let outcome = self.password_login(&local_name, &password, csr).await?;
        Ok(Response::new(pb::LoginResponse {
            id_cert_pem: outcome.id_cert_pem,
            token: outcome.token.into_string(),
            session_id: outcome.session_id.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid, session_id = %request.get_ref().session_id))]
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let pb::CreateSessionRequest {
            fid,
            session_id,
            admin,
        } = request.into_inner();
        let fid = parse_fid("fid", &fid)?;
        let session_id = parse_session_id("session_id", &session_id)?;
        let token = self.issue_token(&fid, &session_id, admin).await?;
        Ok(Response::new(pb::CreateSessionResponse {
            token: token.into_string(),
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
            sensitive_verified,
        } = request.into_inner();
        let caller = Caller::from_proto(caller)?;
        let target = session_id
            .as_deref()
            .map(|id| parse_session_id("session_id", id))
            .transpose()?;
        self.end_session(&caller, target, sensitive_verified)
            .await?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn create_challenge(
        &self,
        request: Request<pb::CreateChallengeRequest>,
    ) -> Result<Response<pb::CreateChallengeResponse>, Status> {
        let pb::CreateChallengeRequest { caller } = request.into_inner();
        let caller = Caller::from_proto(caller)?;
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
        let caller = Caller::from_proto(caller)?;
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
        _request: Request<pb::UpdateForeignIdCertRequest>,
    ) -> Result<Response<pb::UpdateForeignIdCertResponse>, Status> {
        Err(not_yet("foreign ID-Cert updates"))
    }
}
