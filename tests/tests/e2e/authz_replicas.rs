//! API keys shared by two tollgate-authz replicas through Redis, behind real Envoy: a key
//! created, revoked or rotated through one replica's admin API takes effect on the other within
//! a second, even though that replica had already verified (and cached) the key. Usage counts
//! of concurrent calls through both replicas add up exactly.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::process::{free_port, wait_for};
use tollgate_tests::redis::RedisServer;
use tollgate_tests::stack::{Authz, load_config};

const TOKEN: &str = "replica-admin-credential-0123456789";

async fn replica(redis: &RedisServer, dir: &std::path::Path, name: &str) -> Authz {
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
  store: {{type: redis, url: '{}'}}
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

fn admin(authz: &Authz, path: &str) -> String {
    format!("http://{}{path}", authz.running.admin_addr.unwrap())
}

async fn status(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `url` with `key` answers `want`, and returns how long that took.
async fn until_status(url: &str, key: &str, want: u16) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("{want} for the key"),
        Duration::from_secs(5),
        || async move { (status(url, key).await == want).then_some(()) },
    )
    .await;
    start.elapsed()
}

#[tokio::test]
async fn revocation_and_rotation_on_one_replica_reach_the_other_within_a_second() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&redis, dir.path(), "a").await;
    let b = replica(&redis, dir.path(), "b").await;
    let upstream = EchoUpstream::start().await;
    // Envoy talks to replica A only; B is where the operator manages keys.
    let envoy = Envoy::start_example(Backends {
        upstream: upstream.port(),
        authz: a.grpc_port(),
        ratelimit: free_port(),
    })
    .await
    .unwrap();
    let url = envoy.url("/orders");
    let http = reqwest::Client::new();
    let create = |owner: &'static str| {
        let http = http.clone();
        let endpoint = admin(&b, "/v1/keys");
        async move {
            let r: Value = http
                .post(endpoint)
                .bearer_auth(TOKEN)
                .json(&json!({"name": owner, "owner": owner, "plan": "gold"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                r["key"]["id"].as_str().unwrap().to_string(),
                r["secret"].as_str().unwrap().to_string(),
            )
        }
    };

    // Revocation: A verified and cached the key; B revokes it.
    let (id, secret) = create("revoked-owner").await;
    assert_eq!(status(&url, &secret).await, 200);
    assert_eq!(status(&url, &secret).await, 200, "served from A's cache");
    let r = http
        .post(admin(&b, &format!("/v1/keys/{id}/revoke")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let took = until_status(&url, &secret, 401).await;
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    // Rotation without grace: the old secret stops working on A at once, the new one works.
    let (id, old) = create("rotated-owner").await;
    assert_eq!(status(&url, &old).await, 200);
    let rotated: Value = http
        .post(admin(&b, &format!("/v1/keys/{id}/rotate")))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let took = until_status(&url, &old, 401).await;
    assert!(took < Duration::from_secs(1), "rotation took {took:?}");
    assert_eq!(status(&url, &new).await, 200);

    // Rotation with a grace period: both secrets work on A until it ends.
    let (id, old) = create("graceful-owner").await;
    assert_eq!(status(&url, &old).await, 200);
    let rotated: Value = http
        .post(admin(&b, &format!("/v1/keys/{id}/rotate")))
        .bearer_auth(TOKEN)
        .json(&json!({"grace_period": "1h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_eq!(status(&url, &new).await, 200);
    assert_eq!(
        status(&url, &old).await,
        200,
        "old secret within its grace period"
    );
}

/// `GET /v1/keys/{id}/usage` on `authz`: the totals.
async fn usage_totals(authz: &Authz, id: &str) -> Value {
    let r: Value = reqwest::Client::new()
        .get(admin(authz, &format!("/v1/keys/{id}/usage")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["totals"].clone()
}

/// Concurrent calls through two Envoys, one per replica, sharing Redis; the replicas keep their
/// counts in memory (the flush interval is far off) until they shut down. A third replica,
/// started afterwards, reads from Redis exactly the number of calls made.
#[tokio::test]
async fn usage_counts_are_exact_across_two_replicas_under_concurrent_load() {
    const TASKS: usize = 16;
    const CALLS: usize = 25;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut a = replica(&redis, dir.path(), "a").await;
    let mut b = replica(&redis, dir.path(), "b").await;
    let upstream = EchoUpstream::start().await;
    let mut envoys = Vec::new();
    for authz in [&a, &b] {
        let envoy = Envoy::start_example(Backends {
            upstream: upstream.port(),
            authz: authz.grpc_port(),
            ratelimit: free_port(),
        })
        .await
        .unwrap();
        envoys.push(envoy);
    }
    let r: Value = reqwest::Client::new()
        .post(admin(&a, "/v1/keys"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "load", "owner": "load", "plan": "gold"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        r["key"]["id"].as_str().unwrap().to_string(),
        r["secret"].as_str().unwrap().to_string(),
    );

    let mut tasks = Vec::new();
    for envoy in &envoys {
        for _ in 0..TASKS {
            let (url, secret) = (envoy.url("/orders"), secret.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..CALLS {
                    assert_eq!(status(&url, &secret).await, 200);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let each = (TASKS * CALLS) as u64;
    // Each replica knows its own calls before writing them.
    assert!(usage_totals(&a, &id).await["allowed"].as_u64().unwrap() >= each);
    for authz in [&mut a, &mut b] {
        authz.shutdown.trigger();
        (&mut authz.running.handle).await.unwrap().unwrap();
    }
    let c = replica(&redis, dir.path(), "c").await;
    assert_eq!(
        usage_totals(&c, &id).await,
        json!({"allowed": 2 * each, "denied": 0, "rate_limited": 0})
    );
}
