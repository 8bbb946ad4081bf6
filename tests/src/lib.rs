//! The end-to-end test harness: real Envoy, real Redis, the real OIDC provider, an echo upstream,
//! and the Tollgate services run in-process.
//!
//! # Layout
//! - [`process`]: child processes killed on drop, free ports, polling with a deadline.
//! - [`paths`]: where the project's installed tools live (`.venv/bin/envoy`, `redis-server`, node,
//!   chromium).
//! - [`envoy`]: Envoy 1.40 on a config (the example in `deploy/envoy/` or a test's own), validated
//!   with `envoy --mode validate` before it starts.
//! - [`echo`]: the upstream that answers with what it received.
//! - [`module`]: the Envoy dynamic module as Envoy loads it (search path = the cargo target).
//! - [`redis`]: a standalone Redis, a 3-node Redis Cluster or a Sentinel deployment (from
//!   `tollgate-common`'s `testing` feature).
//! - [`pki`]: a generated CA with server and client certificates for TLS tests.
//! - [`stack`]: Envoy + both services (in-process, on the shipped example configs) + upstream.
//! - [`oidc`]: the npm `oidc-provider` server (JWKS, client-credentials tokens, introspection).
//! - [`browser`]: the web console in Debian's headless chromium, driven step by step.
//! - [`issuer`]: a JWT issuer the test controls (its own keys and JWKS, tokens with any claims).

// The dev-dependencies serve the e2e test binary; this crate's own unit tests need few of them.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod browser;
pub mod echo;
pub mod envoy;
pub mod issuer;
pub mod module;
pub mod oidc;
pub mod paths;
pub mod pki;
pub mod process;
pub mod redis;
pub mod stack;

// The end-to-end tests' own dependencies, which the harness's unit tests see too.
#[cfg(test)]
use {
    ::redis as _, opentelemetry_proto as _, prost as _, serde_yaml as _, tollgate_proto as _,
    tonic as _,
};

/// Routes the in-process services' logs through the test harness's capture, so they show only
/// for a failing test. `TOLLGATE_LOG` sets the filter (default `info`).
pub fn init_test_logging() {
    let filter = std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}
