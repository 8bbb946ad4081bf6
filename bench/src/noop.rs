//! `noop-grpc`: answers Envoy's ext_authz Check and ShouldRateLimit with OK and does nothing else.
//!
//! It serves both APIs on one port and is the floor any external authorization or rate-limit
//! service can reach: whatever it costs Envoy and itself per call, a real service costs at least
//! that much. The benchmark runs it beside Tollgate so the two can be compared call for call.

// The three benchmark binaries share one package's dependencies.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;

use clap::Parser;
use tollgate_proto::auth::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use tollgate_proto::pb::google::protobuf::Struct;
use tollgate_proto::pb::google::rpc;
use tollgate_proto::ratelimit::{
    Code, DescriptorStatus, RateLimitRequest, RateLimitResponse, RateLimitService,
    RateLimitServiceServer,
};
use tonic::{Request, Response, Status};

#[derive(Parser, Debug)]
#[command(about = "No-op Envoy ext_authz + rate-limit gRPC service (benchmark baseline)")]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Tokio worker threads (default: one per core, like the Tollgate services).
    #[arg(long)]
    threads: Option<usize>,
    /// What an allowed Check answer carries: `empty` (an empty `OkHttpResponse`), or `single`,
    /// the shape of single-call Tollgate's allowed answer to the bench request (two identity
    /// headers set, four removed, the two IETF rate-limit response headers, the identity and
    /// the limit as dynamic metadata), so that Envoy's cost of applying that shape can be
    /// measured apart from the service's; `single-no-remove`, `single-no-metadata`,
    /// `single-flat-metadata` (the limit's fields as dotted top-level keys) and
    /// `single-no-response-headers` take one part out, to price each.
    #[arg(long, value_enum, default_value = "empty")]
    check_answer: CheckAnswer,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckAnswer {
    /// An empty `OkHttpResponse`.
    Empty,
    /// Single-call Tollgate's allowed answer to the bench request.
    Single,
    /// `single` without the four removals.
    SingleNoRemove,
    /// `single` without dynamic metadata.
    SingleNoMetadata,
    /// `single` with the metadata flat: `rate_limit.domain` and so on at the top level.
    SingleFlatMetadata,
    /// `single` without the two response headers.
    SingleNoResponseHeaders,
}

struct Noop {
    /// The Check answer, built once.
    check: CheckResponse,
}

impl Noop {
    fn new(answer: CheckAnswer) -> Self {
        let ok = match answer {
            CheckAnswer::Empty => (OkHttpResponse::default(), None),
            CheckAnswer::Single => single_call_shape(),
            CheckAnswer::SingleNoRemove => {
                let mut s = single_call_shape();
                s.0.headers_to_remove.clear();
                s
            }
            CheckAnswer::SingleNoMetadata => (single_call_shape().0, None),
            CheckAnswer::SingleFlatMetadata => {
                use tollgate_proto::metadata::{number, string, structure};
                let flat = structure([
                    ("method", string("jwt")),
                    ("subject", string("bench-user")),
                    ("rate_limit.domain", string("bench")),
                    ("rate_limit.limit", string("bench.generic_key_bench")),
                    ("rate_limit.remaining", number(99999999.0)),
                ]);
                (single_call_shape().0, Some(flat))
            }
            CheckAnswer::SingleNoResponseHeaders => {
                let mut s = single_call_shape();
                s.0.response_headers_to_add.clear();
                s
            }
        };
        Self {
            check: CheckResponse {
                status: Some(rpc::Status {
                    code: 0,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(ok.0)),
                dynamic_metadata: ok.1,
            },
        }
    }
}

/// Single-call Tollgate's allowed answer to the bench request (JWT `bench-user`, the
/// `generic_key=bench` limit), byte for byte in shape and close in size.
fn single_call_shape() -> (OkHttpResponse, Option<Struct>) {
    use tollgate_proto::auth::header;
    use tollgate_proto::metadata::{number, string, struct_value, structure};
    let ok = OkHttpResponse {
        headers: vec![
            header("x-tollgate-subject", "bench-user"),
            header("x-tollgate-auth-method", "jwt"),
        ],
        headers_to_remove: ["tenant", "plan", "key-id", "scopes"]
            .iter()
            .map(|h| format!("x-tollgate-{h}"))
            .collect(),
        response_headers_to_add: vec![
            header(
                "RateLimit-Policy",
                "\"bench.generic_key_bench\";q=100000000;w=1",
            ),
            header("RateLimit", "\"bench.generic_key_bench\";r=99999999;t=1"),
        ],
        ..Default::default()
    };
    let limit = structure([
        ("domain", string("bench")),
        ("limit", string("bench.generic_key_bench")),
        ("remaining", number(99999999.0)),
    ]);
    let metadata = structure([
        ("method", string("jwt")),
        ("subject", string("bench-user")),
        ("rate_limit", struct_value(limit)),
    ]);
    (ok, Some(metadata))
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check.clone()))
    }
}

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        req: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = req
            .get_ref()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    rt.enable_all()
        .build()?
        .block_on(serve(args.addr, Noop::new(args.check_answer)))
}

async fn serve(addr: SocketAddr, noop: Noop) -> anyhow::Result<()> {
    let noop = std::sync::Arc::new(noop);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Printed so a caller that asked for port 0 learns the real one.
    println!("noop-grpc listening on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::from_arc(noop.clone()))
        .add_service(RateLimitServiceServer::from_arc(noop))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
