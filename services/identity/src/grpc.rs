//! `polyproto.identity.v1.Identity`: converts wire messages into domain calls and back.

use p2_proto::common::v1::CacheableIdCert;
use p2_proto::identity::v1 as pb;
use tonic::{Request, Response, Status};

use crate::keyring::Generation;
use crate::store::{ActorRow, CertFilter, CertRow, IssueRefusal};
use crate::{IdentityError, IdentityState, Registration, passwords};

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
        let caller = request
            .into_inner()
            .caller
            .map(|c| c.fid)
            .unwrap_or_default();
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

    #[tracing::instrument(skip_all, fields(local_name = %request.get_ref().local_name))]
    async fn register_actor(
        &self,
        request: Request<pb::RegisterActorRequest>,
    ) -> Result<Response<pb::RegisterActorResponse>, Status> {
        let request = request.into_inner();
        let local_name =
            p2_model::validate_local_name(&request.local_name).map_err(IdentityError::from)?;
        if self.state.registration() == Registration::Closed && !request.force {
            return Err(IdentityError::RegistrationClosed.into());
        }
        passwords::check_policy(&request.password, &local_name)
            .map_err(IdentityError::InvalidArgument)?;
        let fid = p2_model::FederationId::new(&local_name, self.state.domain())
            .map_err(IdentityError::from)?;
        let hash = self
            .state
            .hasher()
            .hash(request.password)
            .await
            .map_err(IdentityError::from)?;
        let now = now_i64();
        if !self
            .state
            .store()
            .insert_actor(&local_name, &hash, request.admin, now)
            .await
            .map_err(IdentityError::from)?
        {
            return Err(IdentityError::NameTaken(local_name).into());
        }
        tracing::info!(fid = %fid, admin = request.admin, "registered actor");
        Ok(Response::new(pb::RegisterActorResponse {
            fid: fid.to_string(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_password(
        &self,
        request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let request = request.into_inner();
        // Anything that names no actor of ours takes the unknown-actor path (same timing).
        let local_name = self.local_name_or_fid(&request.actor).ok();
        let actor = match &local_name {
            Some(name) => self
                .state
                .store()
                .actor(name)
                .await
                .map_err(IdentityError::from)?,
            None => None,
        };
        let ok = self
            .state
            .hasher()
            .verify(
                request.password,
                actor.as_ref().map(|a| a.password_hash.clone()),
            )
            .await
            .map_err(IdentityError::from)?;
        match actor {
            Some(actor) if ok => Ok(Response::new(pb::VerifyPasswordResponse {
                fid: self.fid_of(&actor.local_name)?,
                admin: actor.admin,
            })),
            _ => Err(IdentityError::BadCredentials.into()),
        }
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn get_actor(
        &self,
        request: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::GetActorResponse>, Status> {
        let actor = self.actor(&request.into_inner().fid).await?;
        Ok(Response::new(pb::GetActorResponse {
            fid: self.fid_of(&actor.local_name)?,
            admin: actor.admin,
            redirect_to: actor.redirect_to,
        }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid, renew = request.get_ref().renew))]
    async fn sign_csr(
        &self,
        request: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::SignCsrResponse>, Status> {
        let request = request.into_inner();
        let local_name = self.local_name_of(&request.fid)?;
        let csr = p2_model::IdCsr::parse(&request.csr).map_err(IdentityError::from)?;
        csr.check_for(self.state.domain(), Some(&local_name))
            .map_err(IdentityError::from)?;
        let session_id = csr.session_id().to_string();
        let generation = self.state.keyring().current()?;
        let now = p2_runtime::unix_now();
        let not_after = now
            .saturating_add(self.state.actor_cert_validity_secs())
            .min(generation.cert.not_after());
        let issued = self
            .state
            .store()
            .issue_cert(&local_name, &session_id, request.renew, to_i64(now), || {
                let cert = p2_model::issue_actor_cert(
                    &generation.cert,
                    generation.signing_key(),
                    &csr,
                    p2_model::random_serial(),
                    now,
                    not_after,
                )
                .map_err(anyhow::Error::new)?;
                Ok(CertRow {
                    serial: cert.serial(),
                    local_name: local_name.clone(),
                    session_id: session_id.clone(),
                    generation: generation.generation,
                    not_before: to_i64(cert.not_before()),
                    not_after: to_i64(cert.not_after()),
                    cert_pem: cert.to_pem(),
                    issued_at: to_i64(now),
                    invalidated_at: None,
                })
            })
            .await
            .map_err(IdentityError::from)?;
        let issued = match issued {
            Ok(issued) => issued,
            Err(IssueRefusal::UnknownActor) => {
                return Err(IdentityError::UnknownActor(request.fid).into());
            }
            Err(IssueRefusal::SessionIdInUse) => {
                return Err(IdentityError::SessionIdInUse(session_id).into());
            }
        };
        if let Some(old) = &issued.revoked {
            tracing::info!(serial = %old.serial, "renewal revoked the previous cert");
            // Gateway op 4 (certificate invalidation) for the renewed cert is published here
            // once the events service exists.
        }
        tracing::info!(serial = %issued.cert.serial, session_id = %session_id, "issued actor id-cert");
        Ok(Response::new(pb::SignCsrResponse {
            cert: Some(self.cert_cacheable(&issued.cert, now)?),
            session_id,
            serial: issued.cert.serial,
        }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid))]
    async fn get_actor_id_certs(
        &self,
        request: Request<pb::GetActorIdCertsRequest>,
    ) -> Result<Response<pb::GetActorIdCertsResponse>, Status> {
        let request = request.into_inner();
        let actor = self.actor(&request.fid).await?;
        let session_id = request
            .session_id
            .map(|s| p2_model::SessionId::parse(&s).map(|s| s.to_string()))
            .transpose()
            .map_err(IdentityError::from)?;
        let filter = CertFilter {
            valid_at: request.timestamp.map(to_i64),
            session_id,
            not_before: request.not_before.map(to_i64),
            not_after: request.not_after.map(to_i64),
        };
        let rows = self
            .state
            .store()
            .certs(&actor.local_name, &filter)
            .await
            .map_err(IdentityError::from)?;
        let now = p2_runtime::unix_now();
        let certs = rows
            .iter()
            .map(|row| self.cert_cacheable(row, now))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::GetActorIdCertsResponse { certs }))
    }

    #[tracing::instrument(skip_all, fields(fid = %request.get_ref().fid, session_id = %request.get_ref().session_id))]
    async fn revoke_actor_id_cert(
        &self,
        request: Request<pb::RevokeActorIdCertRequest>,
    ) -> Result<Response<pb::RevokeActorIdCertResponse>, Status> {
        let request = request.into_inner();
        let local_name = self.local_name_of(&request.fid)?;
        let now = p2_runtime::unix_now();
        let revoked = self
            .state
            .store()
            .revoke_cert(&local_name, &request.session_id, to_i64(now))
            .await
            .map_err(IdentityError::from)?
            .ok_or(IdentityError::NoValidCert {
                fid: request.fid,
                session_id: request.session_id,
            })?;
        tracing::info!(serial = %revoked.serial, "revoked actor id-cert");
        Ok(Response::new(pb::RevokeActorIdCertResponse {
            serial: revoked.serial.clone(),
            invalidated_at: now,
            cert: Some(self.cert_cacheable(&revoked, now)?),
        }))
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn now_i64() -> i64 {
    to_i64(p2_runtime::unix_now())
}

impl IdentityGrpc {
    /// The normalised local name of `fid`, a full federation ID of this domain.
    fn local_name_of(&self, fid: &str) -> Result<String, IdentityError> {
        let fid = p2_model::FederationId::parse(fid)?;
        if fid.domain() != self.state.domain() {
            return Err(IdentityError::UnknownActor(fid.to_string()));
        }
        Ok(fid.local_name().to_owned())
    }

    /// Like [`Self::local_name_of`], but also accepts a bare local name (password logins).
    fn local_name_or_fid(&self, actor: &str) -> Result<String, IdentityError> {
        if actor.contains('@') {
            self.local_name_of(actor)
        } else {
            Ok(p2_model::validate_local_name(actor)?)
        }
    }

    fn fid_of(&self, local_name: &str) -> Result<String, IdentityError> {
        Ok(p2_model::FederationId::new(local_name, self.state.domain())?.to_string())
    }

    async fn actor(&self, fid: &str) -> Result<ActorRow, IdentityError> {
        let local_name = self.local_name_of(fid)?;
        self.state
            .store()
            .actor(&local_name)
            .await?
            .ok_or_else(|| IdentityError::UnknownActor(fid.to_owned()))
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
}
