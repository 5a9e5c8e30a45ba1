//! A small in-process identity service for the session service's tests: one actor with a
//! password, real ID-Certs issued by `p2_model` from real CSRs, renewal and revocation. Only the
//! RPCs the session service calls are implemented.
//!
//! It sits behind the same boundary as the real identity service: served with
//! [`p2_runtime::grpc::serve`] behind a [`ServerAuth`] built from the deployment's internal key
//! and [`CALLERS`], and verifying the caller assertions it receives with that key's assertion
//! key where the real one does (SignCsr, RevokeActorIdCert, VerifySensitiveSolution). So a
//! session service that presented the wrong component credential, or forwarded anything but a
//! genuine assertion, fails these tests. Every verified assertion is logged in
//! [`FakeIdentity::asserted`], so tests can check whose proof the session service forwarded.

use std::sync::{Arc, Mutex};

use p2_model::{FederationId, IdCert, IdCsr, SessionId, SigningKey};
use p2_proto::common::v1::{CacheableIdCert, CallerAssertion};
use p2_proto::identity::v1 as pb;
use p2_runtime::error::Reason;
use p2_runtime::internal::{AssertionKey, CallerPolicy, Component, InternalKey, ServerAuth};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "example.com";
pub const ALICE: &str = "alice@example.com";
pub const PASSWORD: &str = "correct horse battery staple";

/// Which component may call which identity RPC: the same lists as `p2_identity::CALLERS`
/// (the session tests cannot depend on the identity crate). The session service must present
/// its own credential for everything it calls here.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.identity.v1.Identity/GetServerIdCert",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/GetServerPublicKey",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/RotateServerKey",
        &[Component::Gateway],
    ),
    (
        "/polyproto.identity.v1.Identity/RegisterActor",
        &[Component::Gateway],
    ),
    (
        "/polyproto.identity.v1.Identity/VerifySensitiveSolution",
        &[Component::Session, Component::Discovery],
    ),
    (
        "/polyproto.identity.v1.Identity/GetActor",
        &[Component::Session, Component::Discovery],
    ),
    (
        "/polyproto.identity.v1.Identity/IssueLoginCert",
        &[Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/SignCsr",
        &[Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/GetActorIdCerts",
        &[Component::Gateway, Component::Session],
    ),
    (
        "/polyproto.identity.v1.Identity/RevokeActorIdCert",
        &[Component::Session],
    ),
];

#[derive(Debug, Clone)]
pub struct Issued {
    pub fid: String,
    pub session_id: String,
    pub pem: String,
    pub serial: u64,
    pub revoked_at: Option<u64>,
}

/// One call that carried a valid caller assertion: the RPC and the session it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asserted {
    pub rpc: &'static str,
    pub fid: String,
    pub session_id: String,
}

impl Asserted {
    pub fn new(rpc: &'static str, fid: &str, session_id: &str) -> Self {
        Self {
            rpc,
            fid: fid.into(),
            session_id: session_id.into(),
        }
    }
}

#[derive(Clone)]
pub struct FakeIdentity {
    root_key: Arc<SigningKey>,
    root: Arc<IdCert>,
    assertion_key: AssertionKey,
    pub issued: Arc<Mutex<Vec<Issued>>>,
    pub asserted: Arc<Mutex<Vec<Asserted>>>,
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

    /// The verified assertions received so far, in order.
    pub fn asserted(&self) -> Vec<Asserted> {
        self.state.asserted.lock().unwrap().clone()
    }
}

