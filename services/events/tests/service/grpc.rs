//! The gRPC surface through a real tonic server on a free port, behind the real boundary:
//! component credentials and caller allow-lists, caller assertions, conversion of bad input
//! into INVALID_ARGUMENT, and the Subscribe stream as the gateway sees it.

use std::time::Duration;

use p2_events::{EventsConfig, EventsGrpc, EventsOptions};
use p2_proto::common::v1::CallerAssertion;
use p2_proto::events::v1 as pb;
use p2_proto::events::v1::events_client::EventsClient;
use p2_runtime::grpc::TracedChannel;
use p2_runtime::internal::{Component, InternalKey};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::common::{PATIENCE, unique};

const ALICE: &str = "alice@p2.test";
const BOB: &str = "bob@p2.test";

/// An events server on a free port, in process memory unless `redis_url` is given.
pub struct Server {
    pub key: InternalKey,
    pub handlers: EventsGrpc,
    url: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    pub async fn start(options: EventsOptions, redis_url: Option<String>) -> Self {
        Self::start_with_key(options, redis_url, InternalKey::generate()).await
    }

    pub async fn start_with_key(
        options: EventsOptions,
        redis_url: Option<String>,
        key: InternalKey,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = EventsConfig {
            listen: addr,
            redis_url,
            options,
            shutdown: p2_runtime::config::ShutdownConfig::immediate(),
            internal: p2_runtime::internal::InternalKeyConfig::with_key(&key),
        };
        let handlers = EventsGrpc::open(&config).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(p2_events::serve_opened(
            handlers.clone(),
            Duration::ZERO,
            listener,
            stop.clone(),
        ));
        Self {
            key,
            handlers,
            url: format!("http://{addr}"),
            stop,
        }
    }

    /// A client presenting `component`'s credential.
    pub fn client(&self, component: Component) -> EventsClient<TracedChannel> {
        EventsClient::new(
            p2_runtime::grpc::channel(&self.url, &self.key.credential(component)).unwrap(),
        )
    }

    /// A valid caller assertion of `fid`'s session `sid`.
    pub fn assertion(&self, fid: &str, sid: &str) -> Option<CallerAssertion> {
        Some(CallerAssertion {
            token: self.key.assertion_key().mint(
                fid,
                sid,
                p2_runtime::internal::unix_now_ms() + 60_000,
            ),
        })
    }

    /// Ends the server (its streams end with UNAVAILABLE).
    pub fn shut_down(&self) {
        self.stop.cancel();
    }
}

pub fn session_ref(fid: &str, sid: &str) -> Option<pb::SessionRef> {
    Some(pb::SessionRef {
        fid: fid.into(),
        session_id: sid.into(),
    })
}

pub fn to_session(fid: &str, sid: &str) -> Option<pb::Audience> {
    Some(pb::Audience {
        target: Some(pb::audience::Target::Session(pb::SessionRef {
            fid: fid.into(),
            session_id: sid.into(),
        })),
    })
}

pub fn core_event(op: u32, data_json: &str) -> Option<pb::Event> {
    Some(pb::Event {
        namespace: "core".into(),
        op,
        data_json: data_json.into(),
        position: 0,
    })
}

pub async fn publish(
    client: &mut EventsClient<TracedChannel>,
    audience: Option<pb::Audience>,
    event: Option<pb::Event>,
) -> Result<u32, tonic::Status> {
    client
        .publish(pb::PublishRequest {
            audience,
            event,
            idempotency_key: unique("outbox"),
        })
        .await
        .map(|r| r.into_inner().sessions)
}

/// The next delivery of a Subscribe stream (within [`PATIENCE`]).
pub async fn next_delivery(stream: &mut tonic::Streaming<pb::Delivery>) -> pb::delivery::Kind {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(pb::Delivery { kind: Some(kind) }))) => kind,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

