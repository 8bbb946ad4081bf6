//! Shared plumbing of the Tollgate services. Domain logic lives in `tollgate-authz` and
//! `tollgate-ratelimit`; this crate only holds what both binaries need the same way.
//!
//! # Layout
//! - [`config`]: YAML + env + flag loading, strict parsing, every error with file, line and field.
//! - [`cli`]: the flags both binaries share.
//! - [`server`]: the gRPC and HTTP side listeners, TLS/mTLS, readiness and graceful shutdown.
//! - [`conns`]: connection caps, header deadlines and accept back-off for the HTTP listeners;
//!   the open-file limit.
//! - [`tls`]: rustls configs from PEM files, reloaded when the files change.
//! - [`shutdown`]: the shutdown signal (SIGTERM/SIGINT or a test's trigger).
//! - [`telemetry`]: JSON logs with a runtime-changeable level, the Prometheus recorder.
//! - [`trace`]: OpenTelemetry spans over OTLP, joined to Envoy's trace (W3C, B3).
//! - [`debug`]: the protected operator endpoints: runtime log level, CPU profiles.
//! - [`credential`]: operator bearer credentials (file or env, minimum length, header parsing).
//! - [`log_throttle`]: one log line per interval, with a count, for errors that repeat.
//! - [`secret`]: a string wrapper that never prints and compares in constant time.
//! - `testing` (feature `testing`): real Redis server, Cluster and Sentinel processes for tests.

pub mod cli;
pub mod config;
pub mod conns;
pub mod credential;
pub mod debug;
pub mod log_throttle;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod trace;

pub use shutdown::{Shutdown, shutdown_on_signals};