/// Starts the fake identity of the deployment whose internal key is `key`.
pub async fn start(key: &InternalKey) -> Running {
    let now = p2_runtime::unix_now();
    let root_key = p2_model::generate_signing_key();
    let root =
        p2_model::issue_root_cert(&root_key, DOMAIN, 1, now - 86_400, now + 86_400 * 365).unwrap();
    let state = FakeIdentity {
        root_key: Arc::new(root_key),
        root: Arc::new(root),
        assertion_key: key.assertion_key(),
        issued: Arc::default(),
        asserted: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let service = pb::identity_server::IdentityServer::new(state.clone());
    let auth = ServerAuth::new(key.verifier(), CALLERS);
    tokio::spawn(p2_runtime::grpc::serve(
        service,
        auth,
        std::time::Duration::ZERO,
        None,
        listener,
        stop.clone(),
    ));
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

fn revoked(cert: &Issued, now: u64) -> pb::RevokeActorIdCertResponse {
    pb::RevokeActorIdCertResponse {
        serial: cert.serial.to_string(),
        invalidated_at: now,
        cert: Some(cacheable(cert)),
    }
}

fn solution_required() -> Status {
    Reason::SensitiveSolutionRequired
        .denied("this action needs the actor's sensitive-action solution")
}

impl FakeIdentity {
    /// The (fid, session ID) a genuine, unexpired assertion names; UNAUTHENTICATED otherwise,
    /// as every real service answers.
    fn asserted(
        &self,
        rpc: &'static str,
        caller: Option<CallerAssertion>,
    ) -> Result<(String, String), Status> {
        let token = caller.map(|c| c.token).unwrap_or_default();
        let verified = self
            .assertion_key
            .verify(&token, p2_runtime::internal::unix_now_ms())?;
        self.asserted
            .lock()
            .unwrap()
            .push(Asserted::new(rpc, &verified.fid, &verified.session_id));
        Ok((verified.fid, verified.session_id))
    }

    /// The sensitive-action solution check of the one actor.
    fn check_solution(fid: &str, solution: &str) -> Result<(), Status> {
        if solution.is_empty() {
            return Err(solution_required());
        }
        if fid != ALICE {
            return Err(Status::not_found("unknown actor"));
        }
        if solution != PASSWORD {
            return Err(
                Reason::SensitiveSolutionWrong.denied("the sensitive-action solution is wrong")
            );
        }
        Ok(())
    }

    /// Parses `csr` and checks that it names `fid` on this domain.
    fn csr_for(fid: &str, csr: &[u8]) -> Result<IdCsr, Status> {
        let csr = IdCsr::parse(csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fid = FederationId::parse(fid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        csr.check_for(DOMAIN, Some(fid.local_name()))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(csr)
    }

    /// Issues a cert for `csr` to `fid`; `renew` revokes the session's valid cert first (in the
    /// same step), otherwise a valid cert of that session ID is ALREADY_EXISTS.
    fn issue(&self, fid: &str, csr: &IdCsr, renew: bool) -> Result<pb::IssuedCert, Status> {
        let session_id = csr.session_id().to_string();
        let now = p2_runtime::unix_now();
        let mut issued = self.issued.lock().unwrap();
        let held = issued
            .iter_mut()
            .find(|c| c.fid == fid && c.session_id == session_id && c.revoked_at.is_none());
        let replaced = match held {
            Some(old) if renew => {
                old.revoked_at = Some(now);
                Some(revoked(old, now))
            }
            Some(_) => {
                return Err(Status::already_exists(format!(
                    "session ID {session_id:?} is held by a valid ID-Cert"
                )));
            }
            None => None,
        };
        let serial = p2_model::random_serial();
        let cert = p2_model::issue_actor_cert(
            &self.root,
            &self.root_key,
            csr,
            serial,
            now - 60,
            now + 3600,
        )
        .unwrap();
        let record = Issued {
            fid: fid.into(),
            session_id: session_id.clone(),
            pem: cert.to_pem(),
            serial,
            revoked_at: None,
        };
        let cert = cacheable(&record);
        issued.push(record);
        Ok(pb::IssuedCert {
            cert: Some(cert),
            session_id,
            serial: serial.to_string(),
            fid: fid.into(),
            replaced,
        })
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

    async fn verify_sensitive_solution(
        &self,
        request: Request<pb::VerifySensitiveSolutionRequest>,
    ) -> Result<Response<pb::VerifySensitiveSolutionResponse>, Status> {
        let pb::VerifySensitiveSolutionRequest { caller, solution } = request.into_inner();
        let (fid, _) = self.asserted("VerifySensitiveSolution", caller)?;
        Self::check_solution(&fid, &solution)?;
        Ok(Response::new(pb::VerifySensitiveSolutionResponse {}))
    }

    async fn get_actor(
        &self,
        _: Request<pb::GetActorRequest>,
    ) -> Result<Response<pb::GetActorResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn issue_login_cert(
        &self,
        request: Request<pb::IssueLoginCertRequest>,
    ) -> Result<Response<pb::IssuedCert>, Status> {
        let pb::IssueLoginCertRequest {
            actor,
            password,
            csr,
        } = request.into_inner();
        let known = actor == "alice" || actor == ALICE;
        if !(known && password == PASSWORD) {
            return Err(Status::unauthenticated("wrong password or unknown actor"));
        }
        let csr = Self::csr_for(ALICE, &csr)?;
        Ok(Response::new(self.issue(ALICE, &csr, false)?))
    }

    async fn sign_csr(
        &self,
        request: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::IssuedCert>, Status> {
        let pb::SignCsrRequest {
            caller,
            csr,
            sensitive_solution,
        } = request.into_inner();
        let (fid, session_id) = self.asserted("SignCsr", caller)?;
        // Like identity: a missing solution is refused before the CSR is looked at.
        if sensitive_solution.is_empty() {
            return Err(solution_required());
        }
        let csr = Self::csr_for(&fid, &csr)?;
        Self::check_solution(&fid, &sensitive_solution)?;
        // The asserted session's own session ID renews it.
        let renew = csr.session_id().as_str() == session_id;
        Ok(Response::new(self.issue(&fid, &csr, renew)?))
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
        let pb::RevokeActorIdCertRequest { caller, session_id } = request.into_inner();
        let (fid, _) = self.asserted("RevokeActorIdCert", caller)?;
        let mut issued = self.issued.lock().unwrap();
        let Some(cert) = issued
            .iter_mut()
            .find(|c| c.fid == fid && c.session_id == session_id && c.revoked_at.is_none())
        else {
            return Err(Status::not_found("no valid ID-Cert for this session"));
        };
        let now = p2_runtime::unix_now();
        cert.revoked_at = Some(now);
        Ok(Response::new(revoked(cert, now)))
    }
}
