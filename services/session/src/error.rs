//! The session service's errors and their one mapping to gRPC status codes.

use p2_runtime::error::Reason;
use tonic::Code;

use crate::storage::StoreError;

/// What can go wrong in the session service. Every variant but [`SessionError::Internal`] is
/// something the caller can act on; its message is shown to clients verbatim (the gateway puts
/// it in the problem+json `detail`).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The bearer token is malformed, was never issued, or its session was deleted or renewed.
    #[error("unknown session token")]
    UnknownToken,
    /// A request field is missing or malformed, or identity rejected the ID-CSR; the text says
    /// which and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// Identity rejected the login's password or actor (the same answer for both).
    #[error("{0}")]
    WrongPassword(String),
    /// The CSR's session ID is held by a valid ID-Cert (spec 6.1.1.3: never silently overridden).
    #[error("{0}")]
    SessionIdInUse(String),
    /// Deleting another session of the same actor without the sensitive-action solution.
    #[error(
        "deleting another session of this actor is a sensitive action: it needs the actor's \
         password as its solution"
    )]
    SensitiveActionRequired,
    /// The call's caller assertion is missing, forged or expired.
    #[error(transparent)]
    Assertion(#[from] p2_runtime::internal::AssertionError),
    /// Identity refused a step for a reason the caller can act on (a bad CSR, a held session
    /// ID, a missing or wrong sensitive-action solution): its status is passed on unchanged.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// The actor has no session (token or valid ID-Cert) with this session ID.
    #[error("actor {fid} has no session with session ID {session_id:?}")]
    SessionNotFound {
        /// The actor.
        fid: String,
        /// The session ID asked for.
        session_id: String,
    },
    /// The challenge was never issued, was already used, or expired.
    #[error("challenge unknown, already used or expired; request a new one")]
    ChallengeUnknown,
    /// The challenge was issued to another session. It is consumed anyway.
    #[error("this challenge was issued to another session; request one with this session's token")]
    ChallengeOfAnotherSession,
    /// The caller's session has no currently valid ID-Cert to check a signature against.
    #[error("this session has no valid ID-Cert to check the challenge signature against")]
    NoValidIdCert,
    /// The challenge signature is malformed or does not verify with the session's key.
    #[error("the challenge solution was rejected: {0}")]
    BadSolution(p2_model::ModelError),
    /// Too many challenges are pending on this server, all sessions together
    /// (`--max-pending-challenges`).
    #[error("too many challenges are pending on this server; try again in a few minutes")]
    Busy,
    /// This session already holds its maximum of unused, unexpired challenges
    /// (`--max-challenges-per-session`); other sessions are not affected.
    #[error(
        "this session already has {limit} pending challenges; solve one of them or wait for \
         one to expire"
    )]
    TooManyChallenges {
        /// The per-session bound.
        limit: usize,
    },
    /// A service this one depends on did not answer.
    #[error("the {0} service is unavailable; try again shortly")]
    Unavailable(&'static str),
    /// The key trial was never issued, was already used, or expired.
    #[error(
        "key trial unknown, already used or expired; request a new one with GET \
         /.p2/core/v1/session/auth"
    )]
    KeyTrialUnknown,
    /// This client address already holds its maximum of pending key trials
    /// (`--max-key-trials-per-client`).
    #[error(
        "this client already has {limit} pending key trials; answer one of them or wait for \
         one to expire"
    )]
    TooManyKeyTrials {
        /// The per-client bound.
        limit: usize,
    },
    /// Foreign-server authentication refused: the text says why (a bad signature, a revoked or
    /// unknown cert, a home server that did not answer properly...).
    #[error("foreign sign-in refused: {0}")]
    ForeignAuthRefused(String),
    /// The actor's home server could not be used (unreachable, too slow, garbage, too large,
    /// a redirect, a refused address); the text says which.
    #[error("foreign sign-in refused: {0}")]
    HomeServerFailed(String),
    /// A foreign session's new ID-Cert was refused; the text says why.
    #[error("the ID-Cert was refused: {0}")]
    ForeignCertRefused(String),
    /// Too many fetches to one foreign home server are in flight (`--federation-max-fetches-per-domain`).
    #[error("{0}")]
    HomeServerBusy(String),
    /// A foreign session's cert is due for re-verification and its home server did not answer.
    #[error(
        "your ID-Cert could not be verified again with your home server: {0}; try again shortly"
    )]
    HomeServerUnavailable(String),
    /// No verified cert of this foreign actor is cached here (or the actor is ours).
    #[error("no verified ID-Cert of {0} is cached on this server; ask its home server")]
    ForeignCertsNotCached(String),
    /// A foreign session asked for something only its home server can do (or a local one
    /// for something only foreign sessions do); the text says what.
    #[error("{0}")]
    NotForThisSession(String),
    /// Anything unexpected (storage, Redis, an identity answer that breaks its contract):
    /// logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for SessionError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full { .. } => Self::Busy,
            // Sessions holding challenges; key trials map their owner's bound themselves
            // (`TooManyKeyTrials`) before this conversion.
            StoreError::OwnerFull { limit } => Self::TooManyChallenges { limit },
            StoreError::Backend(error) => Self::Internal(error),
        }
    }
}

