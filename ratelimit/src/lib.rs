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
//! - [`engine`]: request → store hits → decision; the injected [`engine::Clock`].
//! - [`algorithm`]: sliding_window, fixed_window, token_bucket, gcra, as pure functions.
//! - [`store`]: the counter stores (memory, Redis, Redis Cluster, local over-limit cache).
//! - [`service`]: ShouldRateLimit, response headers, dynamic metadata.
//! - [`reload`]: hot reload on file change and SIGHUP; [`http`]: the `/config` route.
//! - [`metrics`]: metric names and handles.

pub mod algorithm;
pub mod config;
pub mod engine;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use tollgate_common::Shutdown;
use tollgate_common::server::{ServeError, Services, bind};
use tollgate_proto::ratelimit::RateLimitServiceServer;

pub use config::Config;
pub use engine::{Engine, SystemClock};

use crate::limits::FileError;
use crate::reload::Reloader;
use crate::store::StoreError;

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
    tollgate_common::telemetry::init_logging(&config.log);
    // Installed before the limits are compiled: their metric handles bind to it.
    tollgate_common::telemetry::prometheus();
    let store = store::build(&config.store).await?;
    let engine = Arc::new(Engine::new(
        limits::Limits::empty(),
        store,
        Arc::new(SystemClock),
        config.engine_options(),
    ));
    let reloader = Arc::new(Reloader::new(
        config.limits.clone(),
        engine.clone(),
        config.default_algorithm,
    ));
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
