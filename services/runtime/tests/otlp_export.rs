//! Spans leave the process over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: an
//! in-process OTLP trace receiver (what Jaeger's collector speaks) gets them, with the service
//! name and the parent/child structure. Its own test binary, because the tracing subscriber is
//! process-global.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use p2_runtime::config::TelemetryConfig;

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_with_service_name_and_parentage() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let receiver = receiver.clone();
        let shutdown = shutdown.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown.cancelled_owned(),
                )
                .await
        }
    });

    let config = TelemetryConfig {
        log: "warn".into(),
        log_json: false,
        otlp_endpoint: Some(format!("http://{addr}")),
        service_name: None,
        ..Default::default()
    };
    let telemetry = p2_runtime::telemetry::init(&config, "unit").unwrap();
    {
        let outer = tracing::info_span!("outer_request");
        let _outer = outer.enter();
        let inner = tracing::info_span!("inner_call");
        let _inner = inner.enter();
    }
    telemetry.shutdown().await;
    shutdown.cancel();
    server.await.unwrap().unwrap();

    let requests = receiver.requests.lock().unwrap();
    let resource_spans: Vec<_> = requests
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .collect();
    assert!(!resource_spans.is_empty(), "no spans were exported");
    let service_names: Vec<String> = resource_spans
        .iter()
        .filter_map(|rs| rs.resource.as_ref())
        .flat_map(|r| r.attributes.iter())
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .collect();
    assert!(
        service_names.iter().any(|n| n.contains("polyproto-unit")),
        "{service_names:?}"
    );
    let spans: Vec<_> = resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .collect();
    let outer = spans
        .iter()
        .find(|s| s.name == "outer_request")
        .expect("outer span");
    let inner = spans
        .iter()
        .find(|s| s.name == "inner_call")
        .expect("inner span");
    assert_eq!(inner.trace_id, outer.trace_id);
    assert_eq!(inner.parent_span_id, outer.span_id);
}
