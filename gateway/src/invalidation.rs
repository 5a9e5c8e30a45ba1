//! The gateway's end of the invalidation feed (`events.WatchInvalidations`): what lets every
//! replica cache tokens and public reads although mutations happen through the others.
//!
//! - While the feed is **live**, the token cache serves and stores ([`TokenCache::set_live`]);
//!   each relayed invalidation drops what it names at once: an ended session's token, an
//!   actor's certs or discovery entries, the server's certs, or every public read.
//! - When the feed ends (the events service restarts, loses its Redis Pub/Sub connection,
//!   finds this gateway too far behind, or cannot be reached) the token cache stops serving
//!   and forgets everything, and the public cache falls back to its TTL; the gateway
//!   resubscribes with a backoff ([`RETRY_MIN`] doubling to [`RETRY_MAX`]).
//! - When a feed goes live, both caches are dropped: invalidations may have been missed
//!   in between.
//!
//! The other direction: what a mutation served here affects is sent to every other gateway
//! with `events.Invalidate` ([`forward`]), best effort (the public cache's TTL bounds what a
//! lost call costs; token revocations do not depend on it — the events service derives them
//! from the sessions the session service closes through its durable outbox).

use std::time::Duration;

use p2_proto::events::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::cache::{Scope, Target};

/// First delay before resubscribing after the feed ended.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between two subscription attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Deadline of one `events.Invalidate` call.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies one relayed invalidation to this gateway's caches.
fn apply(state: &AppState, invalidation: &pb::Invalidation) {
    use pb::invalidation::Target as T;
    match invalidation.target.as_ref() {
        Some(T::Session(session)) => state
            .token_cache()
            .invalidate_session(&session.fid, &session.session_id),
        Some(T::ActorCerts(actor)) => state.cache().invalidate(&Scope::actor_certs(actor)),
        Some(T::ActorProviders(actor)) => state.cache().invalidate(&Scope::discovery(actor)),
        Some(T::Server(_)) => state.cache().invalidate(&Scope::Server),
        // A target this gateway does not know (a newer events service): assume the worst.
        Some(T::AllPublic(_)) | None => state.cache().clear(),
    }
}

/// Follows the feed until `shutdown`: subscribes, applies, resubscribes when it ends.
pub async fn follow(state: AppState, shutdown: CancellationToken) {
    let mut delay = RETRY_MIN;
    loop {
        let live = tokio::select! {
            () = shutdown.cancelled() => break,
            live = follow_once(&state) => live,
        };
        state.token_cache().set_live(false);
        if live {
            delay = RETRY_MIN;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
    state.token_cache().set_live(false);
}

/// One subscription: returns once it ended, saying whether it had gone live.
async fn follow_once(state: &AppState) -> bool {
    let mut stream = match state
        .events()
        .watch_invalidations(pb::WatchInvalidationsRequest {})
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "cannot follow the invalidation feed");
            return false;
        }
    };
    let mut live = false;
    loop {
        match stream.message().await {
            Ok(Some(notice)) => {
                if notice.live && !live {
                    live = true;
                    state.cache().clear();
                    state.token_cache().set_live(true);
                    tracing::info!("the invalidation feed is live: caches in use");
                }
                if live {
                    for invalidation in &notice.invalidations {
                        apply(state, invalidation);
                    }
                }
            }
            Err(status) => {
                if live {
                    tracing::warn!(code = ?status.code(), message = status.message(), "the invalidation feed ended: token cache off until it is back");
                }
                return live;
            }
            Ok(None) => return live,
        }
    }
}

/// The feed's form of what a mutation declared (token targets stay local: the events service
/// derives token revocations from closed sessions itself).
fn to_pb(targets: &[Target]) -> Vec<pb::Invalidation> {
    use pb::invalidation::Target as T;
    targets
        .iter()
        .filter_map(|target| {
            let target = match target {
                Target::Public(Scope::Server) => T::Server(pb::ServerAudience {}),
                Target::Public(Scope::ActorCerts(actor)) => T::ActorCerts(actor.to_string()),
                Target::Public(Scope::Discovery(actor)) => T::ActorProviders(actor.to_string()),
                Target::AllPublic => T::AllPublic(pb::ServerAudience {}),
                Target::Public(Scope::Tokens) | Target::AllTokens => return None,
            };
            Some(pb::Invalidation {
                target: Some(target),
            })
        })
        .collect()
}

/// Tells every other gateway what a mutation served here affects, in the background.
pub fn forward(state: &AppState, targets: &[Target]) {
    let invalidations = to_pb(targets);
    if invalidations.is_empty() {
        return;
    }
    let mut events = state.events();
    tokio::spawn(async move {
        let call = events.invalidate(pb::InvalidateRequest { invalidations });
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "cannot forward an invalidation to the other gateways");
            }
            Err(_) => tracing::debug!("forwarding an invalidation timed out"),
        }
    });
}
