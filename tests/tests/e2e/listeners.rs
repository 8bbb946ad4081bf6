//! The listeners under hostile clients, on the real binary with a real file-descriptor limit
//! (`prlimit`): a slowloris flood of the side listener larger than the whole limit leaves gRPC
//! (ShouldRateLimit and health) and `/healthz` answering, a client that sends no headers is cut
//! off after `server.http_header_timeout`, and running out of descriptors on the gRPC listener
//! backs off and logs a few counted lines instead of a flood, then recovers.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_proto::ratelimit::{Code, RateLimitRequest, RateLimitServiceClient, descriptor};
use tollgate_tests::paths::{project_root, workspace_bin};
use tollgate_tests::process::{ChildProcess, free_addr, wait_for};

/// The hard open-file limit the service runs under; it starts with a soft limit of half that
/// and raises it.
const FD_LIMIT: usize = 256;

fn start_limited(dir: &std::path::Path, grpc: SocketAddr, http: SocketAddr) -> ChildProcess {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={}:{FD_LIMIT}", FD_LIMIT / 2))
        .arg(workspace_bin("tollgate-ratelimit"))
        .args(["serve", "--config", "deploy/config/ratelimit.yaml"])
        .args(["--set", "limits.path=deploy/config/limits"])
        .args([
            "--set",
            "server.http_header_timeout=2s",
            "--set",
            "log.format=json",
        ])
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
        ])
        .current_dir(project_root());
    ChildProcess::spawn("tollgate-ratelimit", cmd, &dir.join("ratelimit.log")).unwrap()
}

/// `GET path` on a fresh connection; the status code, or `None` when it could not be had.
async fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let call = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

/// A ShouldRateLimit and a health check on a fresh gRPC connection both answered.
async fn grpc_answers(addr: SocketAddr) -> bool {
    let call = async {
        let url = format!("http://{addr}");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut rl = RateLimitServiceClient::new(channel.clone());
        let r = rl
            .should_rate_limit(RateLimitRequest {
                domain: "nowhere".into(),
                descriptors: vec![descriptor([("k", "v")])],
                hits_addend: 1,
            })
            .await
            .ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: tollgate_ratelimit::SERVICE_NAME.into(),
            })
            .await
            .ok()?;
        Some(r.into_inner().overall_code == Code::Ok as i32 && h.into_inner().status == 1)
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Opens `n` connections that send half a request and then nothing.
async fn slowloris(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        else {
            continue;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
        held.push(s);
    }
    held
}

fn accept_failure_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("accept failed")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_bigger_than_the_fd_limit_leaves_grpc_and_healthz_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_addr(), free_addr());
    let child = start_limited(dir.path(), grpc, http);
    wait_for("ready", Duration::from_secs(20), || async move {
        (get(http, "/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert!(
        child.log().contains(&format!("\"limit\":\"{FD_LIMIT}\"")),
        "the soft limit is raised to the hard one and logged:\n{}",
        child.log()
    );

    // More slow connections than the process has descriptors.
    let held = slowloris(http, FD_LIMIT + 150).await;
    assert!(
        held.len() > FD_LIMIT,
        "only {} connections opened",
        held.len()
    );
    assert!(grpc_answers(grpc).await, "gRPC under a side-listener flood");
    assert_eq!(
        get(http, "/healthz").await,
        Some(200),
        "/healthz under the flood"
    );
    // A second wave: new slow connections keep displacing idle ones, probes still pass.
    let more = slowloris(http, 100).await;
    assert_eq!(get(http, "/healthz").await, Some(200));
    assert!(grpc_answers(grpc).await);
    assert_eq!(accept_failure_lines(&child.log()), 0, "{}", child.log());

    // A connection that sends nothing is closed after the header timeout.
    let mut silent = TcpStream::connect(http).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    drop((held, more));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_with_counted_log_lines_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_addr(), free_addr());
    let child = start_limited(dir.path(), grpc, http);
    wait_for("ready", Duration::from_secs(20), || async move {
        (get(http, "/readyz").await == Some(200)).then_some(())
    })
    .await;
    // Idle connections to the gRPC listener until the process has no descriptor left.
    let mut held = Vec::new();
    for _ in 0..FD_LIMIT + 100 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(grpc)).await
        {
            held.push(s);
        }
    }
    let log = wait_for("accept failures logged", Duration::from_secs(10), || {
        let log = child.log();
        async move { (accept_failure_lines(&log) > 0).then_some(log) }
    })
    .await;
    assert!(log.contains("Too many open files"), "{log}");
    assert!(log.contains("\"failures\":"), "{log}");
    // Keep it exhausted for a while: the accept loop must neither spin nor log each failure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = accept_failure_lines(&child.log());
    assert!(
        lines <= 2,
        "{lines} accept-failure lines in 3s:\n{}",
        child.log()
    );
    drop(held);
    wait_for(
        "gRPC answers again",
        Duration::from_secs(15),
        || async move { grpc_answers(grpc).await.then_some(()) },
    )
    .await;
}
