//! Identity handed to the rate limiter: two API keys on different plans, created through the
//! admin API, get different limits from tollgate-ratelimit through real Envoy, because
//! tollgate-authz returns `plan` and `subject` as dynamic metadata and Envoy's `metadata`
//! rate-limit actions turn them into descriptors (over gRPC and over HTTP ext_authz:
//! deploy/envoy/envoy.yaml, deploy/envoy/envoy-http-authz.yaml;
//! deploy/config/limits/gateway.yaml: silver 3 a minute, gold 1000 a minute). A key with its
//! own limit gets that limit instead of its plan's, through the descriptor `limit` override.

use serde_json::{Value, json};

use tollgate_tests::stack::Flavour;

use crate::authz::{ADMIN_TOKEN, Gateway, client};

const CONFIG: &str = r#"
log: {format: text, level: warn}
policy:
  rules:
    - name: api
      path: {prefix: /}
      identity: [api_key]
api_keys:
  store: {type: embedded, path: $DIR/keys.redb}
admin:
  addr: 127.0.0.1:0
  token_file: $DIR/admin-token
"#;

async fn create_key(gw: &Gateway, owner: &str, plan: &str) -> String {
    let body =
        json!({"name": format!("{owner} key"), "owner": owner, "plan": plan, "scopes": ["read"]});
    create(gw, body).await["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

fn admin_url(gw: &Gateway) -> String {
    format!(
        "http://{}",
        gw.authz.running.admin_addr.expect("admin API on")
    )
}

/// `POST /v1/keys` with `body`: the issued key.
async fn create(gw: &Gateway, body: Value) -> Value {
    tollgate_tests::stack::create_key(&admin_url(gw), ADMIN_TOKEN, &body).await
}

/// The statuses of `n` calls with `key` through Envoy.
async fn statuses(gw: &Gateway, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = client()
            .get(gw.url("/orders"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        out.push(r.status().as_u16());
    }
    out
}

#[tokio::test]
async fn api_keys_on_different_plans_get_different_limits_over_grpc() {
    api_keys_on_different_plans_get_different_limits(Flavour::Grpc).await;
}

#[tokio::test]
async fn api_keys_on_different_plans_get_different_limits_over_http() {
    api_keys_on_different_plans_get_different_limits(Flavour::Http).await;
}

async fn api_keys_on_different_plans_get_different_limits(flavour: Flavour) {
    let gw = Gateway::start_as(flavour, CONFIG, &[], &[]).await;
    let silver = create_key(&gw, "team-silver", "silver").await;
    let gold = create_key(&gw, "team-gold", "gold").await;
    let c = client();

    for i in 0..3 {
        let r = c
            .get(gw.url("/orders"))
            .header("x-api-key", &silver)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "silver request {i}");
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-tollgate-plan"][0], "silver", "{echo}");
    }
    let r = c
        .get(gw.url("/orders"))
        .header("x-api-key", &silver)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "silver allows 3 a minute");

    for i in 0..10 {
        let r = c
            .get(gw.url("/orders"))
            .header("x-api-key", &gold)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "gold request {i}: gold's limit is its own");
    }

    // The admin API refuses a wrong credential.
    let admin = format!("http://{}", gw.authz.running.admin_addr.unwrap());
    let r = c
        .get(format!("{admin}/v1/keys"))
        .bearer_auth("wrong-credential-000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn credentials_can_be_kept_from_the_upstream() {
    let config = CONFIG.replace(
        "api_keys:\n",
        "headers:\n  remove_credential: true\napi_keys:\n  query_param: api_key\n",
    );
    let gw = Gateway::start(&config, &[]).await;
    let key = create_key(&gw, "team-q", "gold").await;
    let c = client();

    let r = c
        .get(gw.url(&format!("/orders?page=2&api_key={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let path = echo["path"].as_str().unwrap();
    assert!(
        !path.contains(&key) && path.starts_with("/orders?") && path.contains("page=2"),
        "{path}"
    );
    assert_eq!(echo["headers"]["x-tollgate-subject"][0], "team-q");

    let r = c
        .get(gw.url("/orders"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
}

/// A key's own `2/minute` replaces its plan's 1000 a minute: the third call is refused, while
/// another key of the same owner and plan is not (it counts apart), and a silver key's own
/// `10/minute` lets through more than silver's 3 (the plan's limit is replaced, not added to).
#[tokio::test]
async fn a_keys_own_limit_replaces_its_plans_limit_through_envoy() {
    let gw = Gateway::start(CONFIG, &[]).await;
    let own = |plan: &str, n: u32| {
        json!({"name": "own", "owner": "team-a", "plan": plan, "scopes": ["read"],
               "rate_limit": {"requests_per_unit": n, "unit": "minute"}})
    };
    let limited = create(&gw, own("gold", 2)).await;
    assert_eq!(
        limited["key"]["rate_limit"],
        json!({"requests_per_unit": 2, "unit": "minute"})
    );
    let limited_key = limited["secret"].as_str().unwrap();
    let plain = create_key(&gw, "team-a", "gold").await;
    let roomy = create(&gw, own("silver", 10)).await;
    let roomy_key = roomy["secret"].as_str().unwrap();

    assert_eq!(statuses(&gw, limited_key, 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(&gw, &plain, 5).await,
        [200; 5],
        "same owner and plan"
    );
    assert_eq!(
        statuses(&gw, roomy_key, 5).await,
        [200; 5],
        "silver allows 3"
    );

    // In the pair, tollgate-authz let all three calls through: the 429 is tollgate-ratelimit's.
    let id = limited["key"]["id"].as_str().unwrap();
    let usage: Value = client()
        .get(format!("{}/v1/keys/{id}/usage", admin_url(&gw)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        usage["totals"],
        json!({"allowed": 3, "denied": 0, "rate_limited": 0}),
        "{usage}"
    );
}
