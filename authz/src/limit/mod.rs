//! Single-call mode: the rate-limit engine (`tollgate-limiter`) inside the Check, so that one
//! ext_authz call authenticates and rate-limits. The `rate_limit:` section is the limiter's
//! own (store, limits, failure mode, headers: the keys tollgate-ratelimit reads at its top
//! level) plus the `domain` the descriptors are counted in. One limits file works in either
//! mode, and the counters are the same: a replica of each on one Redis counts one limit.
//!
//! An allowed decision is checked against the descriptors its rule's `rate_limits` build
//! ([`actions`]); over the limit it becomes a 429 with the rate-limit headers, within it the
//! headers go on the client's response and the limit into the dynamic metadata. A store that
//! cannot answer is the section's `failure_mode`: `allow` and `deny` are the engine's,
//! `error` is a 503 with `Retry-After` (the Check cannot hand the choice to Envoy: a failed
//! Check is a failed authorization).
//!
//! # Layout
//! - this file: the section, and the step that turns an allowed decision into a limited one;
//! - [`actions`]: the descriptor builder (pure).

pub mod actions;

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_common::config::{Errors, Validate, join};
use tollgate_limiter::config::{FIELDS, Key, LimiterFields};
use tollgate_limiter::{Code, Limiter, LimiterConfig};

use crate::check::{Allow, Decision, Deny, LimitNote, RequestView};
use crate::reason::Reason;
pub use actions::{Descriptors, RateLimitConfig};

/// The section's own keys; the rest are the limiter's ([`FIELDS`]).
const OWN: &[&str] = &["domain"];

/// The `rate_limit:` section.
#[derive(Debug, Clone)]
pub struct RateLimitSection {
    /// The limits domain the descriptors are counted in (the ratelimit filter's `domain` in
    /// the two-call shape).
    pub domain: String,
    pub limiter: LimiterConfig,
}

impl<'de> Deserialize<'de> for RateLimitSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> Visitor<'de> for Section {
            type Value = RateLimitSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the rate_limit section")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut domain = None;
                let mut limiter = LimiterFields::default();
                while let Some(key) = map.next_key_seed(Key(&[OWN, FIELDS]))? {
                    match key {
                        "domain" => domain = Some(map.next_value()?),
                        other => limiter.read(other, &mut map)?,
                    }
                }
                Ok(RateLimitSection {
                    domain: domain.ok_or_else(|| serde::de::Error::missing_field("domain"))?,
                    limiter: limiter.finish(),
                })
            }
        }
        d.deserialize_map(Section)
    }
}

impl Validate for RateLimitSection {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if self.domain.is_empty() {
            errors.push(join(at, "domain"), "must not be empty");
        }
        self.limiter.validate(at, errors);
    }
}

/// The embedded limiter, as a Check uses it.
#[derive(Debug, Clone)]
pub struct Embedded {
    limiter: Limiter,
    domain: Arc<str>,
}

/// The JSON body of a 429.
const OVER_LIMIT_BODY: &str = r#"{"error":"rate_limited"}"#;

impl Embedded {
    pub fn new(limiter: Limiter, domain: &str) -> Self {
        Self {
            limiter,
            domain: domain.into(),
        }
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// `allow` checked against the limits its descriptors match.
    pub async fn apply(
        &self,
        allow: Allow,
        plans: &Descriptors,
        req: &dyn RequestView,
    ) -> Decision {
        let descriptors = plans.build(req, &allow.identity);
        if descriptors.is_empty() {
            return Decision::Allow(allow);
        }
        let decision = match self
            .limiter
            .should_rate_limit(&self.domain, &descriptors, 1)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit store failed; failure_mode error denies with 503");
                return Decision::Deny(unavailable(&allow));
            }
        };
        let headers = self.limiter.headers(&decision);
        let note = self.note(&decision);
        if decision.code == Code::OverLimit {
            let mut headers = headers;
            headers.push(("content-type", "application/json".into()));
            return Decision::Deny(Deny {
                status: 429,
                headers,
                body: OVER_LIMIT_BODY.into(),
                method: Some(allow.identity.method),
                rate_limit: note,
                reason: Reason::RateLimited,
            });
        }
        let mut allow = allow;
        allow.response_headers = headers;
        allow.rate_limit = note;
        Decision::Allow(allow)
    }

    /// The limit that denied, else the applied one with the least remaining.
    fn note(&self, d: &tollgate_limiter::Decision) -> Option<LimitNote> {
        let shadow_limits: Vec<Arc<str>> = d
            .statuses
            .iter()
            .filter_map(|s| s.shadow_fired.as_ref().map(|l| l.name.clone()))
            .collect();
        let with_limit = || {
            d.statuses
                .iter()
                .filter_map(|s| s.limit.as_ref().map(|l| (s, l)))
        };
        let (status, limit) = with_limit()
            .find(|(s, _)| s.code == Code::OverLimit)
            .or_else(|| with_limit().min_by_key(|(s, _)| s.remaining))?;
        Some(LimitNote {
            domain: self.domain.clone(),
            limit: limit.name.clone(),
            remaining: status.remaining,
            shadow_limits,
        })
    }
}

/// The Check's answer when the counter store fails and `failure_mode` is `error`.
fn unavailable(allow: &Allow) -> Deny {
    Deny {
        status: 503,
        headers: vec![
            ("retry-after", "1".into()),
            ("content-type", "application/json".into()),
        ],
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        method: Some(allow.identity.method),
        rate_limit: None,
        reason: Reason::RateLimitStoreError,
    }
}

#[cfg(test)]
mod tests;
