//! Rate limiting in the module: the `rate_limit:` section (the domain, and the limiter's own
//! keys exactly as tollgate-ratelimit's file spells them: store, limits, failure_mode, ...),
//! one [`Limiter`] per filter config shared by every Envoy worker (so memory counters are the
//! process's, not a worker's), hot reload of the limits files, and the verdict a decision
//! becomes: 429 with the rate-limit headers and a small JSON body, or the headers on the
//! client's response.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_common::Shutdown;
use tollgate_common::config::{Errors, Validate};
use tollgate_limiter::config::{FIELDS, Key, LimiterFields};
use tollgate_limiter::{Code, Decision, Descriptor, EngineError, Limiter, LimiterConfig};

use crate::config::FieldError;
use crate::filter::{FailureMode, LocalReply, Mutations, Verdict};
use crate::host::Counter;
use crate::runtime;

/// The section's own key; the others are the limiter's ([`FIELDS`]).
const DOMAIN: &str = "domain";

/// The `rate_limit:` section of the module's filter config.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitSection {
    /// The limits domain this filter's requests are counted in.
    domain: String,
    limiter: LimiterConfig,
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
                while let Some(key) = map.next_key_seed(Key(&[&[DOMAIN], FIELDS]))? {
                    match key {
                        DOMAIN => domain = Some(map.next_value::<String>()?),
                        other => limiter.read(other, &mut map)?,
                    }
                }
                Ok(RateLimitSection {
                    domain: domain.ok_or_else(|| serde::de::Error::missing_field(DOMAIN))?,
                    limiter: limiter.finish(),
                })
            }
        }
        d.deserialize_map(Section)
    }
}

impl RateLimitSection {
    /// Every invalid setting of the section, with the line `text` (the whole filter config)
    /// has it on.
    pub(crate) fn validate(&self, text: &str) -> Vec<FieldError> {
        let mut errors = Errors::for_file(None, Some(text));
        if self.domain.is_empty() {
            errors.push("rate_limit.domain", "must not be empty");
        }
        self.limiter.validate("rate_limit", &mut errors);
        match errors.finish(()) {
            Ok(()) => Vec::new(),
            Err(all) => all
                .0
                .into_iter()
                .map(|e| FieldError {
                    line: e.line,
                    field: e.field,
                    reason: e.reason,
                })
                .collect(),
        }
    }
}

/// A built limiter for one filter config. Dropped with the config (when Envoy destroys it and
/// every stream that held it is gone), which stops its limits watcher.
#[derive(Debug)]
pub(crate) struct RateLimit {
    domain: Arc<str>,
    limiter: Limiter,
    shutdown: Shutdown,
}

impl RateLimit {
    /// Builds the limiter (connecting a Redis store lazily: an unreachable Redis is not an
    /// error here, calls answer the failure mode until it is back) and starts watching the
    /// limits files. Runs on Envoy's main thread at config time.
    pub(crate) fn build(section: &RateLimitSection) -> Result<RateLimit, String> {
        let shutdown = Shutdown::new();
        let watch = shutdown.clone();
        let built = runtime::block_on(async move {
            let limiter = tollgate_limiter::build(&section.limiter)
                .await
                .map_err(|e| e.to_string())?;
            if section.limiter.limits.is_some() {
                limiter
                    .watch(watch)
                    .map_err(|e| format!("watching the limits: {e}"))?;
            }
            Ok::<_, String>(limiter)
        })
        .map_err(|e| e.to_string())??;
        Ok(RateLimit {
            domain: section.domain.as_str().into(),
            limiter: built,
            shutdown,
        })
    }

    /// The verdict for `descriptors`, as a future that owns everything it needs, so that it
    /// can finish on the background runtime when the store needs I/O.
    pub(crate) fn decide(
        &self,
        descriptors: Vec<Descriptor>,
        failure_mode: FailureMode,
    ) -> impl Future<Output = Verdict> + Send + 'static {
        let limiter = self.limiter.clone();
        let domain = Arc::clone(&self.domain);
        async move {
            let decided = limiter.should_rate_limit(&domain, &descriptors, 0).await;
            verdict(&limiter, decided, failure_mode)
        }
    }
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A decision as the client sees it. A store failure the limiter's own failure mode did not
/// answer (`failure_mode: error`) gets the module's failure mode.
fn verdict(
    limiter: &Limiter,
    decided: Result<Decision, EngineError>,
    failure_mode: FailureMode,
) -> Verdict {
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "rate limit undecided: answering the failure mode");
            return failure_mode.verdict();
        }
    };
    let headers: Vec<(String, String)> = limiter
        .headers(&decision)
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    if decision.code == Code::OverLimit {
        return Verdict::Respond(over_limit(&decision, headers));
    }
    let label = if decision.degraded { "degraded" } else { "ok" };
    Verdict::Continue(Mutations {
        response_headers: headers,
        counts: vec![(Counter::RateLimit, label)],
        ..Mutations::default()
    })
}

