//! Service tests calling the `Session` gRPC trait directly, over real SQLite and the
//! in-process challenge store; identity is either unreachable or the in-process fake (which
//! checks the session component's credential and verifies every caller assertion it gets).

use std::collections::HashSet;
use std::time::Duration;

use p2_model::{FederationId, SessionId};
use p2_proto::common::v1::{Caller, CallerAssertion};
use p2_proto::session::v1 as pb;
use p2_proto::session::v1::session_server::Session as _;
use p2_runtime::error::Reason;
use p2_runtime::internal::{InternalKey, unix_now_ms};
use p2_session::SessionGrpc;
use p2_session::token::SessionToken;
use tonic::{Code, Request};

use crate::common::{service_with_fake_identity, service_with_identity, service_without_identity};
use crate::fake_identity::{self, ALICE, Asserted, PASSWORD};

/// An assertion for the session (fid, session_id) minted with the service's own key and valid
/// for a minute: what Authenticate hands out for such a session.
fn caller(grpc: &SessionGrpc, fid: &str, session_id: &str) -> CallerAssertion {
    CallerAssertion {
        token: grpc
            .assertion_key()
            .mint(fid, session_id, unix_now_ms() + 60_000),
    }
}

/// A token for the session (fid, session_id), stored the way a login or a new ID-Cert stores
/// it (without identity: only the token matters).
async fn create(grpc: &SessionGrpc, fid: &str, session_id: &str) -> String {
    grpc.issue_token(
        &FederationId::parse(fid).unwrap(),
        &SessionId::parse(session_id).unwrap(),
    )
    .await
    .unwrap()
    .into_string()
}

