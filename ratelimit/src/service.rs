//! The gRPC front end: Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! converting protobuf to and from the engine's plain types: descriptors in; statuses, the
//! engine's response headers and metadata out; a store failure as `UNAVAILABLE`.

use std::time::Duration;

use tollgate_proto::metadata;
use tollgate_proto::pb::google::protobuf::{Duration as PbDuration, Struct};
use tollgate_proto::ratelimit::{
    Code as PbCode, DescriptorStatus, RateLimit, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, RateLimitService, Unit as PbUnit, header,
};

use tollgate_limiter::Limiter;
use tollgate_limiter::descriptor::{DescriptorSource, LimitOverride};
use tollgate_limiter::engine::{Code, Decision, EngineError, Status};
use tollgate_limiter::response::{self, metadata_keys};
use tollgate_limiter::unit::Unit;

/// The ShouldRateLimit service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    limiter: Limiter,
}

impl RateLimitGrpc {
    pub fn new(limiter: Limiter) -> Self {
        Self { limiter }
    }
}

/// A protobuf descriptor as the engine reads it (borrowed, nothing copied).
struct Envoy<'a>(&'a RateLimitDescriptor);

impl DescriptorSource for Envoy<'_> {
    fn entry_count(&self) -> usize {
        self.0.entries.len()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        let e = &self.0.entries[i];
        (&e.key, &e.value)
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        self.0.limit.as_ref().map(|l| LimitOverride {
            requests_per_unit: l.requests_per_unit,
            unit: PbUnit::try_from(l.unit).ok().and_then(unit_from_pb),
        })
    }
    fn hits_addend(&self) -> Option<u64> {
        // Negative hits (refunds) are not supported: such a descriptor is checked, not counted.
        if self.0.is_negative_hits {
            return Some(0);
        }
        self.0.hits_addend.as_ref().map(|v| v.value)
    }
}

fn unit_from_pb(u: PbUnit) -> Option<Unit> {
    Some(match u {
        PbUnit::Unknown => return None,
        PbUnit::Second => Unit::Second,
        PbUnit::Minute => Unit::Minute,
        PbUnit::Hour => Unit::Hour,
        PbUnit::Day => Unit::Day,
        PbUnit::Week => Unit::Week,
        PbUnit::Month => Unit::Month,
        PbUnit::Year => Unit::Year,
    })
}

fn unit_to_pb(u: Option<Unit>) -> PbUnit {
    match u {
        None => PbUnit::Unknown,
        Some(Unit::Second) => PbUnit::Second,
        Some(Unit::Minute) => PbUnit::Minute,
        Some(Unit::Hour) => PbUnit::Hour,
        Some(Unit::Day) => PbUnit::Day,
        Some(Unit::Week) => PbUnit::Week,
        Some(Unit::Month) => PbUnit::Month,
        Some(Unit::Year) => PbUnit::Year,
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        if !tollgate_common::trace::enabled() {
            return self.answer(request.into_inner()).await;
        }
        // Envoy sends the trace context of its own span for this call in the gRPC metadata.
        let span = tollgate_server::trace::server_span(
            "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request.metadata(),
            |_| None,
        );
        tracing::Instrument::instrument(self.answer(request.into_inner()), span).await
    }
}

impl RateLimitGrpc {
    async fn answer(
        &self,
        req: RateLimitRequest,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        match self
            .limiter
            .should_rate_limit(
                &req.domain,
                req.descriptors.iter().map(Envoy),
                u64::from(req.hits_addend),
            )
            .await
        {
            Ok(decision) => {
                let over = decision.code == Code::OverLimit;
                let label = if over { "over_limit" } else { "ok" };
                tollgate_common::trace::record_outcome(label, label);
                // One line per denial at info, per decision at debug (domain and limit names
                // come from the config; descriptor values may identify a caller and stay out).
                if over {
                    let limit = decision
                        .statuses
                        .iter()
                        .find(|s| s.code == Code::OverLimit)
                        .and_then(|s| s.limit.as_ref())
                        .map_or("", |l| &*l.name);
                    tracing::info!(domain = %req.domain, limit, "over limit");
                } else {
                    tracing::debug!(domain = %req.domain, "within limits");
                }
                Ok(tonic::Response::new(response(
                    &req.domain,
                    &decision,
                    self.limiter.headers(&decision),
                )))
            }
            Err(EngineError::Store(e)) => {
                tollgate_common::trace::fail(&tracing::Span::current());
                Err(tonic::Status::unavailable(format!("rate limit store: {e}")))
            }
        }
    }
}

