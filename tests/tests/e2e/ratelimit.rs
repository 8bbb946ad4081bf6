//! Rate limiting through real Envoy: each route `rate_limits` action (generic_key,
//! request_headers, remote_address, metadata from ext_authz) produces the descriptors the
//! limits config limits, and the client sees 429 with the rate-limit headers.

use std::time::{Duration, Instant};

use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::process::free_port;
use tollgate_tests::redis::RedisServer;
use tollgate_tests::stack::{Authz, Ratelimit, example, load_config};

/// Envoy with only the rate-limit filter, in the example's port conventions (listener 10000,
/// admin 9901, upstream 8000, ratelimit 8081), domain `e2e`.
const ENVOY: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
static_resources:
  listeners:
  - name: gateway
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            name: gateway
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /quota }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: route, descriptor_value: quota }
              - match: { prefix: /soft }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: backend, descriptor_value: primary }
                  - actions:
                    - generic_key: { descriptor_key: backend, descriptor_value: fallback }
              - match: { prefix: /generic }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: route, descriptor_value: generic }
              - match: { prefix: /header }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - request_headers: { header_name: x-client, descriptor_key: client }
              - match: { prefix: /remote }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - remote_address: {}
              - match: { prefix: /override }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: route, descriptor_value: override }
                    limit:
                      dynamic_metadata:
                        metadata_key: { key: e2e.override, path: [ { key: limit } ] }
              - match: { prefix: /nested }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_key: route, descriptor_value: nested }
                    - request_headers: { header_name: x-client, descriptor_key: client }
                  - actions:
                    - generic_key: { descriptor_key: shadow, descriptor_value: nested }
          http_filters:
          # Stands in for any filter that chooses a per-request limit (the /override route
          # reads it from here).
          - name: envoy.filters.http.set_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config
              metadata:
              - metadata_namespace: e2e.override
                value: { limit: { requests_per_unit: 1, unit: MINUTE } }
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: e2e
              request_type: external
              timeout: 1s
              failure_mode_deny: false
              rate_limited_status: { code: TooManyRequests }
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: { cluster_name: tollgate_ratelimit }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8000 } } }
  - name: tollgate_ratelimit
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: tollgate_ratelimit
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8081 } } }
"#;

/// The limits for domain `e2e`, in envoyproxy/ratelimit's format.
const LIMITS: &str = "
domain: e2e
descriptors:
  - key: route
    value: generic
    rate_limit: {name: generic, unit: minute, requests_per_unit: 2}
  - key: client
    rate_limit: {name: per-client, unit: minute, requests_per_unit: 1}
  - key: client
    value: vip
    rate_limit: {name: vip, unit: minute, requests_per_unit: 3}
  - key: remote_address
    rate_limit: {name: per-address, unit: minute, requests_per_unit: 2, algorithm: fixed_window}
  - key: route
    value: override
    rate_limit: {name: configured, unit: minute, requests_per_unit: 100}
  - key: route
    value: nested
    descriptors:
      - key: client
        rate_limit: {name: nested-client, unit: hour, requests_per_unit: 1}
  - key: shadow
    shadow_mode: true
    rate_limit: {name: shadow-nested, unit: hour, requests_per_unit: 1}
  - key: route
    value: quota
    rate_limit: {name: monthly, unit: month, requests_per_unit: 2, calendar: true}
  # envoyproxy/ratelimit's quota mode, as its users write it.
  - key: backend
    value: primary
    quota_mode: true
    rate_limit:
      unit: HOUR
      requests_per_unit: 1
  - key: backend
    value: fallback
    quota_mode: true
    rate_limit:
      unit: HOUR
      requests_per_unit: 2
";

struct Gateway {
    envoy: Envoy,
    _ratelimit: Ratelimit,
    _upstream: EchoUpstream,
    _limits: tempfile::TempDir,
}

fn limits_dir() -> tempfile::TempDir {
    let limits = tempfile::tempdir().unwrap();
    std::fs::write(limits.path().join("e2e.yaml"), LIMITS).unwrap();
    limits
}

