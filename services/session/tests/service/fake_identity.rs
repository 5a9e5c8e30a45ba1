//! A small in-process identity service for the session service's tests: one actor with a
//! password, real ID-Certs issued by `p2_model` from real CSRs, revocation. Only the RPCs the
//! session service calls are implemented.

use std::sync::{Arc, Mutex};

use p2_model::{FederationId, IdCert, IdCsr, SessionId, SigningKey};
use p2_proto::common::v1::CacheableIdCert;
use p2_proto::identity::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "example.com";
pub const ALICE: &str = "alice@example.com";
pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone)]
pub struct Issued {
    pub fid: String,
    pub session_id: String,
    pub pem: String,
    pub serial: u64,
    pub revoked_at: Option<u64>,
}

#[derive(Clone)]
pub struct FakeIdentity {
    root_key: Arc<SigningKey>,
    root: Arc<IdCert>,
    pub issued: Arc<Mutex<Vec<Issued>>>,
}

/// A running fake identity; dropping it stops the server.
pub struct Running {
    pub url: String,
    pub state: FakeIdentity,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    pub fn issued(&self) -> Vec<Issued> {
        self.state.issued.lock().unwrap().clone()
    }
}

pub async fn start() -> Running {
    let now = p2_runtime::unix_now();
    let root_key = p2_model::generate_signing_key();
    let root =
        p2_model::issue_root_cert(&root_key, DOMAIN, 1, now - 86_400, now + 86_400 * 365).unwrap();
    let state = FakeIdentity {
        root_key: Arc::new(root_key),
        root: Arc::new(root),
        issued: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let service = pb::identity_server::IdentityServer::new(state.clone());
    tokio::spawn(p2_runtime::grpc::serve(service, listener, stop.clone()));
    Running { url, state, stop }
}

/// A CSR for `ALICE`'s session `session_id` and the session's key.
pub fn csr(session_id: &str) -> (Vec<u8>, SigningKey) {
    let key = p2_model::generate_signing_key();
    let pem = p2_model::build_csr(
        &key,
        &FederationId::parse(ALICE).unwrap(),
        &SessionId::parse(session_id).unwrap(),
    )
    .unwrap();
    (pem.into_bytes(), key)
}

fn cacheable(issued: &Issued) -> CacheableIdCert {
    CacheableIdCert {
        id_cert_pem: issued.pem.clone(),
        cache_not_valid_before: 0,
        cache_not_valid_after: 0,
        cache_signature: String::new(),
        invalidated_at: issued.revoked_at,
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for FakeIdentity {
    async fn get_server_id_cert(
        &self,
        _: Request<pb::GetServerIdCertRequest>,
    ) -> Result<Response<pb::GetServerIdCertResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_server_public_key(
        &self,
        _: Request<pb::GetServerPublicKeyRequest>,
    ) -> Result<Response<pb::GetServerPublicKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn rotate_server_key(
        &self,
        _: Request<pb::RotateServerKeyRequest>,
    ) -> Result<Response<pb::RotateServerKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn register_actor(
        &self,
        _: Request<pb::RegisterActorRequest>,
    ) -> Result<Response<pb::RegisterActorResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn verify_password(
        &self,
        request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let request = request.into_inner();
        let known = request.actor == "alice" || request.actor == ALICE;
        if known && request.password == PASSWORD {
            Ok(Response::new(pb::VerifyPasswordResponse {
                fid: ALICE.into(),
                admin: true,
            }))
        } else {
            Err(Status::unauthenticated("wrong password or unknown actor"))
        }
    }

    async fn get_actor(
        &self,
        _: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::GetActorResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn sign_csr(
        &self,
        request: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::SignCsrResponse>, Status> {
        let request = request.into_inner();
        let csr =
            IdCsr::parse(&request.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fid = FederationId::parse(&request.fid).unwrap();
        csr.check_for(DOMAIN, Some(fid.local_name()))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let session_id = csr.session_id().to_string();
        let mut issued = self.issued.lock().unwrap();
        if issued
            .iter()
            .any(|c| c.fid == request.fid && c.session_id == session_id && c.revoked_at.is_none())
        {
            return Err(Status::already_exists(format!(
                "session ID {session_id:?} is held by a valid ID-Cert"
            )));
        }
        let now = p2_runtime::unix_now();
        let serial = p2_model::random_serial();
        let cert = p2_model::issue_actor_cert(
            &self.root,
            &self.root_key,
            &csr,
            serial,
            now - 60,
            now + 3600,
        )
        .unwrap();
        let record = Issued {
            fid: request.fid,
            session_id: session_id.clone(),
            pem: cert.to_pem(),
            serial,
            revoked_at: None,
        };
        let cert = cacheable(&record);
        issued.push(record);
        Ok(Response::new(pb::SignCsrResponse {
            cert: Some(cert),
            session_id,
            serial: serial.to_string(),
        }))
    }

    async fn get_actor_id_certs(
        &self,
        request: Request<pb::GetActorIdCertsRequest>,
    ) -> Result<Response<pb::GetActorIdCertsResponse>, Status> {
        let request = request.into_inner();
        if request.fid != ALICE {
            return Err(Status::not_found("unknown actor"));
        }
        let certs = self
            .issued
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.fid == request.fid)
            .filter(|c| {
                request
                    .session_id
                    .as_ref()
                    .is_none_or(|s| *s == c.session_id)
            })
            .map(cacheable)
            .collect();
        Ok(Response::new(pb::GetActorIdCertsResponse { certs }))
    }

    async fn revoke_actor_id_cert(
        &self,
        request: Request<pb::RevokeActorIdCertRequest>,
    ) -> Result<Response<pb::RevokeActorIdCertResponse>, Status> {
        let request = request.into_inner();
        let mut issued = self.issued.lock().unwrap();
        let Some(cert) = issued.iter_mut().find(|c| {
            c.fid == request.fid && c.session_id == request.session_id && c.revoked_at.is_none()
        }) else {
            return Err(Status::not_found("no valid ID-Cert for this session"));
        };
        let now = p2_runtime::unix_now();
        cert.revoked_at = Some(now);
        Ok(Response::new(pb::RevokeActorIdCertResponse {
            serial: cert.serial.to_string(),
            invalidated_at: now,
            cert: Some(cacheable(cert)),
        }))
    }
}
