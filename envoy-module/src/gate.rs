//! The Tollgate filter (`filter_name: tollgate`): the product filter of the module. Today it
//! rate-limits every request with the limiter (see [`crate::ratelimit`]) by the descriptors of
//! [`crate::descriptors`]; with a memory store the decision is made on Envoy's worker, with a
//! Redis store the request is paused while the background runtime asks Redis.
//!
//! ```yaml
//! failure_mode: deny          # a module failure or an undecided limit: 503 (or allow)
//! rate_limit:
//!   domain: gateway
//!   store: {type: memory}
//!   limits: {path: /etc/tollgate/limits}
//! ```

use serde::Deserialize;

use crate::config::{self, ConfigError};
use crate::descriptors;
use crate::filter::{FailureMode, Filter, Mutations, Request, Verdict, now_or_pending};
use crate::ratelimit::{RateLimit, RateLimitSection};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateConfig {
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default)]
    rate_limit: Option<RateLimitSection>,
}

/// The Tollgate filter built from its config.
#[derive(Debug)]
pub(crate) struct Gate {
    failure_mode: FailureMode,
    rate_limit: Option<RateLimit>,
}

impl Gate {
    pub(crate) fn from_config(name: &str, text: &[u8]) -> Result<Gate, ConfigError> {
        let config: GateConfig = config::parse(name, text)?;
        let invalid = |errors| ConfigError::Invalid {
            filter: name.to_string(),
            errors,
        };
        let rate_limit = match &config.rate_limit {
            None => None,
            Some(section) => {
                let errors = section.validate(&String::from_utf8_lossy(text));
                if !errors.is_empty() {
                    return Err(invalid(errors));
                }
                let built = RateLimit::build(section).map_err(|reason| {
                    invalid(vec![config::FieldError {
                        line: None,
                        field: "rate_limit".into(),
                        reason,
                    }])
                })?;
                Some(built)
            }
        };
        Ok(Gate {
            failure_mode: config.failure_mode,
            rate_limit,
        })
    }

    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }
}

impl Filter for Gate {
    fn on_request(&self, request: &dyn Request) -> Verdict {
        let Some(rate_limit) = &self.rate_limit else {
            return Verdict::Continue(Mutations::default());
        };
        let decision = rate_limit.decide(descriptors::build(request), self.failure_mode);
        now_or_pending(decision, self.failure_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::FakeRequest;

    #[test]
    fn without_a_rate_limit_section_every_request_continues() {
        let gate = Gate::from_config("tollgate", b"").unwrap();
        assert!(matches!(
            gate.on_request(&FakeRequest::get("/")),
            Verdict::Continue(_)
        ));
    }

    #[test]
    fn bad_limits_refuse_the_config_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gw.yaml"),
            "domain: gw\ndescriptors:\n  - key: rule\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        )
        .unwrap();
        let text = format!(
            "rate_limit:\n  domain: gw\n  limits: {{path: {}}}\n",
            dir.path().display()
        );
        let err = Gate::from_config("tollgate", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gw.yaml:4"), "{err}");
        assert!(err.contains("rate_limit: bad limits"), "{err}");
    }

    #[test]
    fn unknown_fields_of_the_section_are_rejected_with_their_line() {
        let err = Gate::from_config("tollgate", b"rate_limit:\n  domain: gw\n  stroe: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3: rate_limit.stroe: "), "{err}");
        assert!(err.contains("unknown field `stroe`"), "{err}");
    }
}
