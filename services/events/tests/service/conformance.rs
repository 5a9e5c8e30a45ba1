//! The conformance suite of the event store, run through [`EventLog`] against the in-process
//! store (with paused time) and real Redis (real time, a fresh key prefix per test): every
//! line of the contract in `p2_events::store`, and the Subscribe streams built on it.

use std::time::Duration;

use p2_events::EventLog;
use p2_events::feed::{FeedItem, Start};
use p2_events::invalidations::{Invalidation, Notice};
use p2_events::model::{Audience, Delivered, Resume};
use p2_events::store::Limits;

use crate::common::{
    actor, ended, event, key, next, next_position, positions, publish_to, quiet, session,
};

const ALICE: &str = "alice@p2.test";
const BOB: &str = "bob@p2.test";

fn defaults() -> Limits {
    Limits::default()
}

/// A log of five events.
fn small() -> Limits {
    Limits {
        max_events_per_session: 5,
        ..Limits::default()
    }
}

/// Three sessions per actor.
fn three_per_actor() -> Limits {
    Limits {
        max_sessions_per_actor: 3,
        ..Limits::default()
    }
}

/// Two sessions per actor.
fn two_per_actor() -> Limits {
    Limits {
        max_sessions_per_actor: 2,
        ..Limits::default()
    }
}

/// Two actors with open sessions.
fn two_actors() -> Limits {
    Limits {
        max_actors: 2,
        ..Limits::default()
    }
}

