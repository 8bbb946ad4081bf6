//! `GET /v1/stats`: the service's decision counters as JSON, for the console's live rates.
//!
//! The counts are this process's `tollgate_authz_checks_total` series (decision, identity
//! method, reason), read from its own Prometheus registry, so the console and `/metrics` can
//! never disagree and the Check path pays nothing extra. In the service pair a 429 is decided
//! by tollgate-ratelimit, not here: with `admin.ratelimit_metrics_url` set, the answer also
//! carries that service's over-limit counts per limit, read from its `/metrics` (at most once a
//! second, however many consoles poll).

use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::metrics::CHECKS;

/// Where the counters are served.
pub(super) const PATH: &str = "/v1/stats";
/// tollgate-ratelimit's per-limit decision counter (its `decision="over_limit"` series are 429s).
const RATELIMIT_DECISIONS: &str = "tollgate_ratelimit_decisions_total";
/// How long a scrape of tollgate-ratelimit may take, and how long its answer is reused.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
const SCRAPE_REUSE: Duration = Duration::from_secs(1);
/// Largest `/metrics` body read from tollgate-ratelimit.
const SCRAPE_MAX_BYTES: usize = 8 << 20;

/// Where the counters come from.
pub(super) struct Stats {
    /// This process's metrics in Prometheus text format.
    own: Box<dyn Fn() -> String + Send + Sync>,
    ratelimit: Option<Scraper>,
    /// Single-call mode: the rate limits are this process's own (its embedded engine's
    /// counters, and its own 429s among the Checks).
    single_call: bool,
}

impl Stats {
    /// Counters from this process's Prometheus registry, plus tollgate-ratelimit's over-limit
    /// counts when `ratelimit_metrics_url` is given.
    pub(super) fn new(ratelimit_metrics_url: Option<&reqwest::Url>) -> Self {
        Self::with_source(
            Box::new(|| tollgate_server::telemetry::prometheus().render()),
            ratelimit_metrics_url,
        )
    }

    /// In single-call mode the over-limit counts are read from this process's own metrics
    /// (a tollgate-ratelimit URL is then not needed).
    pub(super) fn single_call(mut self, on: bool) -> Self {
        self.single_call = on;
        self
    }

    /// Counters from `own` (Prometheus text), for tests.
    pub(super) fn with_source(
        own: Box<dyn Fn() -> String + Send + Sync>,
        ratelimit_metrics_url: Option<&reqwest::Url>,
    ) -> Self {
        Self {
            own,
            ratelimit: ratelimit_metrics_url.map(|url| Scraper {
                url: url.clone(),
                http: reqwest::Client::builder()
                    .timeout(SCRAPE_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .expect("a plain HTTP client builds"),
                last: tokio::sync::Mutex::new(None),
            }),
            single_call: false,
        }
    }
}

/// The answer of `GET /v1/stats`. Counts are totals since the process started; a reader takes
/// the difference between two answers over the time between their `at`s.
#[derive(Debug, Serialize)]
pub(super) struct StatsBody {
    at: String,
    /// `pair` (429s are tollgate-ratelimit's) or `single_call` (this process decides them:
    /// they are the Checks denied with reason `rate_limited`).
    mode: &'static str,
    checks: Vec<CheckCount>,
    /// Absent unless `admin.ratelimit_metrics_url` is set.
    rate_limit: Option<RateLimitCounts>,
}

/// Check calls answered with one decision, method and reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct CheckCount {
    decision: String,
    method: String,
    reason: String,
    count: u64,
}

/// tollgate-ratelimit's over-limit answers.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RateLimitCounts {
    /// Per limit; a request over two limits is counted by both.
    over_limit: Vec<LimitCount>,
    /// Why the counts could not be read this time (then `over_limit` is empty).
    error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct LimitCount {
    domain: String,
    limit: String,
    count: u64,
}

