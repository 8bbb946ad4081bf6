//! `grpc-load`: drives an Envoy ext_authz Check or ShouldRateLimit service directly, without Envoy.
//!
//! N tasks share C HTTP/2 connections; each task sends one request at a time, as fast as answers
//! come back, until the duration ends. It counts calls, transport/gRPC errors and denials (an
//! answer that is not OK), and reports calls/s and latency percentiles. For ShouldRateLimit it also
//! counts answers in which a descriptor matched a configured limit, which shows the service really
//! did its counting (a service without a matching limit answers OK for free). The last line of
//! output is a `RESULT key=value ...` line meant for scripts.

// The three benchmark binaries share one package's dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tollgate_proto::auth::{
    AttributeContext, AuthorizationClient, CheckRequest, attribute_context,
};
use tollgate_proto::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address,
};
use tollgate_proto::ratelimit::{Code, RateLimitRequest, RateLimitServiceClient, descriptor};
use tonic::transport::{Channel, Endpoint};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Api {
    /// envoy.service.auth.v3.Authorization/Check
    Check,
    /// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
    Ratelimit,
}

#[derive(Parser, Debug)]
#[command(about = "gRPC load driver for Envoy's ext_authz and rate-limit service APIs")]
struct Args {
    /// Service address, host:port.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    api: Api,
    /// Requests in flight at once (one task each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the tasks are spread over (Envoy with one worker uses one).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to send, e.g. `10s`, `1500ms`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Check: a request header `name=value` (repeatable); replaces the default
    /// `authorization: Bearer bench-token`.
    #[arg(long = "header", value_parser = parse_pair)]
    headers: Vec<(String, String)>,
    /// Check: request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Check: request path (may carry a query string).
    #[arg(long, default_value = "/api/v1/orders/42?expand=items")]
    path: String,
    /// Check: request host (`:authority`).
    #[arg(long, default_value = "api.bench.local")]
    host: String,
    /// Rate limit: the domain.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// Rate limit: one descriptor as `key=value,key2=value2` (repeatable); default
    /// `generic_key=bench`.
    #[arg(long = "descriptor", value_parser = parse_descriptor)]
    descriptors: Vec<Vec<(String, String)>>,
    /// Per-call deadline.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Tokio worker threads of the driver (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_descriptor(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',').map(parse_pair).collect()
}

