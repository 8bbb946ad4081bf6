//! `tollgate-authz`: Envoy's external authorization service. It answers
//! `envoy.service.auth.v3.Authorization/Check` by matching a per-route policy, authenticating the
//! caller (JWT, OAuth 2.0 introspection or API key), checking the rule's conditions, and
//! returning identity headers for the upstream plus dynamic metadata that Envoy's rate-limit
//! actions turn into descriptors.
//!
//! # Layout
//! - [`config`]: the config file (`server`, `log`, `policy`, `jwt`, `introspection`,
//!   `api_keys`, `admin`, `headers`, `http_authz`) and its validation.
//! - [`policy`]: rules matching host/path/method, identity methods and conditions per route.
//! - [`check`]: the decision as a domain value: the request view adapters implement, the
//!   decision flow, credentials, RFC 6750 answers, identity headers; [`reason`]: why.
//! - [`grpc`]: the gRPC Check adapter (`CheckRequest` → view, `Decision` → `CheckResponse`);
//!   [`http_check`]: the HTTP ext_authz adapter and its listener (`http_authz:`).
//! - [`identity`]: the `Identity` type; [`identity::jwt`] + [`identity::jwks`] (bearer JWTs),
//!   [`identity::introspection`] (opaque tokens), [`identity::cache`] (verified credentials).
//! - [`apikey`]: API keys and their stores; [`admin`]: the admin HTTP API; [`cli`]: the `keys`
//!   subcommand.
//! - [`metrics`]: the Prometheus series.
//! - [`reload`]: hot reload of the policy on a change to the config file and on SIGHUP.
//!
//! [`start`] binds every listener (gRPC, side HTTP, admin, HTTP ext_authz) and serves in the background, which
//! is what tests use with port 0; [`start_with_reload`] also reloads the policy from the config's
//! sources; [`run`] does the same and waits.

use std::net::SocketAddr;

// The binary's global allocator (main.rs); named here for the unused-dependency lint.
use mimalloc as _;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tollgate_common::Shutdown;
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::config::Sources;
use tollgate_server::{ServeError, Services};

pub mod admin;
pub mod apikey;
pub mod check;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod http_check;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod policy;
pub mod reason;
pub mod reload;

pub use check::{Authorizer, Decision, RequestView};
pub use config::Config;
pub use grpc::{AuthzService, CheckServer};
pub use reason::Reason;

use apikey::{ApiKeys, KeyStoreError};
use identity::introspection::{IntrospectionSetupError, Introspector};
use identity::jwks::JwksError;
use identity::jwt::JwtVerifier;
use identity::mtls::MtlsVerifier;

