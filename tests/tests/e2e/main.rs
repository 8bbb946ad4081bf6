//! End-to-end tests: what a client sees through real Envoy, with the Tollgate services
//! in-process and real Redis / OIDC provider where a test needs them.
//!
//! One test binary (modules below) so the workspace links it once.

// The test binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

mod authz;
mod authz_http;
mod authz_key_store;
mod authz_plans;
mod authz_policies;
mod authz_reload;
mod authz_replicas;
mod binaries;
mod console;
mod foundation;
mod helm;
mod helm_inprocess;
mod helm_lifecycle;
mod listeners;
mod module;
mod module_authz;
mod module_ratelimit;
mod observability;
mod observability_logs;
mod observability_prometheus;
mod observability_tracing;
mod ratelimit;
mod single_call;
mod trust;
