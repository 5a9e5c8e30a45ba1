//! Tokens expire with their session's ID-Cert (`notAfter`): an expired token is refused like an
//! unknown one, and a new token for the same session (a renewal) carries the new expiry.

use p2_model::{FederationId, SessionId};
use p2_session::SessionError;

use crate::common::service_without_identity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_from_its_expiry_on_and_a_renewal_extends_it() {
    let (grpc, _dir) = service_without_identity().await;
    let fid = FederationId::parse("alice@example.com").unwrap();
    let laptop = SessionId::parse("laptop").unwrap();
    let now = p2_runtime::unix_now();

    let expired = grpc.issue_token_until(&fid, &laptop, now).await.unwrap();
    assert!(matches!(
        grpc.authenticate_token(expired.as_str()).await,
        Err(SessionError::UnknownToken)
    ));

    // The renewal's token replaces the expired one and lives until the new cert's end.
    let renewed = grpc
        .issue_token_until(&fid, &laptop, now + 3600)
        .await
        .unwrap();
    let resolved = grpc.authenticate_token(renewed.as_str()).await.unwrap();
    assert_eq!(resolved.session.expires_at, now + 3600);
    assert!(grpc.authenticate_token(expired.as_str()).await.is_err());

    // Without a known cert end, a token lives at most the longest cert validity (60 days).
    let phone = SessionId::parse("phone").unwrap();
    let token = grpc.issue_token(&fid, &phone).await.unwrap();
    let resolved = grpc.authenticate_token(token.as_str()).await.unwrap();
    assert!(resolved.session.expires_at <= now + p2_session::sessions::MAX_CERT_VALIDITY_SECS + 5);
}
