//! One HTTP request is one trace across processes: the gateway, session and identity each
//! export their spans over OTLP to an in-process receiver (what Jaeger's collector speaks), and
//! the spans of a login form one tree — gateway request → session call → identity call — with
//! the database and Redis calls as children of the service call that made them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::helpers;
use crate::split::{Component, SplitStack};

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

/// A received span with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

fn received(receiver: &Receiver) -> Vec<Received> {
    let requests = receiver.requests.lock().unwrap();
    let mut out = Vec::new();
    for resource_spans in requests.iter().flat_map(|r| r.resource_spans.iter()) {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .iter()
            .flat_map(|s| s.spans.iter())
        {
            out.push(Received {
                service: service.clone(),
                span: span.clone(),
            });
        }
    }
    out
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_one_trace_across_gateway_session_and_identity_with_storage_spans() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn({
        let receiver = receiver.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        }
    });

    let mut stack = SplitStack::builder()
        .postgres()
        .redis(&helpers::redis_url())
        .metrics(false)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        // Export often: the test also flushes by stopping the processes.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start()
        .await;
    stack.register_and_login("tracy", "t1").await;
    // SIGTERM flushes each process's exporter (gateway first: its spans end first).
    for component in [Component::Gateway, Component::Session, Component::Identity] {
        stack.terminate(component, 0, Duration::from_secs(15));
    }

    let spans = received(&receiver);
    let login_span = spans
        .iter()
        .find(|r| r.span.name == "POST /.p2/auth/v1/session")
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|r| (&r.service, &r.span.name)).collect();
            panic!("no gateway span for the login among {names:?}")
        });
    assert!(
        login_span.service.contains("polyproto-gateway"),
        "{login_span:?}"
    );
    let trace: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.trace_id == login_span.span.trace_id)
        .collect();
    let by_id: HashMap<&[u8], &Received> = trace
        .iter()
        .map(|r| (r.span.span_id.as_slice(), *r))
        .collect();
    // Walks up the parent links to the root; every link must resolve inside the trace.
    let ancestors = |span: &Received| -> Vec<String> {
        let mut out = Vec::new();
        let mut parent = span.span.parent_span_id.clone();
        while !parent.is_empty() {
            let up = by_id
                .get(parent.as_slice())
                .unwrap_or_else(|| panic!("a broken parent link from {span:?}"));
            out.push(up.service.clone());
            parent = up.span.parent_span_id.clone();
        }
        out
    };
    let service_call = |service: &str, method: &str| -> &Received {
        trace
            .iter()
            .find(|r| r.service.contains(service) && r.span.name.ends_with(method))
            .copied()
            .unwrap_or_else(|| {
                let names: Vec<_> = trace.iter().map(|r| (&r.service, &r.span.name)).collect();
                panic!("no {service} span for {method} in the login's trace: {names:?}")
            })
    };
    let session_call = service_call("polyproto-session", "/polyproto.session.v1.Session/Login");
    let chain = ancestors(session_call);
    assert!(
        chain.iter().any(|s| s.contains("polyproto-gateway")),
        "the session call hangs under the gateway: {chain:?}"
    );
    let identity_call = service_call("polyproto-identity", "IssueLoginCert");
    let chain = ancestors(identity_call);
    assert!(
        chain.iter().any(|s| s.contains("polyproto-session"))
            && chain
                .last()
                .is_some_and(|s| s.contains("polyproto-gateway")),
        "identity → session → gateway: {chain:?}"
    );
    // Storage: SQL in both services and Redis (the identity's guess throttle), each under
    // its own service's call.
    for (service, system) in [
        ("polyproto-identity", "sql"),
        ("polyproto-session", "sql"),
        ("polyproto-identity", "redis"),
    ] {
        let storage = trace
            .iter()
            .find(|r| {
                r.service.contains(service)
                    && attribute(&r.span, "db.system").is_some_and(|v| v.contains(system))
            })
            .unwrap_or_else(|| {
                let names: Vec<_> = trace.iter().map(|r| (&r.service, &r.span.name)).collect();
                panic!("no {system} span of {service} in the login's trace: {names:?}")
            });
        let chain = ancestors(storage);
        assert!(
            chain.first().is_some_and(|s| s.contains(service)),
            "a {system} span is a child inside {service}: {chain:?}"
        );
        assert!(
            chain
                .last()
                .is_some_and(|s| s.contains("polyproto-gateway")),
            "…and part of the gateway's trace: {chain:?}"
        );
    }
}
