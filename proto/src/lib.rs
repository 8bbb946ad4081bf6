//! Envoy's ext_authz v3 and rate-limit v3 service types, re-exported from the `envoy-types` crate,
//! and small helpers that build well-formed responses.
//!
//! No `.proto` file lives in this repository: the generated types come from `envoy-types`, whose
//! tonic/prost versions match the workspace's.
//!
//! # Layout
//! - [`auth`]: `envoy.service.auth.v3` (Check) and the builders for OK / denied responses.
//! - [`ratelimit`]: `envoy.service.ratelimit.v3` (ShouldRateLimit) and descriptor types.
//! - [`metadata`]: building `google.protobuf.Struct` values for dynamic metadata.

pub use envoy_types::pb;

pub mod auth;
pub mod metadata;
pub mod ratelimit;

/// `google.rpc.Code` values used in CheckResponse.status.
pub mod rpc_code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}
