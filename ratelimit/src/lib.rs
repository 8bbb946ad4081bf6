//! `tollgate-ratelimit`: Envoy's global rate-limit service (`ShouldRateLimit`) with exact, shared
//! counters in memory or Redis and four algorithms, reading envoyproxy/ratelimit's YAML unchanged.
//!
//! The engine ([`engine::Engine`]) is a library with no gRPC in it: config + matching
//! ([`limits`]), algorithms ([`algorithm`]) and stores ([`store`]) are driven by plain Rust
//! requests, so other front ends can embed it; [`service`] is the gRPC adapter.
//!
//! # Layout
//! - [`config`]: the service's config file.
//! - [`limits`]: the limits files (envoyproxy/ratelimit YAML + extensions), compiled for lookup;
//!   descriptor matching; loading a directory with per-file last-good.
//! - [`engine`]: request → store hits → decision; the injected clock.
//! - [`algorithm`]: sliding_window, fixed_window, token_bucket, gcra, as pure functions.
//! - [`store`]: the counter stores (memory, Redis, Redis Cluster, local over-limit cache).
//! - [`service`]: ShouldRateLimit, response headers, dynamic metadata.
//! - [`reload`]: hot reload on file change and SIGHUP; [`http`]: the `/config` route.
//! - [`metrics`]: metric names and handles.

pub mod config;
pub mod http;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use tollgate_common::Shutdown;
use tollgate_proto::ratelimit::RateLimitServiceServer;
use tollgate_server::{ServeError, Services, bind};

pub use config::Config;
use tollgate_common::clock::SystemClock;
pub use tollgate_limiter::engine::Engine;
use tollgate_limiter::{limits, reload, store};

use tollgate_limiter::limits::FileError;
use tollgate_limiter::reload::Reloader;
use tollgate_limiter::store::StoreError;

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
    Watch(#[from] notify::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Resolves when the service has stopped (after `shutdown` and draining).
    pub handle: tokio::task::JoinHandle<Result<(), ServeError>>,
    /// The engine behind the gRPC service (embedding, tests).
    pub engine: Arc<Engine>,
    /// Reload the limits on demand (what SIGHUP does) and read the `/config` view.
    pub reloader: Arc<Reloader>,
}

/// Loads the limits (refusing to start on any bad file), connects the store, binds both
/// listeners and serves in the background until `shutdown`.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, Error> {
    tollgate_server::telemetry::init_logging(&config.log);
    // Installed before the limits are compiled: their metric handles bind to it.
    tollgate_server::telemetry::prometheus();
    let store = store::build(&config.store).await?;
    let engine = Arc::new(Engine::new(
        limits::Limits::empty(),
        store,
        Arc::new(SystemClock),
        config.engine_options(),
    ));
    let settings = reload::Settings {
        failure_mode: config.failure_mode,
        default_algorithm: config.default_algorithm,
        shadow_mode: config.shadow_mode,
        store: match config.store {
            store::StoreConfig::Memory(_) => "memory",
            store::StoreConfig::Redis(_) => "redis",
        },
    };
    let reloader = Arc::new(
        Reloader::new(
            config.limits.clone(),
            engine.clone(),
            config.default_algorithm,
        )
        .with_settings(settings),
    );
    let errors = reloader.reload();
    if !errors.is_empty() {
        return Err(Error::Limits(errors));
    }
    let bound = bind(&config.server).await?;
    let (grpc_addr, http_addr) = (bound.grpc_addr, bound.http_addr);
    reload::spawn(reloader.clone(), shutdown.clone())?;
    let svc = service::RateLimitGrpc::new(engine.clone(), config.headers);
    let services = Services {
        name: SERVICE_NAME,
        grpc: tonic::service::Routes::new(RateLimitServiceServer::new(svc)),
        http: http::router(reloader.clone()),
    };
    let handle = tokio::spawn(bound.serve(services, shutdown));
    Ok(Running {
        grpc_addr,
        http_addr,
        handle,
        engine,
        reloader,
    })
}

/// [`start`], then wait until the service stops.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let running = start(config, shutdown).await?;
    Ok(running.handle.await??)
}

/// Validates a config and its limits files without binding anything (`check-config`).
pub fn check(config: &Config) -> Result<(), Error> {
    let Some(source) = &config.limits else {
        return Ok(());
    };
    let report = limits::Loader::new(source.clone(), config.default_algorithm).load();
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Limits(report.errors))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tollgate_proto::ratelimit::{Code, RateLimitRequest, RateLimitServiceClient, descriptor};

    use super::*;

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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "domain: web\ndescriptors:\n  - key: client\n    rate_limit: {name: per-client, unit: minute, requests_per_unit: 1}\n",
        )
        .unwrap();
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
        while running.reloader.view().errors.is_empty() {
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

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), running.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
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
