//! Tollgate in-process, rate limiting: the module's `tollgate` filter on the shipped example
//! (`deploy/envoy/envoy-module.yaml`, loading `deploy/config/authz-inprocess.yaml`: single-call
//! mode's policy and `rate_limit` section) with the shipped limits (`deploy/config/limits`)
//! through real Envoy 1.40. Memory counters are one per filter config, shared by all of Envoy's
//! workers; Redis counters are shared by two Envoys, decided on the background runtime while
//! the request is paused; limits reload on change and keep the last good file; a bad limits
//! file refuses the config with its file and line in Envoy's log.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::module::{start_envoy_with, validate};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::wait_for;
use tollgate_tests::redis::RedisServer;

/// The shipped limits directory, copied so a test can change it.
fn limits_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = project_root().join("deploy/config/limits");
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The example config with its limits at `limits` and the given `store:` value for the
/// counters; the authz config it loads lives in `dir`.
fn example(dir: &Path, limits: &Path, store: &str) -> String {
    tollgate_tests::module::example_in(dir, |text| edit_limits(text, limits, store))
}

fn edit_limits(text: String, limits: &Path, store: &str) -> String {
    let memory = "store: { type: memory }";
    assert!(text.contains(memory), "the example moved");
    let text = text.replace(memory, &format!("store: {store}"));
    let shipped = project_root().join("deploy/config/limits");
    text.replace(
        &format!("limits: {{ path: {} }}", shipped.display()),
        &format!("limits: {{ path: {} }}", limits.display()),
    )
}

struct Gateway {
    envoy: Envoy,
    _upstream: EchoUpstream,
}

impl Gateway {
    async fn start(config: &str, workers: usize) -> Gateway {
        let upstream = EchoUpstream::start().await;
        let backends = Backends {
            upstream: upstream.port(),
            authz: 0,
            ratelimit: 0,
        };
        let args = ["--concurrency".to_string(), workers.to_string()];
        let envoy = start_envoy_with(config, backends, &args).await.unwrap();
        Gateway {
            envoy,
            _upstream: upstream,
        }
    }

