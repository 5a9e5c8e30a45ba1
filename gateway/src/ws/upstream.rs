//! What a gateway connection needs from the services, as a trait: the real one calls
//! `session.Authenticate` (through the gateway's token check, [`crate::auth::authenticate`],
//! token cache included) and the events service; the connection's tests use a fake.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use p2_proto::common::v1::CallerAssertion;
use p2_proto::events::v1 as pb;

use crate::AppState;
use crate::auth::Authenticated;

/// A Subscribe stream.
pub type Deliveries = Pin<Box<dyn Stream<Item = Result<pb::Delivery, tonic::Status>> + Send>>;

/// Why a token was not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Not a valid session token (unknown, expired, its session deleted): 4004 on Identify,
    /// 4003 on a live connection.
    Invalid,
    /// The session service did not answer; the token may be fine.
    Unavailable,
}

/// The services behind a gateway connection.
pub trait Upstream: Clone + Send + Sync + 'static {
    /// Resolves a session token into the caller and a fresh caller assertion.
    fn authenticate(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Authenticated, AuthFailure>> + Send;

    /// `events.Subscribe` for the asserted session.
    fn subscribe(
        &self,
        caller: CallerAssertion,
        after_position: u64,
        only_new: bool,
    ) -> impl Future<Output = Result<Deliveries, tonic::Status>> + Send;

    /// `events.ResumeFrom` for the asserted session's last recorded connection.
    fn resume_from(
        &self,
        caller: CallerAssertion,
        sequence: u64,
    ) -> impl Future<Output = Result<pb::ResumeFromResponse, tonic::Status>> + Send;

    /// `events.RecordDelivered`.
    fn record_delivered(
        &self,
        caller: CallerAssertion,
        connection_id: String,
        delivered: Vec<pb::DeliveredEvent>,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

/// The services of a running gateway.
#[derive(Clone)]
pub struct GrpcUpstream {
    state: AppState,
}

impl GrpcUpstream {
    /// The upstream of `state`'s clients.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl Upstream for GrpcUpstream {
    async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthFailure> {
        crate::auth::authenticate(&self.state, token)
            .await
            .map_err(|error| {
                if error.status == axum::http::StatusCode::UNAUTHORIZED {
                    AuthFailure::Invalid
                } else {
                    AuthFailure::Unavailable
                }
            })
    }

    async fn subscribe(
        &self,
        caller: CallerAssertion,
        after_position: u64,
        only_new: bool,
    ) -> Result<Deliveries, tonic::Status> {
        let stream = self
            .state
            .events()
            .subscribe(pb::SubscribeRequest {
                caller: Some(caller),
                after_position,
                only_new,
                // A replay (Resume) ends exactly where the log's backlog does.
                mark_caught_up: !only_new,
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream))
    }

    async fn resume_from(
        &self,
        caller: CallerAssertion,
        sequence: u64,
    ) -> Result<pb::ResumeFromResponse, tonic::Status> {
        Ok(self
            .state
            .events()
            .resume_from(pb::ResumeFromRequest {
                caller: Some(caller),
                // The client names no connection (spec 3.2.3.6): the session's last one.
                connection_id: String::new(),
                sequence,
            })
            .await?
            .into_inner())
    }

    async fn record_delivered(
        &self,
        caller: CallerAssertion,
        connection_id: String,
        delivered: Vec<pb::DeliveredEvent>,
    ) -> Result<(), tonic::Status> {
        self.state
            .events()
            .record_delivered(pb::RecordDeliveredRequest {
                caller: Some(caller),
                connection_id,
                delivered,
            })
            .await?;
        Ok(())
    }
}
