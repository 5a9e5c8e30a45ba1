//! The session service: session tokens (stored hashed), challenge strings and key trials
//! (Redis in production, in-process in embedded mode; single use, expiring), foreign-server
//! authentication and foreign sessions' ID-Certs.
//!
//! This crate currently provides the service's process shape — configuration, storage and
//! Redis connections checked at start, gRPC health — and answers its RPCs with
//! `UNIMPLEMENTED` until the actors-and-sessions work fills them in.
//!
//! Entry points: [`serve`] runs it on a pre-bound listener; [`grpc_service`] builds the tonic
//! service.

use std::net::SocketAddr;

use clap::Args;
use p2_proto::session::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Default gRPC listen address of the session service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// The session schema, in order.
pub const MIGRATIONS: &[p2_runtime::storage::Migration] = &[];

/// Flags of the session service.
#[derive(Debug, Clone, Args)]
pub struct SessionConfig {
    /// Address the gRPC server listens on (`host:port`; port 0 picks a free one).
    #[arg(long = "listen", env = "P2_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long = "database-url", env = "P2_DATABASE_URL")]
    pub database_url: String,
    /// Redis URL for challenges and key trials (e.g. `redis://redis:6379/`); unset keeps them
    /// in process memory (embedded mode, one replica only).
    #[arg(long = "redis-url", env = "P2_REDIS_URL")]
    pub redis_url: Option<String>,
    /// URL of the identity service.
    #[arg(long = "identity-url", env = "P2_IDENTITY_URL", default_value = "http://127.0.0.1:50051")]
    pub identity_url: String,
    /// URL of the events service.
    #[arg(long = "events-url", env = "P2_EVENTS_URL", default_value = "http://127.0.0.1:50054")]
    pub events_url: String,
}

/// The gRPC handler set of the session service.
#[derive(Clone)]
pub struct SessionGrpc {
    _db: p2_runtime::storage::Database,
}

impl SessionGrpc {
    /// Connects storage and Redis (when configured); fails with one clear line when either
    /// does not answer.
    pub async fn open(config: &SessionConfig) -> anyhow::Result<Self> {
        let db = p2_runtime::storage::connect(&config.database_url, "session", MIGRATIONS).await?;
        if let Some(url) = &config.redis_url {
            p2_runtime::kv::connect(url, "session").await?;
        }
        Ok(Self { _db: db })
    }
}

/// The tonic service.
pub fn grpc_service(handlers: SessionGrpc) -> pb::session_server::SessionServer<SessionGrpc> {
    pb::session_server::SessionServer::new(handlers)
}

/// Runs the session service on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: SessionConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handlers = SessionGrpc::open(&config).await?;
    p2_runtime::grpc::serve(grpc_service(handlers), listener, shutdown).await
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available on this server yet"))
}

macro_rules! not_yet_rpcs {
    ($($name:ident($req:ty) -> $res:ty, $what:literal;)*) => {
        #[tonic::async_trait]
        impl pb::session_server::Session for SessionGrpc {
            $(
                async fn $name(&self, _request: Request<$req>) -> Result<Response<$res>, Status> {
                    Err(not_yet($what))
                }
            )*
        }
    };
}

not_yet_rpcs! {
    authenticate(pb::AuthenticateRequest) -> pb::AuthenticateResponse, "token authentication";
    login(pb::LoginRequest) -> pb::LoginResponse, "password login";
    create_session(pb::CreateSessionRequest) -> pb::CreateSessionResponse, "session creation";
    delete_session(pb::DeleteSessionRequest) -> pb::DeleteSessionResponse, "session deletion";
    create_challenge(pb::CreateChallengeRequest) -> pb::CreateChallengeResponse, "challenge strings";
    verify_challenge_solution(pb::VerifyChallengeSolutionRequest) -> pb::VerifyChallengeSolutionResponse, "challenge verification";
    create_key_trial(pb::CreateKeyTrialRequest) -> pb::CreateKeyTrialResponse, "key trials";
    complete_key_trial(pb::CompleteKeyTrialRequest) -> pb::CompleteKeyTrialResponse, "key trials";
    list_key_trials(pb::ListKeyTrialsRequest) -> pb::ListKeyTrialsResponse, "key trials";
    update_foreign_id_cert(pb::UpdateForeignIdCertRequest) -> pb::UpdateForeignIdCertResponse, "foreign ID-Cert updates";
}
