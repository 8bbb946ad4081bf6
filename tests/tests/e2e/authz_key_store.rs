//! The Redis key store frozen (SIGSTOP) under a tollgate-authz replica behind real Envoy, as a
//! client sees it: a key the replica never saw gets tollgate-authz's own 503 with
//! `Retry-After` (it answers before Envoy's ext_authz timeout), a key it verified before keeps
//! working from memory, and a key an operator revoked during the outage (through another
//! replica, whose request waits out the freeze) is refused within a second of Redis's return.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::process::{free_port, wait_for};
use tollgate_tests::redis::RedisServer;
use tollgate_tests::stack::{Authz, load_config};

const TOKEN: &str = "key-store-admin-credential-0123456789";

/// A replica on `redis` with `store_extra` added to its store section.
async fn replica(
    redis: &RedisServer,
    dir: &std::path::Path,
    name: &str,
    store_extra: &str,
) -> Authz {
    let token_file = dir.join(format!("{name}-token"));
    std::fs::write(&token_file, TOKEN).unwrap();
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "log: {{format: text, level: warn}}
policy:
  rules:
    - name: api
      path: {{prefix: /}}
      identity: [api_key]
api_keys:
  store: {{type: redis, url: '{}'{store_extra}}}
admin:
  addr: 127.0.0.1:0
  token_file: {}
",
            redis.url(),
            token_file.display()
        ),
    )
    .unwrap();
    Authz::start(load_config(&file, &[]).unwrap())
        .await
        .unwrap()
}

async fn create(admin: SocketAddr, owner: &str) -> (String, String) {
    let body = json!({"name": owner, "owner": owner});
    let r = tollgate_tests::stack::create_key(&format!("http://{admin}"), TOKEN, &body).await;
    (
        r["key"]["id"].as_str().unwrap().to_string(),
        r["secret"].as_str().unwrap().to_string(),
    )
}

async fn call(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    http.get(url).header("x-api-key", key).send().await.unwrap()
}

/// A counter without labels from a service's `/metrics` (0 when absent).
async fn counter(http: &reqwest::Client, addr: SocketAddr, name: &str) -> f64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_key_store_answers_503_with_retry_after_keeps_known_keys_and_applies_a_revocation_on_return()
 {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // B is the operator's replica: a long store deadline, so a change made during the
    // outage waits for Redis instead of failing.
    let b = replica(&redis, dir.path(), "b", ", timeout: 20s").await;
    let admin = b.running.admin_addr.unwrap();
    let (_, known) = create(admin, "known").await;
    let (revoked_id, revoked) = create(admin, "revoked").await;
    let (_, unseen) = create(admin, "unseen").await;
    // A, on the defaults, serves the gateway; the keys exist before it starts, so nothing
    // evicts what it reads.
    let a = replica(&redis, dir.path(), "a", "").await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_example(Backends {
        upstream: upstream.port(),
        authz: a.grpc_port(),
        ratelimit: free_port(),
    })
    .await
    .unwrap();
    let url = envoy.url("/orders");
    for key in [&known, &revoked] {
        assert_eq!(call(&http, &url, key).await.status(), 200);
    }

    redis.freeze();
    // A key A never read: its store read times out, and tollgate-authz's 503 reaches the
    // client, not Envoy's bare one (which has no Retry-After and no body).
    let started = Instant::now();
    let r = call(&http, &url, &unseen).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5"),
        "Envoy's own 503 after {took:?}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(took < Duration::from_millis(500), "{took:?}");

    // The known key keeps working, well past the moment A noticed the outage.
    wait_for(
        "a Check accepted from memory",
        Duration::from_secs(10),
        || {
            let (http, url, known) = (http.clone(), url.clone(), known.clone());
            let metrics = a.running.http_addr;
            async move {
                assert_eq!(call(&http, &url, &known).await.status(), 200);
                (counter(
                    &http,
                    metrics,
                    "tollgate_authz_api_key_stale_decisions_total",
                )
                .await
                    > 0.0)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(call(&http, &url, &known).await.status(), 200);
    assert_eq!(
        call(&http, &url, &revoked).await.status(),
        200,
        "not revoked yet"
    );

    // The operator revokes a key during the outage; the request waits for Redis.
    let revoke = tokio::spawn({
        let http = http.clone();
        async move {
            http.post(format!("http://{admin}/v1/keys/{revoked_id}/revoke"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status()
        }
    });

    redis.thaw();
    let back = Instant::now();
    assert!(revoke.await.unwrap().is_success());
    wait_for("the revoked key refused", Duration::from_secs(5), || {
        let (http, url, revoked) = (http.clone(), url.clone(), revoked.clone());
        async move { (call(&http, &url, &revoked).await.status() == 401).then_some(()) }
    })
    .await;
    let refused_after = back.elapsed();
    assert!(
        refused_after < Duration::from_secs(1),
        "the revocation took {refused_after:?} after the store's return"
    );
    assert_eq!(call(&http, &url, &known).await.status(), 200);
    assert_eq!(call(&http, &url, &unseen).await.status(), 200);
}
