//! `tollgate-limiter`: the rate-limit engine — limits, matching, algorithms, counter stores,
//! reload and metrics — as a library with no gRPC in it, driven by plain Rust requests.

pub mod algorithm;
pub mod descriptor;
pub mod engine;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod response;
pub mod store;
pub mod unit;
