//! Identity handed to the rate limiter: two API keys on different plans, created through the
//! admin API, get different limits from tollgate-ratelimit through real Envoy, because
//! tollgate-authz returns `plan` and `subject` as dynamic metadata and Envoy's `metadata`
//! rate-limit actions turn them into descriptors (over gRPC and over HTTP ext_authz:
//! deploy/envoy/envoy.yaml, deploy/envoy/envoy-http-authz.yaml;
//! deploy/config/limits/gateway.yaml: silver 3 a minute, gold 1000 a minute).

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
    let admin = format!(
        "http://{}",
        gw.authz.running.admin_addr.expect("admin API on")
    );
    let resp = client()
        .post(format!("{admin}/v1/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": format!("{owner} key"), "owner": owner, "plan": plan, "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let issued: Value = resp.json().await.unwrap();
    issued["secret"].as_str().unwrap().to_string()
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
