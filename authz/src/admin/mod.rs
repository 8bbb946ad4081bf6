//! The admin HTTP API for API keys (axum, its own listener, loopback by default): create, list,
//! get, update, revoke and rotate keys, their usage per day and its totals per plan and tenant,
//! the limits in force, the service's decision counters, the OpenAPI document that describes
//! exactly these routes, and the web console that drives them. Every API route
//! but the document needs the admin bearer credential, and every change is written to the
//! `audit` log target (who, what, which key, when; never a secret).
//!
//! The credential travels only in the `Authorization` header, never in a cookie: a cross-site
//! form or link cannot carry it, so no request another site makes a browser send can act
//! (CSRF-safe by construction), and the console's script sets the header on every call.
//!
//! # Layout
//! - this file: config, credential loading, the router and its authentication;
//! - `routes`: the key handlers and JSON error responses;
//! - `usage`: `GET /v1/keys/{id}/usage` and `GET /v1/usage`, and their date ranges;
//! - `limits`: `GET /v1/limits`, the limits in force from a [`LimitsView`];
//! - `stats`: `GET /v1/stats`, the decision counters;
//! - `openapi`: the OpenAPI 3 document;
//! - `console`: the web console's embedded files and the security headers.

mod console;
mod limits;
mod openapi;
mod routes;
mod stats;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_common::config::{Env, Errors, Validate, join, process_env};
use tollgate_common::credential;
use tollgate_common::secret::Secret;

use crate::apikey::ApiKeys;

pub use limits::{LimitsError, LimitsView};
pub use openapi::document as openapi_document;
pub use routes::IssuedKey;

/// The environment variable that may hold the admin credential.
pub const TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// Shortest admin credential accepted: a guessable one would make the whole key store guessable.
pub const MIN_TOKEN_LEN: usize = credential::MIN_LEN;

/// The `admin:` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// A file holding the bearer credential (trailing whitespace ignored). Wins over
    /// `TOLLGATE_ADMIN_TOKEN`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve the web console under `/console/` (the default).
    #[serde(default = "default_console")]
    pub console: bool,
    /// tollgate-ratelimit's `/metrics` URL. When set, `GET /v1/stats` also reports its
    /// over-limit (429) counts: in the service pair those are decided there, not here.
    #[serde(default)]
    pub ratelimit_metrics_url: Option<String>,
    /// tollgate-ratelimit's `/config` URL. When set, `GET /v1/limits` (and the console's plans
    /// page) shows the limits in force there.
    #[serde(default)]
    pub ratelimit_config_url: Option<String>,
    /// Most connections held open (also at most a quarter of the file-descriptor limit); past
    /// it a new one closes the oldest idle one.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: default_addr(),
            token_file: None,
            console: default_console(),
            ratelimit_metrics_url: None,
            ratelimit_config_url: None,
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
        }
    }
}

fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9092))
}

fn default_console() -> bool {
    true
}

fn default_max_connections() -> usize {
    64
}

fn default_header_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl AdminConfig {
    /// The listener's connection bounds.
    pub fn limits(&self) -> tollgate_server::conns::HttpLimits {
        tollgate_server::conns::HttpLimits {
            listener: "admin",
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
        }
    }
}

impl Validate for AdminConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        credential::validate(errors, at, self.token_file.as_deref(), TOKEN_ENV);
        if self.max_connections == 0 {
            errors.push(join(at, "max_connections"), "must be at least 1");
        }
        if self.header_timeout.is_zero() {
            errors.push(join(at, "header_timeout"), "must be greater than 0");
        }
        for (field, url) in [
            ("ratelimit_metrics_url", &self.ratelimit_metrics_url),
            ("ratelimit_config_url", &self.ratelimit_config_url),
        ] {
            if let Some(url) = url
                && let Err(reason) = http_url(url)
            {
                errors.push(join(at, field), reason);
            }
        }
    }
}

/// An `http(s)://` URL, or why not.
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err("must be an http:// or https:// URL with a host".into()),
    }
}

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API needs a bearer credential: set admin.token_file or {TOKEN_ENV}")]
    NoCredential,
    #[error("cannot read the admin token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin credential must be at least {MIN_TOKEN_LEN} characters")]
    WeakCredential,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The admin credential from `token_file`, else from `TOLLGATE_ADMIN_TOKEN` in `env`.
pub fn load_token(cfg: &AdminConfig, env: &Env) -> Result<Secret, AdminError> {
    credential::load(cfg.token_file.as_deref(), env, TOKEN_ENV).map_err(|e| match e {
        credential::LoadError::Missing => AdminError::NoCredential,
        credential::LoadError::Weak => AdminError::WeakCredential,
        credential::LoadError::File { path, source } => AdminError::TokenFile { path, source },
    })
}

