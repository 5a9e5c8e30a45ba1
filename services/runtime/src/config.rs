//! Configuration blocks shared by several components. Every flag has an environment twin;
//! defaults are named constants so README and `--help` agree.

use clap::Args;

/// Default log filter when `P2_LOG`/`--log` is not given.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Logging and tracing.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,p2_identity=debug`.
    #[arg(long = "log", env = "P2_LOG", default_value = DEFAULT_LOG_FILTER, global = true)]
    pub log: String,
    /// Emit logs as JSON lines instead of human-readable text.
    #[arg(
        long = "log-json",
        env = "P2_LOG_JSON",
        default_value_t = false,
        global = true
    )]
    pub log_json: bool,
    /// OTLP/gRPC endpoint for trace export (e.g. `http://jaeger:4317`); unset disables export.
    #[arg(
        long = "otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        global = true
    )]
    pub otlp_endpoint: Option<String>,
    /// Service name attached to exported traces; defaults to `polyproto-<component>`.
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME", global = true)]
    pub service_name: Option<String>,
    /// Which traces are exported: `parentbased_always_on` (default: every trace the gateway
    /// starts, and in services whatever the caller decided), `parentbased_traceidratio` (a
    /// share of new traces, set by the argument; services follow the gateway, so a trace is
    /// whole or absent), `traceidratio`, `always_on`, `always_off`, `parentbased_always_off`.
    #[arg(
        long = "traces-sampler",
        env = "OTEL_TRACES_SAMPLER",
        default_value = DEFAULT_TRACES_SAMPLER,
        value_parser = TRACES_SAMPLERS,
        global = true
    )]
    pub traces_sampler: String,
    /// The sampler's ratio for `*traceidratio`, between 0 and 1 (default 1).
    #[arg(
        long = "traces-sampler-arg",
        env = "OTEL_TRACES_SAMPLER_ARG",
        global = true
    )]
    pub traces_sampler_arg: Option<f64>,
}

/// Default trace sampler (the OpenTelemetry default).
pub const DEFAULT_TRACES_SAMPLER: &str = "parentbased_always_on";

/// The samplers `OTEL_TRACES_SAMPLER` may name (the OpenTelemetry specification's built-ins).
pub const TRACES_SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log: DEFAULT_LOG_FILTER.to_owned(),
            log_json: false,
            otlp_endpoint: None,
            service_name: None,
            traces_sampler: DEFAULT_TRACES_SAMPLER.to_owned(),
            traces_sampler_arg: None,
        }
    }
}

/// Default time a service reports NOT_SERVING before it stops accepting calls, in ms.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 2_000;

/// How a gRPC service shuts down (CONVENTIONS 10): on SIGTERM its health turns NOT_SERVING at
/// once, it keeps serving for the grace period (so load balancers and gateways that watch
/// health stop sending it calls), then stops accepting and drains in-flight calls (at most
/// [`crate::shutdown::DRAIN_TIMEOUT`]).
#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// Milliseconds between reporting NOT_SERVING and closing the listener on shutdown.
    #[arg(long = "shutdown-grace-ms", env = "P2_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

impl ShutdownConfig {
    /// No grace: for components in one process, where the gateway drains before the services.
    pub fn immediate() -> Self {
        Self {
            shutdown_grace_ms: 0,
        }
    }

    /// The grace period.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.shutdown_grace_ms)
    }
}
