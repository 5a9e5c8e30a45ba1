//! Service tests calling the `Session` gRPC trait directly, over real SQLite and the
//! in-process challenge store; identity is either unreachable or the in-process fake.

use std::collections::HashSet;
use std::time::Duration;

use p2_proto::common::v1::Caller;
use p2_proto::session::v1 as pb;
use p2_proto::session::v1::session_server::Session as _;
use tonic::{Code, Request};

use crate::common::{service_with_identity, service_without_identity};
use crate::fake_identity::{self, ALICE, PASSWORD};

fn caller(fid: &str, session_id: &str) -> Caller {
    Caller {
        fid: fid.into(),
        session_id: session_id.into(),
        admin: false,
    }
}

async fn create(
    grpc: &p2_session::SessionGrpc,
    fid: &str,
    session_id: &str,
    admin: bool,
) -> String {
    grpc.create_session(Request::new(pb::CreateSessionRequest {
        fid: fid.into(),
        session_id: session_id.into(),
        admin,
    }))
    .await
    .unwrap()
    .into_inner()
    .token
}

async fn authenticate(
    grpc: &p2_session::SessionGrpc,
    token: &str,
) -> Result<Caller, tonic::Status> {
    grpc.authenticate(Request::new(pb::AuthenticateRequest {
        token: token.into(),
    }))
    .await
    .map(|r| r.into_inner().caller.unwrap())
}

