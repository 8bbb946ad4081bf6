//! Shared by the observability tests: the service binaries run as child processes (so each has
//! its own logger, tracer and environment, and its stdout can be read back), and a trace
//! receiver that decodes the spans Envoy and the services export (OTLP/HTTP protobuf, and
//! Zipkin v2 JSON for Envoy's Zipkin tracer).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tollgate_tests::paths::workspace_bin;
use tollgate_tests::process::{ChildProcess, free_addr};
use tollgate_tests::stack::wait_ready;

/// A service binary started with `serve --config <file>` on free loopback ports.
pub(crate) struct Service {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    process: ChildProcess,
}

impl Service {
    /// Writes `config` to `dir/<bin>.yaml` and starts `bin` on it with `env` added to the
    /// environment; returns once `/readyz` answers 200.
    pub(crate) async fn start(
        bin: &str,
        config: &str,
        env: &[(&str, String)],
        dir: &Path,
    ) -> anyhow::Result<Service> {
        let (grpc, http) = (free_addr(), free_addr());
        let file = dir.join(format!("{bin}.yaml"));
        std::fs::write(&file, config)?;
        let mut cmd = Command::new(workspace_bin(bin));
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--http-addr")
            .arg(http.to_string())
            .current_dir(dir)
            .env_remove("TOLLGATE_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = ChildProcess::spawn(bin, cmd, &dir.join(format!("{bin}.log")))?;
        wait_ready(http).await;
        Ok(Service {
            grpc,
            http,
            process,
        })
    }

    /// Everything the process printed so far (its logs: stdout and stderr).
    pub(crate) fn log(&self) -> String {
        self.process.log()
    }

    pub(crate) fn grpc_port(&self) -> u16 {
        self.grpc.port()
    }
}

/// One received span, flattened.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: String,
    pub(crate) kind: i32,
    pub(crate) attributes: Vec<(String, String)>,
}

impl Span {
    pub(crate) fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A trace receiver on loopback ports: OTLP/HTTP protobuf and Zipkin v2 JSON on `addr`,
/// OTLP/gRPC on `grpc_addr`.
pub(crate) struct OtlpReceiver {
    pub(crate) addr: SocketAddr,
    pub(crate) grpc_addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    pub(crate) async fn start() -> anyhow::Result<OtlpReceiver> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .route("/api/v2/spans", post(receive_zipkin))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
        let grpc = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener))
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            grpc_addr,
            spans,
            tasks: vec![http, grpc],
        })
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` value for this receiver (OTLP/HTTP).
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` value with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    pub(crate) fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub(crate) fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct GrpcReceiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> &'static str {
    if let Ok(req) = ExportTraceServiceRequest::decode(body) {
        record(&spans, req);
    }
    ""
}

fn record(spans: &Mutex<Vec<Span>>, req: ExportTraceServiceRequest) {
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .map(any_string)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                a.value.as_ref().map(any_string).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
}

/// Zipkin v2 JSON (what Envoy's Zipkin tracer sends), flattened the same way.
async fn receive_zipkin(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> &'static str {
    let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return "";
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut out = spans.lock().unwrap();
    for s in list {
        out.push(Span {
            service: text(&s["localEndpoint"]["serviceName"]),
            name: text(&s["name"]),
            trace_id: text(&s["traceId"]),
            span_id: text(&s["id"]),
            parent_span_id: text(&s["parentId"]),
            kind: match s["kind"].as_str() {
                Some("SERVER") => 2,
                Some("CLIENT") => 3,
                _ => 0,
            },
            attributes: Vec::new(),
        });
    }
    ""
}

fn any_string(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