    /// GET `path` on a new connection (so requests spread over Envoy's workers).
    async fn get(&self, path: &str) -> reqwest::Response {
        fresh_client()
            .get(self.envoy.url(path))
            .send()
            .await
            .unwrap()
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Asserts the 429 a client gets over the limit: the rate-limit headers and the JSON body,
/// as single-call mode answers it.
async fn assert_over_limit(resp: reqwest::Response) {
    assert_eq!(resp.status(), 429);
    let h = resp.headers();
    assert!(h.contains_key("ratelimit-policy"), "{h:?}");
    assert!(h.contains_key("ratelimit"), "{h:?}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    // A sliding window of a minute may ask for more than a minute.
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(h["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
}

/// The statuses of `n` requests to `path`, spread over `gateways` in turn.
async fn statuses(gateways: &[&Gateway], path: &str, n: usize) -> Vec<reqwest::Response> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(gateways[i % gateways.len()].get(path).await);
    }
    out
}

#[tokio::test]
async fn memory_counters_are_shared_by_every_worker_and_limits_reload() {
    let limits = limits_copy();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&example(dir.path(), limits.path(), "{type: memory}"), 4).await;

    // /limited: 5 a minute (route, limited) whichever worker takes the connection.
    let responses = statuses(&[&gw], "/limited", 12).await;
    let mut allowed = 0;
    for resp in responses {
        if resp.status() == 200 {
            allowed += 1;
            assert!(resp.headers().contains_key("ratelimit-policy"));
            assert!(resp.headers().contains_key("ratelimit"));
        } else {
            assert_over_limit(resp).await;
        }
    }
    assert_eq!(allowed, 5);
    // The module is skipped on /healthz: no limit, no headers.
    let health = gw.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert!(!health.headers().contains_key("ratelimit-policy"));
    assert_eq!(gw.envoy.stat("cluster.upstream.upstream_rq_total").await, 6);
    assert_eq!(
        gw.envoy
            .stat("tollgate.replies.details.tollgate_rate_limited")
            .await,
        7
    );
    assert_eq!(gw.envoy.stat("tollgate.ratelimit.decision.ok").await, 5);
    assert_eq!(gw.envoy.stat("tollgate.requests.verdict.disabled").await, 1);

    // A changed limits file applies without a restart.
    let file = limits.path().join("gateway.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let raised = text.replacen("requests_per_unit: 5\n", "requests_per_unit: 500\n", 1);
    assert_ne!(raised, text);
    std::fs::write(&file, &raised).unwrap();
    wait_for("the raised limit", Duration::from_secs(10), || async {
        (gw.get("/limited").await.status() == 200).then_some(())
    })
    .await;
    // A bad file is refused (in Envoy's log) and the last good limits stay.
    std::fs::write(
        &file,
        "domain: gateway\ndescriptors: [{key: route, rate_limit: {unit: fortnight}}]\n",
    )
    .unwrap();
    wait_for(
        "the refused file in Envoy's log",
        Duration::from_secs(10),
        || {
            let log = gw.envoy.log();
            async move {
                log.contains("bad limits file; keeping its last good version")
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(gw.get("/limited").await.status(), 200);
}

#[tokio::test]
async fn redis_counters_are_shared_by_two_envoys_and_a_redis_outage_answers_the_failure_mode() {
    let mut redis = RedisServer::start();
    let limits = limits_copy();
    let store = format!("{{type: redis, url: \"{}\"}}", redis.url());
    // Each Envoy has its own embedded key store (one process owns one).
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(&example(dir_a.path(), limits.path(), &store), 2).await;
    let b = Gateway::start(&example(dir_b.path(), limits.path(), &store), 2).await;

    // One limit (5 a minute on /limited) counted together by both Envoys.
    let responses = statuses(&[&a, &b], "/limited", 10).await;
    let mut allowed = 0;
    for resp in responses {
        if resp.status() == 200 {
            allowed += 1;
        } else {
            assert_over_limit(resp).await;
        }
    }
    assert_eq!(allowed, 5);
    // Requests wait for Redis on the background runtime, their worker free meanwhile (a
    // reply that is back by the time the worker's one poll ends, or an over-limit key the
    // local cache knows, is answered without pausing).
    let mut paused = 0;
    let mut ok = 0;
    for gw in [&a, &b] {
        paused += gw.envoy.stat("tollgate.paused.verdict.pending").await;
        ok += gw.envoy.stat("tollgate.ratelimit.decision.ok").await;
    }
    assert_eq!(ok, 5);
    assert!((1..=10).contains(&paused), "{paused}");
    // The counters are in Redis: one script call per request that reached it.
    assert!(redis.command_calls("evalsha") + redis.command_calls("eval") >= 5);

    // Redis gone: the limiter's failure_mode `allow` lets requests through (on a key that
    // is not over its limit: those the over-limit cache still answers 429).
    redis.kill();
    let resp = a.get("/orders").await;
    assert_eq!(resp.status(), 200);
    assert_over_limit(a.get("/limited").await).await;
}

#[test]
fn a_bad_limits_file_or_section_refuses_the_config_with_its_place() {
    let limits = limits_copy();
    std::fs::write(
        limits.path().join("broken.yaml"),
        "domain: broken\ndescriptors:\n  - key: route\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = validate(&example(dir.path(), limits.path(), "{ type: memory }"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tollgate: filter config rejected"), "{err}");
    assert!(err.contains("broken.yaml:4"), "{err}");

    let good = limits_copy();
    let typo = tollgate_tests::module::example_in(dir.path(), |text| {
        edit_limits(text, good.path(), "{ type: memory }")
            .replace("failure_mode: allow", "failure_mod: allow")
    });
    let err = validate(&typo).unwrap_err().to_string();
    assert!(err.contains("authz.yaml"), "{err}");
    assert!(err.contains("rate_limit.failure_mod"), "{err}");

    // The shipped example, as shipped, loads.
    validate(&example(dir.path(), good.path(), "{ type: memory }")).unwrap();
}

#[test]
fn the_in_process_example_has_single_call_modes_policy_and_limits() {
    let read = |name: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(project_root().join("deploy/config").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_yaml::from_str(&text).unwrap()
    };
    let (module, single) = (read("authz-inprocess.yaml"), read("authz-single-call.yaml"));
    for section in ["policy", "rate_limit", "headers"] {
        assert_eq!(module[section], single[section], "{section}");
    }
    // No listeners of its own: what only the service reads is not in the module's file.
    for section in ["server", "admin", "http_authz"] {
        assert!(module.get(section).is_none(), "{section}");
    }
}
