//! `polyproto.identity.v1.Identity`: converts wire messages into calls of the operations in
//! [`crate::actors`] (and the keyring) and back. The actor of every RPC that acts for one is
//! the actor of its verified caller assertion ([`IdentityGrpc::asserted`]).

use p2_model::{FederationId, SessionId};
use p2_proto::common::v1::{CacheableIdCert, CallerAssertion};
use p2_proto::identity::v1 as pb;
use tonic::{Request, Response, Status};

use crate::actors::{CertQuery, IssuedCert, Registrant};
use crate::keyring::Generation;
use crate::store::CertRow;
use crate::{IdentityError, IdentityState};

/// The gRPC handler set of the identity service.
#[derive(Clone)]
pub struct IdentityGrpc {
    state: IdentityState,
}

/// Metadata key of the client address the gateway saw (relayed by session for logins).
pub const CLIENT_ADDRESS_KEY: &str = "x-p2-client-address";

/// The client address a call carries, when it is a plausible IP address.
fn client_address<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get(CLIENT_ADDRESS_KEY)?.to_str().ok()?;
    value
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl IdentityGrpc {
    /// Handlers over `state`.
    pub fn new(state: IdentityState) -> Self {
        Self { state }
    }

    /// The actor and session a caller assertion proves.
    fn asserted(
        &self,
        assertion: Option<&CallerAssertion>,
    ) -> Result<(FederationId, SessionId), IdentityError> {
        let token = assertion.map(|a| a.token.as_slice()).unwrap_or_default();
        let verified = self
            .state
            .assertion_key()
            .verify(token, p2_runtime::internal::unix_now_ms())?;
        let fid = FederationId::parse(&verified.fid)?;
        // Foreign sessions (key trials, spec 4.1.1) hold assertions too; nothing identity does
        // for an asserted caller (certs, revocation, sensitive actions, key rotation) is
        // for them.
        if fid.domain() != self.state.domain() {
            return Err(IdentityError::ForeignActor(fid.to_string()));
        }
        let session_id = SessionId::parse(&verified.session_id)?;
        Ok((fid, session_id))
    }

    fn root_cacheable(&self, generation: &Generation, now: u64) -> CacheableIdCert {
        let cert = &generation.cert;
        let serial = cert.serial();
        let attestation = self.state.keyring().attest(
            generation,
            &serial,
            cert.not_before(),
            cert.not_after(),
            None,
            now,
        );
        CacheableIdCert {
            id_cert_pem: generation.cert_pem.clone(),
            cache_not_valid_before: attestation.not_valid_before,
            cache_not_valid_after: attestation.not_valid_after,
            cache_signature: attestation.signature,
            invalidated_at: None,
        }
    }

    /// The cacheable form of a stored cert, attested by the generation that issued it. The
    /// attestation is memoised per cache window (and per revocation time), so this signs at
    /// most once per cert and window.
    fn cert_cacheable(&self, row: &CertRow, now: u64) -> Result<CacheableIdCert, IdentityError> {
        let generation = self.state.keyring().by_number(row.generation)?;
        let invalidated_at = row.invalidated_at.map(to_u64);
        let attestation = self.state.keyring().attest(
            &generation,
            &row.serial,
            to_u64(row.not_before),
            to_u64(row.not_after),
            invalidated_at,
            now,
        );
        Ok(CacheableIdCert {
            id_cert_pem: row.cert_pem.clone(),
            cache_not_valid_before: attestation.not_valid_before,
            cache_not_valid_after: attestation.not_valid_after,
            cache_signature: attestation.signature,
            invalidated_at,
        })
    }

    fn revoked(
        &self,
        row: &CertRow,
        now: u64,
    ) -> Result<pb::RevokeActorIdCertResponse, IdentityError> {
        Ok(pb::RevokeActorIdCertResponse {
            serial: row.serial.clone(),
            invalidated_at: row.invalidated_at.map_or(now, to_u64),
            cert: Some(self.cert_cacheable(row, now)?),
        })
    }

    fn issued(&self, issued: &IssuedCert) -> Result<pb::IssuedCert, IdentityError> {
        let now = p2_runtime::unix_now();
        Ok(pb::IssuedCert {
            cert: Some(self.cert_cacheable(&issued.cert, now)?),
            session_id: issued.cert.session_id.clone(),
            serial: issued.cert.serial.clone(),
            fid: issued.fid.to_string(),
            replaced: issued
                .replaced
                .as_ref()
                .map(|row| self.revoked(row, now))
                .transpose()?,
        })
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityGrpc {
    #[tracing::instrument(skip_all, fields(timestamp = request.get_ref().timestamp))]
    async fn get_server_id_cert(
        &self,
        request: Request<pb::GetServerIdCertRequest>,
    ) -> Result<Response<pb::GetServerIdCertResponse>, Status> {
        let generation = self
            .state
            .keyring()
            .at_or_current(request.into_inner().timestamp)?;
        let cert = self.root_cacheable(&generation, p2_runtime::unix_now());
        Ok(Response::new(pb::GetServerIdCertResponse {
            cert: Some(cert),
        }))
    }

    #[tracing::instrument(skip_all, fields(timestamp = request.get_ref().timestamp))]
    async fn get_server_public_key(
        &self,
        request: Request<pb::GetServerPublicKeyRequest>,
    ) -> Result<Response<pb::GetServerPublicKeyResponse>, Status> {
        let generation = self
            .state
            .keyring()
            .at_or_current(request.into_inner().timestamp)?;
        Ok(Response::new(pb::GetServerPublicKeyResponse {
            public_key_pem: generation.public_key_pem.clone(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_server_key(
        &self,
        request: Request<pb::RotateServerKeyRequest>,
    ) -> Result<Response<pb::RotateServerKeyResponse>, Status> {
        let client = client_address(&request);
        let pb::RotateServerKeyRequest {
            caller,
            sensitive_solution,
        } = request.into_inner();
        let (fid, _) = self.asserted(caller.as_ref())?;
        let (generation, now) = self
            .state
            .rotate_for(&fid, &sensitive_solution, client.as_deref())
            .await?;
        Ok(Response::new(pb::RotateServerKeyResponse {
            cert: Some(self.root_cacheable(&generation, now)),
            previous_invalid_since: now,
        }))
    }

    #[tracing::instrument(skip_all, fields(local_name = %request.get_ref().local_name))]
    async fn register_actor(
        &self,
        request: Request<pb::RegisterActorRequest>,
    ) -> Result<Response<pb::RegisterActorResponse>, Status> {
        let pb::RegisterActorRequest {
            local_name,
            password,
        } = request.into_inner();
        let fid = self
            .state
            .register(&local_name, password, Registrant::Public)
            .await?;
        Ok(Response::new(pb::RegisterActorResponse {
            fid: fid.to_string(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_sensitive_solution(
        &self,
        request: Request<pb::VerifySensitiveSolutionRequest>,
    ) -> Result<Response<pb::VerifySensitiveSolutionResponse>, Status> {
        let client = client_address(&request);
        let pb::VerifySensitiveSolutionRequest { caller, solution } = request.into_inner();
        let (fid, _) = self.asserted(caller.as_ref())?;
        self.state
            .check_sensitive_solution(&fid, &solution, client.as_deref())
            .await?;
        Ok(Response::new(pb::VerifySensitiveSolutionResponse {}))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn get_actor(
        &self,
        request: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::GetActorResponse>, Status> {
        let fid = FederationId::parse(&request.into_inner().fid).map_err(IdentityError::from)?;
        let actor = self.state.actor(&fid).await?;
        Ok(Response::new(pb::GetActorResponse {
            fid: fid.to_string(),
            redirect_to: actor.redirect_to,
        }))
    }

    #[tracing::instrument(skip_all, fields(actor = %request.get_ref().actor))]
    async fn issue_login_cert(
        &self,
        request: Request<pb::IssueLoginCertRequest>,
    ) -> Result<Response<pb::IssuedCert>, Status> {
        let client = client_address(&request);
        let pb::IssueLoginCertRequest {
            actor,
            password,
            csr,
        } = request.into_inner();
        let issued = self
            .state
            .issue_login_cert(&actor, password, &csr, client.as_deref())
            .await?;
        Ok(Response::new(self.issued(&issued)?))
    }

    #[tracing::instrument(skip_all)]
    async fn sign_csr(
        &self,
        request: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::IssuedCert>, Status> {
        let client = client_address(&request);
        let pb::SignCsrRequest {
            caller,
            csr,
            sensitive_solution,
        } = request.into_inner();
        let (fid, session_id) = self.asserted(caller.as_ref())?;
        let issued = self
            .state
            .sign_for(
                &fid,
                &session_id,
                &csr,
                &sensitive_solution,
                client.as_deref(),
            )
            .await?;
        Ok(Response::new(self.issued(&issued)?))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn get_actor_id_certs(
        &self,
        request: Request<pb::GetActorIdCertsRequest>,
    ) -> Result<Response<pb::GetActorIdCertsResponse>, Status> {
        let request = request.into_inner();
        let fid = FederationId::parse(&request.fid).map_err(IdentityError::from)?;
        let session_id = request
            .session_id
            .map(|s| SessionId::parse(&s))
            .transpose()
            .map_err(IdentityError::from)?;
        let rows = self
            .state
            .certs_of(
                &fid,
                CertQuery {
                    valid_at: request.timestamp,
                    session_id,
                    issued_from: request.not_before,
                    issued_until: request.not_after,
                },
            )
            .await?;
        let now = p2_runtime::unix_now();
        let certs = rows
            .iter()
            .map(|row| self.cert_cacheable(row, now))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::GetActorIdCertsResponse { certs }))
    }

    #[tracing::instrument(skip_all, fields(session_id = %request.get_ref().session_id))]
    async fn revoke_actor_id_cert(
        &self,
        request: Request<pb::RevokeActorIdCertRequest>,
    ) -> Result<Response<pb::RevokeActorIdCertResponse>, Status> {
        let pb::RevokeActorIdCertRequest { caller, session_id } = request.into_inner();
        let (fid, _) = self.asserted(caller.as_ref())?;
        let session_id = SessionId::parse(&session_id).map_err(IdentityError::from)?;
        let revoked = self.state.revoke(&fid, &session_id).await?;
        Ok(Response::new(
            self.revoked(&revoked, p2_runtime::unix_now())?,
        ))
    }
}
