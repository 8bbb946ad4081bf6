//! Tollgate in-process with API keys managed elsewhere: Envoy with the module on the shipped
//! in-process example (`deploy/config/authz-inprocess.yaml`), its key store the Redis store of a
//! tollgate-authz that serves the admin API. Keys created through that admin API are verified
//! in Envoy's workers, get their plan's limit (silver 3 a minute, gold 1000: the shipped
//! limits) or their own (a limit on the key record replaces its plan's), reach the upstream as
//! identity headers the client cannot forge, and a key revoked through the admin API is refused
//! by two Envoys within a second, although both had verified and cached it. JWTs from the real
//! OIDC provider (keys by discovery) are verified in Envoy's workers with the service's answers;
//! a token signed by a key the module has not seen yet verifies once the key set is fetched
//! again, and is decided on the worker after that.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::issuer::{AUDIENCE, ISSUER, Issuer};
use tollgate_tests::module::{example_envoy, example_in, start_envoy};
use tollgate_tests::oidc::{API_RESOURCE, APP_GOLD, OidcProvider};
use tollgate_tests::process::wait_for;
use tollgate_tests::redis::RedisServer;
use tollgate_tests::stack::{Authz, load_config};

const TOKEN: &str = "module-admin-credential-0123456789";

/// The tollgate-authz whose admin API manages the keys (its own policy is not used here).
async fn admin_service(redis: &RedisServer, dir: &Path) -> Authz {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let file = dir.join("admin.yaml");
    let config = format!(
        "log: {{format: text, level: warn}}
api_keys:
  store: {{type: redis, url: '{}'}}
admin:
  addr: 127.0.0.1:0
  token_file: {}
",
        redis.url(),
        token_file.display()
    );
    std::fs::write(&file, config).unwrap();
    Authz::start(load_config(&file, &[]).unwrap())
        .await
        .unwrap()
}

/// Envoy with the module on the in-process example, its API keys in `redis`.
async fn gateway(redis: &RedisServer, upstream: &EchoUpstream) -> (tempfile::TempDir, Envoy) {
    let dir = tempfile::tempdir().unwrap();
    let embedded = format!(
        "type: embedded\n    path: {}",
        dir.path().join("module-keys.redb").display()
    );
    let config = example_in(dir.path(), |text| {
        assert!(text.contains(&embedded), "the example's key store moved");
        text.replace(
            &embedded,
            &format!("type: redis\n    url: '{}'", redis.url()),
        )
    });
    let backends = Backends {
        upstream: upstream.port(),
        authz: 0,
        ratelimit: 0,
    };
    (dir, start_envoy(&config, backends).await.unwrap())
}

/// A key created through the admin API: (id, secret).
async fn create_key(admin: &Authz, owner: &str, plan: &str) -> (String, String) {
    create(
        admin,
        json!({"name": owner, "owner": owner, "plan": plan, "scopes": ["read"]}),
    )
    .await
}

/// A key created through the admin API from `body`: (id, secret).
async fn create(admin: &Authz, body: Value) -> (String, String) {
    let r = tollgate_tests::stack::create_key(&admin_url(admin), TOKEN, &body).await;
    (
        r["key"]["id"].as_str().unwrap().to_string(),
        r["secret"].as_str().unwrap().to_string(),
    )
}

fn admin_url(admin: &Authz) -> String {
    format!("http://{}", admin.running.admin_addr.unwrap())
}

async fn get(envoy: &Envoy, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(envoy.url("/api/orders"))
        .header("x-api-key", key)
        .header("x-tollgate-plan", "gold")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
}

async fn status(envoy: &Envoy, key: &str) -> u16 {
    get(envoy, key).await.status().as_u16()
}

#[tokio::test]
async fn keys_from_the_admin_api_get_their_plans_limit_and_identity_headers() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_service(&redis, dir.path()).await;
    let upstream = EchoUpstream::start().await;
    let (_state, envoy) = gateway(&redis, &upstream).await;

    let (_, silver) = create_key(&admin, "silver-owner", "silver").await;
    let (_, gold) = create_key(&admin, "gold-owner", "gold").await;
    // Silver: 3 a minute, then the service's 429 with the rate-limit headers.
    for i in 0..3 {
        let resp = get(&envoy, &silver).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert!(resp.headers().contains_key("ratelimit"), "{resp:?}");
        let echo: Echo = resp.json().await.unwrap();
        // The plan is the key's, not the client's copy of the header.
        assert_eq!(echo.header("x-tollgate-plan"), Some("silver"), "{echo:?}");
        assert_eq!(echo.header("x-tollgate-auth-method"), Some("api_key"));
        // The credential itself does not reach the upstream (`remove_credential`).
        assert_eq!(echo.header("x-api-key"), None, "{echo:?}");
    }
    let over = get(&envoy, &silver).await;
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    // Gold: the same requests are far within 1000 a minute.
    for _ in 0..5 {
        assert_eq!(status(&envoy, &gold).await, 200);
    }
    // A gold key with its own limit of 2 a minute (on its record): that limit replaces its
    // plan's in the module too, through the `key_limit` override of the shipped descriptors.
    let (_, own) = create(
        &admin,
        json!({"name": "own", "owner": "gold-owner", "plan": "gold", "scopes": ["read"],
            "rate_limit": {"requests_per_unit": 2, "unit": "minute"}}),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(status(&envoy, &own).await);
    }
    assert_eq!(seen, [200, 200, 429], "a key's own limit");
    // An unknown key: the service's 401 with its challenge.
    let denied = get(&envoy, "tgk_unknown_0000000000000000000000000000").await;
    assert_eq!(denied.status(), 401);
    let challenge = denied.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(
        envoy.stat("tollgate.replies.details.tollgate_denied").await,
        1
    );
    assert_eq!(envoy.stat("tollgate.decisions.reason.allowed").await, 10);
}