async fn gateway(x_ratelimit: bool) -> Gateway {
    let limits = limits_dir();
    let mut config = tollgate_ratelimit::Config::for_tests(limits.path());
    config.limiter.headers.x_ratelimit = x_ratelimit;
    let ratelimit = Ratelimit::start(config).await.unwrap();
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_with(
        ENVOY,
        Backends {
            upstream: upstream.port(),
            authz: free_port(),
            ratelimit: ratelimit.grpc_port(),
        },
    )
    .await
    .unwrap();
    Gateway {
        envoy,
        _ratelimit: ratelimit,
        _upstream: upstream,
        _limits: limits,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(url: &str, client_header: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(v) = client_header {
        req = req.header("x-client", v);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn generic_key_limit_gives_429_with_retry_after_and_ietf_headers() {
    let gw = gateway(true).await;
    let url = gw.envoy.url("/generic");
    let first = get(&url, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "ratelimit-policy").as_deref(),
        Some("\"generic\";q=2;w=60")
    );
    assert!(
        header(&first, "ratelimit").is_some_and(|v| v.starts_with("\"generic\";r=1;t=")),
        "{first:?}"
    );
    assert_eq!(
        header(&first, "x-ratelimit-limit").as_deref(),
        Some("2, 2;w=60")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    assert_eq!(get(&url, None).await.status(), 200);
    let denied = get(&url, None).await;
    assert_eq!(denied.status(), 429);
    let retry: u64 = header(&denied, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=66).contains(&retry), "{retry}");
    assert!(
        header(&denied, "ratelimit").is_some_and(|v| v.contains(";r=0;")),
        "{denied:?}"
    );
    assert_eq!(
        header(&denied, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        gw.envoy.stat("cluster.upstream.ratelimit.over_limit").await,
        1
    );
}

/// A calendar-month quota answers 429 once used up, with `Retry-After` and the `RateLimit`
/// reset equal to the time until midnight UTC on the 1st of next month (the service runs on the
/// real clock here; the boundary itself is tested with an injected clock in the limiter).
#[tokio::test]
async fn a_monthly_quota_is_refused_until_the_first_of_next_month() {
    use chrono::{Datelike, TimeZone, Utc};
    let gw = gateway(false).await;
    let url = gw.envoy.url("/quota");
    assert_eq!(get(&url, None).await.status(), 200);
    assert_eq!(get(&url, None).await.status(), 200);
    let denied = get(&url, None).await;
    let now = Utc::now();
    assert_eq!(denied.status(), 429);
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let first = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap();
    let expected = (first - now).num_seconds();
    let retry: i64 = header(&denied, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (expected - 2..=expected + 2).contains(&retry),
        "Retry-After {retry}, {expected} s to {first}"
    );
    let rl = header(&denied, "ratelimit").expect("RateLimit");
    let t: i64 = rl.rsplit(";t=").next().unwrap().parse().unwrap();
    assert!((expected - 2..=expected + 2).contains(&t), "{rl}");
}

/// envoyproxy/ratelimit's `quota_mode`: a request over one backend's quota still passes while
/// another quota-mode descriptor has quota left, and is refused once every one is used up.
#[tokio::test]
async fn quota_mode_descriptors_pass_until_every_quota_is_used() {
    let gw = gateway(false).await;
    let url = gw.envoy.url("/soft");
    assert_eq!(get(&url, None).await.status(), 200);
    assert_eq!(
        get(&url, None).await.status(),
        200,
        "primary is over its quota, fallback is not"
    );
    let denied = get(&url, None).await;
    assert_eq!(denied.status(), 429, "both quotas used");
    assert!(header(&denied, "retry-after").is_some());
}

#[tokio::test]
async fn request_headers_limit_per_value_and_key_value_before_key() {
    let gw = gateway(false).await;
    let url = gw.envoy.url("/header");
    assert_eq!(get(&url, Some("alice")).await.status(), 200);
    assert_eq!(
        get(&url, Some("alice")).await.status(),
        429,
        "1 a minute per client"
    );
    assert_eq!(
        get(&url, Some("bob")).await.status(),
        200,
        "bob has his own counter"
    );
    // The specific value has its own, larger limit.
    for _ in 0..3 {
        assert_eq!(get(&url, Some("vip")).await.status(), 200);
    }
    assert_eq!(get(&url, Some("vip")).await.status(), 429);
    // Without the header Envoy sends no descriptor: never limited.
    for _ in 0..3 {
        let r = get(&url, None).await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit-policy").is_none());
    }
}

#[tokio::test]
async fn remote_address_limit() {
    let gw = gateway(false).await;
    let url = gw.envoy.url("/remote");
    assert_eq!(get(&url, None).await.status(), 200);
    let second = get(&url, None).await;
    assert_eq!(second.status(), 200);
    assert!(header(&second, "ratelimit-policy").is_some_and(|v| v.starts_with("\"per-address\"")));
    assert_eq!(get(&url, None).await.status(), 429);
}

/// Envoy's `limit` override (here from dynamic metadata: 1 a minute) replaces the configured
/// limit of the descriptor (100 a minute).
#[tokio::test]
async fn override_limit_sent_by_envoy_replaces_the_configured_one() {
    let gw = gateway(false).await;
    let url = gw.envoy.url("/override");
    let first = get(&url, None).await;
    assert_eq!(first.status(), 200);
    let policy = header(&first, "ratelimit-policy").expect("RateLimit-Policy");
    assert!(policy.ends_with(";q=1;w=60"), "{policy}");
    let denied = get(&url, None).await;
    assert_eq!(
        denied.status(),
        429,
        "the override's 1 a minute, not the config's 100"
    );
    assert!(header(&denied, "retry-after").is_some());
}

#[tokio::test]
async fn nested_descriptor_and_shadow_mode_limit() {
    let gw = gateway(false).await;
    let url = gw.envoy.url("/nested");
    assert_eq!(get(&url, Some("carol")).await.status(), 200);
    // Both limits are now exhausted; only the nested one (not in shadow mode) denies.
    let denied = get(&url, Some("carol")).await;
    assert_eq!(denied.status(), 429);
    assert!(
        header(&denied, "ratelimit-policy").is_some_and(|v| v.contains("\"nested-client\"")),
        "{denied:?}"
    );
    // Another client: its own nested counter; the shared shadow limit is over but never denies.
    assert_eq!(get(&url, Some("dave")).await.status(), 200);
}

/// The full example gateway: tollgate-authz identifies the caller by API key and returns its
/// plan and subject as dynamic metadata; Envoy's `metadata` actions turn them into the
/// (plan, subject) descriptor that `deploy/config/limits/gateway.yaml` limits (silver: 3/min).
/// A key's subject is its owner.
#[tokio::test]
async fn metadata_from_ext_authz_limits_by_plan_and_subject() {
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-admin-token-0123456789abcdef";
    std::fs::write(dir.path().join("token"), token).unwrap();
    let authz = Authz::start(
        load_config(
            &example("authz.yaml"),
            &[
                format!(
                    "api_keys.store.path={}",
                    dir.path().join("keys.redb").display()
                ),
                "admin.addr=127.0.0.1:0".into(),
                format!("admin.token_file={}", dir.path().join("token").display()),
            ],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let ratelimit = Ratelimit::example(&[]).await.unwrap();
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_example(Backends {
        upstream: upstream.port(),
        authz: authz.grpc_port(),
        ratelimit: ratelimit.grpc_port(),
    })
    .await
    .unwrap();

    let admin = authz.running.admin_addr.expect("admin API");
    let issue = |owner: &'static str, plan: &'static str| {
        let url = format!("http://{admin}/v1/keys");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"name": "e2e", "owner": owner, "plan": plan}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let body: serde_json::Value = r.json().await.unwrap();
            body["secret"].as_str().unwrap().to_string()
        }
    };
    let silver = issue("alice", "silver").await;
    let silver_2 = issue("bob", "silver").await;
    let gold = issue("carol", "gold").await;
    let call = |key: String| {
        let url = envoy.url("/api/orders");
        async move {
            client()
                .get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        assert_eq!(
            call(silver.clone()).await.status(),
            200,
            "silver request {i}"
        );
    }
    let denied = call(silver.clone()).await;
    assert_eq!(denied.status(), 429);
    assert!(
        header(&denied, "ratelimit-policy").is_some_and(|v| v.contains("\"plan-silver\"")),
        "{denied:?}"
    );
    assert!(header(&denied, "retry-after").is_some());
    // The limit is per subject: another owner's silver key has its own; gold has a larger one.
    assert_eq!(call(silver_2).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(call(gold.clone()).await.status(), 200);
    }
}

fn redis_config(
    limits: &std::path::Path,
    url: &str,
    failure_mode: &str,
) -> tollgate_ratelimit::Config {
    let mut config = tollgate_ratelimit::Config::for_tests(limits);
    config.limiter.store =
        serde_yaml::from_str(&format!("type: redis\nurl: {url}\ntimeout: 200ms")).unwrap();
    config.limiter.failure_mode = serde_yaml::from_str(failure_mode).unwrap();
    config
}

/// Two replicas sharing one Redis behind one Envoy (round robin): together they admit exactly
/// the limit. Then Redis dies: a descriptor already over its limit is still denied (the local
/// over-limit cache); for others, replica a (`failure_mode: error`) answers UNAVAILABLE and Envoy
/// (failure_mode_deny: false) lets the request through, replica b (`deny`) answers 429.
#[tokio::test]
async fn replicas_sharing_redis_admit_exactly_the_limit_and_apply_the_failure_mode() {
    let mut redis = RedisServer::start();
    let limits = limits_dir();
    let a = Ratelimit::start(redis_config(limits.path(), &redis.url(), "error"))
        .await
        .unwrap();
    let b = Ratelimit::start(redis_config(limits.path(), &redis.url(), "deny"))
        .await
        .unwrap();
    let upstream = EchoUpstream::start().await;
    // Both replicas as endpoints of the rate-limit cluster.
    let two = ENVOY.replace(
        "        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8081 } } }\n",
        &format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8081 }} }} }}\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
            b.grpc_port()
        ),
    );
    assert_ne!(two, ENVOY);
    let envoy = Envoy::start_with(
        &two,
        Backends {
            upstream: upstream.port(),
            authz: free_port(),
            ratelimit: a.grpc_port(),
        },
    )
    .await
    .unwrap();
    let url = envoy.url("/generic");
    let mut admitted = 0;
    for _ in 0..10 {
        if get(&url, None).await.status() == 200 {
            admitted += 1;
        }
    }
    // A call that outlives a replica's store deadline (a loaded machine) is replica a's
    // failure mode, `error`, which this Envoy lets through; its late hit changes nothing in
    // Redis. Only such requests may come on top of the limit.
    let let_through = envoy
        .stat("cluster.upstream.ratelimit.failure_mode_allowed")
        .await;
    assert_eq!(
        admitted - let_through,
        2,
        "2 a minute across both replicas ({let_through} let through on a store failure)"
    );
    assert!(
        envoy
            .stat("cluster.tollgate_ratelimit.upstream_cx_total")
            .await
            >= 2,
        "both replicas called"
    );

    redis.kill();
    assert_eq!(
        get(&url, None).await.status(),
        429,
        "known over limit: no Redis needed"
    );
    // Fresh descriptors: `/generic` is now answered by the over-limit cache, without Redis.
    let url = envoy.url("/header");
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            get(&url, Some(&format!("fresh-{i}")))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&200),
        "replica a: UNAVAILABLE, Envoy fails open: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "replica b: failure_mode deny: {statuses:?}"
    );
    assert!(
        envoy
            .stat("cluster.upstream.ratelimit.failure_mode_allowed")
            .await
            > let_through
    );
}