/// The 429 answer: the rate-limit headers and a JSON body saying when to retry.
fn over_limit(decision: &Decision, mut headers: Vec<(String, String)>) -> LocalReply {
    let retry = decision
        .retry_after()
        .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .max(1);
    headers.push(("content-type".into(), "application/json".into()));
    LocalReply {
        status: 429,
        headers,
        body: format!("{{\"error\":\"rate_limited\",\"retry_after\":{retry}}}\n"),
        details: "tollgate_rate_limited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> RateLimitSection {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn limiter(rpm: u32) -> (tempfile::TempDir, RateLimit) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gw.yaml"),
            format!(
                "domain: gw\ndescriptors:\n  - key: route\n    value: default\n    rate_limit: {{unit: minute, requests_per_unit: {rpm}}}\n"
            ),
        )
        .unwrap();
        let s = section(&format!(
            "domain: gw\nstore: {{type: memory}}\nlimits: {{path: {}}}\n",
            dir.path().display()
        ));
        (dir, RateLimit::build(&s).unwrap())
    }

    fn decide_now(rl: &RateLimit) -> Verdict {
        let d = vec![Descriptor::new([("route", "default")])];
        crate::filter::now_or_pending(rl.decide(d, FailureMode::Deny), FailureMode::Deny)
    }

    #[test]
    fn the_section_reads_the_limiters_keys_and_rejects_others() {
        let s = section("domain: gw\nfailure_mode: allow\nheaders: {x_ratelimit: true}\n");
        assert_eq!(s.domain, "gw");
        assert_eq!(s.limiter.failure_mode, tollgate_limiter::FailureMode::Allow);
        let err = serde_yaml::from_str::<RateLimitSection>("domain: gw\nstroe: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `stroe`"), "{err}");
        let err = serde_yaml::from_str::<RateLimitSection>("store: {type: memory}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `domain`"), "{err}");
    }

    #[test]
    fn invalid_settings_are_reported_with_their_field() {
        let text = "rate_limit:\n  domain: ''\n  near_limit_ratio: 2\n";
        let s = section("domain: ''\nnear_limit_ratio: 2\n");
        let errors = s.validate(text);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["rate_limit.domain", "rate_limit.near_limit_ratio"],
            "{errors:?}"
        );
        assert_eq!(errors[1].line, Some(3));
    }

    #[test]
    fn memory_counters_decide_on_the_worker_and_deny_with_429_and_headers() {
        let (_dir, rl) = limiter(2);
        for _ in 0..2 {
            let Verdict::Continue(m) = decide_now(&rl) else {
                panic!("allowed expected")
            };
            assert!(
                m.response_headers
                    .iter()
                    .any(|(k, _)| k == "ratelimit-policy"),
                "{m:?}"
            );
            assert_eq!(m.counts, vec![(Counter::RateLimit, "ok")]);
        }
        let Verdict::Respond(reply) = decide_now(&rl) else {
            panic!("429 expected")
        };
        assert_eq!(reply.status, 429);
        let names: Vec<&str> = reply.headers.iter().map(|(k, _)| k.as_str()).collect();
        for name in [
            "ratelimit-policy",
            "ratelimit",
            "retry-after",
            "content-type",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            reply
                .body
                .starts_with("{\"error\":\"rate_limited\",\"retry_after\":")
        );
        assert_eq!(reply.details, "tollgate_rate_limited");
    }

    #[test]
    fn a_store_failure_without_a_limiter_failure_mode_gets_the_modules() {
        let (_dir, rl) = limiter(2);
        let err = EngineError::Store(tollgate_limiter::StoreError::Unavailable("down".into()));
        let v = verdict(&rl.limiter, Err(err), FailureMode::Deny);
        assert!(matches!(v, Verdict::Respond(r) if r.status == 503));
    }
}
