//! A fake events service for the publishers' tests: a real tonic server on a free loopback
//! port, behind the same boundary as the real one (the deployment's internal key, the callers
//! of `p2_events::CALLERS` for the RPCs publishers call), recording every Publish, OpenSession
//! and CloseSession it accepts, in arrival order. It can be told to answer every call with a
//! given error instead ([`FakeEvents::fail_with`]), like an events service that is down or does
//! not implement an RPC yet.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use p2_proto::events::v1 as pb;
use p2_runtime::internal::{CallerPolicy, Component, InternalKey, ServerAuth};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// Who may call what: the same lists as `p2_events::CALLERS` (a publisher cannot depend on
/// the events crate), so a publisher presenting the wrong credential fails its tests.
pub const CALLERS: CallerPolicy = &[
    (
        "/polyproto.events.v1.Events/Publish",
        &[Component::Identity, Component::Session],
    ),
    (
        "/polyproto.events.v1.Events/OpenSession",
        &[Component::Session],
    ),
    (
        "/polyproto.events.v1.Events/CloseSession",
        &[Component::Session],
    ),
];

/// One accepted call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// A Publish.
    Publish(pb::PublishRequest),
    /// An OpenSession.
    OpenSession(pb::OpenSessionRequest),
    /// A CloseSession.
    CloseSession(pb::CloseSessionRequest),
}

impl Call {
    /// The published event's op, for a Publish.
    pub fn op(&self) -> Option<u32> {
        match self {
            Self::Publish(request) => request.event.as_ref().map(|e| e.op),
            _ => None,
        }
    }

    /// The published event's `d` (JSON text), for a Publish.
    pub fn data(&self) -> Option<String> {
        match self {
            Self::Publish(request) => request.event.as_ref().map(|e| e.data_json.clone()),
            _ => None,
        }
    }

    /// `(fid, session_id)` of an OpenSession or CloseSession.
    pub fn session(&self) -> Option<(String, String)> {
        let session = match self {
            Self::OpenSession(request) => request.session.as_ref(),
            Self::CloseSession(request) => request.session.as_ref(),
            Self::Publish(_) => None,
        }?;
        Some((session.fid.clone(), session.session_id.clone()))
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Mutex<Vec<Call>>,
    failing: Mutex<Option<Code>>,
    attempts: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone)]
struct Handlers(Arc<State>);

impl Handlers {
    fn accept(&self, call: Call) -> Result<(), Status> {
        self.0
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(code) = *self
            .0
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Err(Status::new(code, "the fake events service is told to fail"));
        }
        self.0
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        Ok(())
    }
}

fn not_here() -> Status {
    Status::unimplemented("the fake events service answers publishers only")
}

#[tonic::async_trait]
impl pb::events_server::Events for Handlers {
    type SubscribeStream = tonic::codegen::BoxStream<pb::Delivery>;
    type WatchInvalidationsStream = tonic::codegen::BoxStream<pb::InvalidationNotice>;

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.accept(Call::Publish(request.into_inner()))?;
        Ok(Response::new(pb::PublishResponse { sessions: 0 }))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        self.accept(Call::OpenSession(request.into_inner()))?;
        Ok(Response::new(pb::OpenSessionResponse {}))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        self.accept(Call::CloseSession(request.into_inner()))?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }

    async fn subscribe(
        &self,
        _request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(not_here())
    }

    async fn poll(
        &self,
        _request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        Err(not_here())
    }

    async fn record_delivered(
        &self,
        _request: Request<pb::RecordDeliveredRequest>,
    ) -> Result<Response<pb::RecordDeliveredResponse>, Status> {
        Err(not_here())
    }

    async fn resume_from(
        &self,
        _request: Request<pb::ResumeFromRequest>,
    ) -> Result<Response<pb::ResumeFromResponse>, Status> {
        Err(not_here())
    }

    async fn invalidate(
        &self,
        _request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        Err(not_here())
    }

    async fn watch_invalidations(
        &self,
        _request: Request<pb::WatchInvalidationsRequest>,
    ) -> Result<Response<Self::WatchInvalidationsStream>, Status> {
        Err(not_here())
    }
}

/// A running fake events service; dropping it stops the server.
#[derive(Debug)]
pub struct FakeEvents {
    /// Its URL (`http://127.0.0.1:PORT`).
    pub url: String,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for FakeEvents {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeEvents {
    /// Serves on a free port for the deployment whose internal key is `key`.
    pub async fn start(key: &InternalKey) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(listener, key))
    }

    /// Serves on `listener` (e.g. rebound on the port of one that was stopped, to play an
    /// events service coming back).
    pub fn serve(listener: tokio::net::TcpListener, key: &InternalKey) -> Self {
        let url = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(_) => String::from("http://127.0.0.1:1"),
        };
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn(p2_runtime::grpc::serve(
            pb::events_server::EventsServer::new(Handlers(state.clone())),
            ServerAuth::new(key.verifier(), CALLERS),
            Duration::ZERO,
            None,
            listener,
            stop.clone(),
        ));
        Self { url, state, stop }
    }

    /// Answers every publisher call with `code` from now on (`None`: accept again).
    pub fn fail_with(&self, code: Option<Code>) {
        *self
            .state
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code;
    }

    /// Every call accepted so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls received so far, refused ones included.
    pub fn attempts(&self) -> u64 {
        self.state
            .attempts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until at least `count` calls were accepted; returns them all.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if calls.len() >= count || tokio::time::Instant::now() >= deadline {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server (like [`Drop`], but keeps the recorded calls readable).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}
