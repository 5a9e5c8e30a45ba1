//! `polyproto.identity.v1.Identity`: converts wire messages into domain calls and back.

use p2_proto::common::v1::CacheableIdCert;
use p2_proto::identity::v1 as pb;
use tonic::{Request, Response, Status};

use crate::IdentityState;
use crate::keyring::Generation;

/// The gRPC handler set of the identity service.
#[derive(Clone)]
pub struct IdentityGrpc {
    state: IdentityState,
}

impl IdentityGrpc {
    /// Handlers over `state`.
    pub fn new(state: IdentityState) -> Self {
        Self { state }
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
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available on this server yet"))
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
        Ok(Response::new(pb::GetServerIdCertResponse { cert: Some(cert) }))
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
        let caller = request.into_inner().caller.map(|c| c.fid).unwrap_or_default();
        let now = p2_runtime::unix_now();
        let generation = self
            .state
            .keyring()
            .rotate(now)
            .await
            .map_err(|e| p2_runtime::error::internal(&e))?;
        tracing::info!(caller = %caller, generation = generation.generation, "server key rotated");
        Ok(Response::new(pb::RotateServerKeyResponse {
            cert: Some(self.root_cacheable(&generation, now)),
            previous_invalid_since: now,
        }))
    }

    async fn register_actor(
        &self,
        _request: Request<pb::RegisterActorRequest>,
    ) -> Result<Response<pb::RegisterActorResponse>, Status> {
        Err(not_yet("actor registration"))
    }

    async fn verify_password(
        &self,
        _request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        Err(not_yet("password login"))
    }

    async fn get_actor(
        &self,
        _request: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::GetActorResponse>, Status> {
        Err(not_yet("actor lookup"))
    }

    async fn sign_csr(
        &self,
        _request: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::SignCsrResponse>, Status> {
        Err(not_yet("ID-CSR signing"))
    }

    async fn get_actor_id_certs(
        &self,
        _request: Request<pb::GetActorIdCertsRequest>,
    ) -> Result<Response<pb::GetActorIdCertsResponse>, Status> {
        Err(not_yet("actor ID-Cert lookup"))
    }

    async fn revoke_actor_id_cert(
        &self,
        _request: Request<pb::RevokeActorIdCertRequest>,
    ) -> Result<Response<pb::RevokeActorIdCertResponse>, Status> {
        Err(not_yet("ID-Cert revocation"))
    }
}