/// The one request every call sends (cloned per call, as a real client would build a fresh one).
#[derive(Clone)]
enum Payload {
    Check(Box<CheckRequest>),
    RateLimit(RateLimitRequest),
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A CheckRequest shaped like the ones Envoy's ext_authz filter sends for an HTTP/1.1 request.
fn check_request(args: &Args) -> CheckRequest {
    let mut headers: HashMap<String, String> = [
        (":authority", args.host.as_str()),
        (":method", args.method.as_str()),
        (":path", args.path.as_str()),
        (":scheme", "http"),
        ("user-agent", "grpc-load/1.0"),
        ("accept", "application/json"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c1f0e-3b1a-4c55-9d1e-2b7f5c0a9e11"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if args.headers.is_empty() {
        headers.insert("authorization".into(), "Bearer bench-token".into());
    }
    for (k, v) in &args.headers {
        headers.insert(k.to_ascii_lowercase(), v.clone());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(socket("127.0.0.1", 51234)),
                ..Default::default()
            }),
            destination: Some(attribute_context::Peer {
                address: Some(socket("127.0.0.1", 10000)),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "6f1c1f0e-3b1a-4c55-9d1e-2b7f5c0a9e11".into(),
                    method: args.method.clone(),
                    headers,
                    path: args.path.clone(),
                    host: args.host.clone(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn ratelimit_request(args: &Args) -> RateLimitRequest {
    let descriptors = if args.descriptors.is_empty() {
        vec![descriptor([("generic_key", "bench")])]
    } else {
        args.descriptors
            .iter()
            .map(|d| descriptor(d.iter().cloned()))
            .collect()
    };
    RateLimitRequest {
        domain: args.domain.clone(),
        descriptors,
        hits_addend: 1,
    }
}

/// What one task saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    denied: u64,
    /// Rate limit: answers where some descriptor matched a limit (its status has `current_limit`).
    limited: u64,
    first_error: Option<String>,
}

/// Sends calls one after another on `channel` until `deadline`.
async fn worker(channel: Channel, payload: Payload, deadline: Instant, timeout: Duration) -> Tally {
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(1 << 16),
        ..Default::default()
    };
    let mut authz = AuthorizationClient::new(channel.clone());
    let mut rl = RateLimitServiceClient::new(channel);
    while Instant::now() < deadline {
        let started = Instant::now();
        // `Ok((allowed, matched_a_limit))`.
        let outcome: Result<(bool, bool), tonic::Status> = match &payload {
            Payload::Check(req) => {
                let mut r = tonic::Request::new((**req).clone());
                r.set_timeout(timeout);
                authz.check(r).await.map(|resp| {
                    let ok = resp.get_ref().status.as_ref().is_none_or(|s| s.code == 0);
                    (ok, false)
                })
            }
            Payload::RateLimit(req) => {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(timeout);
                rl.should_rate_limit(r).await.map(|resp| {
                    let r = resp.get_ref();
                    let limited = r.statuses.iter().any(|s| s.current_limit.is_some());
                    (r.overall_code == Code::Ok as i32, limited)
                })
            }
        };
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Ok((allowed, limited)) => {
                tally.latencies_us.push(us);
                tally.denied += u64::from(!allowed);
                tally.limited += u64::from(limited);
            }
            Err(status) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(status.to_string());
                }
            }
        }
    }
    tally
}

/// The value below which `q` (0..=1) of the sorted samples fall (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn fmt_us(us: u32) -> String {
    if us >= 1000 {
        format!("{:.2}ms", f64::from(us) / 1000.0)
    } else {
        format!("{us}us")
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    let addr: SocketAddr = args
        .target
        .parse()
        .context("--target must be host:port (an IP address)")?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(ch);
    }
    let payload = match args.api {
        Api::Check => Payload::Check(Box::new(check_request(&args))),
        Api::Ratelimit => Payload::RateLimit(ratelimit_request(&args)),
    };

    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            tokio::spawn(worker(ch, payload.clone(), deadline, args.timeout))
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.latencies_us.extend_from_slice(&t.latencies_us);
        all.errors += t.errors;
        all.denied += t.denied;
        all.limited += t.limited;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let calls = all.latencies_us.len() as u64;
    let rps = calls as f64 / secs;
    let (p50, p90, p99, max) = (
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.90),
        percentile(&all.latencies_us, 0.99),
        all.latencies_us.last().copied().unwrap_or(0),
    );
    let api = match args.api {
        Api::Check => "check",
        Api::Ratelimit => "ratelimit",
    };
    println!(
        "grpc-load api={api} target={addr} concurrency={} connections={} duration={secs:.2}s",
        args.concurrency, args.connections
    );
    println!(
        "  calls {calls}  errors {}  denied {}  limited {}  calls/s {rps:.1}  p50 {}  p90 {}  p99 {}  max {}",
        all.errors,
        all.denied,
        all.limited,
        fmt_us(p50),
        fmt_us(p90),
        fmt_us(p99),
        fmt_us(max)
    );
    if let Some(e) = &all.first_error {
        eprintln!("first error: {e}");
    }
    println!(
        "RESULT api={api} calls={calls} errors={} denied={} limited={} secs={secs:.3} rps={rps:.1} p50_us={p50} p90_us={p90} p99_us={p99} max_us={max}",
        all.errors, all.denied, all.limited
    );
    if calls == 0 {
        bail!("no call succeeded");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(run(args))
}