/// Builds the protobuf response for a decision and the response headers it comes with.
fn response(
    domain: &str,
    decision: &Decision,
    headers: Vec<(&'static str, String)>,
) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code(decision.code) as i32,
        statuses: decision.statuses.iter().map(status).collect(),
        response_headers_to_add: headers
            .into_iter()
            .map(|(name, value)| header(name, value))
            .collect(),
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
            unit: unit_to_pb(l.unit) as i32,
        }),
        limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
        duration_until_reset: s.limit.as_ref().map(|_| pb_duration(s.reset_after)),
        ..Default::default()
    }
}

fn dynamic_metadata(domain: &str, decision: &Decision) -> Option<Struct> {
    let md = response::metadata(domain, decision)?;
    let mut fields = vec![(metadata_keys::DOMAIN, metadata::string(md.domain))];
    if let Some((limit, index)) = md.fired {
        fields.push((metadata_keys::LIMIT, metadata::string(limit)));
        fields.push((metadata_keys::DESCRIPTOR, metadata::number(index as f64)));
    }
    if !md.shadow_limits.is_empty() {
        fields.push((
            metadata_keys::SHADOW_LIMITS,
            metadata::string_list(md.shadow_limits),
        ));
    }
    if md.quota_mode {
        use tollgate_proto::pb::google::protobuf::{ListValue, Value, value::Kind};
        let violations = md
            .quota_violations
            .iter()
            .map(|&i| metadata::number(i as f64));
        fields.push((
            metadata_keys::QUOTA_MODE_ENABLED,
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        ));
        fields.push((
            metadata_keys::QUOTA_MODE_VIOLATIONS,
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: violations.collect(),
                })),
            },
        ));
    }
    Some(metadata::structure(fields))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use tollgate_proto::pb::google::protobuf::UInt64Value;
    use tollgate_proto::ratelimit::{RateLimitDescriptor, Unit, descriptor};

    use super::*;
    use std::sync::Arc;
    use tollgate_common::clock::ManualClock;

    use tollgate_limiter::HeaderOptions;
    use tollgate_limiter::algorithm::Algorithm;
    use tollgate_limiter::engine::{Engine, EngineOptions};
    use tollgate_limiter::limits::Limits;
    use tollgate_limiter::store::{MemoryOptions, MemoryStore};

    const LIMITS: &str = "
domain: web
descriptors:
  - key: client
    rate_limit: {name: per-client, unit: minute, requests_per_unit: 2}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: beta
    shadow_mode: true
    rate_limit: {name: beta-trial, unit: minute, requests_per_unit: 1}
  - key: open
    rate_limit: {unlimited: true}