#[tokio::test]
async fn a_key_revoked_through_the_admin_api_is_refused_by_two_envoys_within_a_second() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_service(&redis, dir.path()).await;
    let upstream = EchoUpstream::start().await;
    let (_a_state, a) = gateway(&redis, &upstream).await;
    let (_b_state, b) = gateway(&redis, &upstream).await;

    let (id, secret) = create_key(&admin, "revoked-owner", "gold").await;
    for envoy in [&a, &b] {
        assert_eq!(status(envoy, &secret).await, 200);
        assert_eq!(status(envoy, &secret).await, 200, "from the module's cache");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/keys/{id}/revoke", admin_url(&admin)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let revoked = Instant::now();
    for envoy in [&a, &b] {
        wait_for(
            "the revoked key refused",
            Duration::from_secs(5),
            || async { (status(envoy, &secret).await == 401).then_some(()) },
        )
        .await;
    }
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
}

/// Envoy with the module on the in-process example's Envoy config, loading `authz` (a whole
/// authz config, written to a temp dir).
async fn gateway_on(authz: &str, upstream: &EchoUpstream) -> (tempfile::TempDir, Envoy) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authz.yaml");
    std::fs::write(&path, authz).unwrap();
    let backends = Backends {
        upstream: upstream.port(),
        authz: 0,
        ratelimit: 0,
    };
    let envoy = start_envoy(&example_envoy(&path), backends).await.unwrap();
    (dir, envoy)
}

async fn bearer(envoy: &Envoy, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(envoy.url(path))
        .bearer_auth(token)
        .header("x-tollgate-subject", "someone-else")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn jwts_from_the_oidc_provider_are_verified_in_the_worker_with_the_services_answers() {
    let oidc = OidcProvider::start().await.unwrap();
    let upstream = EchoUpstream::start().await;
    let config = format!(
        "policy:
  rules:
    - name: admin
      path: {{prefix: /admin}}
      conditions:
        - scope: admin
    - name: api
      path: {{prefix: /}}
jwt:
  issuers:
    - issuer: {issuer}
      discovery: true
      audiences: [{API_RESOURCE}]
      algorithms: [RS256, ES256]
",
        issuer = oidc.issuer()
    );
    let (_dir, envoy) = gateway_on(&config, &upstream).await;
    let token = oidc
        .client_credentials(APP_GOLD.id, APP_GOLD.secret, "read", Some(API_RESOURCE))
        .await
        .unwrap();

    for _ in 0..3 {
        let resp = bearer(&envoy, "/orders", &token).await;
        assert_eq!(resp.status(), 200);
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.header("x-tollgate-auth-method"), Some("jwt"));
        assert_eq!(
            echo.header("x-tollgate-subject"),
            Some(APP_GOLD.id),
            "{echo:?}"
        );
    }
    // The rule's scope condition: the service's 403 with its challenge.
    let resp = bearer(&envoy, "/admin/users", &token).await;
    assert_eq!(resp.status(), 403);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    // A token that does not verify: 401 invalid_token.
    let resp = bearer(&envoy, "/orders", &format!("{token}x")).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    // The issuer's keys were fetched before Envoy took the config: every decision was made
    // on the worker, none waited on the background runtime.
    assert_eq!(envoy.stat("tollgate.paused.verdict.pending").await, 0);
    assert_eq!(envoy.stat("tollgate.decisions.reason.allowed").await, 3);
}

/// The `jwt:` section trusting `issuer` (ES256, its JWKS URL), one issuer entry last so a
/// caller can add settings to it.
fn jwt_section(issuer: &Issuer) -> String {
    format!(
        "jwt:
  issuers:
    - issuer: {ISSUER}
      jwks_url: {}
      audiences: [{AUDIENCE}]
      algorithms: [ES256]
",
        issuer.jwks_url()
    )
}

