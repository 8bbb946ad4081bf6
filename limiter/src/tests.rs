//! The library as a host uses it: [`build`] from a config, decide, headers, metrics.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate_common::clock::ManualClock;

use super::*;
use crate::limits::LimitsSource;

const WEB: &str = "domain: web
descriptors:
  - key: client
    rate_limit: {name: per-client, unit: minute, requests_per_unit: 2}
";

fn config(dir: &std::path::Path) -> LimiterConfig {
    LimiterConfig {
        limits: Some(LimitsSource { path: dir.into() }),
        ..LimiterConfig::default()
    }
}

fn client(c: &str) -> [Descriptor; 1] {
    [Descriptor::new([("client", c)])]
}

#[tokio::test]
async fn a_built_limiter_decides_with_the_configured_limits_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1 << 30)));
    let limiter = build_with_clock(&config(dir.path()), clock.clone())
        .await
        .unwrap();
    for _ in 0..2 {
        let d = limiter
            .should_rate_limit("web", &client("a"), 0)
            .await
            .unwrap();
        assert_eq!(d.code, Code::Ok);
    }
    let over = limiter
        .should_rate_limit("web", &client("a"), 0)
        .await
        .unwrap();
    assert_eq!(over.code, Code::OverLimit);
    let names: Vec<&str> = limiter.headers(&over).iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["RateLimit-Policy", "RateLimit", "Retry-After"]);
    // The injected clock decides when the window has passed.
    clock.advance(Duration::from_secs(120));
    let d = limiter
        .should_rate_limit("web", &client("a"), 0)
        .await
        .unwrap();
    assert_eq!(d.code, Code::Ok);
    assert_eq!(limiter.reloader().view().domains[0].domain, "web");
}

#[tokio::test]
async fn build_refuses_a_bad_limits_file_and_check_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        "domain: web\ndescriptors:\n  - key: client\n    rate_limit: {unit: fortnight}\n",
    )
    .unwrap();
    let err = build(&config(dir.path())).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::Limits(_)));
    assert!(
        text.contains("web.yaml:4: descriptors[0].rate_limit.unit: invalid rate limit unit"),
        "{text}"
    );
    assert!(check(&config(dir.path())).is_err());
    assert!(
        check(&LimiterConfig::default()).is_ok(),
        "no limits, nothing to check"
    );
}

/// The host installs a recorder (or none) before it builds; the handles bound then keep
/// recording into it, whatever recorder is in force later.
#[test]
fn metric_handles_bind_to_the_recorder_in_force_at_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limiter =
        ::metrics::with_local_recorder(&recorder, || rt.block_on(build(&config(dir.path()))))
            .unwrap();
    // Outside the recorder's scope: the call still lands in it.
    rt.block_on(limiter.should_rate_limit("web", &client("m"), 0))
        .unwrap();
    let text = handle.render();
    let line = |name: &str, labels: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .map(str::to_string)
    };
    let within = line(
        metrics::DECISIONS,
        &["limit=\"per-client\"", "decision=\"within_limit\""],
    );
    assert!(within.is_some_and(|l| l.ends_with(" 1")), "{text}");
    assert!(
        line(metrics::CONFIG_LOADS, &["result=\"ok\""]).is_some(),
        "{text}"
    );
    assert!(
        line(metrics::STORE_DURATION, &["_count"]).is_some(),
        "{text}"
    );
}