/// The admin router, with its credential from the config or the process environment and the
/// limits in force from `admin.ratelimit_config_url` (if set); `single_call` when this process
/// rate-limits in its Checks. Refuses (Err) when there is no credential.
pub fn router(keys: ApiKeys, cfg: &AdminConfig, single_call: bool) -> Result<Router, AdminError> {
    // Validation has refused a bad URL before anything starts.
    let limits = cfg
        .ratelimit_config_url
        .as_deref()
        .and_then(|u| http_url(u).ok())
        .map(|u| Arc::new(limits::RatelimitConfig::new(u)) as Arc<dyn LimitsView>);
    router_with_limits(keys, cfg, limits, single_call)
}

/// [`router`] with the limits in force from `limits` (a process that rate-limits by itself
/// passes its own view; `None`: `GET /v1/limits` answers 404 `not_configured`).
pub fn router_with_limits(
    keys: ApiKeys,
    cfg: &AdminConfig,
    limits: Option<Arc<dyn LimitsView>>,
    single_call: bool,
) -> Result<Router, AdminError> {
    let token = load_token(cfg, &process_env())?;
    let ratelimit = cfg
        .ratelimit_metrics_url
        .as_deref()
        .and_then(|u| http_url(u).ok());
    let stats = stats::Stats::new(ratelimit.as_ref()).single_call(single_call);
    let sources = Sources { stats, limits };
    Ok(build(keys, token, sources, cfg.console)?.0)
}

/// The admin router with a given credential (and the console, without tollgate-ratelimit's
/// counts or limits).
pub fn router_with_token(keys: ApiKeys, token: Secret) -> Result<Router, AdminError> {
    let sources = Sources {
        stats: stats::Stats::new(None),
        limits: None,
    };
    Ok(build(keys, token, sources, true)?.0)
}

/// Where the numbers that are not the key store's come from.
struct Sources {
    stats: stats::Stats,
    limits: Option<Arc<dyn LimitsView>>,
}

/// A routed (method, path).
type Route = (Method, &'static str);

/// The router and the (method, path) of every route in it, so tests can hold the OpenAPI
/// document to exactly that list.
fn build(
    keys: ApiKeys,
    token: Secret,
    sources: Sources,
    with_console: bool,
) -> Result<(Router, Vec<Route>), AdminError> {
    credential::check_strength(&token).map_err(|_| AdminError::WeakCredential)?;
    let state = AppState {
        keys,
        auth: Arc::new(Credential::new(token)),
        stats: Arc::new(sources.stats),
        limits: sources.limits,
    };
    let (router, mut routes) = routes::table();
    let mut router = router
        .route(stats::PATH, axum::routing::get(stats::serve))
        .route(limits::PATH, axum::routing::get(limits::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .route(openapi::PATH, axum::routing::get(openapi::serve));
    routes.push((Method::GET, stats::PATH));
    routes.push((Method::GET, limits::PATH));
    if with_console {
        router = router.merge(console::routes());
    }
    let router = router
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::no_method)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(console::harden))
        .with_state(state);
    let mut all = routes;
    all.push((Method::GET, openapi::PATH));
    Ok((router, all))
}

/// Binds the admin listener.
pub async fn bind(cfg: &AdminConfig) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| AdminError::Bind {
            addr: cfg.addr,
            source,
        })
}

/// Serves `router` on `listener` within the config's connection bounds until `shutdown`
/// triggers, then lets open requests finish.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cfg: &AdminConfig,
    shutdown: tollgate_common::Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    tollgate_server::conns::serve_plain(listener, router, cfg.limits(), shutdown)
}

#[derive(Clone)]
struct AppState {
    keys: ApiKeys,
    auth: Arc<Credential>,
    stats: Arc<stats::Stats>,
    limits: Option<Arc<dyn LimitsView>>,
}

/// The admin credential and the name audit lines give whoever presents it.
struct Credential {
    token: Secret,
    /// `admin-token:<12 random hex>`, drawn when the credential is loaded and logged once then
    /// (so an operator can tell which load acted): it names the credential without revealing
    /// anything about it. A digest of the token would hand out an offline guess of a weak one.
    actor: Arc<str>,
}

impl Credential {
    fn new(token: Secret) -> Self {
        let id: [u8; 6] = rand::random();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let actor: Arc<str> = format!("admin-token:{hex}").into();
        tracing::info!(target: "audit", action = "credential_loaded", actor = %actor, "admin credential loaded; audit lines name it by this actor");
        Self { token, actor }
    }
}

/// Who made a request, for audit lines (put in request extensions by [`authenticate`]).
#[derive(Clone)]
struct Actor(Arc<str>);

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match credential::presented_bearer(req.headers()) {
        Some(token) if state.auth.token.matches(token) => {
            req.extensions_mut().insert(Actor(state.auth.actor.clone()));
            next.run(req).await
        }
        Some(_) => {
            tracing::warn!(target: "audit", action = "authenticate", method = %req.method(), path = req.uri().path(), outcome = "refused", "admin request with a wrong credential");
            routes::unauthorized(Some("invalid_token")).into_response()
        }
        None => routes::unauthorized(None).into_response(),
    }
}

#[cfg(test)]
mod tests;
