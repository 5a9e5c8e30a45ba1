//! Wiring of the `polyproto` binary, as a library so that tests start exactly what users run.
//!
//! - [`stack`]: every service plus the gateway in one process, talking gRPC over loopback —
//!   the same code path as separate processes. Used by `polyproto up` and by `tests/`.
//! - [`cli`]: the command line (`up`, one subcommand per component, `admin`).
//! - [`admin`]: operator commands on the identity storage.
//! - [`healthcheck`]: `polyproto healthcheck`, for compose and the image's `HEALTHCHECK`.

pub mod admin;
pub mod cli;
pub mod healthcheck;
pub mod stack;