/// A frozen Redis costs nothing once the store's circuit breaker is open: with
/// `failure_mode: deny` every call is answered 429 by the failure mode without waiting for
/// Redis; once Redis thaws, counting resumes exactly where it stood (the calls answered
/// meanwhile counted nothing, although Redis ran the ones it had been sent).
#[tokio::test]
async fn a_frozen_redis_trips_the_breaker_and_counting_resumes_exactly() {
    let redis = RedisServer::start();
    let limits = limits_dir();
    let mut config = tollgate_ratelimit::Config::for_tests(limits.path());
    config.limiter.store = serde_yaml::from_str(&format!(
        "type: redis\nurl: {}\ntimeout: 200ms\nbreaker: {{after_failures: 3, probe_interval: 100ms}}",
        redis.url()
    ))
    .unwrap();
    config.limiter.failure_mode = serde_yaml::from_str("deny").unwrap();
    let ratelimit = Ratelimit::start(config).await.unwrap();
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_with(
        ENVOY,
        Backends {
            upstream: upstream.port(),
            authz: free_port(),
            ratelimit: ratelimit.grpc_port(),
        },
    )
    .await
    .unwrap();
    let url = envoy.url("/generic");
    // The first of 2 a minute (a call that failed while connecting counted nothing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&url, None).await.status() != 200 {
        assert!(Instant::now() < deadline, "Redis never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.freeze();
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(get(&url, None).await.status(), 429, "the failure mode");
    }
    // Waiting out the store's timeout on every call would take 10 s; with the breaker only
    // the first three calls and the probes (one per interval) wait.
    let frozen = started.elapsed();
    assert!(frozen < Duration::from_secs(5), "50 calls took {frozen:?}");
    redis.thaw();

    // Back: the second of 2 is admitted, then the limit holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&url, None).await.status() != 200 {
        assert!(Instant::now() < deadline, "counting never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&url, None).await.status(), 429, "exactly 2 a minute");
}