impl SessionError {
    /// A failed identity call that the caller did not expect: UNAVAILABLE stays UNAVAILABLE (the
    /// client may retry), everything else is internal, with `what` as context for the log.
    pub fn from_identity(status: tonic::Status, what: &'static str) -> Self {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => Self::Unavailable("identity"),
            _ => Self::Internal(anyhow::Error::new(status).context(what)),
        }
    }
}

impl From<SessionError> for tonic::Status {
    fn from(error: SessionError) -> Self {
        use tonic::Status;
        // One exhaustive match: a new variant does not compile until it has a code.
        match error {
            SessionError::UnknownToken | SessionError::WrongPassword(_) => {
                Status::unauthenticated(error.to_string())
            }
            SessionError::InvalidArgument(message) => Status::invalid_argument(message),
            SessionError::SessionIdInUse(message) => Status::already_exists(message),
            SessionError::SensitiveActionRequired => {
                Reason::SensitiveSolutionRequired.denied(error.to_string())
            }
            SessionError::Assertion(error) => error.into(),
            SessionError::Refused(status) => status,
            SessionError::ChallengeUnknown
            | SessionError::ChallengeOfAnotherSession
            | SessionError::NoValidIdCert
            | SessionError::BadSolution(_) => Status::permission_denied(error.to_string()),
            SessionError::SessionNotFound { .. } => Status::not_found(error.to_string()),
            SessionError::Busy | SessionError::TooManyChallenges { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            SessionError::Unavailable(_) | SessionError::HomeServerUnavailable(_) => {
                Status::unavailable(error.to_string())
            }
            SessionError::KeyTrialUnknown
            | SessionError::ForeignAuthRefused(_)
            | SessionError::HomeServerFailed(_) => Status::unauthenticated(error.to_string()),
            SessionError::TooManyKeyTrials { .. } | SessionError::HomeServerBusy(_) => {
                Status::resource_exhausted(error.to_string())
            }
            SessionError::ForeignCertRefused(_) => Status::invalid_argument(error.to_string()),
            SessionError::ForeignCertsNotCached(_) => Status::not_found(error.to_string()),
            SessionError::NotForThisSession(_) => Status::permission_denied(error.to_string()),
            SessionError::Internal(error) => p2_runtime::error::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_the_code_a_client_can_act_on() {
        let cases: Vec<(SessionError, Code, &str)> = vec![
            (
                SessionError::UnknownToken,
                Code::Unauthenticated,
                "unknown session token",
            ),
            (
                SessionError::InvalidArgument("caller is required".into()),
                Code::InvalidArgument,
                "caller is required",
            ),
            (
                SessionError::WrongPassword("wrong password".into()),
                Code::Unauthenticated,
                "wrong password",
            ),
            (
                SessionError::SessionIdInUse("session ID laptop is in use".into()),
                Code::AlreadyExists,
                "laptop",
            ),
            (
                SessionError::SensitiveActionRequired,
                Code::PermissionDenied,
                "sensitive action",
            ),
            (
                SessionError::Assertion(p2_runtime::internal::AssertionError::Invalid),
                Code::Unauthenticated,
                "forged",
            ),
            (
                SessionError::Refused(tonic::Status::already_exists("session ID in use")),
                Code::AlreadyExists,
                "session ID in use",
            ),
            (
                SessionError::SessionNotFound {
                    fid: "alice@example.com".into(),
                    session_id: "phone".into(),
                },
                Code::NotFound,
                "phone",
            ),
            (
                SessionError::ChallengeUnknown,
                Code::PermissionDenied,
                "challenge unknown, already used or expired",
            ),
            (
                SessionError::ChallengeOfAnotherSession,
                Code::PermissionDenied,
                "another session",
            ),
            (
                SessionError::NoValidIdCert,
                Code::PermissionDenied,
                "no valid ID-Cert",
            ),
            (
                SessionError::BadSolution(p2_model::ModelError::BadSignature),
                Code::PermissionDenied,
                "does not verify",
            ),
            (SessionError::Busy, Code::ResourceExhausted, "try again"),
            (
                SessionError::TooManyChallenges { limit: 64 },
                Code::ResourceExhausted,
                "this session already has 64 pending challenges",
            ),
            (
                SessionError::Unavailable("identity"),
                Code::Unavailable,
                "identity",
            ),
            (
                SessionError::KeyTrialUnknown,
                Code::Unauthenticated,
                "key trial unknown",
            ),
            (
                SessionError::TooManyKeyTrials { limit: 16 },
                Code::ResourceExhausted,
                "16 pending key trials",
            ),
            (
                SessionError::ForeignAuthRefused("revoked".into()),
                Code::Unauthenticated,
                "foreign sign-in refused: revoked",
            ),
            (
                SessionError::HomeServerFailed("timed out".into()),
                Code::Unauthenticated,
                "foreign sign-in refused: timed out",
            ),
            (
                SessionError::ForeignCertRefused("expired".into()),
                Code::InvalidArgument,
                "refused: expired",
            ),
            (
                SessionError::HomeServerBusy("busy".into()),
                Code::ResourceExhausted,
                "busy",
            ),
            (
                SessionError::HomeServerUnavailable("timed out".into()),
                Code::Unavailable,
                "timed out",
            ),
            (
                SessionError::ForeignCertsNotCached("a@b".into()),
                Code::NotFound,
                "no verified ID-Cert of a@b",
            ),
            (
                SessionError::NotForThisSession("home only".into()),
                Code::PermissionDenied,
                "home only",
            ),
            (
                SessionError::Internal(anyhow::anyhow!("disk on fire")),
                Code::Internal,
                p2_runtime::error::INTERNAL_MESSAGE,
            ),
        ];
        for (error, code, text) in cases {
            let shown = format!("{error:?}");
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            assert!(
                status.message().contains(text),
                "{shown}: {}",
                status.message()
            );
            assert!(!status.message().contains("disk on fire"));
        }
    }

    #[test]
    fn store_errors_become_busy_too_many_or_internal() {
        let full = SessionError::from(StoreError::Full { capacity: 3 });
        assert!(matches!(full, SessionError::Busy));
        let mine = SessionError::from(StoreError::OwnerFull { limit: 5 });
        assert!(
            matches!(mine, SessionError::TooManyChallenges { limit: 5 }),
            "{mine:?}"
        );
        let backend = SessionError::from(StoreError::Backend(anyhow::anyhow!("connection reset")));
        let status = tonic::Status::from(backend);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("connection reset"));
    }

    #[test]
    fn unexpected_identity_failures_are_internal_but_outages_stay_retryable() {
        let down = SessionError::from_identity(tonic::Status::unavailable("connect refused"), "x");
        let status = tonic::Status::from(down);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("refused"));
        let odd = SessionError::from_identity(tonic::Status::not_found("no actor"), "x");
        assert_eq!(tonic::Status::from(odd).code(), Code::Internal);
    }
}
