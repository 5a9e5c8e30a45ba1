//! `polyproto.events.v1.Events`: every RPC behind the boundary ([`crate::CALLERS`]). The
//! gateway's RPCs verify the caller assertion before anything else and act on exactly the
//! session it names — no request field says whose log is read. Requests are converted into
//! checked domain values here ([`crate::model`]), failing with INVALID_ARGUMENT.

use std::pin::Pin;

use p2_proto::events::v1 as pb;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::EventsGrpc;
use crate::error::EventsError;
use crate::feed::{FeedItem, Start};
use crate::model::{Audience, Delivered, Event, NewEvent, SessionKey, parse_fid};

impl EventsGrpc {
    /// The caller a gateway RPC acts for: its verified assertion (UNAUTHENTICATED when
    /// missing, forged or expired).
    fn verify(
        &self,
        caller: Option<&p2_proto::common::v1::CallerAssertion>,
    ) -> Result<p2_runtime::internal::CallerAssertion, Status> {
        let token = caller.map(|c| c.token.as_slice()).unwrap_or_default();
        Ok(self
            .assertions
            .verify(token, p2_runtime::internal::unix_now_ms())?)
    }

    /// The session of the verified caller.
    fn caller_session(
        &self,
        caller: Option<&p2_proto::common::v1::CallerAssertion>,
    ) -> Result<SessionKey, Status> {
        let caller = self.verify(caller)?;
        Ok(SessionKey::trusted(&caller.fid, &caller.session_id))
    }
}

fn session_ref(session: Option<&pb::SessionRef>) -> Result<SessionKey, EventsError> {
    let session = session.ok_or_else(|| {
        EventsError::InvalidArgument("session is required (fid and session_id)".into())
    })?;
    SessionKey::parse(&session.fid, &session.session_id)
}

fn audience(audience: Option<&pb::Audience>) -> Result<Audience, EventsError> {
    use pb::audience::Target;
    let missing = || {
        EventsError::InvalidArgument(
            "audience is required: one session, an actor's sessions, or the server's".into(),
        )
    };
    match audience
        .and_then(|a| a.target.as_ref())
        .ok_or_else(missing)?
    {
        Target::Session(session) => Ok(Audience::Session(session_ref(Some(session))?)),
        Target::Actor(actor) => Ok(Audience::Actor {
            fid: parse_fid(&actor.fid)?,
            except: actor
                .except_session_id
                .as_deref()
                .map(crate::model::parse_session_id)
                .transpose()?,
        }),
        Target::Server(_) => Ok(Audience::Server),
    }
}

fn event_to_pb(event: Event) -> pb::Event {
    pb::Event {
        namespace: event.namespace,
        op: u32::from(event.op),
        data_json: event.data_json,
        position: event.position,
    }
}

fn delivery(item: FeedItem) -> pb::Delivery {
    use pb::delivery::Kind;
    let kind = match item {
        FeedItem::Event(event) => Kind::Event(event_to_pb(event)),
        FeedItem::Gap { oldest_retained } => Kind::Gap(pb::Gap { oldest_retained }),
        FeedItem::Closed => Kind::Closed(pb::SessionClosed {}),
    };
    pb::Delivery { kind: Some(kind) }
}

/// The stream type of `Subscribe`.
pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsGrpc {
    type SubscribeStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let pb::PublishRequest {
            audience: target,
            event,
            idempotency_key,
        } = request.into_inner();
        let audience = audience(target.as_ref())?;
        let event = event.ok_or_else(|| {
            EventsError::InvalidArgument("event is required (namespace, op, data_json)".into())
        })?;
        let event = NewEvent::parse(&event.namespace, event.op, &event.data_json)?;
        let sessions = self.log.publish(audience, event, idempotency_key).await?;
        Ok(Response::new(pb::PublishResponse { sessions }))
    }

    #[tracing::instrument(skip_all)]
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let session = session_ref(request.get_ref().session.as_ref())?;
        self.log.open(&session).await?;
        Ok(Response::new(pb::OpenSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = session_ref(request.get_ref().session.as_ref())?;
        self.log.close(&session).await?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn record_delivered(
        &self,
        request: Request<pb::RecordDeliveredRequest>,
    ) -> Result<Response<pb::RecordDeliveredResponse>, Status> {
        let session = self.caller_session(request.get_ref().caller.as_ref())?;
        let pb::RecordDeliveredRequest {
            connection_id,
            delivered,
            ..
        } = request.into_inner();
        let delivered: Vec<Delivered> = delivered
            .into_iter()
            .map(|d| Delivered {
                sequence: d.sequence,
                position: d.position,
            })
            .collect();
        self.log
            .record(&session, &connection_id, &delivered)
            .await?;
        Ok(Response::new(pb::RecordDeliveredResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn resume_from(
        &self,
        request: Request<pb::ResumeFromRequest>,
    ) -> Result<Response<pb::ResumeFromResponse>, Status> {
        let session = self.caller_session(request.get_ref().caller.as_ref())?;
        let pb::ResumeFromRequest {
            connection_id,
            sequence,
            ..
        } = request.into_inner();
        if connection_id.len() > crate::model::MAX_CONNECTION_ID_BYTES {
            return Err(EventsError::InvalidArgument(format!(
                "connection_id must be at most {} bytes",
                crate::model::MAX_CONNECTION_ID_BYTES
            ))
            .into());
        }
        let connection = (!connection_id.is_empty()).then_some(connection_id.as_str());
        let resume = self.log.resume_from(&session, connection, sequence).await?;
        Ok(Response::new(pb::ResumeFromResponse {
            resumable: resume.resumable,
            after_position: resume.after_position,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let session = self.caller_session(request.get_ref().caller.as_ref())?;
        let pb::SubscribeRequest {
            after_position,
            only_new,
            ..
        } = request.into_inner();
        let start = if only_new {
            Start::OnlyNew
        } else {
            Start::After(after_position)
        };
        let feed = self.log.subscribe(session, start).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(feed)
            .map(|item| item.map(delivery).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn poll(
        &self,
        request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        let session = self.caller_session(request.get_ref().caller.as_ref())?;
        let limit = crate::model::poll_limit(request.get_ref().limit)?;
        let outcome = self.log.poll(&session, limit).await?;
        Ok(Response::new(pb::PollResponse {
            events: outcome.events.into_iter().map(event_to_pb).collect(),
            truncated: outcome.truncated,
        }))
    }
}
