//! The events service's errors and their one mapping to gRPC status codes.

/// What can go wrong in the events service. Every variant but [`EventsError::Internal`] is
/// something the caller can act on; its message is passed on verbatim.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A request field is missing or malformed (FID, session ID, namespace, opcode, data,
    /// limit...); the text says which and how.
    #[error("{0}")]
    InvalidArgument(String),
    /// The call's caller assertion is missing, forged or expired.
    #[error(transparent)]
    Assertion(#[from] p2_runtime::internal::AssertionError),
    /// The event log cannot serve this now (it did not answer for a while, or a session's log
    /// was lost and its positions restarted): the caller should reconnect, which resumes or
    /// starts over.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Anything unexpected (storage, protocol): logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<EventsError> for tonic::Status {
    fn from(error: EventsError) -> Self {
        use tonic::Status;
        // Exhaustive on purpose: a new variant does not compile until it has a code.
        match error {
            EventsError::InvalidArgument(message) => Status::invalid_argument(message),
            EventsError::Assertion(error) => error.into(),
            EventsError::Unavailable(message) => Status::unavailable(message),
            EventsError::Internal(error) => p2_runtime::error::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_maps_to_the_code_a_caller_can_act_on() {
        let cases: Vec<(EventsError, Code)> = vec![
            (
                EventsError::InvalidArgument("op 70000".into()),
                Code::InvalidArgument,
            ),
            (
                EventsError::Assertion(p2_runtime::internal::AssertionError::Expired),
                Code::Unauthenticated,
            ),
            (
                EventsError::Unavailable("the event log was reset"),
                Code::Unavailable,
            ),
            (
                EventsError::Internal(anyhow::anyhow!("redis on fire")),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("on fire"), "{status:?}");
        }
        let status = tonic::Status::from(EventsError::InvalidArgument("op 70000".into()));
        assert_eq!(status.message(), "op 70000");
    }
}
