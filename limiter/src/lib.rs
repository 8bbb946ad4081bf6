//! `tollgate-limiter`: the rate-limit engine as a library — limits, descriptor matching, four
//! algorithms, counter stores (memory, Redis, Redis Cluster), hot reload, metrics and response
//! headers — with no gRPC, HTTP server or Envoy type in it, so that every front end (the Envoy
//! RLS service, ext_authz in one call, an Envoy dynamic module) runs the same decisions.
//!
//! A host reads a [`LimiterConfig`] (its own top-level keys or nested under one key), calls
//! [`build`] — which binds no port and installs no logger or metrics recorder; metric handles
//! are taken from whatever recorder is installed when it runs — and then asks
//! [`Limiter::should_rate_limit`] with its own descriptors ([`DescriptorSource`]). A store
//! failure is [`EngineError::Store`] unless the configured [`FailureMode`] answers; the host
//! maps it to its own protocol.
//!
//! # Layout
//! - [`config`]: the limiter's config section ([`LimiterConfig`]), embeddable by any host.
//! - [`descriptor`]: request descriptors as the engine reads them.
//! - [`limits`]: the limits files (envoyproxy/ratelimit YAML + extensions), compiled for
//!   lookup; descriptor matching; loading a directory with per-file last-good.
//! - `key`: the counter key, built once per matched descriptor.
//! - [`engine`]: request → store hits → decision, with the injected clock.
//! - [`algorithm`]: sliding_window, fixed_window, token_bucket, gcra, as pure functions.
//! - [`unit`]: the units a limit is written in.
//! - [`period`]: calendar billing periods (day, week, month, year) in UTC or an IANA zone.
//! - [`store`]: the counter stores (memory, Redis, Redis Cluster, local over-limit cache) and
//!   the conformance suite every store passes.
//! - [`response`]: rate-limit headers and fired-limit metadata as plain data.
//! - [`reload`]: hot reload on file change and SIGHUP, and the `/config` view as plain data.
//! - [`metrics`]: metric names and handles.

use std::sync::Arc;

use tollgate_common::Shutdown;
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::watch::WatchError;

pub mod algorithm;
pub mod config;
pub mod descriptor;
pub mod engine;
mod key;
pub mod limits;
pub mod metrics;
pub mod period;
pub mod reload;
pub mod response;
pub mod store;
pub mod unit;

pub use config::LimiterConfig;
pub use descriptor::{Descriptor, DescriptorSource, LimitOverride};
pub use engine::{Code, Decision, Engine, EngineError, FailureMode, Status};
pub use limits::FileError;
pub use reload::{ConfigView, Reloader};
pub use response::HeaderOptions;
pub use store::StoreError;
pub use unit::Unit;

/// Why a limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Some limits files are bad; each error has its file, line and field.
    #[error("bad limits:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Limits(Vec<FileError>),
    #[error("counter store: {0}")]
    Store(#[from] StoreError),
}

/// A built limiter: the engine with its limits loaded, their reloader and the header options.
/// Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Limiter {
    engine: Arc<Engine>,
    reloader: Arc<Reloader>,
    headers: HeaderOptions,
}

/// Connects the store (lazily: an unreachable Redis makes calls fail, not this) and loads the
/// limits, refusing any bad file. Binds nothing and starts no task but the store's own.
pub async fn build(config: &LimiterConfig) -> Result<Limiter, BuildError> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build`] with another clock (tests).
pub async fn build_with_clock(
    config: &LimiterConfig,
    clock: Arc<dyn Clock>,
) -> Result<Limiter, BuildError> {
    let store = store::build(&config.store).await?;
    let engine = Arc::new(Engine::new(
        limits::Limits::empty(),
        store,
        clock,
        config.engine_options(),
    ));
    let settings = reload::Settings {
        failure_mode: config.failure_mode,
        default_algorithm: config.default_algorithm,
        shadow_mode: config.shadow_mode,
        store: config.store.kind(),
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
        return Err(BuildError::Limits(errors));
    }
    Ok(Limiter {
        engine,
        reloader,
        headers: config.headers,
    })
}

/// Checks every limits file of `config` without building anything (`check-config`).
pub fn check(config: &LimiterConfig) -> Result<(), BuildError> {
    let Some(source) = &config.limits else {
        return Ok(());
    };
    let report = limits::Loader::new(source.clone(), config.default_algorithm).load();
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Limits(report.errors))
    }
}

impl Limiter {
    /// A limiter over an engine built by hand (its own store, limits set directly): no limits
    /// files, so nothing to reload.
    pub fn from_engine(engine: Arc<Engine>, headers: HeaderOptions) -> Self {
        let algorithm = engine.options().override_algorithm;
        let reloader = Arc::new(Reloader::new(None, engine.clone(), algorithm));
        Self {
            engine,
            reloader,
            headers,
        }
    }

    /// Decides one request: see [`Engine::should_rate_limit`].
    pub fn should_rate_limit<D, I>(
        &self,
        domain: &str,
        descriptors: I,
        hits_addend: u64,
    ) -> impl Future<Output = Result<Decision, EngineError>> + Send + '_
    where
        D: DescriptorSource,
        I: IntoIterator<Item = D>,
        I::IntoIter: ExactSizeIterator,
    {
        self.engine
            .should_rate_limit(domain, descriptors, hits_addend)
    }

    /// The response headers the config asks for, for `decision`.
    pub fn headers(&self, decision: &Decision) -> Vec<(&'static str, String)> {
        response::headers(decision, self.headers)
    }

    /// Reloads the limits on file changes and SIGHUP until `shutdown`.
    pub fn watch(&self, shutdown: Shutdown) -> Result<tokio::task::JoinHandle<()>, WatchError> {
        reload::spawn(self.reloader.clone(), shutdown)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Reload on demand (what SIGHUP does) and the `/config` view.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    pub fn header_options(&self) -> HeaderOptions {
        self.headers
    }
}

#[cfg(test)]
mod tests;
