//! The identity service's errors and their one mapping to gRPC status codes.

use p2_model::ModelError;
use p2_runtime::error::Reason;

/// What can go wrong in the identity service. Every variant but [`IdentityError::Internal`]
/// is something the caller can act on; its message is shown to clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The server had no key pair at the requested time.
    #[error(
        "the server had no identity key at timestamp {timestamp}; its first key dates from {first}"
    )]
    NoServerKeyAt {
        /// The requested UNIX time.
        timestamp: u64,
        /// When the first key became active.
        first: u64,
    },
    /// A request field is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The actor is not registered on this server.
    #[error("{0} is not registered on this server")]
    UnknownActor(String),
    /// The local name is taken.
    #[error("the name {0:?} is already taken on this server")]
    NameTaken(String),
    /// Public registration is closed.
    #[error("registration is closed on this server; ask an administrator for an account")]
    RegistrationClosed,
    /// Wrong password or unknown actor (deliberately indistinguishable).
    #[error("wrong name or password")]
    BadCredentials,
    /// A valid ID-Cert already holds this session ID (spec 6.1.1.3).
    #[error(
        "session ID {0:?} is in use by a valid ID-Cert; delete that session first or choose another session ID"
    )]
    SessionIdInUse(String),
    /// An operator disabled the actor.
    #[error("this actor was disabled by an administrator of this home server")]
    Disabled,
    /// Too many wrong passwords for this account or client address lately: wait.
    #[error("too many wrong passwords; try again in {} s", .retry_after.as_secs().max(1))]
    Throttled {
        /// How long to wait.
        retry_after: std::time::Duration,
    },
    /// Too many password checks are waiting: try again shortly.
    #[error("the server is busy checking passwords; try again in a moment")]
    Busy,
    /// The actor holds the most sessions (valid ID-Certs) it may.
    #[error(
        "this actor already has {limit} sessions, the most it may have; delete one \
         (or let one expire) first"
    )]
    TooManySessions {
        /// The per-actor limit.
        limit: u64,
    },
    /// No valid ID-Cert for that session.
    #[error("{fid} has no valid ID-Cert for session {session_id:?}")]
    NoValidCert {
        /// Actor.
        fid: String,
        /// Session ID.
        session_id: String,
    },
    /// The call's caller assertion is missing, forged or expired.
    #[error(transparent)]
    Assertion(#[from] p2_runtime::internal::AssertionError),
    /// A sensitive action (spec 4.2) without its solution.
    #[error("this is a sensitive action: it needs the actor's password as its solution")]
    SensitiveSolutionRequired,
    /// A sensitive action with a wrong solution.
    #[error("the sensitive-action solution is wrong")]
    SensitiveSolutionWrong,
    /// An admin-only action by an actor that is not an administrator.
    #[error("this action needs an administrator of this home server")]
    NotAdmin,
    /// A foreign session (an actor of another home server signed in here with a key trial)
    /// asked for something only its own home server can do.
    #[error("{0} is an actor of another home server: only its home server can do this for it")]
    ForeignActor(String),
    /// A domain rule of polyproto rejected the input (bad FID, CSR, certificate...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Anything unexpected (storage, crypto plumbing): logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// How long a client refused by a full hashing queue is told to wait, in seconds.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

impl From<crate::passwords::HashError> for IdentityError {
    fn from(error: crate::passwords::HashError) -> Self {
        match error {
            crate::passwords::HashError::Busy => Self::Busy,
            crate::passwords::HashError::Failed(error) => Self::Internal(error),
        }
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::NoServerKeyAt { .. } => tonic::Status::not_found(error.to_string()),
            IdentityError::InvalidArgument(message) => tonic::Status::invalid_argument(message),
            IdentityError::UnknownActor(_) | IdentityError::NoValidCert { .. } => {
                tonic::Status::not_found(error.to_string())
            }
            IdentityError::NameTaken(_) | IdentityError::SessionIdInUse(_) => {
                tonic::Status::already_exists(error.to_string())
            }
            IdentityError::Disabled => tonic::Status::permission_denied(error.to_string()),
            IdentityError::Throttled { retry_after } => p2_runtime::error::retry_after(
                tonic::Status::resource_exhausted(error.to_string()),
                retry_after.as_secs().max(1),
            ),
            IdentityError::Busy => p2_runtime::error::retry_after(
                tonic::Status::unavailable(error.to_string()),
                BUSY_RETRY_AFTER_SECS,
            ),
            IdentityError::TooManySessions { .. } => {
                tonic::Status::failed_precondition(error.to_string())
            }
            IdentityError::RegistrationClosed => {
                tonic::Status::permission_denied(error.to_string())
            }
            IdentityError::BadCredentials => tonic::Status::unauthenticated(error.to_string()),
            IdentityError::Assertion(error) => error.into(),
            IdentityError::SensitiveSolutionRequired => {
                Reason::SensitiveSolutionRequired.denied(error.to_string())
            }
            IdentityError::SensitiveSolutionWrong => {
                Reason::SensitiveSolutionWrong.denied(error.to_string())
            }
            IdentityError::NotAdmin => Reason::NotAdmin.denied(error.to_string()),
            IdentityError::ForeignActor(_) => tonic::Status::permission_denied(error.to_string()),
            IdentityError::Model(model) if model.is_internal() => {
                p2_runtime::error::internal(&anyhow::Error::new(model))
            }
            IdentityError::Model(model) => tonic::Status::invalid_argument(model.to_string()),
            IdentityError::Internal(error) => p2_runtime::error::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_the_code_a_client_can_act_on() {
        let cases: Vec<(IdentityError, tonic::Code)> = vec![
            (
                IdentityError::NoServerKeyAt {
                    timestamp: 1,
                    first: 2,
                },
                tonic::Code::NotFound,
            ),
            (
                IdentityError::InvalidArgument("timestamp".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                IdentityError::Model(ModelError::BadSignature),
                tonic::Code::InvalidArgument,
            ),
            (
                IdentityError::UnknownActor("a@b".into()),
                tonic::Code::NotFound,
            ),
            (
                IdentityError::NoValidCert {
                    fid: "a@b".into(),
                    session_id: "s".into(),
                },
                tonic::Code::NotFound,
            ),
            (
                IdentityError::NameTaken("a".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                IdentityError::SessionIdInUse("s".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                IdentityError::RegistrationClosed,
                tonic::Code::PermissionDenied,
            ),
            (IdentityError::BadCredentials, tonic::Code::Unauthenticated),
            (
                IdentityError::Assertion(p2_runtime::internal::AssertionError::Expired),
                tonic::Code::Unauthenticated,
            ),
            (
                IdentityError::SensitiveSolutionRequired,
                tonic::Code::PermissionDenied,
            ),
            (
                IdentityError::SensitiveSolutionWrong,
                tonic::Code::PermissionDenied,
            ),
            (IdentityError::NotAdmin, tonic::Code::PermissionDenied),
            (
                IdentityError::ForeignActor("a@b".into()),
                tonic::Code::PermissionDenied,
            ),
            (IdentityError::Busy, tonic::Code::Unavailable),
            (IdentityError::Disabled, tonic::Code::PermissionDenied),
            (
                IdentityError::Throttled {
                    retry_after: std::time::Duration::from_secs(4),
                },
                tonic::Code::ResourceExhausted,
            ),
            (
                IdentityError::TooManySessions { limit: 2 },
                tonic::Code::FailedPrecondition,
            ),
            (
                IdentityError::Model(ModelError::Encoding("x".into())),
                tonic::Code::Internal,
            ),
            (
                IdentityError::Internal(anyhow::anyhow!("disk on fire")),
                tonic::Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("disk on fire"));
        }
    }
}
