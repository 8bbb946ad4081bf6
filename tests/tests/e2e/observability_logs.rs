//! The services' logs in a full run through Envoy (API keys in Redis behind a password, JWTs
//! and opaque tokens from the OIDC provider, the admin and debug credentials, rate limiting in
//! password-protected Redis): JSON lines, one `denied` line per denial at info carrying Envoy's
//! request id, the log level raised at runtime without a restart, and not one secret of the
//! run anywhere in the logs or in `/metrics`.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::oidc::{
    API_RESOURCE, APP_GOLD, APP_SILVER, INTROSPECTOR, OPAQUE_RESOURCE, OidcProvider,
};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::{free_port, wait_for};
use tollgate_tests::redis::RedisServer;

use crate::observability::Service;

const ADMIN_TOKEN: &str = "obs-admin-credential-4b1d9e7f0a";
const DEBUG_TOKEN: &str = "obs-debug-credential-93c2e8a5d1";
const REDIS_PASSWORD: &str = "obs-redis-password-6f0e2c9b47";

fn authz_config(oidc: &OidcProvider, redis_port: u16, admin_port: u16, dir: &str) -> String {
    format!(
        r#"
log: {{ format: json, level: info }}
server:
  debug: {{}}
policy:
  identity_order: [jwt, introspection, api_key]
  rules:
    - name: api
      path: {{ prefix: / }}
jwt:
  issuers:
    - issuer: {issuer}
      discovery: true
      audiences: [{API_RESOURCE}]
      algorithms: [RS256, ES256]
introspection:
  endpoint: {introspection}
  client_id: {id}
  client_secret: {secret}
  issuer: {issuer}
  audiences: [{OPAQUE_RESOURCE}]
api_keys:
  store: {{ type: redis, url: "redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}" }}
admin:
  addr: 127.0.0.1:{admin_port}
  token_file: {dir}/admin-token
"#,
        issuer = oidc.issuer(),
        introspection = oidc.introspection_endpoint(),
        id = INTROSPECTOR.id,
        secret = INTROSPECTOR.secret,
    )
}

fn ratelimit_config(redis_port: u16) -> String {
    format!(
        r#"
log: {{ format: json, level: info }}
server:
  debug: {{}}
store: {{ type: redis, url: "redis://127.0.0.1:{redis_port}", password: "{REDIS_PASSWORD}" }}
limits: {{ path: {} }}
"#,
        project_root().join("deploy/config/limits").display()
    )
}

