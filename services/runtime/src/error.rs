//! How errors leave a service. Each service has its own `thiserror` enum mapped to
//! [`tonic::Status`] in one exhaustive `match`; the catch-all variant carries an
//! [`anyhow::Error`] and ends up here: logged once with its full chain, and sent to the caller
//! as an opaque `INTERNAL` that names nothing internal.

/// The message every unexpected failure carries to the caller.
pub const INTERNAL_MESSAGE: &str = "internal error; see the server log";

/// The message of a failure of a storage backend that should pass (Redis or the database
/// unreachable, a dropped connection being re-established, a full pool).
pub const UNAVAILABLE_MESSAGE: &str = "a storage backend is briefly unavailable; try again shortly";

/// Logs `error` with its whole context chain and returns the opaque status for it:
/// `UNAVAILABLE` with a 1 s retry hint when its cause is a storage backend that is down or
/// reconnecting ([`is_transient`]: the gateway answers 503 and the client retries), else
/// `INTERNAL`.
pub fn internal(error: &anyhow::Error) -> tonic::Status {
    if is_transient(error) {
        tracing::warn!(error = format!("{error:#}"), "storage backend unavailable");
        return retry_after(tonic::Status::unavailable(UNAVAILABLE_MESSAGE), 1);
    }
    tracing::error!(error = format!("{error:#}"), "internal error");
    tonic::Status::internal(INTERNAL_MESSAGE)
}

/// Whether anything in `error`'s chain is a Redis or database failure that retrying later can
/// cure: an I/O error, a dropped or refused connection, a timeout, an exhausted pool.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(redis) = cause.downcast_ref::<redis::RedisError>() {
            return redis.is_io_error()
                || redis.is_connection_dropped()
                || redis.is_connection_refusal()
                || redis.is_timeout();
        }
        if let Some(sql) = cause.downcast_ref::<sqlx::Error>() {
            // Not `PoolClosed`: that pool is gone for good (the process is stopping).
            return matches!(sql, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut);
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
            )
        })
    })
}

#[cfg(test)]
mod transient_tests {
    use super::*;

    #[test]
    fn backend_outages_are_unavailable_and_other_failures_internal() {
        let dropped = anyhow::Error::new(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )))
        .context("reading password failures from Redis");
        let status = internal(&dropped);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(retry_after_of(&status), Some(1));
        assert!(!status.message().contains("Redis"));
        let pool = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("a query");
        assert_eq!(internal(&pool).code(), tonic::Code::Unavailable);
        let bug = anyhow::anyhow!("a row that cannot be").context("decoding");
        let status = internal(&bug);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), INTERNAL_MESSAGE);
        let redis_type = anyhow::Error::new(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply",
        )));
        assert_eq!(internal(&redis_type).code(), tonic::Code::Internal);
    }
}

/// Metadata key of a retry hint in seconds (the gateway answers it as `Retry-After`).
pub const RETRY_AFTER_KEY: &str = "x-p2-retry-after";

/// `status` with a hint to retry after `secs` seconds.
pub fn retry_after(mut status: tonic::Status, secs: u64) -> tonic::Status {
    if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(secs.to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_KEY, value);
    }
    status
}

/// The retry hint `status` carries, in seconds.
pub fn retry_after_of(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get(RETRY_AFTER_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Metadata key of a machine-readable refusal reason, for the few refusals whose public wording
/// the gateway owns (it names HTTP headers; services do not speak HTTP).
pub const REASON_KEY: &str = "x-p2-reason";

/// Why a sensitive action (spec 4.2) or an admin-only action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request carries no sensitive-action solution.
    SensitiveSolutionRequired,
    /// The solution is wrong.
    SensitiveSolutionWrong,
    /// The actor is not an administrator of this home server.
    NotAdmin,
    /// A new provider asked to be primary while its service has one (discovery).
    PrimaryExists,
    /// The internal boundary refused the calling component itself (no or a wrong component
    /// credential, or an RPC not on its list): a deployment error, not the client's.
    ComponentRefused,
}

impl Reason {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SensitiveSolutionRequired => "sensitive-solution-required",
            Reason::SensitiveSolutionWrong => "sensitive-solution-wrong",
            Reason::NotAdmin => "not-admin",
            Reason::PrimaryExists => "primary-exists",
            Reason::ComponentRefused => "component-refused",
        }
    }

    /// The reason `status` carries, if any.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        let value = status.metadata().get(REASON_KEY)?.to_str().ok()?;
        [
            Reason::SensitiveSolutionRequired,
            Reason::SensitiveSolutionWrong,
            Reason::NotAdmin,
            Reason::PrimaryExists,
            Reason::ComponentRefused,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }

    /// A PERMISSION_DENIED status with `message`, tagged with this reason.
    pub fn denied(self, message: impl Into<String>) -> tonic::Status {
        self.tag(tonic::Status::permission_denied(message))
    }

    /// `status`, tagged with this reason.
    pub fn tag(self, mut status: tonic::Status) -> tonic::Status {
        status.metadata_mut().insert(
            REASON_KEY,
            tonic::metadata::AsciiMetadataValue::from_static(self.as_str()),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_survive_the_status_round_trip() {
        for reason in [
            Reason::SensitiveSolutionRequired,
            Reason::SensitiveSolutionWrong,
            Reason::NotAdmin,
            Reason::PrimaryExists,
            Reason::ComponentRefused,
        ] {
            let status = reason.denied("no");
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            let wire = status.into_http::<tonic::body::Body>();
            let back = tonic::Status::from_header_map(wire.headers()).unwrap();
            assert_eq!(Reason::of(&back), Some(reason));
        }
        assert_eq!(Reason::of(&tonic::Status::permission_denied("x")), None);
    }

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
