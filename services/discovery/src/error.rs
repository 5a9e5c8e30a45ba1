//! The discovery service's errors and their one mapping to gRPC status codes.

/// What can go wrong in the discovery service. Every variant but
/// [`DiscoveryError::Internal`] is something the caller can act on; its message is shown to
/// clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A request field is malformed (FID, service name, URL, limit...); the text says how.
    #[error("{0}")]
    InvalidArgument(String),
    /// The actor whose services were asked for is not registered on this home server.
    #[error("no actor {fid} is registered on this home server")]
    ActorNotFound {
        /// The normalised FID.
        fid: String,
    },
    /// The caller is not an actor of this home server (e.g. a foreign session), so it has no
    /// discovery entries here to manage.
    #[error(
        "{fid} is not registered on this home server; make services discoverable on your own \
         home server"
    )]
    NotLocalActor {
        /// The caller's FID.
        fid: String,
    },
    /// The caller already lists this provider for this service.
    #[error("{url} is already a provider of {service} for this actor")]
    ProviderExists {
        /// The service.
        service: String,
        /// The provider's normalised URL.
        url: String,
    },
    /// A new provider asked to be primary, but the service already has one.
    #[error(
        "{service} already has a primary provider; add this one as a non-primary provider, then \
         make it the primary (a sensitive action)"
    )]
    PrimaryExists {
        /// The service.
        service: String,
    },
    /// The caller lists as many providers as one actor may.
    #[error("an actor may list at most {limit} service providers; remove some first")]
    TooManyProviders {
        /// The per-actor limit.
        limit: u64,
    },
    /// The caller does not list this provider for this service.
    #[error("{url} is not a provider of {service} for this actor")]
    ProviderNotFound {
        /// The service.
        service: String,
        /// The provider's normalised URL.
        url: String,
    },
    /// Removing a primary provider is a sensitive action (spec 9.1.1, 4.2) and it was not
    /// solved.
    #[error(
        "{url} is the primary provider of {service}: removing it is a sensitive action that \
         needs the actor's password as its solution"
    )]
    SensitiveActionRequired {
        /// The service.
        service: String,
        /// The primary provider's URL.
        url: String,
    },
    /// The call's caller assertion is missing, forged or expired.
    #[error(transparent)]
    Assertion(#[from] p2_runtime::internal::AssertionError),
    /// Identity refused the sensitive-action solution (missing or wrong) or could not check it
    /// now (its password queue is full, with a retry hint): its status, with its reason and
    /// hint, is passed on unchanged.
    #[error("{}", .0.message())]
    SolutionRefused(tonic::Status),
    /// A service this one depends on (identity) did not answer.
    #[error("a backend service is unavailable: {0}")]
    Unavailable(String),
    /// Anything unexpected (storage, protocol): logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for DiscoveryError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(error).context("discovery storage"))
    }
}

use p2_runtime::error::Reason;

impl From<DiscoveryError> for tonic::Status {
    fn from(error: DiscoveryError) -> Self {
        use tonic::Status;
        // Exhaustive on purpose: a new variant does not compile until it has a code.
        match error {
            DiscoveryError::InvalidArgument(message) => Status::invalid_argument(message),
            DiscoveryError::ActorNotFound { .. } | DiscoveryError::ProviderNotFound { .. } => {
                Status::not_found(error.to_string())
            }
            DiscoveryError::NotLocalActor { .. } => Status::permission_denied(error.to_string()),
            DiscoveryError::SensitiveActionRequired { .. } => {
                Reason::SensitiveSolutionRequired.denied(error.to_string())
            }
            DiscoveryError::Assertion(error) => error.into(),
            DiscoveryError::SolutionRefused(status) => status,
            DiscoveryError::ProviderExists { .. } => Status::already_exists(error.to_string()),
            DiscoveryError::PrimaryExists { .. } => {
                Reason::PrimaryExists.tag(Status::failed_precondition(error.to_string()))
            }
            DiscoveryError::TooManyProviders { .. } => {
                Status::failed_precondition(error.to_string())
            }
            DiscoveryError::Unavailable(message) => {
                tracing::warn!(%message, "upstream unavailable");
                Status::unavailable("a backend service is unavailable; try again shortly")
            }
            DiscoveryError::Internal(error) => p2_runtime::error::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn key() -> (String, String) {
        ("chat".to_owned(), "https://chat.example".to_owned())
    }

    #[test]
    fn each_error_maps_to_the_code_a_client_can_act_on() {
        let (service, url) = key();
        let cases: Vec<(DiscoveryError, Code)> = vec![
            (
                DiscoveryError::InvalidArgument("limit".into()),
                Code::InvalidArgument,
            ),
            (
                DiscoveryError::ActorNotFound { fid: "a@b".into() },
                Code::NotFound,
            ),
            (
                DiscoveryError::NotLocalActor { fid: "a@b".into() },
                Code::PermissionDenied,
            ),
            (
                DiscoveryError::ProviderExists {
                    service: service.clone(),
                    url: url.clone(),
                },
                Code::AlreadyExists,
            ),
            (
                DiscoveryError::PrimaryExists {
                    service: service.clone(),
                },
                Code::FailedPrecondition,
            ),
            (
                DiscoveryError::TooManyProviders { limit: 3 },
                Code::FailedPrecondition,
            ),
            (
                DiscoveryError::ProviderNotFound {
                    service: service.clone(),
                    url: url.clone(),
                },
                Code::NotFound,
            ),
            (
                DiscoveryError::SensitiveActionRequired { service, url },
                Code::PermissionDenied,
            ),
            (
                DiscoveryError::Assertion(p2_runtime::internal::AssertionError::Missing),
                Code::Unauthenticated,
            ),
            (
                DiscoveryError::SolutionRefused(tonic::Status::permission_denied("wrong")),
                Code::PermissionDenied,
            ),
            (
                DiscoveryError::Unavailable("identity: refused".into()),
                Code::Unavailable,
            ),
            (
                DiscoveryError::Internal(anyhow::anyhow!("disk on fire")),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            assert!(!status.message().contains("disk on fire"));
            assert!(!status.message().contains("refused"));
        }
    }

    #[test]
    fn storage_errors_are_internal_and_opaque() {
        let status = tonic::Status::from(DiscoveryError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), p2_runtime::error::INTERNAL_MESSAGE);
    }

    #[test]
    fn client_errors_keep_their_message() {
        let status = tonic::Status::from(DiscoveryError::PrimaryExists {
            service: "chat".into(),
        });
        assert!(
            status.message().contains("chat already has a primary"),
            "{}",
            status.message()
        );
        // The route to use is HTTP wording: the gateway adds it, keyed by the reason.
        assert!(!status.message().contains("/.p2/"));
        assert_eq!(
            p2_runtime::error::Reason::of(&status),
            Some(p2_runtime::error::Reason::PrimaryExists)
        );
    }
}