/// The gRPC health service name reporting this service's readiness.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("API key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("JWT issuer keys: {0}")]
    Jwks(#[from] JwksError),
    #[error("introspection: {0}")]
    Introspection(#[from] IntrospectionSetupError),
    #[error("policy: {0}")]
    Policy(#[from] policy::CompileError),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("admin API: {0}")]
    Admin(String),
    #[error("cannot bind admin listener on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    HttpAuthz(#[from] http_check::HttpAuthzError),
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] tollgate_common::watch::WatchError),
    #[error("rate_limit: {0}")]
    RateLimit(#[from] tollgate_limiter::BuildError),
    #[error("rate_limit: cannot watch the limits: {0}")]
    LimitsWatch(#[source] tollgate_common::watch::WatchError),
}

/// A service started by [`start`].
pub struct Running {
    /// Where Envoy's ext_authz cluster should point.
    pub grpc_addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// The admin API, when configured.
    pub admin_addr: Option<SocketAddr>,
    /// Where Envoy's HTTP ext_authz (`http_service`) cluster should point, when configured.
    pub http_authz_addr: Option<SocketAddr>,
    /// Resolves when the service has stopped (after the shutdown has been triggered).
    pub handle: JoinHandle<Result<(), Error>>,
    /// Reloads the policy on demand (what SIGHUP does); present when started by
    /// [`start_with_reload`].
    pub reloader: Option<Arc<reload::Reloader>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("admin_addr", &self.admin_addr)
            .field("http_authz_addr", &self.http_authz_addr)
            .finish_non_exhaustive()
    }
}

/// The decision maker and the API keys it uses, built from a config without binding anything.
pub struct Built {
    pub authorizer: Arc<Authorizer>,
    pub api_keys: Option<ApiKeys>,
}

/// Builds the authorizer: compiles the policy, opens the key store, prepares the JWT issuers
/// (their remote keys are fetched by [`start`]'s refreshers) and the introspection client.
/// Binds nothing and installs no metrics recorder: metric handles bind to whichever recorder
/// is installed when they are first used.
pub async fn build(config: &Config) -> Result<Built, Error> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build`] on another clock: every time-based rule (token expiry, key expiry and grace
/// periods, introspection cache) reads this one.
pub async fn build_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Built, Error> {
    let methods = config.methods();
    let policy = policy::Policy::compile(&config.policy, &methods)?;
    let jwt = match &config.jwt {
        Some(j) => {
            // Redirects are not followed: a key set must come from the configured URL.
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| Error::Http(e.to_string()))?;
            Some(JwtVerifier::new(j, http, clock.clone())?)
        }
        None => None,
    };
    let introspection = match &config.introspection {
        Some(i) => Some(Introspector::new(i, clock.clone())?),
        None => None,
    };
    let api_keys = match &config.api_keys {
        Some(k) => Some(ApiKeys::open_with_clock(k, clock.clone()).await?),
        None => None,
    };
    let keys_for_check = match (&api_keys, &config.api_keys) {
        (Some(keys), Some(cfg)) => Some((
            keys.clone(),
            check::ApiKeySource {
                header: cfg.header.clone(),
                query_param: cfg.query_param.clone(),
                cookie: cfg.cookie.clone(),
            },
        )),
        _ => None,
    };
    let mut authorizer =
        Authorizer::new(policy, jwt, introspection, keys_for_check, &config.headers)
            .with_credentials(
                &check::BearerSources {
                    issuers: config
                        .jwt
                        .iter()
                        .flat_map(|j| &j.issuers)
                        .map(|i| (i.issuer.clone(), i.sources()))
                        .collect(),
                    introspection: config.introspection.is_some(),
                },
                config
                    .mtls
                    .as_ref()
                    .map(|m| MtlsVerifier::new(m.clone(), clock.clone())),
            )
            .with_clock(clock.clone());
    if let Some(section) = &config.rate_limit {
        let limiter = tollgate_limiter::build_with_clock(&section.limiter, clock.clone()).await?;
        authorizer = authorizer.with_rate_limit(limit::Embedded::new(limiter, &section.domain));
    }
    let authorizer = Arc::new(authorizer);
    Ok(Built {
        authorizer,
        api_keys,
    })
}

/// Starts what an authorizer needs running beside it, until `shutdown`, wherever it is hosted
/// (the service, the Envoy module): the issuers' keys, fetched once before returning so the
/// first tokens after a rollout verify (an issuer that is down only makes its tokens fail
/// closed until it is back) and then refreshed; the embedded rate limiter's limits watcher.
pub async fn start_background(authorizer: &Authorizer, shutdown: &Shutdown) -> Result<(), Error> {
    if let Some(jwt) = authorizer.jwt() {
        for (issuer, e) in jwt.refresh_all().await {
            tracing::warn!(%issuer, error = %e, "no keys for this issuer yet; its tokens are denied until a fetch succeeds");
        }
        jwt.spawn_refresh(shutdown.clone());
    }
    if let Some(rl) = authorizer.rate_limit() {
        rl.limiter()
            .watch(shutdown.clone())
            .map_err(Error::LimitsWatch)?;
    }
    Ok(())
}

/// Binds the gRPC, side HTTP and (when configured) admin listeners, then serves in the
/// background until `shutdown` triggers. The policy stays as `config` has it.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, Error> {
    install_recorder();
    let built = build(&config).await?;
    serve(config, built, shutdown, None).await
}

/// [`start`], and the policy is reloaded from `sources` (those `config` was loaded from) when the
/// config file changes, on SIGHUP, and on [`reload::Reloader::reload`].
pub async fn start_with_reload(
    config: Config,
    sources: Sources,
    shutdown: Shutdown,
) -> Result<Running, Error> {
    install_recorder();
    let built = build(&config).await?;
    let reloader = Arc::new(reload::Reloader::new(
        built.authorizer.clone(),
        sources,
        &config,
    ));
    serve(config, built, shutdown, Some(reloader)).await
}

/// The Prometheus recorder, installed before anything binds a metric handle.
fn install_recorder() {
    let _ = tollgate_server::telemetry::prometheus();
    metrics::describe();
}

async fn serve(
    config: Config,
    built: Built,
    shutdown: Shutdown,
    reloader: Option<Arc<reload::Reloader>>,
) -> Result<Running, Error> {
    let Built {
        authorizer,
        api_keys,
    } = built;

    let bound = tollgate_server::bind(&config.server).await?;
    let (grpc_addr, http_addr) = (bound.grpc_addr, bound.http_addr);

    let admin = match (&config.admin, &api_keys) {
        (Some(admin_cfg), Some(keys)) => {
            let router = admin::router(keys.clone(), admin_cfg, authorizer.rate_limit().is_some())
                .map_err(|e| Error::Admin(e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(admin_cfg.addr)
                .await
                .map_err(|source| Error::AdminBind {
                    addr: admin_cfg.addr,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| Error::AdminBind {
                addr: admin_cfg.addr,
                source,
            })?;
            Some((listener, router, addr, admin_cfg.clone()))
        }
        _ => None,
    };
    let admin_addr = admin.as_ref().map(|(_, _, a, _)| *a);
    let http_authz = match &config.http_authz {
        Some(cfg) => Some(http_check::bind(cfg).await?),
        None => None,
    };
    let http_authz_addr = http_authz.as_ref().map(|l| l.addr);

    start_background(&authorizer, &shutdown).await?;
    if let Some(r) = &reloader {
        reload::describe();
        reload::spawn(r.clone(), shutdown.clone())?;
    }

    let http_authz_task = http_authz.map(|listener| {
        tracing::info!(http_authz = %listener.addr, "HTTP ext_authz listening");
        // Like the gRPC listener: keep answering while not ready for `shutdown_delay`, so
        // Envoy moves its checks elsewhere first.
        let stop = tollgate_common::Shutdown::new();
        let (shutdown, delay, stopping) =
            (shutdown.clone(), config.server.shutdown_delay, stop.clone());
        tokio::spawn(async move {
            shutdown.triggered().await;
            tokio::time::sleep(delay).await;
            stopping.trigger();
        });
        tokio::spawn(listener.serve(authorizer.clone(), stop))
    });
    let services = Services {
        name: SERVICE_NAME,
        grpc: tonic::service::Routes::new(CheckServer::new(AuthzService::new(authorizer))),
        http: axum::Router::new(),
    };
    let handle = tokio::spawn(async move {
        let admin_task = admin.map(|(listener, router, addr, cfg)| {
            tracing::info!(admin = %addr, "admin API listening");
            tokio::spawn(admin::serve(listener, router, &cfg, shutdown.clone()))
        });
        let served = bound.serve(services, shutdown).await;
        if let Some(t) = http_authz_task
            && let Err(e) = t.await
        {
            tracing::warn!(error = %e, "HTTP ext_authz task failed");
        }
        if let Some(t) = admin_task
            && let Err(e) = t.await
        {
            tracing::warn!(error = %e, "admin API task failed");
        }
        if let Some(keys) = api_keys {
            // No Check arrives any more: the last usage counts and last-used times are final.
            keys.flush().await;
        }
        served.map_err(Error::from)
    });
    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        http_authz_addr,
        handle,
        reloader,
    })
}

/// [`start_with_reload`], then waits for the service to stop.
pub async fn run(config: Config, sources: Sources, shutdown: Shutdown) -> Result<(), Error> {
    let running = start_with_reload(config, sources, shutdown).await?;
    match running.handle.await {
        Ok(r) => r,
        Err(e) => Err(Error::Admin(format!("service task failed: {e}"))),
    }
}
