//! Shared plumbing of the Tollgate services. Domain logic lives in `tollgate-authz` and
//! `tollgate-ratelimit`; this crate only holds what both binaries need the same way.
//!
//! # Layout
//! - [`config`]: YAML + env + flag loading, strict parsing, every error with file, line and field.
//! - [`secret`]: a string wrapper that never prints and compares in constant time.

pub mod config;
pub mod secret;
