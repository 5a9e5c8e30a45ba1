//! How errors leave a service. Each service has its own `thiserror` enum mapped to
//! [`tonic::Status`] in one exhaustive `match`; the catch-all variant carries an
//! [`anyhow::Error`] and ends up here: logged once with its full chain, and sent to the caller
//! as an opaque `INTERNAL` that names nothing internal.

/// The message every unexpected failure carries to the caller.
pub const INTERNAL_MESSAGE: &str = "internal error; see the server log";

/// Logs `error` with its whole context chain and returns the opaque status for it.
pub fn internal(error: &anyhow::Error) -> tonic::Status {
    tracing::error!(error = format!("{error:#}"), "internal error");
    tonic::Status::internal(INTERNAL_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let err = anyhow::anyhow!("password authentication failed for user p2")
            .context("SELECT * FROM actors");
        let status = internal(&err);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("SELECT"));
        assert!(!status.message().contains("password"));
    }
}
