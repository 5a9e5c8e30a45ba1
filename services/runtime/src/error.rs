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
