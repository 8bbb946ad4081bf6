//! The admin HTTP API for API keys (axum, its own listener, loopback by default): create, list,
//! get, update, revoke and rotate keys, plus the OpenAPI document that describes exactly these
//! routes. Every route but the document needs the admin bearer credential, and every change is
//! written to the `audit` log target (who, what, which key, when; never a secret).
//!
//! # Layout
//! - this file: config, credential loading, the router and its authentication;
//! - `routes`: the handlers and JSON error responses;
//! - `openapi`: the OpenAPI 3 document.

mod openapi;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_common::config::{Env, Errors, Validate, process_env};
use tollgate_common::credential;
use tollgate_common::secret::Secret;

use crate::apikey::ApiKeys;

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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: default_addr(),
            token_file: None,
        }
    }
}

fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9092))
}

impl Validate for AdminConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        errors.require_file(at, "token_file", self.token_file.as_deref());
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
    #[error("admin server: {0}")]
    Serve(std::io::Error),
}

/// The admin credential from `token_file`, else from `TOLLGATE_ADMIN_TOKEN` in `env`.
pub fn load_token(cfg: &AdminConfig, env: &Env) -> Result<Secret, AdminError> {
    credential::load(cfg.token_file.as_deref(), env, TOKEN_ENV).map_err(|e| match e {
        credential::LoadError::Missing => AdminError::NoCredential,
        credential::LoadError::Weak => AdminError::WeakCredential,
        credential::LoadError::File { path, source } => AdminError::TokenFile { path, source },
    })
}

/// The admin router, with its credential from the config or the process environment.
/// Refuses (Err) when there is no credential.
pub fn router(keys: ApiKeys, cfg: &AdminConfig) -> Result<Router, AdminError> {
    router_with_token(keys, load_token(cfg, &process_env())?)
}

/// The admin router with a given credential.
pub fn router_with_token(keys: ApiKeys, token: Secret) -> Result<Router, AdminError> {
    Ok(build(keys, token)?.0)
}

/// A routed (method, path).
type Route = (Method, &'static str);

/// The router and the (method, path) of every route in it, so tests can hold the OpenAPI
/// document to exactly that list.
fn build(keys: ApiKeys, token: Secret) -> Result<(Router, Vec<Route>), AdminError> {
    credential::check_strength(&token).map_err(|_| AdminError::WeakCredential)?;
    let state = AppState {
        keys,
        auth: Arc::new(Credential::new(token)),
    };
    let (router, routes) = routes::table();
    let router = router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .route(openapi::PATH, axum::routing::get(openapi::serve))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::no_method)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
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

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(AdminError::Serve)
}

#[derive(Clone)]
struct AppState {
    keys: ApiKeys,
    auth: Arc<Credential>,
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