async fn challenge(grpc: &p2_session::SessionGrpc, who: &Caller) -> pb::CreateChallengeResponse {
    grpc.create_challenge(Request::new(pb::CreateChallengeRequest {
        caller: Some(who.clone()),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn verify(
    grpc: &p2_session::SessionGrpc,
    who: &Caller,
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
    grpc: &p2_session::SessionGrpc,
    who: &Caller,
    session_id: Option<&str>,
    sensitive_verified: bool,
) -> Result<(), tonic::Status> {
    grpc.delete_session(Request::new(pb::DeleteSessionRequest {
        caller: Some(who.clone()),
        session_id: session_id.map(Into::into),
        sensitive_verified,
    }))
    .await
    .map(|_| ())
}

async fn login(
    grpc: &p2_session::SessionGrpc,
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

// ---- Tokens (no identity needed) ----

#[tokio::test]
async fn a_created_session_authenticates_until_it_is_deleted() {
    let (grpc, _dir) = service_without_identity().await;
    let token = create(&grpc, "Alice@Example.com", "laptop", true).await;
    assert_eq!(token.len(), 64);
    let who = authenticate(&grpc, &token).await.unwrap();
    assert_eq!(who.fid, ALICE, "FIDs are normalised");
    assert_eq!(who.session_id, "laptop");
    assert!(who.admin);
    assert!(grpc.sessions().delete(ALICE, "laptop").await.unwrap());
    let status = authenticate(&grpc, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "unknown session token");
}

#[tokio::test]
async fn renewing_a_session_kills_its_old_token() {
    let (grpc, _dir) = service_without_identity().await;
    let old = create(&grpc, ALICE, "laptop", false).await;
    let new = create(&grpc, ALICE, "laptop", false).await;
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
    let phone = create(&grpc, ALICE, "phone", false).await;
    create(&grpc, ALICE, "laptop", false).await;
    assert_eq!(
        authenticate(&grpc, &phone).await.unwrap().session_id,
        "phone"
    );
}

#[tokio::test]
async fn malformed_and_unknown_tokens_are_unauthenticated() {
    let (grpc, _dir) = service_without_identity().await;
    let real = create(&grpc, ALICE, "laptop", false).await;
    let mut flipped = real.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    for token in [
        String::new(),
        "not a token".into(),
        real[..63].into(),
        format!("{real}0"),
        format!("Bearer {real}"),
        String::from_utf8(flipped).unwrap(),
        p2_session::token::SessionToken::generate().into_string(),
    ] {
        let status = authenticate(&grpc, &token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), "unknown session token");
    }
}

#[tokio::test]
async fn create_session_rejects_invalid_fids_and_session_ids() {
    let (grpc, _dir) = service_without_identity().await;
    for (fid, session_id) in [
        ("nobody", "laptop"),
        ("a@b@c", "laptop"),
        (ALICE, ""),
        (ALICE, &"x".repeat(33)),
        (ALICE, "tab\there"),
    ] {
        let status = grpc
            .create_session(Request::new(pb::CreateSessionRequest {
                fid: fid.into(),
                session_id: session_id.into(),
                admin: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{fid:?} {session_id:?}"
        );
    }
}

// ---- Challenges (no identity needed) ----

#[tokio::test]
async fn challenges_have_64_characters_of_every_class_and_are_unique() {
    let (grpc, _dir) = service_without_identity().await;
    let who = caller(ALICE, "laptop");
    let mut seen = HashSet::new();
    for _ in 0..1000 {
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
async fn challenges_expire_after_the_configured_ttl() {
    let (grpc, _dir) =
        service_with_identity(crate::common::DEAD_IDENTITY_URL, Duration::from_secs(120)).await;
    let who = caller(ALICE, "laptop");
    let before = p2_runtime::unix_now();
    let issued = challenge(&grpc, &who).await;
    let after = p2_runtime::unix_now();
    assert!(
        (before + 120..=after + 120).contains(&issued.expires),
        "{}",
        issued.expires
    );
    // The challenge path touches no SQL, so time can be paused safely from here.
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
    let who = caller(ALICE, "laptop");
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
    let laptop = caller(ALICE, "laptop");
    let issued = challenge(&grpc, &laptop).await;
    for thief in [caller(ALICE, "phone"), caller("bob@example.com", "laptop")] {
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
async fn requests_without_a_valid_caller_are_invalid() {
    let (grpc, _dir) = service_without_identity().await;
    let status = grpc
        .create_challenge(Request::new(pb::CreateChallengeRequest { caller: None }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = delete(&grpc, &caller("not-a-fid", "laptop"), None, false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = delete(&grpc, &caller(ALICE, "laptop"), Some(""), true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn key_trials_are_not_implemented_yet() {
    let (grpc, _dir) = service_without_identity().await;
    let status = grpc
        .create_key_trial(Request::new(pb::CreateKeyTrialRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

// ---- Deleting sessions ----

#[tokio::test]
async fn deleting_another_session_needs_the_sensitive_solution() {
    let (grpc, _dir) = service_without_identity().await;
    let phone = create(&grpc, ALICE, "phone", false).await;
    let status = delete(&grpc, &caller(ALICE, "laptop"), Some("phone"), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("X-P2-Sensitive-Solution"),
        "{}",
        status.message()
    );
    assert!(
        authenticate(&grpc, &phone).await.is_ok(),
        "nothing was deleted"
    );
}

#[tokio::test]
async fn a_deleted_sessions_token_dies_even_when_identity_is_down() {
    let (grpc, _dir) = service_without_identity().await;
    let token = create(&grpc, ALICE, "laptop", false).await;
    let who = authenticate(&grpc, &token).await.unwrap();
    let status = delete(&grpc, &who, None, false).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "the revocation could not happen: retry"
    );
    assert_eq!(
        authenticate(&grpc, &token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_own_session_kills_its_token_and_revokes_its_cert() {
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, _key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &session.token).await.unwrap();
    delete(&grpc, &who, None, false).await.unwrap();
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
    // Nothing is left of it now.
    let status = delete(&grpc, &caller(ALICE, "phone"), Some("laptop"), true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_is_deleted_with_the_sensitive_solution() {
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, _) = fake_identity::csr("laptop");
    let laptop = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let (csr, _) = fake_identity::csr("phone");
    let phone = login(&grpc, ALICE, PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &laptop.token).await.unwrap();
    delete(&grpc, &who, Some("phone"), true).await.unwrap();
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
    let status = delete(&grpc, &who, Some("tablet"), true).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("tablet"), "{}", status.message());
}

// ---- Login (fake identity) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_issues_a_cert_for_the_csr_key_and_a_token_that_authenticates() {
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
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
            admin: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_unauthenticated_and_leaves_nothing_behind() {
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, _) = fake_identity::csr("laptop");
    let first = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &first.token).await.unwrap();
    delete(&grpc, &who, None, false).await.unwrap();
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
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
}

// ---- Challenge solutions (fake identity) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_signed_with_the_session_key_is_accepted_once() {
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &session.token).await.unwrap();
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &session.token).await.unwrap();
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
    let identity = fake_identity::start().await;
    let (grpc, _dir) = service_with_identity(&identity.url, Duration::from_secs(300)).await;
    let (csr, key) = fake_identity::csr("laptop");
    let session = login(&grpc, "alice", PASSWORD, csr).await.unwrap();
    let who = authenticate(&grpc, &session.token).await.unwrap();
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
async fn open_starts_on_sqlite_with_the_in_process_store_and_rejects_a_zero_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = p2_session::SessionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
        redis_url: None,
        identity_url: crate::common::DEAD_IDENTITY_URL.into(),
        events_url: "http://127.0.0.1:1".into(),
        challenge_ttl_secs: p2_session::DEFAULT_CHALLENGE_TTL_SECS,
    };
    let grpc = p2_session::SessionGrpc::open(&config).await.unwrap();
    assert_eq!(grpc.challenge_ttl(), Duration::from_secs(300));
    let token = create(&grpc, ALICE, "laptop", false).await;
    // A restart on the same database keeps the session.
    drop(grpc);
    let grpc = p2_session::SessionGrpc::open(&config).await.unwrap();
    assert!(authenticate(&grpc, &token).await.is_ok());
    config.challenge_ttl_secs = 0;
    let err = p2_session::SessionGrpc::open(&config).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("P2_CHALLENGE_TTL_SECS"),
        "{err:#}"
    );
}
