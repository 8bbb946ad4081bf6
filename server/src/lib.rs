//! The service side of the Tollgate binaries: everything that needs gRPC or HTTP server crates
//! (tonic, axum, hyper) and the process-wide logger, metrics recorder and trace exporter. The
//! domain crates (the rate-limit engine, the authz decision) stay free of it; the binaries and
//! their adapters put them behind these listeners.
//!
//! # Layout
//! - [`listeners`]: the gRPC and HTTP side listeners, TLS/mTLS, readiness and graceful shutdown.
//! - `workers`: the gRPC threads, one single-threaded runtime each, connections handed round
//!   robin.
//! - [`conns`]: connection caps, header deadlines and accept back-off for the HTTP listeners;
//!   the open-file limit.
//! - [`tls`]: rustls server configs from PEM files, reloaded when the files change.
//! - [`telemetry`]: JSON logs with a runtime-changeable level, the Prometheus recorder.
//! - [`trace`]: OpenTelemetry spans over OTLP, joined to Envoy's trace (W3C, B3).
//! - [`debug`]: the protected operator endpoints: runtime log level, CPU profiles.

pub mod conns;
pub mod debug;
pub mod listeners;
pub mod telemetry;
pub mod tls;
pub mod trace;
mod workers;

pub use listeners::{Bound, ConnInfo, Readiness, ServeError, ServerConfig, Services, bind};