pub async fn next_event(stream: &mut tonic::Streaming<pb::Delivery>) -> pb::Event {
    match next_delivery(stream).await {
        pb::delivery::Kind::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_or_missing_assertions_are_unauthenticated() {
    let server = Server::start(EventsOptions::default(), None).await;
    let mut gateway = server.client(Component::Gateway);
    let now = p2_runtime::internal::unix_now_ms();
    let forged = Some(CallerAssertion {
        token: InternalKey::generate()
            .assertion_key()
            .mint(ALICE, "a1", now + 60_000),
    });
    let expired = Some(CallerAssertion {
        token: server.key.assertion_key().mint(ALICE, "a1", now - 1),
    });
    for (what, caller) in [("forged", forged), ("expired", expired), ("missing", None)] {
        let codes = [
            gateway
                .poll(pb::PollRequest {
                    caller: caller.clone(),
                    limit: 0,
                })
                .await
                .map(drop),
            gateway
                .subscribe(pb::SubscribeRequest {
                    caller: caller.clone(),
                    after_position: 0,
                    only_new: false,
                    mark_caught_up: false,
                })
                .await
                .map(drop),
            gateway
                .record_delivered(pb::RecordDeliveredRequest {
                    caller: caller.clone(),
                    connection_id: "c1".into(),
                    delivered: vec![],
                })
                .await
                .map(drop),
            gateway
                .resume_from(pb::ResumeFromRequest {
                    caller: caller.clone(),
                    connection_id: String::new(),
                    sequence: 0,
                })
                .await
                .map(drop),
        ];
        for (i, result) in codes.into_iter().enumerate() {
            assert_eq!(
                result.unwrap_err().code(),
                Code::Unauthenticated,
                "RPC {i}, {what} assertion"
            );
        }
    }
    // Nothing was opened on the forged assertion's behalf.
    let mut session = server.client(Component::Session);
    let reached = publish(
        &mut session,
        Some(pb::Audience {
            target: Some(pb::audience::Target::Actor(pb::ActorAudience {
                fid: ALICE.into(),
                except_session_id: None,
            })),
        }),
        core_event(3, "{}"),
    )
    .await
    .unwrap();
    assert_eq!(reached, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_components_may_call() {
    let server = Server::start(EventsOptions::default(), None).await;
    let mut gateway = server.client(Component::Gateway);
    let status = publish(&mut gateway, to_session(ALICE, "a1"), core_event(3, "{}"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = gateway
        .close_session(pb::CloseSessionRequest {
            session: session_ref(ALICE, "a1"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut identity = server.client(Component::Identity);
    assert_eq!(
        publish(&mut identity, to_session(ALICE, "a1"), core_event(6, "{}"))
            .await
            .unwrap(),
        1
    );
    let status = identity
        .open_session(pb::OpenSessionRequest {
            session: session_ref(ALICE, "a1"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut session = server.client(Component::Session);
    let status = session
        .poll(pb::PollRequest {
            caller: server.assertion(ALICE, "a1"),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_only_the_session_its_assertion_names() {
    let server = Server::start(EventsOptions::default(), None).await;
    let mut session = server.client(Component::Session);
    let mut gateway = server.client(Component::Gateway);
    for (fid, sid) in [(ALICE, "a1"), (BOB, "b1")] {
        session
            .open_session(pb::OpenSessionRequest {
                session: session_ref(fid, sid),
            })
            .await
            .unwrap();
    }
    publish(
        &mut session,
        to_session(ALICE, "a1"),
        core_event(4, r#"{"for":"alice"}"#),
    )
    .await
    .unwrap();
    publish(
        &mut session,
        to_session(BOB, "b1"),
        core_event(4, r#"{"for":"bob"}"#),
    )
    .await
    .unwrap();
    let polled = gateway
        .poll(pb::PollRequest {
            caller: server.assertion(ALICE, "a1"),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(polled.events.len(), 1);
    assert_eq!(polled.events[0].data_json, r#"{"for":"alice"}"#);
    assert_eq!(polled.events[0].position, 1);
    let mut bob_stream = gateway
        .subscribe(pb::SubscribeRequest {
            caller: server.assertion(BOB, "b1"),
            after_position: 0,
            only_new: false,
            mark_caught_up: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_event(&mut bob_stream).await.data_json,
        r#"{"for":"bob"}"#
    );
    // Alice's delivery record is hers alone: bob's assertion finds nothing under her
    // connection, hers does.
    gateway
        .record_delivered(pb::RecordDeliveredRequest {
            caller: server.assertion(ALICE, "a1"),
            connection_id: "conn-alice".into(),
            delivered: vec![pb::DeliveredEvent {
                sequence: 1,
                position: 1,
            }],
        })
        .await
        .unwrap();
    let resume = |fid: &'static str, sid: &'static str| {
        let mut gateway = gateway.clone();
        let caller = server.assertion(fid, sid);
        async move {
            gateway
                .resume_from(pb::ResumeFromRequest {
                    caller,
                    connection_id: "conn-alice".into(),
                    sequence: 1,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(!resume(BOB, "b1").await.resumable);
    let mine = resume(ALICE, "a1").await;
    assert!(mine.resumable);
    assert_eq!(mine.after_position, 1);
    // Same session ID, other actor: another session.
    assert!(!resume(BOB, "a1").await.resumable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let server = Server::start(EventsOptions::default(), None).await;
    let mut session = server.client(Component::Session);
    let mut gateway = server.client(Component::Gateway);
    session
        .open_session(pb::OpenSessionRequest {
            session: session_ref(ALICE, "a1"),
        })
        .await
        .unwrap();
    let actor = |fid: &str, except: Option<&str>| {
        Some(pb::Audience {
            target: Some(pb::audience::Target::Actor(pb::ActorAudience {
                fid: fid.into(),
                except_session_id: except.map(str::to_owned),
            })),
        })
    };
    let event = |namespace: &str, op: u32, data: &str| {
        Some(pb::Event {
            namespace: namespace.into(),
            op,
            data_json: data.into(),
            position: 7,
        })
    };
    let good = || event("core", 3, "{}");
    let cases: Vec<(&str, Option<pb::Audience>, Option<pb::Event>)> = vec![
        ("no audience", None, good()),
        (
            "an empty audience",
            Some(pb::Audience { target: None }),
            good(),
        ),
        ("an empty fid", actor("", None), good()),
        ("a fid without a domain", actor("alice", None), good()),
        ("an empty except", actor(ALICE, Some("")), good()),
        ("an empty session fid", to_session("", "a1"), good()),
        ("an empty session ID", to_session(ALICE, ""), good()),
        (
            "a long session ID",
            to_session(ALICE, &"s".repeat(33)),
            good(),
        ),
        ("no event", actor(ALICE, None), None),
        ("op 65536", actor(ALICE, None), event("core", 65536, "{}")),
        (
            "op u32::MAX",
            actor(ALICE, None),
            event("core", u32::MAX, "{}"),
        ),
        (
            "data that is not JSON",
            actor(ALICE, None),
            event("core", 3, "{not json"),
        ),
        ("empty data", actor(ALICE, None), event("core", 3, "")),
        (
            "oversized data",
            actor(ALICE, None),
            event("core", 3, &format!("\"{}\"", "x".repeat(70_000))),
        ),
        (
            "a one-letter namespace",
            actor(ALICE, None),
            event("c", 3, "{}"),
        ),
        (
            "an upper-case namespace",
            actor(ALICE, None),
            event("Core", 3, "{}"),
        ),
        (
            "a namespace with a dot",
            actor(ALICE, None),
            event("co.re", 3, "{}"),
        ),
        (
            "a 65-character namespace",
            actor(ALICE, None),
            event(&"a".repeat(65), 3, "{}"),
        ),
    ];
    for (what, audience, event) in cases {
        let status = publish(&mut session, audience, event).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    for key in [String::new(), "k".repeat(129)] {
        let status = session
            .publish(pb::PublishRequest {
                audience: actor(ALICE, None),
                event: good(),
                idempotency_key: key,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    for bad in [None, session_ref("", "a1"), session_ref(ALICE, "")] {
        let status = session
            .open_session(pb::OpenSessionRequest {
                session: bad.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = session
            .close_session(pb::CloseSessionRequest { session: bad })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let caller = server.assertion(ALICE, "a1");
    let status = gateway
        .poll(pb::PollRequest {
            caller: caller.clone(),
            limit: 1001,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let record = |connection_id: &str, delivered: Vec<(u64, u64)>| pb::RecordDeliveredRequest {
        caller: caller.clone(),
        connection_id: connection_id.into(),
        delivered: delivered
            .into_iter()
            .map(|(sequence, position)| pb::DeliveredEvent { sequence, position })
            .collect(),
    };
    for (what, request) in [
        ("no connection", record("", vec![(1, 1)])),
        (
            "a long connection ID",
            record(&"c".repeat(129), vec![(1, 1)]),
        ),
        ("position 0", record("c", vec![(1, 0)])),
        ("sequences out of order", record("c", vec![(2, 1), (1, 2)])),
        (
            "too many",
            record("c", (1..=1001).map(|i| (i, i)).collect()),
        ),
    ] {
        let status = gateway.record_delivered(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
    }
    let status = gateway
        .resume_from(pb::ResumeFromRequest {
            caller: caller.clone(),
            connection_id: "c".repeat(129),
            sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Nothing reached alice's log, and the position of a valid request is ignored.
    let polled = gateway
        .poll(pb::PollRequest {
            caller: caller.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(polled.events.is_empty(), "{polled:?}");
    assert_eq!(
        publish(&mut session, actor("ALICE@P2.TEST", None), good())
            .await
            .unwrap(),
        1
    );
    let polled = gateway
        .poll(pb::PollRequest { caller, limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(polled.events.len(), 1);
    assert_eq!(polled.events[0].position, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_stream_carries_backlog_gap_live_events_and_the_close() {
    let options = EventsOptions {
        max_events_per_session: 3,
        ..EventsOptions::default()
    };
    let server = Server::start(options, None).await;
    let mut session = server.client(Component::Session);
    let mut gateway = server.client(Component::Gateway);
    for i in 1..=5 {
        publish(
            &mut session,
            to_session(ALICE, "a1"),
            core_event(9, &i.to_string()),
        )
        .await
        .unwrap();
    }
    let mut stream = gateway
        .subscribe(pb::SubscribeRequest {
            caller: server.assertion(ALICE, "a1"),
            after_position: 1,
            only_new: false,
            mark_caught_up: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_delivery(&mut stream).await,
        pb::delivery::Kind::Gap(pb::Gap { oldest_retained: 3 })
    );
    for position in 3..=5 {
        let event = next_event(&mut stream).await;
        assert_eq!(
            (event.position, event.namespace.as_str(), event.op),
            (position, "core", 9)
        );
        assert_eq!(event.data_json, position.to_string());
    }
    publish(&mut session, to_session(ALICE, "a1"), core_event(3, "6"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.position, 6);
    let mut fresh = gateway
        .subscribe(pb::SubscribeRequest {
            caller: server.assertion(ALICE, "a1"),
            after_position: 2,
            only_new: true,
            mark_caught_up: false,
        })
        .await
        .unwrap()
        .into_inner();
    publish(&mut session, to_session(ALICE, "a1"), core_event(3, "7"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut fresh).await.position, 7);
    assert_eq!(next_event(&mut stream).await.position, 7);
    assert_eq!(server.handlers.log().stats().subscribers, 2);
    session
        .close_session(pb::CloseSessionRequest {
            session: session_ref(ALICE, "a1"),
        })
        .await
        .unwrap();
    for stream in [&mut stream, &mut fresh] {
        assert_eq!(
            next_delivery(stream).await,
            pb::delivery::Kind::Closed(pb::SessionClosed {})
        );
        let end = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscribe_streams_with_unavailable() {
    let server = Server::start(EventsOptions::default(), None).await;
    let mut gateway = server.client(Component::Gateway);
    let mut stream = gateway
        .subscribe(pb::SubscribeRequest {
            caller: server.assertion(ALICE, "a1"),
            after_position: 0,
            only_new: false,
            mark_caught_up: false,
        })
        .await
        .unwrap()
        .into_inner();
    server.shut_down();
    let end = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

#[test]
fn the_flags_have_env_twins_and_named_defaults() {
    use clap::{Args as _, FromArgMatches as _};
    let command = EventsConfig::augment_args(clap::Command::new("events"));
    let mut env_twins: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    env_twins.sort();
    for expected in [
        "P2_MAX_EVENTS_PER_SESSION",
        "P2_MAX_SESSIONS_PER_ACTOR",
        "P2_REDIS_PREFIX",
    ] {
        assert!(
            env_twins.iter().any(|e| e == expected),
            "{expected}: {env_twins:?}"
        );
    }
    let matches = command
        .try_get_matches_from(["events", "--max-events-per-session", "7"])
        .unwrap();
    let config = EventsConfig::from_arg_matches(&matches).unwrap();
    assert_eq!(config.options.max_events_per_session, 7);
    assert_eq!(
        config.options.max_sessions_per_actor,
        EventsOptions::default().max_sessions_per_actor
    );
    assert_eq!(config.options.redis_prefix, "p2:events:");
    assert_eq!(config.options.limits().unwrap().max_events_per_session, 7);
    for bad in [
        EventsOptions {
            max_events_per_session: 0,
            ..EventsOptions::default()
        },
        EventsOptions {
            max_events_per_session: 10_001,
            ..EventsOptions::default()
        },
        EventsOptions {
            max_sessions_per_actor: 0,
            ..EventsOptions::default()
        },
    ] {
        let error = bad.limits().unwrap_err().to_string();
        assert!(error.contains("P2_MAX_"), "{error}");
    }
}