/// Lifetimes of a second.
fn short_lived() -> Limits {
    Limits {
        membership_ttl: Duration::from_secs(1),
        closed_ttl: Duration::from_secs(1),
        idempotency_ttl: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Idempotency keys remembered for a second.
fn short_idempotency() -> Limits {
    Limits {
        idempotency_ttl: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Three idempotency keys.
fn three_keys() -> Limits {
    Limits {
        max_idempotency_keys: 3,
        ..Limits::default()
    }
}

fn d(sequence: u64, position: u64) -> Delivered {
    Delivered { sequence, position }
}

fn resumable(after_position: u64) -> Resume {
    Resume {
        resumable: true,
        after_position,
    }
}

const NOT_RESUMABLE: Resume = Resume {
    resumable: false,
    after_position: 0,
};

async fn poll(log: &EventLog, s: &p2_events::model::SessionKey) -> (Vec<u64>, bool) {
    let outcome = log.poll(s, 100).await.unwrap();
    (positions(&outcome.events), outcome.truncated)
}

/// Time for Redis's millisecond clock to move on, so refresh times differ.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

async fn positions_count_from_one_in_each_session(log: EventLog) {
    let a = session(ALICE, "a");
    let b = session(ALICE, "b");
    log.open(&a).await.unwrap();
    log.open(&b).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        2
    );
    publish_to(&log, &a, 2).await;
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        2
    );
    assert_eq!(poll(&log, &a).await, (vec![1, 2, 3, 4], false));
    assert_eq!(poll(&log, &b).await, (vec![1, 2], false));
    // Opening again changes nothing.
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 1).await;
    assert_eq!(poll(&log, &a).await, (vec![5], false));
    // The event comes back as published.
    let mut feed = log.subscribe(a.clone(), Start::After(4)).await.unwrap();
    let FeedItem::Event(got) = next(&mut feed).await else {
        panic!("expected an event");
    };
    assert_eq!(
        (
            got.position,
            got.namespace.as_str(),
            got.op,
            got.data_json.as_str()
        ),
        (5, "core", 9, r#"{"i":1}"#)
    );
}

async fn the_log_keeps_the_newest_events_up_to_its_bound(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 8).await;
    // From the oldest retained: no gap.
    let mut feed = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    for expected in 4..=8 {
        assert_eq!(next_position(&mut feed).await, expected);
    }
    quiet(&mut feed).await;
    // From a position whose successors were dropped: one gap first.
    let mut feed = log.subscribe(a.clone(), Start::After(2)).await.unwrap();
    assert_eq!(next(&mut feed).await, FeedItem::Gap { oldest_retained: 4 });
    for expected in 4..=8 {
        assert_eq!(next_position(&mut feed).await, expected);
    }
    // Right before the oldest retained: nothing was lost.
    let mut feed = log.subscribe(a.clone(), Start::After(3)).await.unwrap();
    assert_eq!(next_position(&mut feed).await, 4);
    // Polling from the start reports the dropped ones.
    assert_eq!(poll(&log, &a).await, (vec![4, 5, 6, 7, 8], true));
}

async fn actor_events_reach_every_open_session_but_the_excepted_one(log: EventLog) {
    let (a1, a2, a3, b1) = (
        session(ALICE, "a1"),
        session(ALICE, "a2"),
        session(ALICE, "a3"),
        session(BOB, "b1"),
    );
    for s in [&a1, &a2, &a3, &b1] {
        log.open(s).await.unwrap();
    }
    let new_session = Audience::Actor {
        fid: ALICE.into(),
        except: Some("a2".into()),
    };
    assert_eq!(
        log.publish(new_session, event(3, 1), key()).await.unwrap(),
        2
    );
    assert_eq!(poll(&log, &a1).await.0, [1]);
    assert_eq!(poll(&log, &a2).await.0, Vec::<u64>::new());
    assert_eq!(poll(&log, &a3).await.0, [1]);
    assert_eq!(poll(&log, &b1).await.0, Vec::<u64>::new());
    // An actor without open sessions: nobody.
    assert_eq!(
        log.publish(actor("carol@p2.test"), event(3, 2), key())
            .await
            .unwrap(),
        0
    );
}

async fn server_events_reach_every_open_session(log: EventLog) {
    let sessions = [
        session(ALICE, "a1"),
        session(ALICE, "a2"),
        session(BOB, "b1"),
        session("carol@other.example", "c1"),
    ];
    for s in &sessions {
        log.open(s).await.unwrap();
    }
    let gone = session("dave@p2.test", "d1");
    log.open(&gone).await.unwrap();
    log.close(&gone).await.unwrap();
    assert_eq!(
        log.publish(Audience::Server, event(6, 1), key())
            .await
            .unwrap(),
        4
    );
    for s in &sessions {
        assert_eq!(poll(&log, s).await.0, [1], "{s}");
    }
    assert_eq!(poll(&log, &gone).await.0, Vec::<u64>::new());
}

async fn a_server_event_reaches_sessions_by_the_hundred(log: EventLog) {
    // More actors than one scan step, more sessions of one actor than one append script.
    let mut all = Vec::new();
    for i in 0..300 {
        all.push(session(&format!("actor{i}@p2.test"), "only"));
    }
    for i in 0..200 {
        all.push(session(ALICE, &format!("s{i}")));
    }
    for s in &all {
        log.open(s).await.unwrap();
    }
    assert_eq!(
        log.publish(Audience::Server, event(6, 1), key())
            .await
            .unwrap(),
        500
    );
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        200
    );
    for s in all.iter().step_by(37) {
        let expected: &[u64] = if s.fid() == ALICE { &[1, 2] } else { &[1] };
        assert_eq!(poll(&log, s).await.0, expected, "{s}");
    }
}

async fn a_session_event_reaches_that_session_and_opens_it(log: EventLog) {
    let d1 = session("dave@p2.test", "d1");
    assert_eq!(
        log.publish(Audience::Session(d1.clone()), event(4, 1), key())
            .await
            .unwrap(),
        1
    );
    // It is open now: actor-wide events reach it.
    assert_eq!(
        log.publish(actor("dave@p2.test"), event(3, 2), key())
            .await
            .unwrap(),
        1
    );
    assert_eq!(poll(&log, &d1).await, (vec![1, 2], false));
}

async fn a_repeated_idempotency_key_appends_nothing(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    let k = key();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), k.clone())
            .await
            .unwrap(),
        1
    );
    // Whatever the repeat says, it is the same publication.
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), k.clone())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        log.publish(Audience::Server, event(6, 9), k.clone())
            .await
            .unwrap(),
        0
    );
    assert_eq!(poll(&log, &a).await.0, [1]);
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        1
    );
    assert_eq!(poll(&log, &a).await.0, [2]);
    let stats = log.stats();
    assert_eq!(
        (stats.publications, stats.repeats, stats.appended),
        (2, 2, 2)
    );
}

