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
use crate::invalidations::{Invalidation, MAX_PER_BATCH, Notice};
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
        FeedItem::CaughtUp => Kind::CaughtUp(pb::CaughtUp {}),
    };
    pb::Delivery { kind: Some(kind) }
}

/// An actor named in an invalidation: a FID or a bare local name, without control
/// characters (they would split the relayed batch), at most 512 bytes.
fn actor_name(name: &str) -> Result<String, EventsError> {
    if name.is_empty() || name.len() > 512 || name.chars().any(char::is_control) {
        return Err(EventsError::InvalidArgument(
            "an invalidated actor must be a FID or local name of 1 to 512 bytes without control characters".into(),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn invalidation(item: &pb::Invalidation) -> Result<Invalidation, EventsError> {
    use pb::invalidation::Target;
    match item.target.as_ref() {
        Some(Target::Session(session)) => {
            Ok(Invalidation::Session(session_ref(Some(session))?))
        }
        Some(Target::ActorCerts(name)) => Ok(Invalidation::ActorCerts(actor_name(name)?)),
        Some(Target::ActorProviders(name)) => {
            Ok(Invalidation::ActorProviders(actor_name(name)?))
        }
        Some(Target::Server(_)) => Ok(Invalidation::Server),
        Some(Target::AllPublic(_)) => Ok(Invalidation::AllPublic),
        None => Err(EventsError::InvalidArgument(
            "each invalidation needs a target (session, actor_certs, actor_providers, server or all_public)".into(),
        )),
    }
}

fn invalidation_to_pb(item: &Invalidation) -> pb::Invalidation {
    use pb::invalidation::Target;
    let target = match item {
        Invalidation::Session(session) => Target::Session(pb::SessionRef {
            fid: session.fid().to_owned(),
            session_id: session.session_id().to_owned(),
        }),
        Invalidation::ActorCerts(name) => Target::ActorCerts(name.clone()),
        Invalidation::ActorProviders(name) => Target::ActorProviders(name.clone()),
        Invalidation::Server => Target::Server(pb::ServerAudience {}),
        Invalidation::AllPublic => Target::AllPublic(pb::ServerAudience {}),
    };
    pb::Invalidation {
        target: Some(target),
    }
}

fn notice(notice: Notice) -> pb::InvalidationNotice {
    match notice {
        Notice::Live => pb::InvalidationNotice {
            live: true,
            invalidations: Vec::new(),
        },
        Notice::Batch(batch) => pb::InvalidationNotice {
            live: false,
            invalidations: batch.iter().map(invalidation_to_pb).collect(),
        },
    }
}

/// The stream type of `WatchInvalidations`.
pub type InvalidationStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::InvalidationNotice, Status>> + Send>>;

/// The stream type of `Subscribe`.
pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsGrpc {
    type SubscribeStream = EventStream;
    type WatchInvalidationsStream = InvalidationStream;

    #[tracing::instrument(skip_all)]
    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let items = &request.get_ref().invalidations;
        if items.is_empty() || items.len() > MAX_PER_BATCH {
            return Err(EventsError::InvalidArgument(format!(
                "give 1 to {MAX_PER_BATCH} invalidations"
            ))
            .into());
        }
        let batch = items
            .iter()
            .map(invalidation)
            .collect::<Result<Vec<_>, _>>()?;
        self.log.invalidate(batch.into()).await?;
        Ok(Response::new(pb::InvalidateResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn watch_invalidations(
        &self,
        _request: Request<pb::WatchInvalidationsRequest>,
    ) -> Result<Response<Self::WatchInvalidationsStream>, Status> {
        let feed = self.log.watch_invalidations();
        let stream = tokio_stream::wrappers::ReceiverStream::new(feed)
            .map(|item| item.map(notice).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

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
            mark_caught_up,
            ..
        } = request.into_inner();
        let start = if only_new {
            Start::OnlyNew
        } else {
            Start::After(after_position)
        };
        let feed = self
            .log
            .subscribe_marked(session, start, mark_caught_up)
            .await?;
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
