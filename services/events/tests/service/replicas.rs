//! Redis only: replicas sharing one Redis (a stream on one sees what another publishes and
//! closes), the Pub/Sub listener reconnecting after Redis went away (and nothing published
//! meanwhile lost), and the key layout (nothing lives without an expiry).

use std::time::Duration;

use p2_events::EventsOptions;
use p2_events::feed::{FeedItem, Start};
use p2_events::model::Audience;
use p2_events::store::{EventStore as _, Limits};
use p2_proto::events::v1 as pb;
use p2_runtime::internal::{Component, InternalKey};

use crate::common::{
    PATIENCE, Proxy, addr_of, event, key, log_over, next, next_position, publish_to, redis_prefix,
    redis_store, redis_url, session, wait_subscribed,
};
use crate::grpc::{
    Server, core_event, next_delivery, next_event, publish, session_ref, to_session,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_replica_gets_what_another_publishes_and_closes() {
    let options = EventsOptions {
        redis_prefix: redis_prefix(),
        ..EventsOptions::default()
    };
    let key = InternalKey::generate();
    let a = Server::start_with_key(options.clone(), Some(redis_url()), key.clone()).await;
    let b = Server::start_with_key(options, Some(redis_url()), key).await;
    let mut gateway_a = a.client(Component::Gateway);
    let mut session_b = b.client(Component::Session);
    session_b
        .open_session(pb::OpenSessionRequest {
            session: session_ref("alice@p2.test", "a1"),
        })
        .await
        .unwrap();
    publish(
        &mut session_b,
        to_session("alice@p2.test", "a1"),
        core_event(4, "1"),
    )
    .await
    .unwrap();
    let mut stream = gateway_a
        .subscribe(pb::SubscribeRequest {
            caller: a.assertion("alice@p2.test", "a1"),
            after_position: 0,
            only_new: false,
            mark_caught_up: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut stream).await.position, 1);
    // Live, through the other replica: the wake-up crosses over Pub/Sub.
    for i in 2..=20 {
        let actor_wide = Some(pb::Audience {
            target: Some(pb::audience::Target::Actor(pb::ActorAudience {
                fid: "alice@p2.test".into(),
                except_session_id: None,
            })),
        });
        assert_eq!(
            publish(&mut session_b, actor_wide, core_event(3, &i.to_string()))
                .await
                .unwrap(),
            1
        );
        assert_eq!(next_event(&mut stream).await.position, i);
    }
    // Delivered through A, polled through B: one cursor.
    a.client(Component::Gateway)
        .record_delivered(pb::RecordDeliveredRequest {
            caller: a.assertion("alice@p2.test", "a1"),
            connection_id: "conn-1".into(),
            delivered: (1..=20)
                .map(|i| pb::DeliveredEvent {
                    sequence: i,
                    position: i,
                })
                .collect(),
        })
        .await
        .unwrap();
    let polled = b
        .client(Component::Gateway)
        .poll(pb::PollRequest {
            caller: b.assertion("alice@p2.test", "a1"),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(polled.events.is_empty(), "{polled:?}");
    let resume = b
        .client(Component::Gateway)
        .resume_from(pb::ResumeFromRequest {
            caller: b.assertion("alice@p2.test", "a1"),
            connection_id: "conn-1".into(),
            sequence: 15,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resume.resumable, resume.after_position), (true, 15));
    // Closed through B: A's stream ends with `closed`.
    session_b
        .close_session(pb::CloseSessionRequest {
            session: session_ref("alice@p2.test", "a1"),
        })
        .await
        .unwrap();
    assert_eq!(
        next_delivery(&mut stream).await,
        pb::delivery::Kind::Closed(pb::SessionClosed {})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubsub_listener_resubscribes_and_nothing_published_meanwhile_is_lost() {
    let url = redis_url();
    let mut proxy = Proxy::start(0, addr_of(&url)).await;
    let prefix = redis_prefix();
    let through_proxy = format!("redis://127.0.0.1:{}/", proxy.port);
    let a_store = redis_store(&through_proxy, &prefix, Limits::default()).await;
    let b = log_over(redis_store(&url, &prefix, Limits::default()).await);
    let a = log_over(a_store.clone());
    let alice = session("alice@p2.test", "a1");
    let mut feed = a.subscribe(alice.clone(), Start::After(0)).await.unwrap();
    publish_to(&b, &alice, 1).await;
    assert_eq!(next_position(&mut feed).await, 1);
    // Redis goes away for A (its Pub/Sub connection and its command connection).
    proxy.cut().await;
    // Published while A hears nothing.
    publish_to(&b, &alice, 2).await;
    proxy.restore().await;
    // A resubscribes, wakes its streams, and they re-read the log.
    wait_subscribed(&a_store, 2).await;
    assert_eq!(next_position(&mut feed).await, 2);
    assert_eq!(next_position(&mut feed).await, 3);
    // And live wake-ups work again.
    publish_to(&b, &alice, 1).await;
    assert_eq!(next_position(&mut feed).await, 4);
    assert!(a_store.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_redis_going_away_for_a_while() {
    let url = redis_url();
    let mut proxy = Proxy::start(0, addr_of(&url)).await;
    let prefix = redis_prefix();
    let a_store = redis_store(
        &format!("redis://127.0.0.1:{}/", proxy.port),
        &prefix,
        Limits::default(),
    )
    .await;
    let a = log_over(a_store.clone());
    let b = log_over(redis_store(&url, &prefix, Limits::default()).await);
    let alice = session("alice@p2.test", "a1");
    let mut feed = a.subscribe(alice.clone(), Start::OnlyNew).await.unwrap();
    proxy.cut().await;
    assert!(!a_store.ready().await);
    // Long enough for a few reconnection attempts to fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_to(&b, &alice, 1).await;
    proxy.restore().await;
    assert_eq!(next_position(&mut feed).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_feeds_on_every_replica_get_every_replicas_invalidations_and_end_when_cut_off()
{
    use p2_events::invalidations::{Invalidation, Notice};
    let url = redis_url();
    let mut proxy = Proxy::start(0, addr_of(&url)).await;
    let prefix = redis_prefix();
    let a_store = redis_store(
        &format!("redis://127.0.0.1:{}/", proxy.port),
        &prefix,
        Limits::default(),
    )
    .await;
    wait_subscribed(&a_store, 1).await;
    let a = log_over(a_store.clone());
    let b = log_over(redis_store(&url, &prefix, Limits::default()).await);
    async fn notice(
        feed: &mut tokio::sync::mpsc::Receiver<Result<Notice, p2_events::EventsError>>,
    ) -> Result<Notice, p2_events::EventsError> {
        tokio::time::timeout(PATIENCE, feed.recv())
            .await
            .expect("a notice in time")
            .expect("the feed is open")
    }
    let mut feed = a.watch_invalidations();
    assert!(matches!(notice(&mut feed).await, Ok(Notice::Live)));
    // Closed through replica B: replica A's feed hears of it.
    let alice = session("alice@p2.test", "a1");
    b.open(&alice).await.unwrap();
    b.close(&alice).await.unwrap();
    for expected in [
        vec![Invalidation::Session(alice.clone())],
        vec![
            Invalidation::Session(alice.clone()),
            Invalidation::ActorCerts("alice@p2.test".into()),
        ],
    ] {
        match notice(&mut feed).await {
            Ok(Notice::Batch(batch)) => assert_eq!(batch.to_vec(), expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
    // A's Pub/Sub connection is cut: its feed ends (what B broadcasts now, A never hears).
    proxy.cut().await;
    let ended = notice(&mut feed).await;
    assert!(
        matches!(&ended, Err(p2_events::EventsError::Unavailable(_))),
        "{ended:?}"
    );
    // A new feed goes live only once A is subscribed again, and then hears B.
    let mut again = a.watch_invalidations();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), again.recv())
            .await
            .is_err(),
        "a feed went live without a subscription"
    );
    proxy.restore().await;
    wait_subscribed(&a_store, 2).await;
    assert!(matches!(notice(&mut again).await, Ok(Notice::Live)));
    b.invalidate(vec![Invalidation::Server].into())
        .await
        .unwrap();
    match notice(&mut again).await {
        Ok(Notice::Batch(batch)) => assert_eq!(batch.to_vec(), vec![Invalidation::Server]),
        other => panic!("expected the server invalidation, got {other:?}"),
    }
}

/// Every key under `prefix` with its remaining lifetime in milliseconds.
async fn keys_under(prefix: &str) -> Vec<(String, i64)> {
    let mut conn = p2_runtime::kv::connect(&redis_url(), "events-test")
        .await
        .unwrap();
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((key.strip_prefix(prefix).unwrap().to_owned(), pttl));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_key_expires_with_what_it_accounts_for() {
    let prefix = redis_prefix();
    let limits = Limits {
        membership_ttl: Duration::from_secs(1),
        closed_ttl: Duration::from_secs(1),
        idempotency_ttl: Duration::from_secs(1),
        ..Limits::default()
    };
    let log = log_over(redis_store(&redis_url(), &prefix, limits).await);
    let (a, b) = (session("alice@p2.test", "a"), session("bob@p2.test", "b"));
    log.open(&a).await.unwrap();
    log.open(&b).await.unwrap();
    publish_to(&log, &a, 2).await;
    assert_eq!(
        log.publish(Audience::Server, event(6, 1), key())
            .await
            .unwrap(),
        2
    );
    log.poll(&a, 10).await.unwrap();
    log.record(
        &a,
        "c1",
        &[p2_events::model::Delivered {
            sequence: 1,
            position: 1,
        }],
    )
    .await
    .unwrap();
    log.close(&b).await.unwrap();
    let keys = keys_under(&prefix).await;
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "actor:alice@p2.test",
            "actors",
            "closed:11:bob@p2.test:b",
            "cur:13:alice@p2.test:a",
            "idem",
            "log:13:alice@p2.test:a",
            "pos:11:bob@p2.test:b",
            "pos:13:alice@p2.test:a",
            "rec:13:alice@p2.test:a",
            "recl:13:alice@p2.test:a",
        ]
    );
    for (key, pttl) in &keys {
        assert!((1..=1000).contains(pttl), "{key}: {pttl}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(keys_under(&prefix).await, Vec::<(String, i64)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_redis_fan_out_to_one_set_of_sessions() {
    let prefix = redis_prefix();
    let one = log_over(redis_store(&redis_url(), &prefix, Limits::default()).await);
    let two = log_over(redis_store(&redis_url(), &prefix, Limits::default()).await);
    let (a1, a2) = (
        session("alice@p2.test", "a1"),
        session("alice@p2.test", "a2"),
    );
    one.open(&a1).await.unwrap();
    two.open(&a2).await.unwrap();
    let mut on_two = two.subscribe(a1.clone(), Start::After(0)).await.unwrap();
    let k = key();
    let actor = Audience::Actor {
        fid: "alice@p2.test".into(),
        except: None,
    };
    assert_eq!(
        one.publish(actor.clone(), event(3, 1), k.clone())
            .await
            .unwrap(),
        2
    );
    // The repeat through the other replica is a repeat.
    assert_eq!(two.publish(actor, event(3, 1), k).await.unwrap(), 0);
    assert_eq!(next_position(&mut on_two).await, 1);
    one.close(&a1).await.unwrap();
    assert_eq!(
        tokio::time::timeout(PATIENCE, async { next(&mut on_two).await })
            .await
            .unwrap(),
        FeedItem::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publication_skips_the_sessions_it_reached_before() {
    let prefix = redis_prefix();
    let log = log_over(redis_store(&redis_url(), &prefix, Limits::default()).await);
    let (a1, a2) = (
        session("alice@p2.test", "a1"),
        session("alice@p2.test", "a2"),
    );
    log.open(&a1).await.unwrap();
    log.open(&a2).await.unwrap();
    // A first attempt reached a1, then failed before completing (its done set remains).
    let k = key();
    let mut conn = p2_runtime::kv::connect(&redis_url(), "events-test")
        .await
        .unwrap();
    let _: i64 = ::redis::cmd("SADD")
        .arg(format!("{prefix}idem:{k}"))
        .arg(a1.encoded())
        .query_async(&mut conn)
        .await
        .unwrap();
    let actor = Audience::Actor {
        fid: "alice@p2.test".into(),
        except: None,
    };
    assert_eq!(
        log.publish(actor.clone(), event(3, 1), k.clone())
            .await
            .unwrap(),
        1
    );
    assert!(log.poll(&a1, 10).await.unwrap().events.is_empty());
    assert_eq!(log.poll(&a2, 10).await.unwrap().events.len(), 1);
    // Completed now: the done set is gone, the key is a repeat.
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("{prefix}idem:{k}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(log.publish(actor, event(3, 1), k).await.unwrap(), 0);
}