/// The JSON log lines of a service (every line must be JSON).
fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn put_level(svc: &Service, filter: &str, token: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(format!("http://{}/loglevel", svc.http))
        .bearer_auth(token)
        .body(filter.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn logs_name_denials_with_the_request_id_and_never_a_secret() {
    let redis = RedisServer::start();
    // The harness waits for a PING without a password; the password comes after.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(REDIS_PASSWORD)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let oidc = OidcProvider::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().display().to_string();
    std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
    let admin_port = free_port();
    let env = [("TOLLGATE_DEBUG_TOKEN", DEBUG_TOKEN.to_string())];
    let authz = Service::start(
        "tollgate-authz",
        &authz_config(&oidc, redis.port(), admin_port, &dir_s),
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let ratelimit = Service::start(
        "tollgate-ratelimit",
        &ratelimit_config(redis.port()),
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let echo = EchoUpstream::start().await;
    let envoy = Envoy::start_example(Backends {
        upstream: echo.port(),
        authz: authz.grpc_port(),
        ratelimit: ratelimit.grpc_port(),
    })
    .await
    .unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // An API key on the silver plan (3 a minute), created through the admin API.
    let body =
        json!({"name": "obs key", "owner": "team-obs", "plan": "silver", "scopes": ["read"]});
    let issued = tollgate_tests::stack::create_key(
        &format!("http://127.0.0.1:{admin_port}"),
        ADMIN_TOKEN,
        &body,
    )
    .await;
    let api_key = issued["secret"].as_str().unwrap().to_string();
    let jwt = oidc
        .client_credentials(APP_GOLD.id, APP_GOLD.secret, "read", Some(API_RESOURCE))
        .await
        .unwrap();
    let opaque = oidc
        .client_credentials(APP_SILVER.id, APP_SILVER.secret, "read", None)
        .await
        .unwrap();

    // Allowed before the level changes: no per-decision line yet.
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |path: &str| c.get(envoy.url(path));
    assert_eq!(
        status(get("/a").bearer_auth(&jwt).send().await.unwrap()),
        200
    );
    assert!(
        !authz.log().contains("\"allowed\""),
        "decisions are logged at debug only"
    );

    // The level rises at runtime, behind the debug credential.
    assert_eq!(
        put_level(&authz, "debug", "wrong-credential-0000000").await,
        401
    );
    assert_eq!(put_level(&authz, "info,=[", DEBUG_TOKEN).await, 400);
    for svc in [&authz, &ratelimit] {
        assert_eq!(
            put_level(
                svc,
                "info,tollgate_authz=debug,tollgate_ratelimit=debug",
                DEBUG_TOKEN
            )
            .await,
            200
        );
    }

    let mut request_ids = Vec::new();
    assert_eq!(
        status(get("/b").bearer_auth(&jwt).send().await.unwrap()),
        200
    );
    assert_eq!(
        status(get("/c").bearer_auth(&opaque).send().await.unwrap()),
        200
    );
    for (i, (header, value)) in [
        ("x-api-key", "tgk_live_not-a-real-key-0000000000000000"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        ),
        (
            "authorization",
            "Bearer opaque-but-unknown-token-1234567890",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let forged = format!("obs-request-{i}");
        let r = get("/denied")
            .header(header, value)
            .header("x-request-id", &forged)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{header}: {}", r.status());
        // The client's id is not trusted; Envoy's own comes back with the answer.
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, forged);
        request_ids.push(id);
    }
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(status(
            get("/d")
                .header("x-api-key", &api_key)
                .send()
                .await
                .unwrap(),
        ));
    }
    assert_eq!(codes, [200, 200, 200, 429]);

    // One `denied` line at info per denial, with the request id Envoy passed along.
    let denied = wait_for("three denial lines", Duration::from_secs(10), || {
        let log = authz.log();
        async move {
            let denied: Vec<Value> = lines(&log)
                .into_iter()
                .filter(|l| l["message"] == "denied")
                .collect();
            (denied.len() >= 3).then_some(denied)
        }
    })
    .await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
    for (line, id) in denied.iter().zip(&request_ids) {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert!(line["reason"].is_string(), "{line}");
    }
    let allowed = lines(&authz.log())
        .into_iter()
        .filter(|l| l["message"] == "allowed")
        .count();
    assert!(allowed >= 5, "per-decision lines at debug after the change");
    assert!(
        lines(&ratelimit.log())
            .iter()
            .any(|l| l["message"] == "over limit" && l["limit"] == "plan-silver"),
        "{}",
        ratelimit.log()
    );

    // No secret of the run, whole or in part, in any log line or metric.
    let metrics = [
        c.get(format!("http://{}/metrics", authz.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        c.get(format!("http://{}/metrics", ratelimit.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    ];
    let jwt_signature = jwt.rsplit('.').next().unwrap().to_string();
    let secrets: Vec<(&str, String)> = vec![
        ("admin credential", ADMIN_TOKEN.into()),
        ("debug credential", DEBUG_TOKEN.into()),
        ("Redis password", REDIS_PASSWORD.into()),
        ("introspection client secret", INTROSPECTOR.secret.into()),
        ("OIDC client secret", APP_GOLD.secret.into()),
        ("OIDC client secret", APP_SILVER.secret.into()),
        ("API key", api_key.clone()),
        ("API key tail", api_key[api_key.len() - 12..].to_string()),
        ("JWT", jwt.clone()),
        ("JWT signature", jwt_signature),
        ("opaque token", opaque.clone()),
        (
            "presented API key",
            "not-a-real-key-0000000000000000".into(),
        ),
        (
            "presented opaque token",
            "opaque-but-unknown-token-1234567890".into(),
        ),
    ];
    let sources = [
        ("tollgate-authz log", authz.log()),
        ("tollgate-ratelimit log", ratelimit.log()),
        ("tollgate-authz /metrics", metrics[0].clone()),
        ("tollgate-ratelimit /metrics", metrics[1].clone()),
    ];
    for (what, text) in &sources {
        assert!(text.len() > 200, "{what} is suspiciously short: {text}");
        for (name, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {name} appears in the {what}"
            );
        }
    }
    drop(envoy);
}