pub(super) async fn serve(State(st): State<AppState>) -> Response {
    let own = (st.stats.own)();
    let checks = check_counts(&own);
    let rate_limit = match &st.stats.ratelimit {
        _ if st.stats.single_call => Some(RateLimitCounts {
            over_limit: over_limit_counts(&own),
            error: None,
        }),
        Some(s) => Some(s.counts().await),
        None => None,
    };
    let body = StatsBody {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        mode: if st.stats.single_call {
            "single_call"
        } else {
            "pair"
        },
        checks,
        rate_limit,
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn check_counts(text: &str) -> Vec<CheckCount> {
    let mut out: Vec<CheckCount> = samples(text, CHECKS)
        .into_iter()
        .map(|s| CheckCount {
            decision: s.label("decision").to_string(),
            method: s.label("method").to_string(),
            reason: s.label("reason").to_string(),
            count: s.count(),
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.decision, &a.method, &a.reason).cmp(&(&b.decision, &b.method, &b.reason))
    });
    out
}

fn over_limit_counts(text: &str) -> Vec<LimitCount> {
    let mut out: Vec<LimitCount> = samples(text, RATELIMIT_DECISIONS)
        .into_iter()
        .filter(|s| s.label("decision") == "over_limit")
        .map(|s| LimitCount {
            domain: s.label("domain").to_string(),
            limit: s.label("limit").to_string(),
            count: s.count(),
        })
        .collect();
    out.sort_by(|a, b| (&a.domain, &a.limit).cmp(&(&b.domain, &b.limit)));
    out
}

/// Reads tollgate-ratelimit's `/metrics`, reusing an answer younger than [`SCRAPE_REUSE`].
struct Scraper {
    url: reqwest::Url,
    http: reqwest::Client,
    last: tokio::sync::Mutex<Option<(Instant, RateLimitCounts)>>,
}

impl Scraper {
    async fn counts(&self) -> RateLimitCounts {
        // Held across the fetch: concurrent pollers wait for one scrape instead of each making one.
        let mut last = self.last.lock().await;
        if let Some((when, counts)) = &*last
            && when.elapsed() < SCRAPE_REUSE
        {
            return counts.clone();
        }
        let counts = match self.fetch().await {
            Ok(text) => RateLimitCounts {
                over_limit: over_limit_counts(&text),
                error: None,
            },
            Err(e) => {
                // Host and path only: a URL's user info is not for logs.
                tracing::debug!(host = self.url.host_str().unwrap_or(""), path = self.url.path(), error = %e, "cannot read tollgate-ratelimit's metrics");
                RateLimitCounts {
                    over_limit: Vec::new(),
                    error: Some(e),
                }
            }
        };
        *last = Some((Instant::now(), counts.clone()));
        counts
    }

    async fn fetch(&self) -> Result<String, String> {
        let mut resp = self.http.get(self.url.clone()).send().await.map_err(|e| {
            if e.is_timeout() {
                "tollgate-ratelimit's metrics did not answer in time".to_string()
            } else {
                "tollgate-ratelimit's metrics are unreachable".to_string()
            }
        })?;
        if !resp.status().is_success() {
            return Err(format!(
                "tollgate-ratelimit's metrics answered {}",
                resp.status().as_u16()
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| "tollgate-ratelimit's metrics stopped mid-answer".to_string())?
        {
            if body.len() + chunk.len() > SCRAPE_MAX_BYTES {
                return Err("tollgate-ratelimit's metrics are too large to read".into());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| "tollgate-ratelimit's metrics are not text".into())
    }
}

/// One sample line of Prometheus' text format.
#[derive(Debug, PartialEq)]
struct Sample {
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The value as a count (a counter's value is a whole number; anything else reads as 0).
    fn count(&self) -> u64 {
        if self.value.is_finite() && self.value >= 0.0 {
            self.value as u64
        } else {
            0
        }
    }
}

/// The samples of metric `family` in Prometheus text `text`; lines that do not parse are skipped.
fn samples(text: &str, family: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            parse_sample(rest)
        })
        .collect()
}

/// `{k="v",...} value [timestamp]` or ` value [timestamp]`, after the metric name.
fn parse_sample(rest: &str) -> Option<Sample> {
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None if rest.starts_with([' ', '\t']) => (Vec::new(), rest),
        // Another family whose name starts with this one's.
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample { labels, value })
}

/// Parses `k="v",k2="v2"}` (escapes `\\`, `\"`, `\n`) and returns the labels and what follows.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim().to_string(), value));
        s = &rest[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tollgate_authz_checks_total Check calls answered
# TYPE tollgate_authz_checks_total counter
tollgate_authz_checks_total{decision="deny",method="api_key",reason="unknown_key"} 2
tollgate_authz_checks_total{method="api_key",decision="allow",reason="allowed"} 40
tollgate_authz_checks_total{decision="allow",method="none",reason="public"} 7 1712345678000
tollgate_authz_checks_total_extra{decision="allow"} 99
tollgate_authz_check_duration_seconds_count 49
tollgate_ratelimit_decisions_total{domain="gateway",limit="plan-silver",decision="over_limit"} 3
tollgate_ratelimit_decisions_total{domain="gateway",limit="plan-silver",decision="within_limit"} 30
tollgate_ratelimit_decisions_total{domain="gate\"way\\",limit="a,b}",decision="over_limit"} 1e0
tollgate_ratelimit_decisions_total{domain="broken",limit="x",decision="over_limit" 5
"#;

    #[test]
    fn check_counts_come_from_the_checks_family_only_sorted() {
        let c = check_counts(TEXT);
        let got: Vec<(&str, &str, &str, u64)> = c
            .iter()
            .map(|c| (&*c.decision, &*c.method, &*c.reason, c.count))
            .collect();
        assert_eq!(
            got,
            [
                ("allow", "api_key", "allowed", 40),
                ("allow", "none", "public", 7),
                ("deny", "api_key", "unknown_key", 2),
            ]
        );
    }

    #[test]
    fn over_limit_counts_read_escaped_labels_and_skip_broken_lines() {
        let got = over_limit_counts(TEXT);
        assert_eq!(
            got,
            [
                LimitCount {
                    domain: "gate\"way\\".into(),
                    limit: "a,b}".into(),
                    count: 1
                },
                LimitCount {
                    domain: "gateway".into(),
                    limit: "plan-silver".into(),
                    count: 3
                },
            ]
        );
    }

    #[test]
    fn odd_values_never_panic() {
        for line in [
            "tollgate_authz_checks_total{",
            "tollgate_authz_checks_total{a=",
            "tollgate_authz_checks_total{a=\"",
            "tollgate_authz_checks_total{a=\"\\",
            "tollgate_authz_checks_total{a=\"x\"}",
            "tollgate_authz_checks_total{a=\"x\"} NaN",
            "tollgate_authz_checks_total{a=\"x\"} -1",
            "tollgate_authz_checks_total 5",
        ] {
            let _ = check_counts(line);
        }
        assert_eq!(
            check_counts("tollgate_authz_checks_total{a=\"x\"} NaN")[0].count,
            0
        );
        assert_eq!(check_counts("tollgate_authz_checks_total 5")[0].count, 5);
    }
}
