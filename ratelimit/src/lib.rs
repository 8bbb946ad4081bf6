//! `tollgate-ratelimit`: Envoy's global rate-limit service (`ShouldRateLimit`) over the
//! rate-limit engine (`tollgate-limiter`), reading envoyproxy/ratelimit's YAML unchanged.
//!
//! Everything that is not Envoy's lives in the engine: limits, matching, algorithms, stores,
//! reload, metrics, header values. This crate is the adapter: the config file, the gRPC
//! service converting protobuf to and from the engine's plain types, and the `/config` route.
//!
//! # Layout
//! - [`config`]: the service's config file (its own `server` and `log`, the engine's keys).
//! - [`service`]: ShouldRateLimit: descriptors in, statuses, headers and metadata out, a store
//!   failure as `UNAVAILABLE`.
//! - [`http`]: the `/config` route.
//! - [`cli`]: the command line (`serve`, `check-config`) the binary runs.
//! - `start`, `run`, `check`: the service as a library, for the binary and tests.

pub mod cli;
pub mod config;
pub mod http;
pub mod service;

use std::net::SocketAddr;

// The binary's global allocator (main.rs); named here for the unused-dependency lint.
use mimalloc as _;

use tollgate_common::Shutdown;
use tollgate_common::watch::WatchError;
use tollgate_limiter::{BuildError, FileError, Limiter, StoreError};
use tollgate_proto::ratelimit::RateLimitServiceServer;
use tollgate_server::{ServeError, Services, bind};

pub use config::Config;

/// The gRPC health service name this service reports under.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad limits:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Limits(Vec<FileError>),
    #[error("counter store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot watch the limits: {0}")]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<BuildError> for Error {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Limits(errors) => Error::Limits(errors),
            BuildError::Store(e) => Error::Store(e),
        }
    }
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Resolves when the service has stopped (after `shutdown` and draining).
    pub handle: tokio::task::JoinHandle<Result<(), ServeError>>,
    /// The engine behind the gRPC service (embedding, tests): reload on demand (what SIGHUP
    /// does) and the `/config` view through its reloader.
    pub limiter: Limiter,
}

/// Builds the limiter (refusing to start on any bad limits file), binds both listeners and
/// serves in the background until `shutdown`.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, Error> {
    tollgate_server::telemetry::init_logging(&config.log);
    // Installed before the limiter is built: its metric handles bind to it.
    tollgate_server::telemetry::prometheus();
    let limiter = tollgate_limiter::build(&config.limiter).await?;
    let bound = bind(&config.server).await?;
    let (grpc_addr, http_addr) = (bound.grpc_addr, bound.http_addr);
    limiter.watch(shutdown.clone())?;
    let svc = service::RateLimitGrpc::new(limiter.clone());
    let services = Services {
        name: SERVICE_NAME,
        grpc: tonic::service::Routes::new(RateLimitServiceServer::new(svc)),
        http: http::router(limiter.reloader().clone()),
    };
    let handle = tokio::spawn(bound.serve(services, shutdown));
    Ok(Running {
        grpc_addr,
        http_addr,
        handle,
        limiter,
    })
}

/// [`start`], then wait until the service stops.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let running = start(config, shutdown).await?;
    Ok(running.handle.await??)
}