async fn concurrent_repeats_of_one_publication_append_it_once(log: EventLog) {
    let sessions: Vec<_> = (0..6).map(|i| session(ALICE, &format!("s{i}"))).collect();
    for s in &sessions {
        log.open(s).await.unwrap();
    }
    let k = key();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            let k = k.clone();
            tokio::spawn(async move { log.publish(actor(ALICE), event(3, 1), k).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 6, "each session exactly once, over all the calls");
    for s in &sessions {
        assert_eq!(poll(&log, s).await.0, [1], "{s}");
    }
}

async fn closing_a_session_drops_its_data_and_stops_its_events(log: EventLog) {
    let a = session(ALICE, "a");
    let b = session(ALICE, "b");
    log.open(&a).await.unwrap();
    log.open(&b).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        2
    );
    log.record(&a, "c1", &[d(1, 1)]).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), resumable(0));
    log.close(&a).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        1
    );
    assert_eq!(poll(&log, &a).await, (vec![], false));
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), NOT_RESUMABLE);
    let mut feed = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    assert_eq!(next(&mut feed).await, FeedItem::Closed);
    ended(&mut feed).await;
    // Recording for it changes nothing, and closing again is fine.
    log.record(&a, "c2", &[d(1, 1)]).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), NOT_RESUMABLE);
    log.close(&a).await.unwrap();
    assert_eq!(poll(&log, &b).await.0, [1, 2]);
}

async fn a_closed_session_is_reopened_only_by_open_and_continues_its_positions(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 3).await;
    log.close(&a).await.unwrap();
    // Late gateway calls (their assertions outlive the session) and session-addressed
    // publications do not bring it back.
    assert_eq!(poll(&log, &a).await, (vec![], false));
    assert_eq!(
        log.publish(Audience::Session(a.clone()), event(4, 1), key())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        0
    );
    // The session service opens it again: numbering continues, nothing old is "missed".
    log.open(&a).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        1
    );
    assert_eq!(poll(&log, &a).await, (vec![4], false));
    // A session closed before it was ever opened stays closed too.
    let never = session(BOB, "never");
    log.close(&never).await.unwrap();
    assert_eq!(
        log.publish(Audience::Session(never.clone()), event(4, 1), key())
            .await
            .unwrap(),
        0
    );
}

async fn gateway_calls_open_unknown_sessions_implicitly(log: EventLog) {
    let e1 = session("erin@p2.test", "e1");
    assert_eq!(poll(&log, &e1).await, (vec![], false));
    assert_eq!(
        log.publish(actor("erin@p2.test"), event(3, 1), key())
            .await
            .unwrap(),
        1
    );
    let f1 = session("frank@p2.test", "f1");
    log.record(&f1, "c1", &[]).await.unwrap();
    assert_eq!(
        log.publish(actor("frank@p2.test"), event(3, 1), key())
            .await
            .unwrap(),
        1
    );
    let g1 = session("greta@p2.test", "g1");
    let mut feed = log.subscribe(g1.clone(), Start::OnlyNew).await.unwrap();
    assert_eq!(
        log.publish(actor("greta@p2.test"), event(3, 1), key())
            .await
            .unwrap(),
        1
    );
    assert_eq!(next_position(&mut feed).await, 1);
    assert_eq!(poll(&log, &e1).await.0, [1]);
}

async fn the_least_recently_active_session_goes_beyond_the_per_actor_bound(log: EventLog) {
    let s: Vec<_> = (1..=4).map(|i| session(ALICE, &format!("s{i}"))).collect();
    for one in &s[..3] {
        log.open(one).await.unwrap();
        tick().await;
    }
    publish_to(&log, &s[1], 2).await;
    // s1 is active again; s2 is now the least recently active.
    assert_eq!(poll(&log, &s[0]).await.0, Vec::<u64>::new());
    tick().await;
    log.open(&s[3]).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        3
    );
    for one in [&s[0], &s[2], &s[3]] {
        assert_eq!(poll(&log, one).await.0.len(), 1, "{one}");
        tick().await;
    }
    // s2 went with its log: when it calls again it is opened afresh (and pushes out s1, now
    // the least recently active).
    assert_eq!(poll(&log, &s[1]).await, (vec![], false));
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        3
    );
    assert_eq!(poll(&log, &s[1]).await.0, [1]);
    assert_eq!(poll(&log, &s[0]).await, (vec![], false));
}

