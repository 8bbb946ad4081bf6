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
use tollgate_tests::stack::{Ratelimit, Shape};

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
    let one_call = Envoy::start_with(
        &Shape::SingleCall.envoy_config(),
        Backends {
            upstream: upstream.port(),
            authz: single.grpc_port(),
            ratelimit: free_port(),
        },
    )
    .await
    .unwrap();
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

/// A key's own `2/minute` replaces its gold plan's 1000 in single-call mode too (the shipped
/// `deploy/config/authz-single-call.yaml` carries the route's `key_limit` entries): its third
/// call is a 429 from the Check, another gold key of the same owner is not limited, and the
/// key's usage counts the 429 as `rate_limited`.
#[tokio::test]
async fn a_keys_own_limit_replaces_its_plans_limit_in_single_call_mode() {
    use serde_json::{Value, json};
    use tollgate_tests::process::wait_for;

    let upstream = EchoUpstream::start().await;
    let authz = Shape::SingleCall
        .authz(&["api_keys.usage.flush_interval=100ms".to_string()])
        .await
        .unwrap();
    let envoy = Envoy::start_with(
        &Shape::SingleCall.envoy_config(),
        Backends {
            upstream: upstream.port(),
            authz: authz.grpc_port(),
            ratelimit: free_port(),
        },
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let admin = authz.admin_url();
    let create = |body: Value| {
        let (client, admin, token) = (client.clone(), admin.clone(), authz.admin_token.clone());
        async move {
            let r = client
                .post(format!("{admin}/v1/keys"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let own = create(json!({"name": "own", "owner": "team-a", "plan": "gold",
        "scopes": ["read"], "rate_limit": {"requests_per_unit": 2, "unit": "minute"}}))
    .await;
    let plain = create(json!({"name": "plain", "owner": "team-a", "plan": "gold",
        "scopes": ["read"]}))
    .await;
    let statuses = |key: String, n: usize| {
        let (client, url) = (client.clone(), envoy.url("/api/orders"));
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = client
                    .get(&url)
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                out.push(r.status().as_u16());
            }
            out
        }
    };
    let secret = |k: &Value| k["secret"].as_str().unwrap().to_string();
    assert_eq!(statuses(secret(&own), 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(secret(&plain), 5).await,
        [200; 5],
        "same owner and plan"
    );

    let id = own["key"]["id"].as_str().unwrap().to_string();
    let usage_url = format!("{admin}/v1/keys/{id}/usage");
    let want = json!({"allowed": 2, "denied": 0, "rate_limited": 1});
    wait_for("the key's usage", Duration::from_secs(10), || {
        let (client, url, token, want) = (
            client.clone(),
            usage_url.clone(),
            authz.admin_token.clone(),
            want.clone(),
        );
        async move {
            let usage: Value = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (usage["totals"] == want).then_some(())
        }
    })
    .await;
}