/// Validates a config and its limits files without binding anything (`check-config`).
pub fn check(config: &Config) -> Result<(), Error> {
    Ok(tollgate_limiter::check(&config.limiter)?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tollgate_proto::ratelimit::{Code, RateLimitRequest, RateLimitServiceClient, descriptor};

    use super::*;

    /// A temp dir holding one limits file, `web.yaml`, with `yaml` in it.
    fn limits_dir(yaml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), yaml).unwrap();
        dir
    }

    /// Triggers `shutdown` and waits (bounded) for the service to drain and stop cleanly.
    async fn stop(shutdown: Shutdown, running: Running) {
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), running.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_should_rate_limit_config_and_metrics_then_shuts_down() {
        let dir = limits_dir(
            "domain: web\ndescriptors:\n  - key: client\n    rate_limit: {name: per-client, unit: minute, requests_per_unit: 1}\n",
        );
        let shutdown = Shutdown::new();
        let running = start(Config::for_tests(dir.path()), shutdown.clone())
            .await
            .unwrap();
        let mut client = RateLimitServiceClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .unwrap();
        let req = || RateLimitRequest {
            domain: "web".into(),
            descriptors: vec![descriptor([("client", "c")])],
            hits_addend: 0,
        };
        let first = client.should_rate_limit(req()).await.unwrap().into_inner();
        assert_eq!(first.overall_code, Code::Ok as i32);
        let second = client.should_rate_limit(req()).await.unwrap().into_inner();
        assert_eq!(second.overall_code, Code::OverLimit as i32);

        let config = http_get(running.http_addr, "/config").await;
        assert!(config.starts_with("HTTP/1.1 200"), "{config}");
        assert!(config.contains("\"per-client\""), "{config}");
        assert!(config.contains("\"failure_mode\":\"error\""), "{config}");
        let metrics = http_get(running.http_addr, "/metrics").await;
        assert!(
            metrics.contains(tollgate_limiter::metrics::DECISIONS),
            "{metrics}"
        );
        assert!(
            metrics.contains(tollgate_limiter::metrics::CONFIG_LOADS),
            "{metrics}"
        );

        // A bad edit: the limit in force stays, /config shows the error.
        std::fs::write(
            dir.path().join("web.yaml"),
            "domain: web\ndescriptors:\n  - key: client\n    rate_limit: {unit: weekly}\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.limiter.reloader().view().errors.is_empty() {
            assert!(Instant::now() < deadline, "reload not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let config = http_get(running.http_addr, "/config").await;
        assert!(
            config.contains("invalid rate limit unit 'weekly'"),
            "{config}"
        );
        assert_eq!(
            client
                .should_rate_limit(req())
                .await
                .unwrap()
                .into_inner()
                .overall_code,
            Code::OverLimit as i32
        );

        stop(shutdown, running).await;
    }

    #[tokio::test]
    async fn grpc_threads_serve_every_connection_and_drain_on_shutdown() {
        let dir = limits_dir(
            "domain: web\ndescriptors:\n  - key: client\n    rate_limit: {unit: minute, requests_per_unit: 3}\n",
        );
        let mut config = Config::for_tests(dir.path());
        config.server.grpc_threads = Some(2);
        let shutdown = Shutdown::new();
        let running = start(config, shutdown.clone()).await.unwrap();
        // Three connections over two threads share one counter: the fourth hit is over.
        let mut codes = Vec::new();
        for _ in 0..4 {
            let mut client =
                RateLimitServiceClient::connect(format!("http://{}", running.grpc_addr))
                    .await
                    .unwrap();
            let call = client.should_rate_limit(RateLimitRequest {
                domain: "web".into(),
                descriptors: vec![descriptor([("client", "c")])],
                hits_addend: 0,
            });
            // A connection no thread serves would hang: bounded, it fails instead.
            let answer = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("answered")
                .unwrap()
                .into_inner();
            codes.push(answer.overall_code);
        }
        let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
        assert_eq!(codes, [ok, ok, ok, over]);
        stop(shutdown, running).await;
    }

    #[tokio::test]
    async fn refuses_to_start_with_a_bad_limits_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "domain: x\ndescriptors:\n  - key: ''\n",
        )
        .unwrap();
        let err = start(Config::for_tests(dir.path()), Shutdown::new())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Limits(_)));
        assert!(
            text.contains("bad.yaml:3: descriptors[0].key: descriptor has empty key"),
            "{text}"
        );
        assert!(check(&Config::for_tests(dir.path())).is_err());
    }
}
