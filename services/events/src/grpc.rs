//! `polyproto.events.v1.Events`: every RPC behind the boundary; Subscribe and Poll verify the
//! caller assertion before anything else.

use std::pin::Pin;

use p2_proto::events::v1 as pb;
use tonic::{Request, Response, Status};

use crate::EventsGrpc;

impl EventsGrpc {
    fn verify(&self, caller: Option<&p2_proto::common::v1::CallerAssertion>) -> Result<(), Status> {
        let token = caller.map(|c| c.token.as_slice()).unwrap_or_default();
        self.assertions
            .verify(token, p2_runtime::internal::unix_now_ms())?;
        Ok(())
    }
}

fn not_yet() -> Status {
    Status::unimplemented("the event stream is not available on this server yet")
}

/// The stream type of `Subscribe`.
pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsGrpc {
    type SubscribeStream = EventStream;

    async fn publish(
        &self,
        _request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Err(not_yet())
    }

    async fn open_session(
        &self,
        _request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        Err(not_yet())
    }

    async fn close_session(
        &self,
        _request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Err(not_yet())
    }

    async fn record_delivered(
        &self,
        request: Request<pb::RecordDeliveredRequest>,
    ) -> Result<Response<pb::RecordDeliveredResponse>, Status> {
        self.verify(request.get_ref().caller.as_ref())?;
        Err(not_yet())
    }

    async fn resume_from(
        &self,
        request: Request<pb::ResumeFromRequest>,
    ) -> Result<Response<pb::ResumeFromResponse>, Status> {
        self.verify(request.get_ref().caller.as_ref())?;
        Err(not_yet())
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.verify(request.get_ref().caller.as_ref())?;
        Err(not_yet())
    }

    async fn poll(
        &self,
        request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        self.verify(request.get_ref().caller.as_ref())?;
        Err(not_yet())
    }
}