";

    fn service(headers: HeaderOptions) -> RateLimitGrpc {
        let start = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let engine = Engine::new(
            Limits::parse(LIMITS, Algorithm::FixedWindow).unwrap(),
            Arc::new(MemoryStore::new(&MemoryOptions::default())),
            Arc::new(ManualClock::new(start)),
            EngineOptions::default(),
        );
        RateLimitGrpc::new(Limiter::from_engine(Arc::new(engine), headers))
    }

    async fn call(svc: &RateLimitGrpc, descriptors: Vec<RateLimitDescriptor>) -> RateLimitResponse {
        let req = RateLimitRequest {
            domain: "web".into(),
            descriptors,
            hits_addend: 0,
        };
        svc.should_rate_limit(tonic::Request::new(req))
            .await
            .unwrap()
            .into_inner()
    }

    fn headers(r: &RateLimitResponse) -> Vec<(String, String)> {
        r.response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    #[tokio::test]
    async fn statuses_codes_and_ietf_headers() {
        let svc = service(HeaderOptions::default());
        let r = call(
            &svc,
            vec![
                descriptor([("client", "c1")]),
                descriptor([("nothing", "x")]),
                descriptor([("open", "y")]),
            ],
        )
        .await;
        assert_eq!(r.overall_code, PbCode::Ok as i32);
        let s = &r.statuses;
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].code, PbCode::Ok as i32);
        let limit = s[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("per-client", 2, Unit::Minute as i32)
        );
        assert_eq!(s[0].limit_remaining, 1);
        assert!(s[0].duration_until_reset.is_some());
        assert_eq!(
            (
                s[1].code,
                s[1].current_limit.is_none(),
                s[1].limit_remaining
            ),
            (PbCode::Ok as i32, true, 0)
        );
        assert_eq!(
            (s[2].current_limit.is_none(), s[2].limit_remaining),
            (true, u32::MAX)
        );
        let h = headers(&r);
        assert_eq!(h[0].0, "RateLimit-Policy");
        assert_eq!(h[0].1, "\"per-client\";q=2;w=60");
        assert_eq!(h[1].0, "RateLimit");
        assert!(h[1].1.starts_with("\"per-client\";r=1;t="), "{}", h[1].1);
        assert_eq!(h.len(), 2, "no Retry-After when allowed");
        assert!(r.dynamic_metadata.is_none());
    }

    #[tokio::test]
    async fn over_limit_sets_retry_after_x_headers_and_metadata() {
        let svc = service(HeaderOptions {
            ietf: true,
            x_ratelimit: true,
            retry_after: true,
        });
        let req = || vec![descriptor([("path", "/a")]), descriptor([("client", "c1")])];
        call(&svc, req()).await;
        call(&svc, req()).await;
        let r = call(&svc, req()).await;
        assert_eq!(r.overall_code, PbCode::OverLimit as i32);
        assert_eq!(r.statuses[0].code, PbCode::Ok as i32);
        assert_eq!(r.statuses[1].code, PbCode::OverLimit as i32);
        assert_eq!(r.statuses[1].limit_remaining, 0);
        let h = headers(&r);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("RateLimit-Policy").unwrap(),
            "\"path\";q=100;w=1, \"per-client\";q=2;w=60"
        );
        assert!(get("RateLimit").unwrap().contains("\"per-client\";r=0;t="));
        assert_eq!(get("X-RateLimit-Limit").unwrap(), "2, 2;w=60");
        assert_eq!(get("X-RateLimit-Remaining").unwrap(), "0");
        let retry: u64 = get("Retry-After").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(
            get("X-RateLimit-Reset").unwrap().parse::<u64>().unwrap(),
            retry
        );
        let md = r.dynamic_metadata.unwrap();
        assert_eq!(
            metadata::get_str(&md, metadata_keys::LIMIT),
            Some("per-client")
        );
        assert_eq!(metadata::get_str(&md, metadata_keys::DOMAIN), Some("web"));
    }

    #[tokio::test]
    async fn shadow_limits_are_named_in_metadata_only() {
        let svc = service(HeaderOptions {
            ietf: false,
            x_ratelimit: false,
            retry_after: true,
        });
        call(&svc, vec![descriptor([("beta", "u")])]).await;
        let r = call(&svc, vec![descriptor([("beta", "u")])]).await;
        assert_eq!(r.overall_code, PbCode::Ok as i32);
        assert!(r.response_headers_to_add.is_empty());
        let md = r.dynamic_metadata.unwrap();
        assert!(md.fields.contains_key(metadata_keys::SHADOW_LIMITS));
        assert!(!md.fields.contains_key(metadata_keys::LIMIT));
    }

    #[tokio::test]
    async fn descriptor_hits_addend_and_negative_hits() {
        let svc = service(HeaderOptions::default());
        let mut check = descriptor([("client", "c2")]);
        check.hits_addend = Some(UInt64Value { value: 0 });
        assert_eq!(call(&svc, vec![check]).await.statuses[0].limit_remaining, 2);
        let mut two = descriptor([("client", "c2")]);
        two.hits_addend = Some(UInt64Value { value: 2 });
        assert_eq!(call(&svc, vec![two]).await.statuses[0].limit_remaining, 0);
        let mut refund = descriptor([("client", "c2")]);
        refund.hits_addend = Some(UInt64Value { value: 1 });
        refund.is_negative_hits = true;
        assert_eq!(
            call(&svc, vec![refund]).await.overall_code,
            PbCode::Ok as i32,
            "checked, not counted"
        );
    }

    #[tokio::test]
    async fn store_failure_is_unavailable() {
        struct Down;
        impl tollgate_limiter::store::Store for Down {
            fn hit<'a>(
                &'a self,
                _: &'a [tollgate_limiter::store::Hit<'a>],
                _: SystemTime,
            ) -> futures::future::BoxFuture<
                'a,
                Result<Vec<tollgate_limiter::store::Outcome>, tollgate_limiter::store::StoreError>,
            > {
                Box::pin(async {
                    Err(tollgate_limiter::store::StoreError::Unavailable(
                        "down".into(),
                    ))
                })
            }
        }
        let engine = Engine::new(
            Limits::parse(LIMITS, Algorithm::FixedWindow).unwrap(),
            Arc::new(Down),
            Arc::new(tollgate_common::clock::SystemClock),
            EngineOptions::default(),
        );
        let svc = RateLimitGrpc::new(Limiter::from_engine(
            Arc::new(engine),
            HeaderOptions::default(),
        ));
        let req = RateLimitRequest {
            domain: "web".into(),
            descriptors: vec![descriptor([("client", "c")])],
            hits_addend: 0,
        };
        let err = svc
            .should_rate_limit(tonic::Request::new(req))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
