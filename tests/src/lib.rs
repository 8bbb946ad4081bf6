//! The end-to-end test harness: real Envoy, real Redis, the real OIDC provider, an echo upstream,
//! and the Tollgate services run in-process.
//!
//! # Layout
//! - [`process`]: child processes killed on drop, free ports, polling with a deadline.
//! - [`paths`]: where the project's installed tools live (`.venv/bin/envoy`, `redis-server`, node).
//! - [`oidc`]: the npm `oidc-provider` server (JWKS, client-credentials tokens, introspection).

pub mod oidc;
pub mod paths;
pub mod process;
