//! Tollgate in-process: an Envoy dynamic module (`libtollgate_envoy.so`) that Envoy 1.40 loads
//! through `envoy.filters.http.dynamic_modules` and runs in its worker threads, so a request is
//! decided without a gRPC call.
//!
//! Envoy calls the module through a C ABI. That boundary is the only `unsafe` code of the crate
//! and stays small; decisions are plain Rust behind the [`filter::Filter`] seam, and the stream
//! layer between them applies verdicts, pauses requests whose verdict needs I/O, and answers the
//! failure mode when something panics. See `docs/envoy-module.md` for loading, ABI pinning and
//! the ownership rules.
//!
//! # Layout
//! - `ffi`: the ABI declarations, the exported hooks and safe wrappers over Envoy's callbacks;
//!   the only module allowed `unsafe` (not compiled in unit tests: it links against Envoy).
//! - [`host`]: what the stream layer needs from Envoy, as a trait, plus the module's metrics.
//! - [`stream`]: one HTTP stream: verdict, mutations, local reply, pause and resume, failure mode.
//! - [`filter`]: the seam decision logic implements: `Request` in, `Verdict` out.
//! - [`config`]: `filter_name` → filter, strict YAML with line and field in every error,
//!   per-route settings.
//! - [`gate`]: the Tollgate filter (`filter_name: tollgate`): tollgate-authz's decision, with
//!   the rate limits of single-call mode, from the service's own config file.
//! - [`verdict`]: Envoy's request as authz reads it, authz's decision as a verdict.
//! - [`probe`]: the probe filter, the test vehicle for the FFI layer.
//! - [`runtime`]: the background tokio runtime (lazy, process-wide).
//! - [`log`]: `tracing` into Envoy's log.
//! - [`wire`]: dynamic metadata as the bytes of a serialized `google.protobuf.Struct`.

// Unit tests build without the FFI layer (it needs Envoy's symbols), so the crates only it uses
// go unused there.
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod config;
#[cfg(not(test))]
mod ffi;
mod filter;
mod gate;
mod host;
mod log;
mod probe;
mod runtime;
mod stream;
mod verdict;
mod wire;