async fn the_least_recently_active_actor_goes_beyond_the_server_bound(log: EventLog) {
    let (a, b, c) = (
        session(ALICE, "a"),
        session(BOB, "b"),
        session("carol@p2.test", "c"),
    );
    log.open(&a).await.unwrap();
    tick().await;
    log.open(&b).await.unwrap();
    tick().await;
    log.open(&c).await.unwrap();
    assert_eq!(
        log.publish(Audience::Server, event(6, 1), key())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        0
    );
    assert_eq!(poll(&log, &b).await.0, [1]);
    tick().await;
    assert_eq!(poll(&log, &c).await.0, [1]);
    tick().await;
    // Alice comes back (pushing out bob, now the least recently active).
    assert_eq!(poll(&log, &a).await, (vec![], false));
    assert_eq!(
        log.publish(Audience::Server, event(6, 2), key())
            .await
            .unwrap(),
        2
    );
    assert_eq!(poll(&log, &a).await.0, [1]);
    assert_eq!(poll(&log, &c).await.0, [2]);
}

async fn a_stream_whose_log_was_dropped_ends_and_asks_for_a_reconnect(log: EventLog) {
    let (s1, s2, s3) = (
        session(ALICE, "s1"),
        session(ALICE, "s2"),
        session(ALICE, "s3"),
    );
    let mut feed = log.subscribe(s1.clone(), Start::After(0)).await.unwrap();
    publish_to(&log, &s1, 2).await;
    assert_eq!(next_position(&mut feed).await, 1);
    assert_eq!(next_position(&mut feed).await, 2);
    tick().await;
    log.open(&s2).await.unwrap();
    tick().await;
    // s1 is the least recently active of three: dropped with its log.
    log.open(&s3).await.unwrap();
    // Addressed again, it is reopened empty: its positions restart under the stream.
    publish_to(&log, &s1, 1).await;
    match tokio::time::timeout(crate::common::PATIENCE, feed.recv()).await {
        Ok(Some(Err(p2_events::EventsError::Unavailable(_)))) => {}
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    ended(&mut feed).await;
}

async fn memberships_expire_unless_refreshed(log: EventLog) {
    let (a, b) = (session(ALICE, "a"), session(ALICE, "b"));
    log.open(&a).await.unwrap();
    log.open(&b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(poll(&log, &a).await.0, Vec::<u64>::new());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        1
    );
    assert_eq!(poll(&log, &a).await.0, [1]);
}

async fn idempotency_keys_are_forgotten_after_their_lifetime(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    let k = key();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), k.clone())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), k.clone())
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(poll(&log, &a).await.0, [1]);
    assert_eq!(log.publish(actor(ALICE), event(3, 1), k).await.unwrap(), 1);
}

async fn a_closed_mark_expires(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 2).await;
    log.close(&a).await.unwrap();
    assert_eq!(
        log.publish(Audience::Session(a.clone()), event(4, 1), key())
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A call after the mark is gone opens it again, from position 1.
    assert_eq!(
        log.publish(Audience::Session(a.clone()), event(4, 1), key())
            .await
            .unwrap(),
        1
    );
    assert_eq!(poll(&log, &a).await, (vec![1], false));
}

async fn beyond_its_capacity_the_oldest_idempotency_key_is_forgotten(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    let keys: Vec<String> = (0..4).map(|_| key()).collect();
    for k in &keys {
        assert_eq!(
            log.publish(actor(ALICE), event(3, 1), k.clone())
                .await
                .unwrap(),
            1
        );
        tick().await;
    }
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), keys[3].clone())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), keys[0].clone())
            .await
            .unwrap(),
        1,
        "the oldest key was forgotten"
    );
}

async fn poll_returns_what_is_new_and_advances_its_cursor(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 3).await;
    assert_eq!(poll(&log, &a).await, (vec![1, 2, 3], false));
    assert_eq!(poll(&log, &a).await, (vec![], false));
    publish_to(&log, &a, 1).await;
    assert_eq!(poll(&log, &a).await, (vec![4], false));
}

async fn poll_keeps_the_newest_when_more_are_pending(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 5).await;
    let outcome = log.poll(&a, 2).await.unwrap();
    assert_eq!(
        (positions(&outcome.events), outcome.truncated),
        (vec![4, 5], true)
    );
    assert_eq!(poll(&log, &a).await, (vec![], false));
}

