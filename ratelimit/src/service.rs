//! The gRPC front end: Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! converting protobuf to and from the engine's plain types, and adding response headers and
//! dynamic metadata.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_proto::metadata;
use tollgate_proto::pb::envoy::config::core::v3::HeaderValue;
use tollgate_proto::pb::google::protobuf::{Duration as PbDuration, Struct};
use tollgate_proto::ratelimit::{
    Code as PbCode, DescriptorStatus, RateLimit, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, RateLimitService, header,
};

use crate::engine::{Code, Decision, DescriptorSource, Engine, EngineError, LimitOverride, Status};

/// Which rate-limit headers to ask Envoy to add to the client's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOptions {
    /// The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` for the tightest limit.
    pub x_ratelimit: bool,
    /// `Retry-After` (seconds) on over-limit responses.
    pub retry_after: bool,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        Self {
            ietf: true,
            x_ratelimit: false,
            retry_after: true,
        }
    }
}

/// The `dynamic_metadata` fields set when a limit fired (Envoy files them under the
/// `envoy.filters.http.ratelimit` namespace).
pub mod metadata_keys {
    /// Name of the limit that denied the request.
    pub const LIMIT: &str = "limit";
    pub const DOMAIN: &str = "domain";
    /// Index of the denied descriptor in the request.
    pub const DESCRIPTOR: &str = "descriptor_index";
    /// Names of shadow-mode limits that would have denied.
    pub const SHADOW_LIMITS: &str = "shadow_limits";
}

/// The ShouldRateLimit service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    engine: Arc<Engine>,
    headers: HeaderOptions,
}

impl RateLimitGrpc {
    pub fn new(engine: Arc<Engine>, headers: HeaderOptions) -> Self {
        Self { engine, headers }
    }
}

impl DescriptorSource for RateLimitDescriptor {
    fn entry_count(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        let e = &self.entries[i];
        (&e.key, &e.value)
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        self.limit.as_ref().map(|l| LimitOverride {
            requests_per_unit: l.requests_per_unit,
            unit: l.unit,
        })
    }
    fn hits_addend(&self) -> Option<u64> {
        // Negative hits (refunds) are not supported: such a descriptor is checked, not counted.
        if self.is_negative_hits {
            return Some(0);
        }
        self.hits_addend.as_ref().map(|v| v.value)
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let req = request.into_inner();
        match self
            .engine
            .should_rate_limit(&req.domain, &req.descriptors, u64::from(req.hits_addend))
            .await
        {
            Ok(decision) => Ok(tonic::Response::new(response(
                &req.domain,
                &decision,
                self.headers,
            ))),
            Err(EngineError::Store(e)) => {
                Err(tonic::Status::unavailable(format!("rate limit store: {e}")))
            }
        }
    }
}

/// Builds the protobuf response for a decision.
pub fn response(domain: &str, decision: &Decision, headers: HeaderOptions) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code(decision.code) as i32,
        statuses: decision.statuses.iter().map(status).collect(),
        response_headers_to_add: response_headers(decision, headers),
        dynamic_metadata: dynamic_metadata(domain, decision),
        ..Default::default()
    }
}

fn code(c: Code) -> PbCode {
    match c {
        Code::Ok => PbCode::Ok,
        Code::OverLimit => PbCode::OverLimit,
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn status(s: &Status) -> DescriptorStatus {
    DescriptorStatus {
        code: code(s.code) as i32,
        current_limit: s.limit.as_ref().map(|l| RateLimit {
            name: l.name.to_string(),
            requests_per_unit: l.requests_per_unit,
            unit: l.unit as i32,
        }),
        limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
        duration_until_reset: s.limit.as_ref().map(|_| pb_duration(s.reset_after)),
        ..Default::default()
    }
}

/// Whole seconds, rounded up (a client waiting the rounded-down value would be denied again).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An RFC 8941 sf-string: quoted, with `"` and `\` escaped and non-printable ASCII replaced.
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

fn response_headers(decision: &Decision, opts: HeaderOptions) -> Vec<HeaderValue> {
    let mut out = Vec::new();
    if opts.ietf {
        let (mut policy, mut state) = (String::new(), String::new());
        // One item per limit, even when several descriptors hit the same one.
        let mut seen: Vec<&Arc<crate::limits::Limit>> = Vec::new();
        for s in &decision.statuses {
            let Some(l) = &s.limit else { continue };
            if seen.iter().any(|m| Arc::ptr_eq(m, l)) {
                continue;
            }
            seen.push(l);
            if !policy.is_empty() {
                policy.push_str(", ");
                state.push_str(", ");
            }
            sf_string(&mut policy, &l.name);
            let _ = write!(
                policy,
                ";q={};w={}",
                l.rule.limit,
                ceil_secs(l.rule.window).max(1)
            );
            sf_string(&mut state, &l.name);
            let _ = write!(state, ";r={};t={}", s.remaining, ceil_secs(s.reset_after));
        }
        if !policy.is_empty() {
            out.push(header("RateLimit-Policy", policy));
            out.push(header("RateLimit", state));
        }
    }
    if opts.x_ratelimit
        && let Some((s, l)) = tightest(decision)
    {
        let window = ceil_secs(l.rule.window).max(1);
        out.push(header(
            "X-RateLimit-Limit",
            format!("{}, {};w={window}", l.rule.limit, l.rule.limit),
        ));
        out.push(header("X-RateLimit-Remaining", s.remaining.to_string()));
        out.push(header(
            "X-RateLimit-Reset",
            ceil_secs(s.reset_after).to_string(),
        ));
    }
    if opts.retry_after
        && decision.code == Code::OverLimit
        && let Some(wait) = decision.retry_after()
    {
        out.push(header("Retry-After", ceil_secs(wait).max(1).to_string()));
    }
    out
}

/// The denying status if any, else the applied limit with the least remaining.
fn tightest(decision: &Decision) -> Option<(&Status, &Arc<crate::limits::Limit>)> {
    let with_limit = || {
        decision
            .statuses
            .iter()
            .filter_map(|s| s.limit.as_ref().map(|l| (s, l)))
    };
    with_limit()
        .find(|(s, _)| s.code == Code::OverLimit)
        .or_else(|| with_limit().min_by_key(|(s, _)| s.remaining))
}

fn dynamic_metadata(domain: &str, decision: &Decision) -> Option<Struct> {
    let fired = decision.fired();
    let shadow: Vec<&str> = decision
        .statuses
        .iter()
        .filter_map(|s| s.shadow_fired.as_deref().map(|l| &*l.name))
        .collect();
    if fired.is_none() && shadow.is_empty() {
        return None;
    }
    let mut fields = vec![(metadata_keys::DOMAIN, metadata::string(domain))];
    if let Some((i, l)) = fired {
        fields.push((metadata_keys::LIMIT, metadata::string(&*l.name)));
        fields.push((metadata_keys::DESCRIPTOR, metadata::number(i as f64)));
    }
    if !shadow.is_empty() {
        fields.push((metadata_keys::SHADOW_LIMITS, metadata::string_list(shadow)));
    }
    Some(metadata::structure(fields))
}
