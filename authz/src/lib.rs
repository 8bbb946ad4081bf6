//! `tollgate-authz`: Envoy's external authorization service. It answers
//! `envoy.service.auth.v3.Authorization/Check` by matching a per-route policy, authenticating the
//! caller (JWT, OAuth 2.0 introspection or API key), checking the rule's conditions, and
//! returning identity headers for the upstream plus dynamic metadata that Envoy's rate-limit
//! actions turn into descriptors.
//!
//! # Layout
//! - [`config`]: the config file (`server`, `log`, `policy`, `jwt`, `introspection`,
//!   `api_keys`, `admin`, `headers`) and its validation.
//! - [`policy`]: rules matching host/path/method, identity methods and conditions per route.
//! - [`check`]: the decision flow and the gRPC service.
//! - [`identity`]: the `Identity` type; [`identity::jwt`] + [`identity::jwks`] (bearer JWTs),
//!   [`identity::introspection`] (opaque tokens), [`identity::cache`] (verified credentials).
//! - [`apikey`]: API keys and their stores; [`admin`]: the admin HTTP API; [`cli`]: the `keys`
//!   subcommand.
//! - [`metrics`]: the Prometheus series.
//! - [`reload`]: hot reload of the policy on a change to the config file and on SIGHUP.
//!
//! [`start`] binds every listener (gRPC, side HTTP, admin) and serves in the background, which
//! is what tests use with port 0; [`start_with_reload`] also reloads the policy from the config's
//! sources; [`run`] does the same and waits.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tollgate_common::Shutdown;
use tollgate_common::config::Sources;
use tollgate_proto::auth::AuthorizationServer;
use tollgate_server::{ServeError, Services};

pub mod admin;
pub mod apikey;
pub mod check;
pub mod cli;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod reload;

pub use check::{Authorizer, AuthzService};
pub use config::Config;

use apikey::{ApiKeys, KeyStoreError};
use identity::introspection::{IntrospectionSetupError, Introspector};
use identity::jwks::JwksError;
use identity::jwt::JwtVerifier;

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
    Policy(#[from] regex::Error),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("admin API: {0}")]
    Admin(String),
    #[error("cannot bind admin listener on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] tollgate_common::watch::WatchError),
}

/// A service started by [`start`].
pub struct Running {
    /// Where Envoy's ext_authz cluster should point.
    pub grpc_addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// The admin API, when configured.
    pub admin_addr: Option<SocketAddr>,
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
pub async fn build(config: &Config) -> Result<Built, Error> {
    let clock = identity::system_clock();
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
        Some(k) => Some(ApiKeys::open(k).await?),
        None => None,
    };
    let keys_for_check = match (&api_keys, &config.api_keys) {
        (Some(keys), Some(cfg)) => {
            Some((keys.clone(), cfg.header.clone(), cfg.query_param.clone()))
        }
        _ => None,
    };
    let authorizer = Arc::new(Authorizer::new(
        policy,
        jwt,
        introspection,
        keys_for_check,
        &config.headers,
    ));
    Ok(Built {
        authorizer,
        api_keys,
    })
}

/// Binds the gRPC, side HTTP and (when configured) admin listeners, then serves in the
/// background until `shutdown` triggers. The policy stays as `config` has it.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, Error> {
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
    let built = build(&config).await?;
    let reloader = Arc::new(reload::Reloader::new(
        built.authorizer.clone(),
        sources,
        &config,
    ));
    serve(config, built, shutdown, Some(reloader)).await
}

async fn serve(
    config: Config,
    built: Built,
    shutdown: Shutdown,
    reloader: Option<Arc<reload::Reloader>>,
) -> Result<Running, Error> {
    let _ = tollgate_server::telemetry::prometheus();
    metrics::describe();
    let Built {
        authorizer,
        api_keys,
    } = built;

    let bound = tollgate_server::bind(&config.server).await?;
    let (grpc_addr, http_addr) = (bound.grpc_addr, bound.http_addr);

    let admin = match (&config.admin, &api_keys) {
        (Some(admin_cfg), Some(keys)) => {
            let router =
                admin::router(keys.clone(), admin_cfg).map_err(|e| Error::Admin(e.to_string()))?;
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

    if let Some(jwt) = authorizer.jwt() {
        // Fetch the issuers' keys before reporting ready, so the first tokens after a rollout
        // verify; an issuer that is down only makes its tokens fail closed until it is back.
        for (issuer, e) in jwt.refresh_all().await {
            tracing::warn!(%issuer, error = %e, "no keys for this issuer yet; its tokens are denied until a fetch succeeds");
        }
        jwt.spawn_refresh(shutdown.clone());
    }
    if let Some(r) = &reloader {
        reload::describe();
        reload::spawn(r.clone(), shutdown.clone())?;
    }

    let services = Services {
        name: SERVICE_NAME,
        grpc: tonic::service::Routes::new(AuthorizationServer::new(AuthzService::new(authorizer))),
        http: axum::Router::new(),
    };
    let handle = tokio::spawn(async move {
        let admin_task = admin.map(|(listener, router, addr, cfg)| {
            tracing::info!(admin = %addr, "admin API listening");
            tokio::spawn(admin::serve(listener, router, &cfg, shutdown.clone()))
        });
        let served = bound.serve(services, shutdown).await;
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
