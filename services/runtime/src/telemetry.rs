//! Logs and traces. Every process logs through `tracing`; when an OTLP endpoint is configured,
//! spans are also exported over OTLP/gRPC (Jaeger takes them directly). The W3C `traceparent`
//! header carries a request's trace from the gateway into every gRPC call, so one HTTP request
//! is one trace across all services.

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::TelemetryConfig;

/// Keeps the trace exporter alive; call [`Telemetry::shutdown`] before exit to flush spans.
#[must_use = "dropping the guard without shutdown may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the trace exporter (if any).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK's shutdown blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber: a log layer filtered by `config.log`, plus, when an OTLP
/// endpoint is set, an OpenTelemetry layer with its own filter (a shared global filter would
/// also decide which spans are exported). Also installs the W3C trace-context propagator.
///
/// Must be called inside a Tokio runtime (the batch exporter spawns onto it).
pub fn init(config: &TelemetryConfig, component: &str) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let log_filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?} (P2_LOG)", config.log))?;
    let log_layer = if config.log_json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(log_filter)
            .boxed()
    };

    let (otel_layer, provider) = match &config.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .with_context(|| format!("cannot build the OTLP exporter for {endpoint}"))?;
            let service_name = config
                .service_name
                .clone()
                .unwrap_or_else(|| format!("polyproto-{component}"));
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler(&config.traces_sampler, config.traces_sampler_arg)?)
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service_name)
                        .build(),
                )
                .build();
            let tracer = provider.tracer("polyproto");
            opentelemetry::global::set_tracer_provider(provider.clone());
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // The gateway's request and handler spans are at DEBUG (free when nothing
                // exports them); export takes them.
                .with_filter(EnvFilter::new(
                    "info,p2_gateway=debug,h2=off,hyper=off,tower=off",
                ));
            (Some(layer), Some(provider))
        }
        _ => (None, None),
    };

    tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .context("a global tracing subscriber is already installed")?;
    Ok(Telemetry { provider })
}

/// The sampler named by `OTEL_TRACES_SAMPLER` with ratio `arg` (1 when absent): a clear error
/// for an unknown name or a ratio outside 0..=1 instead of the SDK's silent fallback.
pub fn sampler(name: &str, arg: Option<f64>) -> anyhow::Result<opentelemetry_sdk::trace::Sampler> {
    use opentelemetry_sdk::trace::Sampler;
    let ratio = arg.unwrap_or(1.0);
    anyhow::ensure!(
        (0.0..=1.0).contains(&ratio),
        "OTEL_TRACES_SAMPLER_ARG must be between 0 and 1, not {ratio}"
    );
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        other => anyhow::bail!(
            "unknown OTEL_TRACES_SAMPLER {other:?}; one of: {}",
            crate::config::TRACES_SAMPLERS.join(", ")
        ),
    })
}

/// A tonic client interceptor that writes the current span's trace context into the request
/// metadata (`traceparent`, `tracestate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads W3C trace context out of HTTP headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the trace context carried by `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when the span is disabled; nothing to do then.
    let _ = span.set_parent(parent);
}

/// Initialises logging for tests: only when `TEST_LOG=1`, and tolerant of being called twice.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_test_writer()
            .try_init();
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;
    use tonic::service::Interceptor as _;

    use super::*;

    #[test]
    fn trace_context_flows_from_http_headers_through_grpc_metadata_to_the_service_span() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                format!("00-{trace_id}-00f067aa0ba902b7-01")
                    .parse()
                    .unwrap(),
            );
            // Gateway: the request span joins the client's trace...
            let span = tracing::info_span!("http");
            set_parent_from_headers(&span, &headers);
            let _entered = span.enter();
            // ...and the gRPC client carries it on.
            let request = TraceContextInterceptor
                .call(tonic::Request::new(()))
                .unwrap();
            let traceparent = request
                .metadata()
                .get("traceparent")
                .expect("traceparent injected")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(traceparent.contains(trace_id), "{traceparent}");
            assert!(!traceparent.contains("00f067aa0ba902b7"), "a child span id");
            // Service: the call span continues the same trace.
            let call = http::Request::builder()
                .header("traceparent", traceparent)
                .body(())
                .unwrap();
            let service_span = crate::grpc::call_span(&call);
            let context = service_span.context();
            assert_eq!(
                context.span().span_context().trace_id().to_string(),
                trace_id
            );
        });
    }
}