async fn poll_reports_what_the_log_bound_dropped(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 3).await;
    assert_eq!(poll(&log, &a).await, (vec![1, 2, 3], false));
    publish_to(&log, &a, 7).await;
    assert_eq!(poll(&log, &a).await, (vec![6, 7, 8, 9, 10], true));
    // Exactly at the boundary: nothing lost.
    publish_to(&log, &a, 5).await;
    assert_eq!(poll(&log, &a).await, (vec![11, 12, 13, 14, 15], false));
}

async fn recorded_deliveries_move_the_cursor_forward_only(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 5).await;
    log.record(&a, "c1", &[d(1, 1), d(2, 2), d(3, 3)])
        .await
        .unwrap();
    assert_eq!(poll(&log, &a).await, (vec![4, 5], false));
    // A record of older positions (a replay on a new connection) does not move it back.
    log.record(&a, "c2", &[d(1, 2)]).await.unwrap();
    publish_to(&log, &a, 1).await;
    assert_eq!(poll(&log, &a).await, (vec![6], false));
    // Nor does a position beyond the log move it past the end.
    log.record(&a, "c2", &[d(2, 99)]).await.unwrap();
    publish_to(&log, &a, 1).await;
    assert_eq!(poll(&log, &a).await, (vec![7], false));
}

async fn resume_continues_after_what_the_connection_delivered(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), NOT_RESUMABLE);
    publish_to(&log, &a, 5).await;
    // Sequence 0 was Hello; positions 1–3 went out as 1–3, over two records.
    log.record(&a, "c1", &[d(1, 1), d(2, 2)]).await.unwrap();
    log.record(&a, "c1", &[d(3, 3)]).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), resumable(0));
    assert_eq!(
        log.resume_from(&a, Some("c1"), 1).await.unwrap(),
        resumable(1)
    );
    assert_eq!(
        log.resume_from(&a, Some("c1"), 3).await.unwrap(),
        resumable(3)
    );
    assert_eq!(
        log.resume_from(&a, Some("c1"), 50).await.unwrap(),
        resumable(3)
    );
    assert_eq!(
        log.resume_from(&a, Some("c0"), 1).await.unwrap(),
        NOT_RESUMABLE
    );
    // A new connection replaces the record.
    log.record(&a, "c2", &[d(1, 4), d(2, 5)]).await.unwrap();
    assert_eq!(
        log.resume_from(&a, Some("c1"), 3).await.unwrap(),
        NOT_RESUMABLE
    );
    assert_eq!(log.resume_from(&a, None, 1).await.unwrap(), resumable(4));
    assert_eq!(
        log.resume_from(&a, Some("c2"), 0).await.unwrap(),
        resumable(3)
    );
    // Another session's record is not this one's.
    let b = session(BOB, "a");
    assert_eq!(
        log.resume_from(&b, Some("c2"), 0).await.unwrap(),
        NOT_RESUMABLE
    );
}

async fn resume_is_refused_once_missed_events_are_gone(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 3).await;
    log.record(&a, "c1", &[d(1, 1)]).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 1).await.unwrap(), resumable(1));
    publish_to(&log, &a, 10).await;
    // Retained: 9–13. The client saw position 1 at most.
    assert_eq!(log.resume_from(&a, None, 0).await.unwrap(), NOT_RESUMABLE);
    assert_eq!(log.resume_from(&a, None, 1).await.unwrap(), NOT_RESUMABLE);
    // The record keeps as many deliveries as the log holds: sequences 1–2 are dropped here.
    let delivered: Vec<_> = (1..=7).map(|i| d(i, i + 6)).collect();
    log.record(&a, "c2", &delivered).await.unwrap();
    assert_eq!(log.resume_from(&a, None, 1).await.unwrap(), NOT_RESUMABLE);
    assert_eq!(log.resume_from(&a, None, 2).await.unwrap(), resumable(8));
    assert_eq!(log.resume_from(&a, None, 7).await.unwrap(), resumable(13));
}

