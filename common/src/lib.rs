//! Shared plumbing of the Tollgate crates, with no RPC or HTTP server crate in it, so that the
//! engines (`tollgate-limiter`, the authz decision) can use it wherever they are embedded.
//! Domain logic lives in those crates; listeners and telemetry in `tollgate-server`.
//!
//! # Layout
//! - [`config`]: YAML + env + flag loading, strict parsing, every error with file, line and field.
//! - [`cli`]: the flags both binaries share.
//! - [`clock`]: the injected wall clock ([`clock::Clock`]; system and manual).
//! - [`shutdown`]: the shutdown signal (SIGTERM/SIGINT or a test's trigger).
//! - [`credential`]: operator bearer credentials (file or env, minimum length, header parsing).
//! - [`local_runtime`]: the mark of threads that run a single-threaded runtime for life.
//! - [`log_throttle`]: one log line per interval, with a count, for errors that repeat.
//! - [`secret`]: a string wrapper that never prints and compares in constant time.
//! - [`tls`]: PEM certificates and keys, the rustls client config (Redis over TLS).
//! - [`trace`]: the switch and helpers for spans meant for export (the exporter is elsewhere).
//! - [`watch`]: the one file watcher (directory watches, ConfigMap-safe) with SIGHUP.
//! - `testing` (feature `testing`): real Redis server, Cluster and Sentinel processes for tests.

pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod local_runtime;
pub mod log_throttle;
pub mod secret;
pub mod shutdown;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod trace;
pub mod watch;

pub use shutdown::{Shutdown, shutdown_on_signals};
