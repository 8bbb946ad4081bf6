//! Single-call mode next to the pair, on one counter store: an Envoy in each shape (the shipped
//! `deploy/envoy/envoy.yaml` and `deploy/envoy/single-call.yaml`), tollgate-authz with the
//! embedded engine in one, tollgate-ratelimit in the other, both on the shipped limits file and
//! one Redis (standalone, then Cluster). Concurrent requests through both admit exactly the
//! limit between them: the two modes count the same counters.

use std::time::Duration;

use futures::future::join_all;
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::process::free_port;
use tollgate_tests::redis::{RedisCluster, RedisServer};
use tollgate_tests::stack::{Authz, Ratelimit, Shape};

/// Envoy on the shipped single-call config in front of `upstream`, asking `authz` (the
/// ratelimit backend is a free port: that config has no ratelimit filter).
async fn single_call_envoy(upstream: &EchoUpstream, authz: &Authz) -> Envoy {
    Envoy::start_with(
        &Shape::SingleCall.envoy_config(),
        Backends {
            upstream: upstream.port(),
            authz: authz.grpc_port(),
            ratelimit: free_port(),
        },
    )
    .await
    .unwrap()
}

/// `store:` as a `--set` value: the same counters for both services.
async fn both_shapes_admit_exactly_the_limit_together(store: &str) {
    let upstream = EchoUpstream::start().await;
    let ratelimit = Ratelimit::example(&[format!("store={store}")])
        .await
        .unwrap();
    let pair_authz = Shape::Pair.authz(&[]).await.unwrap();
    let single = Shape::SingleCall
        .authz(&[format!("rate_limit.store={store}")])
        .await
        .unwrap();
    let pair = Envoy::start_with(
        &Shape::Pair.envoy_config(),
        Backends {
            upstream: upstream.port(),
            authz: pair_authz.grpc_port(),
            ratelimit: ratelimit.grpc_port(),
        },
    )
    .await
    .unwrap();
    let one_call = single_call_envoy(&upstream, &single).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // deploy/config/limits/gateway.yaml: /limited, 5 a minute whoever calls. 16 at once, half
    // through each shape.
    let calls = (0..16).map(|i| {
        let url = if i % 2 == 0 {
            pair.url("/limited")
        } else {
            one_call.url("/limited")
        };
        let c = client.clone();
        async move { (i % 2, c.get(url).send().await.unwrap().status().as_u16()) }
    });
    let answers = join_all(calls).await;
    let admitted = answers.iter().filter(|(_, s)| *s == 200).count();
    let limited = answers.iter().filter(|(_, s)| *s == 429).count();
    assert_eq!((admitted, limited), (5, 11), "{answers:?}");
    // Each shape really counted: each saw admissions or denials of its own.
    assert!(
        pair.stat("cluster.tollgate_ratelimit.upstream_rq_total")
            .await
            >= 8
    );
    assert!(
        one_call
            .stat("cluster.tollgate_authz.upstream_rq_total")
            .await
            >= 8,
        "the single-call Envoy asked its authz"
    );
    assert_eq!(
        one_call.stat("http.gateway.ext_authz.denied").await
            + pair.stat("cluster.upstream.ratelimit.over_limit").await,
        11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_shapes_on_one_redis_count_one_limit_exactly() {
    let redis = RedisServer::start();
    let store = format!("{{type: redis, url: '{}', timeout: 500ms}}", redis.url());
    both_shapes_admit_exactly_the_limit_together(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_shapes_on_one_redis_cluster_count_one_limit_exactly() {
    let cluster = RedisCluster::start(3);
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let store = format!(
        "{{type: redis, cluster_nodes: [{}], timeout: 500ms}}",
        nodes.join(", ")
    );
    both_shapes_admit_exactly_the_limit_together(&store).await;
}

/// The single-call shape with the shipped configs, usage flushed every 100 ms.
struct OneCall {
    upstream: EchoUpstream,
    authz: Authz,
    envoy: Envoy,
    client: reqwest::Client,
}

impl OneCall {
    async fn start() -> Self {
        let upstream = EchoUpstream::start().await;
        let authz = Shape::SingleCall
            .authz(&["api_keys.usage.flush_interval=100ms".to_string()])
            .await
            .unwrap();
        let envoy = single_call_envoy(&upstream, &authz).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            upstream,
            authz,
            envoy,
            client,
        }
    }

    /// `POST /v1/keys`: the issued key (`key.id`, `secret`).
    async fn create(&self, body: serde_json::Value) -> serde_json::Value {
        tollgate_tests::stack::create_key(&self.authz.admin_url(), &self.authz.admin_token, &body)
            .await
    }

    async fn call(&self, key: &str) -> u16 {
        let r = self
            .client
            .get(self.envoy.url("/api/orders"))
            .header("x-api-key", key);
        r.send().await.unwrap().status().as_u16()
    }

    /// Waits until the key's usage totals are `want` (usage is flushed in batches).
    async fn usage_becomes(&self, key: &serde_json::Value, want: serde_json::Value) {
        let url = format!(
            "{}/v1/keys/{}/usage",
            self.authz.admin_url(),
            key["key"]["id"].as_str().unwrap()
        );
        let last = std::sync::Mutex::new(serde_json::Value::Null);
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let r = self.client.get(&url).bearer_auth(&self.authz.admin_token);
                if let Ok(r) = r.send().await
                    && let Ok(u) = r.json::<serde_json::Value>().await
                {
                    if u["totals"] == want {
                        return;
                    }
                    *last.lock().unwrap() = u;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "usage never became {want}: {:?}",
            last.lock().unwrap()
        );
    }
}

fn with_limit(name: &str, n: u32) -> serde_json::Value {
    serde_json::json!({"name": name, "owner": "team-a", "plan": "gold", "scopes": ["read"],
        "rate_limit": {"requests_per_unit": n, "unit": "minute"}})
}

/// A key's own `2/minute` replaces its gold plan's 1000 in single-call mode too (the shipped
/// `deploy/config/authz-single-call.yaml` carries the route's `key_limit` entries): its third
/// call is a 429 from the Check, another gold key of the same owner is not limited, and the
/// key's usage counts the 429 as `rate_limited`.
#[tokio::test]
async fn a_keys_own_limit_replaces_its_plans_limit_in_single_call_mode() {
    let gw = OneCall::start().await;
    let own = gw.create(with_limit("own", 2)).await;
    let plain = gw
        .create(
            serde_json::json!({"name": "plain", "owner": "team-a", "plan": "gold",
            "scopes": ["read"]}),
        )
        .await;
    let secret = |k: &serde_json::Value| k["secret"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(gw.call(&secret(&own)).await);
    }
    assert_eq!(seen, [200, 200, 429]);
    for _ in 0..5 {
        assert_eq!(gw.call(&secret(&plain)).await, 200, "same owner and plan");
    }
    gw.usage_becomes(
        &own,
        serde_json::json!({"allowed": 2, "denied": 0, "rate_limited": 1}),
    )
    .await;
}

/// 40 concurrent calls with a key limited to 7 a minute: exactly 7 pass, and the key's usage
/// shows exactly 7 allowed and 33 rate limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_are_exact_under_concurrent_single_call_load() {
    let gw = OneCall::start().await;
    let key = gw.create(with_limit("busy", 7)).await;
    let secret = key["secret"].as_str().unwrap();
    let answers = join_all((0..40).map(|_| gw.call(secret))).await;
    let ok = answers.iter().filter(|&&s| s == 200).count();
    let limited = answers.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (7, 33), "{answers:?}");
    gw.usage_becomes(
        &key,
        serde_json::json!({"allowed": 7, "denied": 0, "rate_limited": 33}),
    )
    .await;
}

/// Envoy's `encode_raw_headers: true` sends a Check's headers as a list (`header_map`), one
/// entry per header line, instead of the map: tollgate-authz reads either the same. Two Envoys
/// on the shipped single-call config, one with that setting added, ask one tollgate-authz:
/// through both, a key is admitted with its identity headers upstream, a request without one
/// is challenged, and a key sent twice is refused as ambiguous (the map joins both values into
/// one; the list must not be read as its last entry).
#[tokio::test]
async fn a_check_with_raw_encoded_headers_is_read_as_the_map_is() {
    let gw = OneCall::start().await;
    let anchor = "              transport_api_version: V3\n";
    let shipped = Shape::SingleCall.envoy_config();
    assert_eq!(shipped.matches(anchor).count(), 1);
    let raw = Envoy::start_with(
        &shipped.replacen(
            anchor,
            &format!("{anchor}              encode_raw_headers: true\n"),
            1,
        ),
        Backends {
            upstream: gw.upstream.port(),
            authz: gw.authz.grpc_port(),
            ratelimit: free_port(),
        },
    )
    .await
    .unwrap();
    let key = gw
        .create(
            serde_json::json!({"name": "raw", "owner": "team-a", "plan": "gold",
            "scopes": ["read"]}),
        )
        .await;
    let (id, secret) = (
        key["key"]["id"].as_str().unwrap(),
        key["secret"].as_str().unwrap(),
    );
    for envoy in [&gw.envoy, &raw] {
        let get = || gw.client.get(envoy.url("/api/orders"));
        let ok = get().header("x-api-key", secret).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let echo: tollgate_tests::echo::Echo = ok.json().await.unwrap();
        assert_eq!(echo.header("x-tollgate-key-id"), Some(id), "{echo:?}");
        assert_eq!(echo.header("x-tollgate-auth-method"), Some("api_key"));
        let none = get().send().await.unwrap();
        assert_eq!(none.status(), 401);
        assert!(none.headers().contains_key("www-authenticate"));
        let twice = get()
            .header("x-api-key", secret)
            .header("x-api-key", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(twice.status(), 400, "a key sent twice is ambiguous");
    }
    assert!(raw.stat("http.gateway.ext_authz.ok").await >= 1);
}