async fn subscribe_replays_the_backlog_then_streams_live_events(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 3).await;
    let mut feed = log.subscribe(a.clone(), Start::After(1)).await.unwrap();
    assert_eq!(next_position(&mut feed).await, 2);
    assert_eq!(next_position(&mut feed).await, 3);
    quiet(&mut feed).await;
    publish_to(&log, &a, 1).await;
    assert_eq!(next_position(&mut feed).await, 4);
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        1
    );
    assert_eq!(next_position(&mut feed).await, 5);
    // More than one read's worth of backlog, in order.
    publish_to(&log, &a, 150).await;
    for expected in 6..=155 {
        assert_eq!(next_position(&mut feed).await, expected);
    }
    // A position beyond the end: only what comes next.
    let mut beyond = log.subscribe(a.clone(), Start::After(1000)).await.unwrap();
    quiet(&mut beyond).await;
    publish_to(&log, &a, 1).await;
    assert_eq!(next_position(&mut beyond).await, 156);
    assert_eq!(log.stats().subscribers, 2);
    drop(feed);
    drop(beyond);
    let deadline = tokio::time::Instant::now() + crate::common::PATIENCE;
    while log.stats().subscribers > 0 {
        assert!(tokio::time::Instant::now() < deadline, "streams linger");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn subscribe_only_new_skips_the_backlog(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    publish_to(&log, &a, 2).await;
    let mut feed = log.subscribe(a.clone(), Start::OnlyNew).await.unwrap();
    quiet(&mut feed).await;
    publish_to(&log, &a, 1).await;
    assert_eq!(next_position(&mut feed).await, 3);
}

async fn caught_up_marks_the_end_of_the_backlog_once_when_asked(log: EventLog) {
    let a = session(ALICE, "a");
    log.open(&a).await.unwrap();
    // More than one read of the log holds.
    publish_to(&log, &a, 100).await;
    let mut feed = log
        .subscribe_marked(a.clone(), Start::After(10), true)
        .await
        .unwrap();
    for expected in 11..=100 {
        assert_eq!(
            next(&mut feed).await,
            FeedItem::Event(p2_events::model::Event {
                namespace: "core".into(),
                op: 9,
                data_json: format!("{{\"i\":{expected}}}"),
                position: expected,
            })
        );
    }
    assert_eq!(next(&mut feed).await, FeedItem::CaughtUp);
    publish_to(&log, &a, 1).await;
    assert_eq!(next_position(&mut feed).await, 101);
    quiet(&mut feed).await;
    // An empty backlog: caught up at once. Unmarked streams never say it.
    let b = session(ALICE, "b");
    let mut marked = log
        .subscribe_marked(b.clone(), Start::OnlyNew, true)
        .await
        .unwrap();
    assert_eq!(next(&mut marked).await, FeedItem::CaughtUp);
    let mut plain = log.subscribe(b.clone(), Start::After(0)).await.unwrap();
    publish_to(&log, &b, 1).await;
    assert_eq!(next_position(&mut plain).await, 1);
    assert_eq!(next_position(&mut marked).await, 1);
}

async fn closing_ends_every_stream_of_the_session_with_closed(log: EventLog) {
    let (a, b) = (session(ALICE, "a"), session(ALICE, "b"));
    let mut a1 = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    let mut a2 = log.subscribe(a.clone(), Start::OnlyNew).await.unwrap();
    let mut b1 = log.subscribe(b.clone(), Start::After(0)).await.unwrap();
    assert_eq!(
        log.publish(actor(ALICE), event(3, 1), key()).await.unwrap(),
        2
    );
    assert_eq!(next_position(&mut a1).await, 1);
    assert_eq!(next_position(&mut a2).await, 1);
    log.close(&a).await.unwrap();
    for feed in [&mut a1, &mut a2] {
        assert_eq!(next(feed).await, FeedItem::Closed);
        ended(feed).await;
    }
    assert_eq!(
        log.publish(actor(ALICE), event(3, 2), key()).await.unwrap(),
        1
    );
    assert_eq!(next_position(&mut b1).await, 1);
    assert_eq!(next_position(&mut b1).await, 2);
}

async fn a_slow_subscriber_blocks_neither_a_fast_one_nor_publishing(log: EventLog) {
    let a = session(ALICE, "a");
    let b = session(ALICE, "b");
    let mut slow = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    let mut fast = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    let mut other = log.subscribe(b.clone(), Start::After(0)).await.unwrap();
    // Far more than the slow stream buffers; nobody reads it meanwhile.
    let started = tokio::time::Instant::now();
    for i in 1..=300 {
        assert_eq!(
            log.publish(actor(ALICE), event(3, i), key()).await.unwrap(),
            2
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "publishing waited for a reader"
    );
    for expected in 1..=300 {
        assert_eq!(next_position(&mut fast).await, expected);
        assert_eq!(next_position(&mut other).await, expected);
    }
    // The slow one lost nothing: what did not fit its buffer was still in the log.
    for expected in 1..=300 {
        assert_eq!(next_position(&mut slow).await, expected);
    }
    quiet(&mut slow).await;
}

async fn a_lagging_subscriber_is_told_what_the_log_dropped(log: EventLog) {
    let a = session(ALICE, "a");
    let mut slow = log.subscribe(a.clone(), Start::After(0)).await.unwrap();
    for i in 1..=200 {
        assert_eq!(
            log.publish(actor(ALICE), event(3, i), key()).await.unwrap(),
            1
        );
    }
    // In order; wherever positions jump, a gap naming the next one comes first.
    let mut last = 0;
    let mut gaps = 0;
    while last < 200 {
        match next(&mut slow).await {
            FeedItem::Event(e) => {
                assert_eq!(e.position, last + 1, "a jump without a gap");
                last = e.position;
            }
            FeedItem::Gap { oldest_retained } => {
                gaps += 1;
                assert!(oldest_retained > last + 1);
                assert_eq!(next_position(&mut slow).await, oldest_retained);
                last = oldest_retained;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        gaps >= 1,
        "200 events cannot fit a log of 5 and a buffer of 64"
    );
}

type InvalidationFeed =
    tokio::sync::mpsc::Receiver<Result<p2_events::invalidations::Notice, p2_events::EventsError>>;

/// The next batch of an invalidation feed (within the patience of the suite).
async fn next_batch(feed: &mut InvalidationFeed) -> Vec<Invalidation> {
    let notice = tokio::time::timeout(crate::common::PATIENCE, feed.recv())
        .await
        .expect("an invalidation in time")
        .expect("the feed is open")
        .expect("the feed is healthy");
    match notice {
        Notice::Batch(batch) => batch.to_vec(),
        Notice::Live => panic!("a second live notice"),
    }
}

async fn invalidation_feeds_go_live_then_carry_derived_and_explicit_invalidations(log: EventLog) {
    let mut feed = log.watch_invalidations();
    let first = tokio::time::timeout(crate::common::PATIENCE, feed.recv())
        .await
        .expect("the live notice in time")
        .expect("the feed is open")
        .expect("the feed is healthy");
    assert!(matches!(first, Notice::Live), "{first:?}");
    let a = session(ALICE, "a");
    // An opened session: its token (a login may have replaced it).
    log.open(&a).await.unwrap();
    assert_eq!(
        next_batch(&mut feed).await,
        vec![Invalidation::Session(a.clone())]
    );
    // A closed session: its token and its actor's certs.
    log.close(&a).await.unwrap();
    assert_eq!(
        next_batch(&mut feed).await,
        vec![
            Invalidation::Session(a.clone()),
            Invalidation::ActorCerts(ALICE.into())
        ]
    );
    // Core op 4 to an actor: its certs; repeated, again (the first may not have got through).
    let op4 = key();
    log.publish(actor(BOB), event(4, 1), op4.clone())
        .await
        .unwrap();
    assert_eq!(
        next_batch(&mut feed).await,
        vec![Invalidation::ActorCerts(BOB.into())]
    );
    log.publish(actor(BOB), event(4, 1), op4).await.unwrap();
    assert_eq!(
        next_batch(&mut feed).await,
        vec![Invalidation::ActorCerts(BOB.into())]
    );
    // Core op 6 to everyone: the server's certs.
    log.publish(Audience::Server, event(6, 1), key())
        .await
        .unwrap();
    assert_eq!(next_batch(&mut feed).await, vec![Invalidation::Server]);
    // Other events invalidate nothing: the next batch is the explicit one.
    log.publish(actor(ALICE), event(1, 1), key()).await.unwrap();
    publish_to(&log, &session(ALICE, "b"), 1).await;
    let explicit = vec![
        Invalidation::ActorProviders("bob".into()),
        Invalidation::AllPublic,
    ];
    log.invalidate(explicit.clone().into()).await.unwrap();
    assert_eq!(next_batch(&mut feed).await, explicit);
    // A second feed sees what is broadcast after it went live.
    let mut second = log.watch_invalidations();
    assert!(matches!(
        second.recv().await.unwrap().unwrap(),
        Notice::Live
    ));
    log.invalidate(vec![Invalidation::Server].into())
        .await
        .unwrap();
    assert_eq!(next_batch(&mut feed).await, vec![Invalidation::Server]);
    assert_eq!(next_batch(&mut second).await, vec![Invalidation::Server]);
}

macro_rules! conformance {
    ($($name:ident: $limits:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(crate::common::memory_log(super::$limits())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::redis_log(super::$limits()).await).await;
                }
            )*
        }
    };
}

conformance!(
    positions_count_from_one_in_each_session: defaults,
    the_log_keeps_the_newest_events_up_to_its_bound: small,
    actor_events_reach_every_open_session_but_the_excepted_one: defaults,
    server_events_reach_every_open_session: defaults,
    a_server_event_reaches_sessions_by_the_hundred: defaults,
    a_session_event_reaches_that_session_and_opens_it: defaults,
    a_repeated_idempotency_key_appends_nothing: defaults,
    concurrent_repeats_of_one_publication_append_it_once: defaults,
    closing_a_session_drops_its_data_and_stops_its_events: defaults,
    a_closed_session_is_reopened_only_by_open_and_continues_its_positions: defaults,
    gateway_calls_open_unknown_sessions_implicitly: defaults,
    the_least_recently_active_session_goes_beyond_the_per_actor_bound: three_per_actor,
    the_least_recently_active_actor_goes_beyond_the_server_bound: two_actors,
    a_stream_whose_log_was_dropped_ends_and_asks_for_a_reconnect: two_per_actor,
    memberships_expire_unless_refreshed: short_lived,
    idempotency_keys_are_forgotten_after_their_lifetime: short_idempotency,
    a_closed_mark_expires: short_lived,
    beyond_its_capacity_the_oldest_idempotency_key_is_forgotten: three_keys,
    poll_returns_what_is_new_and_advances_its_cursor: defaults,
    poll_keeps_the_newest_when_more_are_pending: defaults,
    poll_reports_what_the_log_bound_dropped: small,
    recorded_deliveries_move_the_cursor_forward_only: defaults,
    resume_continues_after_what_the_connection_delivered: defaults,
    resume_is_refused_once_missed_events_are_gone: small,
    subscribe_replays_the_backlog_then_streams_live_events: defaults,
    subscribe_only_new_skips_the_backlog: defaults,
    closing_ends_every_stream_of_the_session_with_closed: defaults,
    caught_up_marks_the_end_of_the_backlog_once_when_asked: defaults,
    a_slow_subscriber_blocks_neither_a_fast_one_nor_publishing: defaults,
    a_lagging_subscriber_is_told_what_the_log_dropped: small,
    invalidation_feeds_go_live_then_carry_derived_and_explicit_invalidations: defaults,
);

#[tokio::test(start_paused = true)]
async fn the_memory_store_holds_data_only_for_open_sessions_and_sweeps_the_rest() {
    use std::sync::Arc;

    use p2_events::store::{EventStore, MemoryEventStore};
    use p2_events::wake::Wakeups;

    let limits = Limits {
        max_sessions_per_actor: 2,
        ..short_lived()
    };
    let store = Arc::new(MemoryEventStore::new(limits, Wakeups::new()));
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let log = EventLog::new(dyn_store, tokio_util::sync::CancellationToken::new());
    for i in 0..4 {
        log.open(&session(ALICE, &format!("s{i}"))).await.unwrap();
        tick().await;
    }
    log.open(&session(BOB, "b")).await.unwrap();
    assert_eq!(store.sessions(), 3, "two of alice's, one of bob's");
    log.close(&session(BOB, "b")).await.unwrap();
    assert_eq!((store.sessions(), store.closed_marks()), (2, 1));
    publish_to(&log, &session(ALICE, "s3"), 3).await;
    assert_eq!(store.idempotency_keys(), 3);
    // Past every lifetime and the sweep interval: the next write clears it all.
    tokio::time::sleep(p2_events::store::memory::PURGE_INTERVAL).await;
    log.publish(actor(ALICE), event(3, 1), key()).await.unwrap();
    assert_eq!(
        (
            store.sessions(),
            store.closed_marks(),
            store.idempotency_keys()
        ),
        (0, 0, 1)
    );
}
