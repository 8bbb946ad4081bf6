//! `envoy.service.ratelimit.v3`: the ShouldRateLimit API Envoy's ratelimit filter calls.

pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response,
    rate_limit_service_client::RateLimitServiceClient,
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
};
pub use rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;

/// A response header for Envoy to add to the client's response.
pub fn header(key: impl Into<String>, value: impl Into<String>) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: vec![],
    }
}

/// Builds a descriptor from `(key, value)` pairs (used by tests, drivers and benchmarks).
pub fn descriptor<K: Into<String>, V: Into<String>>(
    entries: impl IntoIterator<Item = (K, V)>,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .into_iter()
            .map(|(k, v)| rate_limit_descriptor::Entry {
                key: k.into(),
                value: v.into(),
            })
            .collect(),
        ..Default::default()
    }
}