#[tokio::test]
async fn a_token_signed_by_a_newly_published_key_verifies_then_is_decided_on_the_worker() {
    let issuer = Issuer::start(&["old", "new"]).await;
    issuer.publish(&["old"]);
    let upstream = EchoUpstream::start().await;
    let config = format!(
        "policy:
  rules:
    - name: api
      path: {{prefix: /}}
{}      min_refetch_interval: 0s
",
        jwt_section(&issuer)
    );
    let (_dir, envoy) = gateway_on(&config, &upstream).await;
    let old = issuer.token("old", "alice", json!({}));
    assert_eq!(bearer(&envoy, "/orders", &old).await.status(), 200);
    assert_eq!(envoy.stat("tollgate.paused.verdict.pending").await, 0);

    // The issuer rotates: a token signed by the new key is an unknown kid, the key set is
    // fetched again (on the background runtime, the request paused meanwhile, unless the
    // refresher that starts with the config already brought the new key), then it verifies.
    issuer.publish(&["old", "new"]);
    let new = issuer.token("new", "bob", json!({}));
    let resp = bearer(&envoy, "/orders", &new).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("bob"));
    let paused = envoy.stat("tollgate.paused.verdict.pending").await;
    assert!(paused <= 1, "{paused}");
    // Now known: decided on the worker.
    for _ in 0..3 {
        assert_eq!(bearer(&envoy, "/orders", &new).await.status(), 200);
    }
    assert_eq!(envoy.stat("tollgate.paused.verdict.pending").await, paused);
}

/// The example's Envoy config loading `authz`, its catch-all route copying the identity's
/// dynamic metadata (as the module files it, under ext_authz's namespace) into request headers
/// the upstream echoes, and the module's `filter_config` given `extra` lines.
fn metadata_gateway_config(authz: &Path, extra: &str) -> String {
    let text = example_envoy(authz);
    let route =
        "              - match: { prefix: / }\n                route: { cluster: upstream }\n";
    assert!(text.contains(route), "the example's catch-all route moved");
    let copy = |header: &str, path: &str| {
        format!(
            "                - header: {{ key: {header}, value: \"%DYNAMIC_METADATA(envoy.filters.http.ext_authz:{path})%\" }}\n"
        )
    };
    let with_headers = format!(
        "{route}                request_headers_to_add:\n{}{}{}",
        copy("x-md-subject", "subject"),
        copy("x-md-method", "method"),
        copy("x-md-limit", "rate_limit:limit"),
    );
    let failure = "                  failure_mode: deny\n";
    assert!(text.contains(failure), "the example's filter_config moved");
    text.replace(route, &with_headers)
        .replace(failure, &format!("{failure}{extra}"))
}

#[tokio::test]
async fn the_identity_and_limit_reach_later_filters_as_metadata_when_switched_on() {
    let issuer = Issuer::start(&["k1"]).await;
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let authz = dir.path().join("authz.yaml");
    let limits = dir.path().join("limits.yaml");
    std::fs::write(
        &limits,
        "domain: tollgate\ndescriptors:\n  - key: subject\n    rate_limit: {unit: minute, requests_per_unit: 100}\n",
    )
    .unwrap();
    let config = format!(
        "policy:
  rate_limits:
    - actions: [{{identity: {{field: subject, descriptor_key: subject}}}}]
  rules:
    - name: api
      path: {{prefix: /}}
{jwt}rate_limit:
  domain: tollgate
  store: {{type: memory}}
  limits: {{path: {limits}}}
",
        jwt = jwt_section(&issuer),
        limits = limits.display()
    );
    std::fs::write(&authz, config).unwrap();
    let backends = || Backends {
        upstream: upstream.port(),
        authz: 0,
        ratelimit: 0,
    };
    let token = issuer.token("k1", "alice", json!({}));

    // `dynamic_metadata: true`: the subject, the method and the limit that applied, as Envoy
    // formats them.
    let on = "                  dynamic_metadata: true\n";
    let envoy = start_envoy(&metadata_gateway_config(&authz, on), backends())
        .await
        .unwrap();
    let resp = bearer(&envoy, "/orders", &token).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-md-subject"), Some("alice"), "{echo:?}");
    assert_eq!(echo.header("x-md-method"), Some("jwt"));
    let limit = echo.header("x-md-limit").unwrap_or_default();
    assert!(limit.contains("subject"), "{limit:?}");
    drop(envoy);

    // By default: the same decision, headers and limit, no metadata.
    let envoy = start_envoy(&metadata_gateway_config(&authz, ""), backends())
        .await
        .unwrap();
    let resp = bearer(&envoy, "/orders", &token).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("ratelimit"), "{resp:?}");
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("alice"));
    for h in ["x-md-subject", "x-md-method", "x-md-limit"] {
        assert!(
            echo.header(h).is_none_or(str::is_empty),
            "{h}: {:?}",
            echo.header(h)
        );
    }
    assert_eq!(envoy.stat("tollgate.ratelimit.decision.ok").await, 1);
}