async fn resolve(
    grpc: &SessionGrpc,
    token: &str,
) -> Result<pb::AuthenticateResponse, tonic::Status> {
    grpc.authenticate(Request::new(pb::AuthenticateRequest {
        token: token.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn authenticate(grpc: &SessionGrpc, token: &str) -> Result<Caller, tonic::Status> {
    resolve(grpc, token).await.map(|r| r.caller.unwrap())
}

/// The caller assertion Authenticate mints for `token`.
async fn assertion_of(grpc: &SessionGrpc, token: &str) -> CallerAssertion {
    resolve(grpc, token).await.unwrap().assertion.unwrap()
}

async fn challenge(grpc: &SessionGrpc, who: &CallerAssertion) -> pb::CreateChallengeResponse {
    grpc.create_challenge(Request::new(pb::CreateChallengeRequest {
        caller: Some(who.clone()),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn verify(
    grpc: &SessionGrpc,
    who: &CallerAssertion,
    challenge: &str,
    signature: &str,
) -> Result<(), tonic::Status> {
    grpc.verify_challenge_solution(Request::new(pb::VerifyChallengeSolutionRequest {
        caller: Some(who.clone()),
        challenge: challenge.into(),
        signature: signature.into(),
    }))
    .await
    .map(|_| ())
}

async fn delete(
    grpc: &SessionGrpc,
    who: &CallerAssertion,
    session_id: Option<&str>,
    sensitive_solution: Option<&str>,
) -> Result<(), tonic::Status> {
    grpc.delete_session(Request::new(pb::DeleteSessionRequest {
        caller: Some(who.clone()),
        session_id: session_id.map(Into::into),
        sensitive_solution: sensitive_solution.map(Into::into),
    }))
    .await
    .map(|_| ())
}

async fn request_id_cert(
    grpc: &SessionGrpc,
    who: &CallerAssertion,
    csr: Vec<u8>,
    sensitive_solution: &str,
) -> Result<pb::RequestIdCertResponse, tonic::Status> {
    // The inherent `request_id_cert` (the typed operation) shadows the RPC.
    pb::session_server::Session::request_id_cert(
        grpc,
        Request::new(pb::RequestIdCertRequest {
            caller: Some(who.clone()),
            csr,
            sensitive_solution: sensitive_solution.into(),
        }),
    )
    .await
    .map(|r| r.into_inner())
}

async fn login(
    grpc: &SessionGrpc,
    local_name: &str,
    password: &str,
    csr: Vec<u8>,
) -> Result<pb::LoginResponse, tonic::Status> {
    grpc.login(Request::new(pb::LoginRequest {
        local_name: local_name.into(),
        password: password.into(),
        csr,
    }))
    .await
    .map(|r| r.into_inner())
}

// ---- Tokens and assertions (no identity needed) ----

#[tokio::test]
async fn a_created_session_authenticates_until_it_is_deleted() {
    let (grpc, _dir) = service_without_identity().await;
    let token = create(&grpc, "Alice@Example.com", "laptop").await;
    assert_eq!(token.len(), 64);
    let who = authenticate(&grpc, &token).await.unwrap();
    assert_eq!(who.fid, ALICE, "FIDs are normalised");
    assert_eq!(who.session_id, "laptop");
    assert!(grpc.sessions().delete(ALICE, "laptop").await.unwrap());
    let status = authenticate(&grpc, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "unknown session token");
}

#[tokio::test]
async fn authenticate_mints_an_assertion_of_the_tokens_session_that_expires_within_the_ttl() {
    let (grpc, _dir) = service_without_identity().await;
    assert_eq!(
        grpc.assertion_ttl_ms(),
        p2_runtime::internal::DEFAULT_ASSERTION_TTL_MS
    );
    let key = InternalKey::generate();
    let ttl_ms = 5_000;
    let (grpc, _dir2) = service_with_identity(
        key.clone(),
        crate::common::DEAD_IDENTITY_URL,
        Duration::from_secs(300),
    )
    .await;
    let grpc = grpc.with_assertion_ttl_ms(ttl_ms);
    assert_eq!(grpc.assertion_ttl_ms(), ttl_ms);
    let token = create(&grpc, ALICE, "laptop").await;
    let phone = create(&grpc, ALICE, "phone").await;
    let before = unix_now_ms();
    let resolved = resolve(&grpc, &token).await.unwrap();
    let after = unix_now_ms();
    assert_eq!(
        resolved.caller.as_ref().unwrap(),
        &Caller {
            fid: ALICE.into(),
            session_id: "laptop".into(),
        }
    );
    let expires = resolved.assertion_expires_ms;
    assert!(expires > after, "{expires} is not in the future ({after})");
    assert!(
        (before + ttl_ms..=after + ttl_ms).contains(&expires),
        "{expires} is not the configured {ttl_ms} ms ahead of [{before}, {after}]"
    );
    // It is the deployment key's assertion of exactly this session, until it expires.
    let proof = resolved.assertion.unwrap().token;
    let verified = key.assertion_key().verify(&proof, after).unwrap();
    assert_eq!(verified.fid, ALICE);
    assert_eq!(verified.session_id, "laptop");
    assert_eq!(verified.expires_ms, expires);
    assert_eq!(
        key.assertion_key().verify(&proof, expires),
        Err(p2_runtime::internal::AssertionError::Expired)
    );
    assert!(
        InternalKey::generate()
            .assertion_key()
            .verify(&proof, after)
            .is_err(),
        "another deployment's key does not verify it"
    );
    // Each token gets its own session's assertion.
    let other = resolve(&grpc, &phone)
        .await
        .unwrap()
        .assertion
        .unwrap()
        .token;
    let verified = key.assertion_key().verify(&other, unix_now_ms()).unwrap();
    assert_eq!(verified.session_id, "phone");
    // A token that does not resolve gets no assertion at all.
    let status = resolve(&grpc, &SessionToken::generate().into_string())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn renewing_a_session_kills_its_old_token() {
    let (grpc, _dir) = service_without_identity().await;
    let old = create(&grpc, ALICE, "laptop").await;
    let new = create(&grpc, ALICE, "laptop").await;
    assert_ne!(old, new);
    assert_eq!(
        authenticate(&grpc, &old).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        authenticate(&grpc, &new).await.unwrap().session_id,
        "laptop"
    );
    // Another session of the same actor is untouched.
    let phone = create(&grpc, ALICE, "phone").await;
    create(&grpc, ALICE, "laptop").await;
    assert_eq!(
        authenticate(&grpc, &phone).await.unwrap().session_id,
        "phone"
    );
}

#[tokio::test]
async fn malformed_and_unknown_tokens_are_unauthenticated() {
    let (grpc, _dir) = service_without_identity().await;
    let real = create(&grpc, ALICE, "laptop").await;
    let mut flipped = real.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    for token in [
        String::new(),
        "not a token".into(),
        real[..63].into(),
        format!("{real}0"),
        format!("Bearer {real}"),
        String::from_utf8(flipped).unwrap(),
        SessionToken::generate().into_string(),
    ] {
        let status = authenticate(&grpc, &token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), "unknown session token");
    }
}

#[tokio::test]
async fn assertions_naming_invalid_fids_or_session_ids_are_refused() {
    // Even with this deployment's key, an assertion must name a valid actor and session: only
    // a broken minter could produce these.
    let (grpc, _dir) = service_without_identity().await;
    for (fid, session_id) in [
        ("nobody", "laptop"),
        ("a@b@c", "laptop"),
        (ALICE, ""),
        (ALICE, &"x".repeat(33)),
        (ALICE, "tab\there"),
    ] {
        let status = grpc
            .create_challenge(Request::new(pb::CreateChallengeRequest {
                caller: Some(caller(&grpc, fid, session_id)),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{fid:?} {session_id:?}"
        );
    }
}

// ---- Challenges (no identity needed) ----

#[tokio::test]
async fn challenges_have_64_characters_of_every_class_and_are_unique() {
    let (grpc, _dir) = service_without_identity().await;
    let mut seen = HashSet::new();
    for i in 0..1000 {
        // Spread over sessions: one session may hold only so many pending challenges.
        let who = caller(&grpc, ALICE, &format!("laptop {}", i / 50));
        let c = challenge(&grpc, &who).await.challenge;
        assert_eq!(c.len(), 64);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()), "{c}");
        assert!(c.bytes().any(|b| b.is_ascii_lowercase()), "{c}");
        assert!(c.bytes().any(|b| b.is_ascii_uppercase()), "{c}");
        assert!(c.bytes().any(|b| b.is_ascii_digit()), "{c}");
        assert!(seen.insert(c));
    }
}

#[tokio::test]
async fn a_session_at_its_challenge_cap_is_refused_while_other_sessions_still_get_challenges() {
    let (grpc, _dir) = service_without_identity().await;
    let grpc = grpc.with_max_challenges_per_session(4);
    let flooder = caller(&grpc, ALICE, "laptop");
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(challenge(&grpc, &flooder).await.challenge);
    }
    for _ in 0..3 {
        let status = grpc
            .create_challenge(Request::new(pb::CreateChallengeRequest {
                caller: Some(flooder.clone()),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .contains("this session already has 4 pending challenges"),
            "{}",
            status.message()
        );
    }
    // Another actor, and another session of the same actor, are not locked out.
    for other in [
        caller(&grpc, "bob@example.com", "laptop"),
        caller(&grpc, ALICE, "phone"),
    ] {
        for _ in 0..4 {
            challenge(&grpc, &other).await;
        }
    }
    // Using a challenge (whatever the outcome: identity is unreachable here) frees its slot.
    let used = verify(&grpc, &flooder, &pending[0], "00")
        .await
        .unwrap_err();
    assert_eq!(used.code(), Code::Unavailable, "{used:?}");
    challenge(&grpc, &flooder).await;
    let status = grpc
        .create_challenge(Request::new(pb::CreateChallengeRequest {
            caller: Some(flooder.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // The challenges pending before the refusals are still valid: nothing was dropped.
    let status = verify(&grpc, &flooder, &pending[3], "00")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn expired_challenges_free_their_sessions_slots() {
    let (grpc, _dir) = service_with_identity(
        InternalKey::generate(),
        crate::common::DEAD_IDENTITY_URL,
        Duration::from_secs(60),
    )
    .await;
    let grpc = grpc.with_max_challenges_per_session(2);
    let who = caller(&grpc, ALICE, "laptop");
    challenge(&grpc, &who).await;
    challenge(&grpc, &who).await;
    let request = || {
        Request::new(pb::CreateChallengeRequest {
            caller: Some(who.clone()),
        })
    };
    let status = grpc.create_challenge(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // The challenge path touches no SQL, so time can be paused safely from here.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    challenge(&grpc, &who).await;
    challenge(&grpc, &who).await;
    let status = grpc.create_challenge(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn challenges_expire_after_the_configured_ttl() {
    let (grpc, _dir) = service_with_identity(
        InternalKey::generate(),
        crate::common::DEAD_IDENTITY_URL,
        Duration::from_secs(120),
    )
    .await;
    let who = caller(&grpc, ALICE, "laptop");
    let before = p2_runtime::unix_now();
    let issued = challenge(&grpc, &who).await;
    let after = p2_runtime::unix_now();
    assert!(
        (before + 120..=after + 120).contains(&issued.expires),
        "{}",
        issued.expires
    );
    // The challenge path touches no SQL, so time can be paused safely from here. (Assertions
    // expire by the wall clock, which pausing does not move.)
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(121)).await;
    let status = verify(&grpc, &who, &issued.challenge, "00")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("challenge unknown, already used or expired"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_challenge_is_used_up_by_its_first_attempt() {
    let (grpc, _dir) = service_without_identity().await;
    let who = caller(&grpc, ALICE, "laptop");
    let issued = challenge(&grpc, &who).await;
    // First attempt: taken from the store, then identity (unreachable) was asked for the cert.
    let first = verify(&grpc, &who, &issued.challenge, "00")
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    let again = verify(&grpc, &who, &issued.challenge, "00")
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(
        again.message().contains("already used"),
        "{}",
        again.message()
    );
}

#[tokio::test]
async fn a_challenge_of_another_session_is_denied_and_used_up() {
    let (grpc, _dir) = service_without_identity().await;
    let laptop = caller(&grpc, ALICE, "laptop");
    let issued = challenge(&grpc, &laptop).await;
    for thief in [
        caller(&grpc, ALICE, "phone"),
        caller(&grpc, "bob@example.com", "laptop"),
    ] {
        let issued = challenge(&grpc, &laptop).await;
        let status = verify(&grpc, &thief, &issued.challenge, "00")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("another session"),
            "{}",
            status.message()
        );
        let status = verify(&grpc, &laptop, &issued.challenge, "00")
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "consumed by the foreign attempt"
        );
    }
    // Made-up and absurd challenges are unknown.
    for made_up in [
        String::new(),
        "x".repeat(300),
        "a:b".into(),
        issued.challenge.to_lowercase(),
    ] {
        let status = verify(&grpc, &laptop, &made_up, "00").await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{made_up:?}");
    }
}

#[tokio::test]
async fn requests_without_a_valid_caller_or_target_are_refused() {
    let (grpc, _dir) = service_without_identity().await;
    let status = grpc
        .create_challenge(Request::new(pb::CreateChallengeRequest { caller: None }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = delete(&grpc, &caller(&grpc, "not-a-fid", "laptop"), None, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = delete(
        &grpc,
        &caller(&grpc, ALICE, "laptop"),
        Some(""),
        Some(PASSWORD),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("session_id"),
        "{}",
        status.message()
    );
    let status = request_id_cert(&grpc, &caller(&grpc, ALICE, "laptop"), Vec::new(), PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("csr"), "{}", status.message());
}

#[tokio::test]
async fn one_client_holds_at_most_its_bound_of_pending_key_trials() {
    let (grpc, _dir) = service_without_identity().await;
    for _ in 0..p2_session::federation::DEFAULT_MAX_KEY_TRIALS_PER_CLIENT {
        grpc.create_key_trial(Request::new(pb::CreateKeyTrialRequest {}))
            .await
            .unwrap();
    }
    let status = grpc
        .create_key_trial(Request::new(pb::CreateKeyTrialRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("pending key trials"),
        "{}",
        status.message()
    );
    // Another client address is not affected.
    let other = p2_runtime::internal::with_client_address(
        Some("192.0.2.7".parse().unwrap()),
        grpc.create_key_trial(Request::new(pb::CreateKeyTrialRequest {})),
    )
    .await;
    assert!(other.is_ok());
}

#[tokio::test]
async fn key_trials_are_issued_single_use_and_local_actors_cannot_use_them() {
    let (grpc, _dir) = service_without_identity().await;
    let trial = grpc
        .create_key_trial(Request::new(pb::CreateKeyTrialRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trial.trial.len(), p2_model::KEY_TRIAL_LEN);
    assert!(trial.expires > p2_runtime::unix_now());
    // An actor of this server logs in with its password, not a key trial.
    let status = grpc
        .complete_key_trial(Request::new(pb::CompleteKeyTrialRequest {
            fid: ALICE.into(),
            serial_number: "1".into(),
            signature: "00".into(),
            id_cert_pem: None,
            trial: trial.trial.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A foreign actor with an unknown trial: refused before any outbound request.
    let status = grpc
        .complete_key_trial(Request::new(pb::CompleteKeyTrialRequest {
            fid: "alice@elsewhere.test".into(),
            serial_number: "1".into(),
            signature: "00".into(),
            id_cert_pem: None,
            trial: "nosuchtrial".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("key trial unknown"),
        "{}",
        status.message()
    );
    // A local session has no foreign cert to announce.
    create(&grpc, ALICE, "laptop").await;
    let status = grpc
        .update_foreign_id_cert(Request::new(pb::UpdateForeignIdCertRequest {
            caller: Some(caller(&grpc, ALICE, "laptop")),
            id_cert_pem: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

// ---- The caller boundary ----

/// Calls every RPC that takes a caller, with `who` as the caller and otherwise valid requests
/// for ALICE's session "laptop" (a CSR, the password, a pending challenge and its signature),
/// so that only the caller can make them fail.
async fn call_every_rpc_acting_for(
    grpc: &SessionGrpc,
    who: Option<CallerAssertion>,
    challenge: &str,
    signature: &str,
    cert_pem: &str,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let (csr, _) = fake_identity::csr("phone");
    vec![
        (
            "RequestIdCert",
            pb::session_server::Session::request_id_cert(
                grpc,
                Request::new(pb::RequestIdCertRequest {
                    caller: who.clone(),
                    csr,
                    sensitive_solution: PASSWORD.into(),
                }),
            )
            .await
            .map(|_| ()),
        ),
        (
            "DeleteSession",
            grpc.delete_session(Request::new(pb::DeleteSessionRequest {
                caller: who.clone(),
                session_id: None,
                sensitive_solution: Some(PASSWORD.into()),
            }))
            .await
            .map(|_| ()),
        ),
        (
            "CreateChallenge",
            grpc.create_challenge(Request::new(pb::CreateChallengeRequest {
                caller: who.clone(),
            }))
            .await
            .map(|_| ()),
        ),
        (
            "VerifyChallengeSolution",
            grpc.verify_challenge_solution(Request::new(pb::VerifyChallengeSolutionRequest {
                caller: who.clone(),
                challenge: challenge.into(),
                signature: signature.into(),
            }))
            .await
            .map(|_| ()),
        ),
        (
            "UpdateForeignIdCert",
            grpc.update_foreign_id_cert(Request::new(pb::UpdateForeignIdCertRequest {
                caller: who,
                id_cert_pem: cert_pem.into(),
            }))
            .await
            .map(|_| ()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_acting_for_a_caller_refuses_missing_forged_and_expired_assertions() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let genuine = assertion_of(&grpc, &session.token).await;
    let pending = challenge(&grpc, &genuine).await.challenge;
    let signature = p2_model::sign_hex(&key, pending.as_bytes());
    let now = unix_now_ms();
    let mut tampered = genuine.token.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let refused = [
        ("missing", None),
        ("empty", Some(CallerAssertion { token: Vec::new() })),
        (
            "minted with another deployment's key",
            Some(CallerAssertion {
                token: InternalKey::generate()
                    .assertion_key()
                    .mint(ALICE, "laptop", now + 60_000),
            }),
        ),
        (
            "expired",
            Some(CallerAssertion {
                token: grpc.assertion_key().mint(ALICE, "laptop", now - 1_000),
            }),
        ),
        ("tampered", Some(CallerAssertion { token: tampered })),
        (
            "a component credential",
            Some(CallerAssertion {
                token: hex::decode(
                    InternalKey::generate()
                        .credential(p2_runtime::internal::Component::Gateway)
                        .to_hex(),
                )
                .unwrap(),
            }),
        ),
    ];
    for (what, who) in refused {
        let results =
            call_every_rpc_acting_for(&grpc, who, &pending, &signature, &session.id_cert_pem).await;
        assert_eq!(results.len(), 5);
        for (rpc, result) in results {
            let status = result.expect_err(&format!("{rpc} accepted a {what} assertion"));
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{rpc}, {what}: {status:?}"
            );
            assert!(
                status.message().contains("assertion"),
                "{rpc}, {what}: {}",
                status.message()
            );
        }
    }
    // Nothing happened: no cert was issued or revoked, the session lives, nothing reached
    // identity for a caller, and the challenge was not even used up.
    let issued = identity.issued();
    assert_eq!(issued.len(), 1);
    assert!(issued[0].revoked_at.is_none());
    assert!(identity.asserted().is_empty(), "{:?}", identity.asserted());
    assert!(authenticate(&grpc, &session.token).await.is_ok());
    assert_eq!(grpc.sessions().list(ALICE).await.unwrap().len(), 1);
    verify(&grpc, &genuine, &pending, &signature).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_of_another_deployment_is_refused_by_a_service_sharing_its_database() {
    // Two deployments, one sessions table: the token resolves in both, but each one's
    // assertions are worthless to the other.
    let (ours, _dir) = service_without_identity().await;
    let token = create(&ours, ALICE, "laptop").await;
    let theirs = p2_session::SessionGrpc::new(
        InternalKey::generate(),
        ours.sessions().clone(),
        std::sync::Arc::new(p2_session::storage::MemoryChallengeStore::default()),
        crate::common::identity_client(crate::common::DEAD_IDENTITY_URL, &InternalKey::generate()),
        crate::common::events_client(crate::common::DEAD_EVENTS_URL, &InternalKey::generate()),
        Duration::from_secs(300),
    )
    .with_federation(
        "example.com",
        p2_session::federation::Federation::in_memory().unwrap(),
    )
    .unwrap();
    let foreign = assertion_of(&theirs, &token).await;
    let status = ours
        .create_challenge(Request::new(pb::CreateChallengeRequest {
            caller: Some(foreign),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let own = assertion_of(&ours, &token).await;
    challenge(&ours, &own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesting_an_id_cert_for_a_deleted_session_is_unauthenticated() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &session.token).await;
    delete(&grpc, &who, None, None).await.unwrap();
    // The assertion itself is still unexpired, but its session is gone.
    let (csr, _) = fake_identity::csr("phone");
    let status = request_id_cert(&grpc, &who, csr, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // So is a session that never existed.
    let (csr, _) = fake_identity::csr("phone");
    let status = request_id_cert(&grpc, &caller(&grpc, ALICE, "ghost"), csr, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Identity was never asked to sign, and nothing usable is left.
    assert!(
        identity.asserted().iter().all(|a| a.rpc != "SignCsr"),
        "{:?}",
        identity.asserted()
    );
    assert_eq!(identity.issued().len(), 1);
    assert!(grpc.sessions().list(ALICE).await.unwrap().is_empty());
}

// ---- Deleting sessions ----

#[tokio::test]
async fn a_deleted_sessions_assertion_cannot_delete_other_sessions() {
    let (grpc, _dir) = service_without_identity().await;
    let phone = create(&grpc, ALICE, "phone").await;
    // laptop's assertion is unexpired, but laptop has no session (any more).
    let status = delete(
        &grpc,
        &caller(&grpc, ALICE, "laptop"),
        Some("phone"),
        Some(PASSWORD),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(grpc.authenticate_token(&phone).await.is_ok());
}

#[tokio::test]
async fn deleting_another_session_needs_the_sensitive_solution() {
    let (grpc, _dir) = service_without_identity().await;
    let phone = create(&grpc, ALICE, "phone").await;
    create(&grpc, ALICE, "laptop").await;
    let laptop = caller(&grpc, ALICE, "laptop");
    for solution in [None, Some("")] {
        let status = delete(&grpc, &laptop, Some("phone"), solution)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{solution:?}");
        assert_eq!(
            Reason::of(&status),
            Some(Reason::SensitiveSolutionRequired),
            "{status:?}"
        );
        assert!(
            status.message().contains("sensitive action"),
            "{}",
            status.message()
        );
    }
    assert!(
        authenticate(&grpc, &phone).await.is_ok(),
        "nothing was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_another_session_with_a_wrong_or_no_solution_leaves_it_working() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let (csr, _) = fake_identity::csr("phone");
    let phone = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &laptop.token).await;
    // Without a solution, identity is not even asked.
    let status = delete(&grpc, &who, Some("phone"), None).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(Reason::of(&status), Some(Reason::SensitiveSolutionRequired));
    assert!(identity.asserted().is_empty(), "{:?}", identity.asserted());
    // A wrong one is identity's refusal, passed on with its reason.
    let status = delete(&grpc, &who, Some("phone"), Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        Reason::of(&status),
        Some(Reason::SensitiveSolutionWrong),
        "{status:?}"
    );
    assert_eq!(
        identity.asserted(),
        [Asserted::new("VerifySensitiveSolution", ALICE, "laptop")],
        "the laptop's own assertion was checked, and nothing was revoked"
    );
    assert!(identity.issued().iter().all(|c| c.revoked_at.is_none()));
    assert_eq!(
        authenticate(&grpc, &phone.token).await.unwrap().session_id,
        "phone"
    );
    assert!(authenticate(&grpc, &laptop.token).await.is_ok());
}

#[tokio::test]
async fn deleting_a_session_while_identity_is_down_changes_nothing() {
    let (grpc, _dir) = service_without_identity().await;
    let token = create(&grpc, ALICE, "laptop").await;
    let who = assertion_of(&grpc, &token).await;
    let status = delete(&grpc, &who, None, None).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "the revocation could not happen: retry"
    );
    // The cert is revoked before the token dies: the token still works, so a retry can finish.
    assert_eq!(
        authenticate(&grpc, &token).await.unwrap().session_id,
        "laptop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_own_session_kills_its_token_and_revokes_its_cert() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &session.token).await;
    delete(&grpc, &who, None, None).await.unwrap();
    assert_eq!(
        authenticate(&grpc, &session.token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let issued = identity.issued();
    assert_eq!(issued.len(), 1);
    assert!(
        issued[0].revoked_at.is_some(),
        "the session's cert was revoked"
    );
    assert_eq!(
        identity.asserted(),
        [Asserted::new("RevokeActorIdCert", ALICE, "laptop")],
        "with the caller's own assertion"
    );
    // Nothing is left of it now (asked from another live session of alice).
    create(&grpc, ALICE, "phone").await;
    let status = delete(
        &grpc,
        &caller(&grpc, ALICE, "phone"),
        Some("laptop"),
        Some(PASSWORD),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_is_deleted_with_the_sensitive_solution() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let (csr, _) = fake_identity::csr("phone");
    let phone = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &laptop.token).await;
    delete(&grpc, &who, Some("phone"), Some(PASSWORD))
        .await
        .unwrap();
    assert_eq!(
        authenticate(&grpc, &phone.token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(authenticate(&grpc, &laptop.token).await.is_ok());
    let revoked: Vec<_> = identity
        .issued()
        .into_iter()
        .filter(|c| c.revoked_at.is_some())
        .map(|c| c.session_id)
        .collect();
    assert_eq!(revoked, ["phone"]);
    // Both identity steps acted on the laptop's proof, not on anything the request claimed.
    assert_eq!(
        identity.asserted(),
        [
            Asserted::new("VerifySensitiveSolution", ALICE, "laptop"),
            Asserted::new("RevokeActorIdCert", ALICE, "laptop"),
        ]
    );
    let status = delete(&grpc, &who, Some("tablet"), Some(PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("tablet"), "{}", status.message());
}

// ---- Login (fake identity) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_issues_a_cert_for_the_csr_key_and_a_token_that_authenticates() {
    let (_identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    assert_eq!(session.session_id, "laptop");
    assert_eq!(session.token.len(), 64);
    let cert = p2_model::IdCert::from_pem(&session.id_cert_pem).unwrap();
    assert_eq!(cert.public_key().unwrap(), key.verifying_key());
    let who = authenticate(&grpc, &session.token).await.unwrap();
    assert_eq!(
        who,
        Caller {
            fid: ALICE.into(),
            session_id: "laptop".into(),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_unauthenticated_and_leaves_nothing_behind() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    for (name, password) in [("alice", "wrong"), ("mallory", PASSWORD)] {
        let (csr, _) = fake_identity::csr("laptop");
        let status = login(&grpc, name, password, csr).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "wrong password or unknown actor");
    }
    assert!(identity.issued().is_empty());
    assert!(grpc.sessions().list(ALICE).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_csr_is_an_invalid_argument_with_the_reason() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let status = login(&grpc, "alice", PASSWORD, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("csr"), "{}", status.message());
    let status = login(
        &grpc,
        "alice",
        PASSWORD,
        b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"
            .to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().is_empty());
    assert!(identity.issued().is_empty());
    assert!(grpc.sessions().list(ALICE).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_held_by_a_valid_cert_is_already_exists() {
    let (_identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let first = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let (csr, _) = fake_identity::csr("laptop");
    let status = login(&grpc, "alice", PASSWORD, csr).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("laptop"), "{}", status.message());
    assert!(
        authenticate(&grpc, &first.token).await.is_ok(),
        "the first session is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_after_deletion_reuses_the_session_id_with_a_new_token() {
    let (_identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let first = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &first.token).await;
    delete(&grpc, &who, None, None).await.unwrap();
    let (csr, _) = fake_identity::csr("laptop");
    let second = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    assert_ne!(first.token, second.token);
    assert_eq!(
        authenticate(&grpc, &first.token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(authenticate(&grpc, &second.token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_session_cannot_be_stored_revokes_its_cert() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    // Storage breaks between the password check and the token write.
    grpc.sessions().database().pool.close().await;
    let (csr, _) = fake_identity::csr("laptop");
    let status = login(&grpc, "alice", PASSWORD, csr).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), p2_runtime::error::INTERNAL_MESSAGE);
    let issued = identity.issued();
    assert_eq!(issued.len(), 1, "identity issued the cert");
    assert!(
        issued[0].revoked_at.is_some(),
        "and the failed login revoked it again"
    );
    assert_eq!(
        identity.asserted(),
        [Asserted::new("RevokeActorIdCert", ALICE, "laptop")],
        "with an assertion of the session being undone"
    );
}

// ---- New ID-Certs (fake identity) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_id_cert_starts_a_new_session_with_its_own_token() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &laptop.token).await;
    let (csr, key) = fake_identity::csr("phone");
    let phone = request_id_cert(&grpc, &who, csr, PASSWORD).await.unwrap();
    assert_eq!(phone.session_id, "phone");
    assert_eq!(phone.token.len(), 64);
    let cert = p2_model::IdCert::from_pem(&phone.id_cert_pem).unwrap();
    assert_eq!(cert.public_key().unwrap(), key.verifying_key());
    assert_eq!(
        authenticate(&grpc, &phone.token).await.unwrap(),
        Caller {
            fid: ALICE.into(),
            session_id: "phone".into(),
        }
    );
    assert!(
        authenticate(&grpc, &laptop.token).await.is_ok(),
        "the asking session is untouched"
    );
    assert_eq!(
        identity.asserted(),
        [Asserted::new("SignCsr", ALICE, "laptop")],
        "identity signed for the laptop's proof"
    );
    // A session ID held by a valid cert is not taken over.
    let (csr, _) = fake_identity::csr("phone");
    let status = request_id_cert(&grpc, &who, csr, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(authenticate(&grpc, &phone.token).await.is_ok());
    assert_eq!(identity.issued().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_id_cert_for_the_own_session_id_renews_it_and_kills_the_old_token() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let old = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &old.token).await;
    let (csr, key) = fake_identity::csr("laptop");
    let renewed = request_id_cert(&grpc, &who, csr, PASSWORD).await.unwrap();
    assert_eq!(renewed.session_id, "laptop");
    assert_ne!(renewed.token, old.token);
    let cert = p2_model::IdCert::from_pem(&renewed.id_cert_pem).unwrap();
    assert_eq!(cert.public_key().unwrap(), key.verifying_key());
    assert_eq!(
        authenticate(&grpc, &old.token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        authenticate(&grpc, &renewed.token)
            .await
            .unwrap()
            .session_id,
        "laptop"
    );
    assert_eq!(grpc.sessions().list(ALICE).await.unwrap().len(), 1);
    let issued = identity.issued();
    assert_eq!(issued.len(), 2);
    assert!(issued[0].revoked_at.is_some(), "the old cert was replaced");
    assert!(issued[1].revoked_at.is_none());
    assert_eq!(issued[1].pem, renewed.id_cert_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_id_cert_needs_the_right_sensitive_solution() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &laptop.token).await;
    for (solution, reason) in [
        ("", Reason::SensitiveSolutionRequired),
        ("wrong", Reason::SensitiveSolutionWrong),
    ] {
        let (csr, _) = fake_identity::csr("phone");
        let status = request_id_cert(&grpc, &who, csr, solution)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{solution:?}");
        assert_eq!(Reason::of(&status), Some(reason), "{status:?}");
    }
    assert_eq!(identity.issued().len(), 1);
    assert_eq!(grpc.sessions().list(ALICE).await.unwrap().len(), 1);
}

// ---- Challenge solutions (fake identity) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_signed_with_the_session_key_is_accepted_once() {
    let (_identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &session.token).await;
    let issued = challenge(&grpc, &who).await;
    let signature = p2_model::sign_hex(&key, issued.challenge.as_bytes());
    verify(&grpc, &who, &issued.challenge, &signature)
        .await
        .unwrap();
    let status = verify(&grpc, &who, &issued.challenge, &signature)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("already used"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_signed_with_another_key_is_denied_and_used_up() {
    let (_identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &session.token).await;
    let issued = challenge(&grpc, &who).await;
    let stranger = p2_model::generate_signing_key();
    let forged = p2_model::sign_hex(&stranger, issued.challenge.as_bytes());
    let status = verify(&grpc, &who, &issued.challenge, &forged)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("does not verify"),
        "{}",
        status.message()
    );
    let genuine = p2_model::sign_hex(&key, issued.challenge.as_bytes());
    let status = verify(&grpc, &who, &issued.challenge, &genuine)
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "the forged attempt used it up"
    );
    // Malformed signatures are denied too.
    let issued = challenge(&grpc, &who).await;
    let status = verify(&grpc, &who, &issued.challenge, "not hex")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_cert_was_revoked_cannot_solve_challenges() {
    let (identity, grpc, _dir) = service_with_fake_identity().await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = assertion_of(&grpc, &session.token).await;
    let issued = challenge(&grpc, &who).await;
    identity.state.issued.lock().unwrap()[0].revoked_at = Some(p2_runtime::unix_now());
    let signature = p2_model::sign_hex(&key, issued.challenge.as_bytes());
    let status = verify(&grpc, &who, &issued.challenge, &signature)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("no valid ID-Cert"),
        "{}",
        status.message()
    );
}

// ---- Start-up ----

#[tokio::test]
async fn open_starts_on_sqlite_with_the_in_process_store_and_rejects_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let key = InternalKey::generate();
    let config = p2_session::SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
        pool: p2_runtime::storage::PoolConfig::default(),
        redis_url: None,
        redis_prefix: p2_session::storage::redis::DEFAULT_PREFIX.to_owned(),
        domain: "example.com".to_owned(),
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        outbox: p2_outbox::OutboxConfig::new(crate::common::DEAD_EVENTS_URL),
        shutdown: p2_runtime::config::ShutdownConfig::immediate(),
        options: p2_session::SessionOptions::default(),
        internal: p2_runtime::internal::InternalKeyConfig::with_key(&key),
    };
    let grpc = p2_session::SessionGrpc::open(&config).await.unwrap();
    assert_eq!(grpc.challenge_ttl(), Duration::from_secs(300));
    assert_eq!(
        grpc.max_challenges_per_session(),
        p2_session::DEFAULT_MAX_CHALLENGES_PER_SESSION
    );
    assert_eq!(
        grpc.assertion_ttl_ms(),
        p2_runtime::internal::DEFAULT_ASSERTION_TTL_MS
    );
    let token = create(&grpc, ALICE, "laptop").await;
    // A restart on the same database keeps the session, and mints with the configured key.
    drop(grpc);
    let grpc = p2_session::SessionGrpc::open(&config).await.unwrap();
    let proof = assertion_of(&grpc, &token).await.token;
    assert_eq!(
        key.assertion_key()
            .verify(&proof, unix_now_ms())
            .unwrap()
            .session_id,
        "laptop"
    );
    for (broken, variable) in [
        (
            p2_session::SessionConfig {
                options: p2_session::SessionOptions {
                    challenge_ttl_secs: 0,
                    ..p2_session::SessionOptions::default()
                },
                ..config.clone()
            },
            "P2_CHALLENGE_TTL_SECS",
        ),
        (
            p2_session::SessionConfig {
                options: p2_session::SessionOptions {
                    assertion_ttl_ms: 999,
                    ..p2_session::SessionOptions::default()
                },
                ..config.clone()
            },
            "P2_ASSERTION_TTL_MS",
        ),
        (
            p2_session::SessionConfig {
                options: p2_session::SessionOptions {
                    assertion_ttl_ms: 600_001,
                    ..p2_session::SessionOptions::default()
                },
                ..config.clone()
            },
            "P2_ASSERTION_TTL_MS",
        ),
        (
            p2_session::SessionConfig {
                options: p2_session::SessionOptions {
                    max_challenges_per_session: 0,
                    ..p2_session::SessionOptions::default()
                },
                ..config.clone()
            },
            "P2_MAX_CHALLENGES_PER_SESSION",
        ),
        (
            p2_session::SessionConfig {
                options: p2_session::SessionOptions {
                    max_pending_challenges: 0,
                    ..p2_session::SessionOptions::default()
                },
                ..config.clone()
            },
            "P2_MAX_PENDING_CHALLENGES",
        ),
        (
            p2_session::SessionConfig {
                internal: p2_runtime::internal::InternalKeyConfig::default(),
                ..config.clone()
            },
            "P2_INTERNAL_KEY",
        ),
        (
            p2_session::SessionConfig {
                outbox: p2_outbox::OutboxConfig {
                    capacity: 0,
                    ..p2_outbox::OutboxConfig::new(crate::common::DEAD_EVENTS_URL)
                },
                ..config.clone()
            },
            "P2_OUTBOX_CAPACITY",
        ),
    ] {
        let err = p2_session::SessionGrpc::open(&broken).await.err().unwrap();
        assert!(format!("{err:#}").contains(variable), "{err:#}");
    }
}
