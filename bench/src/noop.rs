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
}

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
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
    rt.enable_all().build()?.block_on(serve(args.addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Printed so a caller that asked for port 0 learns the real one.
    println!("noop-grpc listening on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop))
        .add_service(RateLimitServiceServer::new(Noop))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
